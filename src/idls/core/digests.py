"""SHA-256 digests of files, tensors and labelled image sets.

Digests tie a fitted artifact to what it was fitted on: the weights file of the
model, the images and labels of the fit data. :func:`image_fingerprints` gives one
64-bit fingerprint per image, so that a partial overlap between two image sets
can be found (file names cannot: disjoint splits reuse names such as
``airplane_0000.jpg``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from idls.errors import UserError

_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the bytes of file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot compute the digest of {str(path)!r}: the file does not exist; pass an existing file")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _update(digest: hashlib._Hash, tensor: Tensor) -> None:
    """Feed dtype, shape and raw bytes (CPU, contiguous) of ``tensor`` to ``digest``."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{flat.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def json_digest(value: Any) -> str:
    """SHA-256 (hex) of a JSON-serialisable value, keys sorted (non-JSON values by their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def tensor_digest(*tensors: Tensor) -> str:
    """Hex SHA-256 of one or more tensors (dtype, shape and bytes of each, in order).

    Equal digests mean bit-identical tensors of the same dtype and shape; the device does not matter.
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        _update(digest, tensor)
    return digest.hexdigest()


def dataset_digest(images: Tensor, labels: Tensor) -> str:
    """Hex SHA-256 of a labelled image set: images ``N x C x H x W`` (as given) and labels ``N`` (as int64)."""
    return tensor_digest(images, labels.to(torch.long))


def image_fingerprints(images: Tensor) -> Tensor:
    """One 64-bit fingerprint per image: ``N x C x H x W`` in [0, 1] -> ``N`` int64.

    The first 8 bytes of the SHA-256 of the image quantised to 8 bits (``round(x * 255)``)
    and its shape, so the same picture matches whatever float dtype or device holds it.
    """
    if images.dim() != 4:
        raise UserError(f"images must have shape N x C x H x W, got {tuple(images.shape)}")
    pixels = images.detach().cpu().float().mul(255).round().clamp(0, 255).to(torch.uint8)
    shape = f"{tuple(pixels.shape[1:])}|".encode()
    values = []
    for image in pixels:
        digest = hashlib.sha256(shape)
        digest.update(image.contiguous().numpy().tobytes())
        values.append(int.from_bytes(digest.digest()[:8], "little", signed=True))
    return torch.tensor(values, dtype=torch.long)


def short_hex(digest: str | None, length: int = 12) -> str:
    """The first ``length`` hex digits of a digest (for names and messages); ``'none'`` for ``None``."""
    return "none" if digest is None else digest[:length]


__all__ = ["dataset_digest", "image_fingerprints", "sha256_file", "short_hex", "tensor_digest"]
