"""Training defences: fine-tune a classifier so that attacks on it (and on its explanations) fail.

* :mod:`~idls.defenses.training.objectives`: what a step minimises (``standard``, ``adversarial``
  (Madry PGD training), ``interpretation-robust`` (paper 000 Eq. 21));
* :mod:`~idls.defenses.training.loop`: the one seeded, resumable training loop and the saved weights.

Example (CLI: ``idls train``)::

    from idls.defenses.training import TrainingOptions, create_objective, save_trained, train_classifier

    run = train_classifier(classifier, images, labels, create_objective("interpretation-robust"),
                           TrainingOptions(epochs=3), checkpoint="robust.checkpoint.safetensors")
    save_trained(classifier, "robust.safetensors", run)   # idls attack --weights robust.safetensors ...
"""

from __future__ import annotations

from idls.defenses.training.loop import (
    TrainingOptions,
    TrainingRun,
    read_training_metadata,
    save_trained,
    train_classifier,
)
from idls.defenses.training.objectives import OBJECTIVES, TrainingObjective, create_objective, list_objectives

__all__ = ["OBJECTIVES", "TrainingObjective", "TrainingOptions", "TrainingRun", "create_objective", "list_objectives",
           "read_training_metadata", "save_trained", "train_classifier"]
