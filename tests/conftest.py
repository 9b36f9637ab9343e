"""Shared fixtures: real data beside the checkout (skipped cleanly when absent), small models."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# One intra-op thread per test process: the suite runs one process per core (pytest-xdist), and
# OpenMP threads that wait on a busy core made single attacks 30x slower on a shared 2-core machine.
# Flush-to-zero is per thread, so it is set before torch starts any worker thread (docs/design.md §6).
torch.set_num_threads(1)
torch.set_flush_denormal(True)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IDLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESNET20 = SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"
RESNET32 = SHARED_DATA / "cifar10" / "models" / "resnet32-d509ac18.th"
CIFAR_LOSSLESS = SHARED_DATA / "cifar10" / "lossless"
CIFAR_JPEG = SHARED_DATA / "cifar10" / "images"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-samples" / "images"


#: devices of the device-parametrised tests: the CPU, and the one IDLS_TEST_DEVICE names (benchmarks/gpu_check.sh
#: sets cuda), else CUDA when this machine has it
_EXTRA_DEVICE = os.environ.get("IDLS_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
TEST_DEVICES: list[str] = ["cpu"] + ([_EXTRA_DEVICE] if _EXTRA_DEVICE not in (None, "cpu") else [])


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


# A fresh cache per test process (trained embedded models included) unless the caller names one,
# so tests never read or write the user's cache. Set before any fixture, module-scoped ones included.
os.environ.setdefault("IDLS_CACHE_DIR", tempfile.mkdtemp(prefix="idls-test-cache-"))


@pytest.fixture(autouse=True)
def _seed():
    """Deterministic seeds for every test (python and numpy too, also when pytest-randomly is disabled)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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
    from tests.model_helpers import seeded_random_resnet20

    # a private RNG stream: requesting this fixture late (after the per-test seed) must not move the test's numbers
    return seeded_random_resnet20(1)


def run_cli(args: list[str]) -> int:
    """Run the ``idls`` command in-process; its exit status (0 when it returns normally)."""
    from idls.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


# -- shared by the universal-attack tests (tests/universal_helpers.py builds them) --------------------------
@pytest.fixture(scope="module")
def tiny():
    """A small random-weight GAP + linear CNN (6 classes, 32 px), eval mode."""
    from tests.universal_helpers import tiny_classifier

    return tiny_classifier()


@pytest.fixture(scope="module")
def fit_data():
    """48 embedded synthetic training images (32 px)."""
    from idls.data.synthetic import TRAIN_SEED
    from tests.universal_helpers import synthetic

    return synthetic(48, TRAIN_SEED, "train")


@pytest.fixture(scope="session")
def colour_model():
    """A tiny CNN trained on the dominant-colour task (trained once per session)."""
    from tests.universal_helpers import trained_colour_model

    return trained_colour_model()
