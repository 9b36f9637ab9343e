"""Errors that describe a user mistake.

A :class:`UserError` carries a single line that names the problem and the fix;
the CLI prints it without a traceback and exits with status 2.
"""

import errno as _errno

#: (why, remedy) of a failed write, for the ``OSError`` numbers that mean the disk takes no more data:
#: a condition the user fixes, not a bug
STORAGE_FAILURES: dict[int, tuple[str, str]] = {
    _errno.ENOSPC: ("no space left on the device", "free space"),
    _errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
    _errno.EROFS: ("the file system is read-only", "remount it writable"),
}


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


def storage_error(exc: OSError, what: str, fix: str) -> "UserError | None":
    """A one-line :class:`UserError` for a write that failed because the disk takes no more data, else ``None``.

    Args:
        exc: the error of the failed write.
        what: what could not be written, e.g. ``"the result store runs/x"``.
        fix: what to do once the disk takes data again, e.g. ``"run the same command again to resume"``.
    """
    failure = STORAGE_FAILURES.get(exc.errno) if isinstance(exc, OSError) else None
    if failure is None:
        return None
    reason, remedy = failure
    return UserError(f"cannot write {what}: {reason}; {remedy}, then {fix}")
