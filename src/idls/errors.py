"""Errors that describe a user mistake.

A :class:`UserError` carries a single line that names the problem and the fix;
the CLI prints it without a traceback and exits with status 2.
"""


class UserError(Exception):
    """A mistake in the user's input (unknown name, missing file, bad shape...)."""


def check_images(x: "object", *, name: str = "images") -> None:
    """Validate a batch of images: float tensor B x C x H x W with values in [0, 1]."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise UserError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise UserError(f"{name} must have shape B x C x H x W, got {tuple(x.shape)}; add a batch dimension with x[None]")
    if not x.is_floating_point():
        raise UserError(f"{name} must be floating point in [0, 1], got {x.dtype}; divide uint8 images by 255")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise UserError(
            f"{name} have values in [{lo:.3g}, {hi:.3g}] but must lie in [0, 1]; "
            "pass un-normalised pixels (normalisation happens inside the classifier)"
        )
