"""Loading weights safely: local state-dict files, verified downloads, torchvision names.

Checkpoints are always read with ``torch.load(..., weights_only=True)``: nothing a
user hands us is unpickled. Our own artifacts are written with safetensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from idls.errors import UserError


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, ``.pt``/``.pth``/``.th`` (weights only).

    Accepts a bare state dict or a dict holding one under ``state_dict`` / ``model``;
    strips the ``module.`` prefix that DataParallel adds.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist; pass an existing file or a registered weights name")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Mapping = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot read weights file {str(path)!r} as a weights-only checkpoint ({first})") from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"weights file {str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(net: nn.Module, state: Mapping[str, Tensor], *, source: str, model_name: str) -> None:
    """Load ``state`` into ``net``; tolerate only missing BatchNorm counters.

    Raises a one-line :class:`UserError` when the checkpoint does not fit the architecture.
    """
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UserError(
            f"checkpoint {source!r} does not fit model {model_name!r}: " + "; ".join(parts) + "; pick the matching --model"
        )
    net.load_state_dict(dict(state), strict=False)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, sha256_prefix: str, cache_dir: Path) -> Path:
    """Download ``url`` into ``cache_dir`` once and check the SHA-256 prefix."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / url.rsplit("/", 1)[-1]
    if not target.exists():
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=None, progress=True)
        except Exception as exc:  # noqa: BLE001
            target.unlink(missing_ok=True)
            raise UserError(
                f"cannot download {url} ({type(exc).__name__}); without internet pass --weights PATH to a local copy"
            ) from None
    digest = sha256_of(target)
    if not digest.startswith(sha256_prefix):
        target.unlink(missing_ok=True)
        raise UserError(f"downloaded {target.name} has SHA-256 {digest[:8]}..., expected {sha256_prefix}...; try again")
    return target
