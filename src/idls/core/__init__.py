"""Low-level building blocks shared by fitted attacks and defences: artifacts and digests.

This package depends only on :mod:`idls.errors`, torch and safetensors; nothing here
imports attacks, interpreters or models. Example::

    from idls.core import save_artifact, load_artifact, dataset_digest

    save_artifact("uap.safetensors", {"delta": delta}, {"kind": "universal-perturbation"})
    artifact = load_artifact("uap.safetensors", kind="universal-perturbation")
    artifact.tensors["delta"], artifact.metadata["kind"]
"""

from __future__ import annotations

from idls.core.artifacts import Artifact, load_artifact, save_artifact, sidecar_path
from idls.core.digests import (
    dataset_digest,
    image_fingerprints,
    json_digest,
    sha256_file,
    short_hex,
    tensor_digest,
)

__all__ = [
    "Artifact",
    "dataset_digest",
    "image_fingerprints",
    "json_digest",
    "load_artifact",
    "save_artifact",
    "sha256_file",
    "short_hex",
    "sidecar_path",
    "tensor_digest",
]
