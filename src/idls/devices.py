"""Turn a device name from the user (CLI option, experiment file) into a torch device that exists here."""

from __future__ import annotations

import torch

from idls.errors import UserError


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'`` -> :class:`torch.device`; a one-line :class:`UserError` naming
    ``option`` (where the value came from) when the name is unknown or no CUDA GPU is available."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}: unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}: cuda requested but no CUDA GPU is available here; use cpu")
    return device


__all__ = ["resolve_device"]
