"""Model registry: names -> wrapped :class:`~idls.system.Classifier` builders.

Like timm / torchvision, each entry ties an architecture to its preprocessing,
input size, class count, CAM feature layer and pretrained sources::

    from idls.models import create_model, list_models
    f = create_model("cifar_resnet20", weights="path/to/resnet20-12fca82f.th")
    logits = f(x)        # x: B x 3 x 32 x 32 in [0, 1]
"""

from __future__ import annotations

# Importing the module registers the built-in model families.
from idls.models import _register  # noqa: F401
from idls.models.registry import CIFAR10_CLASSES, MODELS, ModelEntry, create_model, list_models, weights_cache_dir

__all__ = ["CIFAR10_CLASSES", "MODELS", "ModelEntry", "create_model", "list_models", "weights_cache_dir"]
