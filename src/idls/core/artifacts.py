"""Artifacts: named tensors plus JSON metadata in one safetensors file.

The metadata (a JSON object) is stored in the safetensors header under the key
``"idls"`` and copied to a human-readable sidecar ``PATH.json``; the safetensors
file is the source of truth, the sidecar is never read back. Loading never
unpickles anything. Example::

    path = save_artifact("out/uap.safetensors", {"delta": delta}, {"kind": "universal-perturbation", "epsilon": 0.04})
    artifact = load_artifact(path, kind="universal-perturbation")
    delta = artifact.tensors["delta"]            # bit-identical to what was saved
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from idls.errors import UserError, storage_error

#: key of the JSON metadata in the safetensors header
METADATA_KEY = "idls"


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact.

    Attributes:
        tensors: name -> tensor (CPU), exactly as saved.
        metadata: the JSON object saved with them.
        path: the file it came from.
    """

    tensors: dict[str, Tensor]
    metadata: dict[str, Any]
    path: Path


def sidecar_path(path: str | Path) -> Path:
    """The human-readable metadata file written beside ``path``: ``PATH.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(temporary_path)`` then move the result onto ``path`` (no half-written files)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp creates owner-only files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_artifact(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``metadata`` to ``path`` (safetensors) and ``PATH.json``.

    Args:
        path: the ``.safetensors`` file to write (parent folders are created).
        tensors: name -> tensor of any shape and device (saved as CPU copies).
        metadata: a JSON-serialisable mapping (``kind`` names the artifact type by convention).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    try:
        text = json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"artifact metadata must be JSON-serialisable with finite numbers: {exc}") from None
    arrays = {str(name): tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda temporary: save_file(arrays, str(temporary), metadata={METADATA_KEY: text}))
        pretty = json.dumps(dict(metadata), sort_keys=True, indent=2) + "\n"
        _atomic_write(sidecar_path(path), lambda temporary: temporary.write_text(pretty, encoding="utf-8"))
    except OSError as exc:
        full = storage_error(exc, f"artifact {str(path)!r}", "run the same command again")
        raise full or UserError(f"cannot write artifact {str(path)!r} ({exc.strerror or exc}); choose a writable path"
                                ) from None
    return path


def load_artifact(path: str | Path, *, kind: str | None = None) -> Artifact:
    """Read an artifact written by :func:`save_artifact` (safetensors only; nothing is unpickled).

    Args:
        path: the ``.safetensors`` file.
        kind: when given, the metadata's ``kind`` must equal it.

    Raises:
        UserError: the file is missing, is not a readable safetensors file, carries no
            idls metadata, or is of another kind.
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"artifact {str(path)!r} does not exist; check the path or create it first")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"artifact {str(path)!r} is not a readable safetensors file ({reason}); re-create it") from None
    if METADATA_KEY not in header:
        raise UserError(f"{str(path)!r} is a safetensors file without idls metadata; pass a file saved by idls")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise UserError(f"the metadata of artifact {str(path)!r} is not valid JSON; re-create the file") from None
    if not isinstance(metadata, dict):
        raise UserError(f"the metadata of artifact {str(path)!r} is not a JSON object; re-create the file")
    if kind is not None and metadata.get("kind") != kind:
        raise UserError(f"{str(path)!r} holds a {metadata.get('kind') or 'unnamed'} artifact, not a {kind}; pass a {kind} file")
    return Artifact(tensors=tensors, metadata=metadata, path=path)


__all__ = ["METADATA_KEY", "Artifact", "load_artifact", "save_artifact", "sidecar_path"]
