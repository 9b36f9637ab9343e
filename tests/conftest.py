"""Shared fixtures: real data beside the checkout (skipped cleanly when absent), small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IDLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESNET20 = SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"
RESNET32 = SHARED_DATA / "cifar10" / "models" / "resnet32-d509ac18.th"
CIFAR_LOSSLESS = SHARED_DATA / "cifar10" / "lossless"
CIFAR_JPEG = SHARED_DATA / "cifar10" / "images"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples" / "images"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    """Deterministic seeds; a per-session cache unless IDLS_CACHE_DIR is set by the caller."""
    torch.manual_seed(0)
    if "IDLS_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("IDLS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "idls-cache"))


@pytest.fixture(scope="session")
def resnet20_path() -> Path:
    return _require(RESNET20)


@pytest.fixture(scope="session")
def resnet20(resnet20_path):
    from idls.models import create_model

    return create_model("cifar_resnet20", weights=str(resnet20_path))


@pytest.fixture(scope="session")
def cifar_lossless_dir() -> Path:
    return _require(CIFAR_LOSSLESS)


@pytest.fixture(scope="session")
def cifar_jpeg_dir() -> Path:
    return _require(CIFAR_JPEG)


@pytest.fixture(scope="session")
def imagenet_samples_dir() -> Path:
    return _require(IMAGENET_SAMPLES)


@pytest.fixture(scope="session")
def random_resnet20():
    """A randomly initialised CIFAR ResNet-20 (eval mode), for oracle checks independent of weights."""
    from idls.models import create_model

    torch.manual_seed(1)
    model = create_model("cifar_resnet20")
    # Give BatchNorm non-trivial statistics so the network is not near-identity.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model
