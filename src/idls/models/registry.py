"""The model registry: names -> :class:`ModelEntry` (built-in entries register in :mod:`idls.models._register`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from idls.paths import cache_dir
from idls.registry import Registry
from idls.system import Classifier

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered classifier.

    ``build(weights)`` returns the wrapped classifier; ``weights`` is ``None``
    (random init), ``"pretrained"``, a named weights string or a local file.
    """

    name: str
    family: str
    build: Callable[[str | None], Classifier]
    description: str
    input_size: int
    num_classes: int
    weights_names: tuple[str, ...] = field(default=())


MODELS: Registry[ModelEntry] = Registry("model")


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu") -> Classifier:
    """Build a registered classifier in eval mode on ``device``.

    Args:
        name: a registered model name (``idls list``).
        weights: ``None`` for random weights, ``"pretrained"`` for the registered
            default, a torchvision weights name (``"IMAGENET1K_V2"``), or a local
            state-dict file (``.th``/``.pt``/``.pth``/``.safetensors``).
    """
    entry = MODELS.get(name)
    model = entry.build(None if weights is None else str(weights))
    return model.eval().to(device)


def weights_cache_dir() -> Path:
    return cache_dir() / "weights"
