"""The training loop shared by every training objective: seeded, resumable, with progress and history.

:func:`train_classifier` fine-tunes (or trains) a :class:`~idls.system.Classifier` in place with SGD +
momentum and a cosine learning-rate schedule, minimising a :class:`~idls.defenses.training.objectives.
TrainingObjective` per batch. Every epoch depends only on ``(seed, epoch)`` (its shuffle, its
augmentation and the objective's random starts come from a generator seeded with both), so a run
killed after epoch ``k`` and resumed from the checkpoint saved then reaches the same weights as an
uninterrupted run (on CPU, single-threaded; multi-threaded reductions may differ in the last bits).

The checkpoint (``checkpoint=PATH``, safetensors + JSON sidecar, written atomically after every
epoch) holds the network's state dict, the optimiser's momentum buffers and the history; it belongs
to one run (model, starting weights, objective, options and training data digest) and is ignored
with a warning otherwise. :func:`save_trained` writes the final weights as a state-dict
``.safetensors`` that ``--weights FILE`` / ``create_model(name, weights=FILE)`` load, with the
training's metadata beside it. Example::

    objective = create_objective("interpretation-robust")
    run = train_classifier(classifier, images, labels, objective, TrainingOptions(epochs=2),
                           checkpoint="out/robust.checkpoint.safetensors")
    save_trained(classifier, "out/robust.safetensors", run)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls.core import load_artifact, save_artifact
from idls.core.checkpoints import FitCheckpoint, load_optimizer_tensors, optimizer_tensors
from idls.core.digests import dataset_digest, json_digest
from idls.core.options import Options, check_non_negative, check_positive, option
from idls.defenses.training.objectives import TrainingObjective
from idls.errors import UserError, check_images
from idls.interpreters.rts_training import augment_batch
from idls.system import Classifier

#: artifact kinds: the per-epoch checkpoint and the final trained weights
CHECKPOINT_KIND = "training-checkpoint"
TRAINED_KIND = "trained-classifier"
NET_PREFIX = "net."


@dataclass(frozen=True, eq=False, kw_only=True)
class TrainingOptions(Options):
    """Options of the training loop (the objective has its own)."""

    kind: ClassVar[str] = "training"

    epochs: int = option(5, "passes over the training images")
    batch_size: int = option(128, "images per step")
    lr: float = option(0.01, "peak learning rate of SGD (cosine-annealed to 0 over the run)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 weight decay")
    augment: bool = option(True, "random flips and shifts of up to an eighth of the side (4 pixels at 32 px)")
    seed: int = option(0, "seeds the shuffles, the augmentation and the objective's random starts")
    progress: bool = option(True, "show a progress bar with the loss and accuracy")

    def check(self) -> None:
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        check_non_negative(momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass
class TrainingRun:
    """What a training run did: per-epoch history, its identity and its cost.

    Attributes:
        history: one dict per epoch (means of the objective's statistics, ``epoch``, ``seconds``, ``lr``).
        key: digest of model, starting weights, objective, options and training data.
        objective: the objective's :meth:`~TrainingObjective.describe`.
        options: the loop's options as plain values.
        passes_per_image_epoch: forward + backward passes per training image and epoch.
        resumed_from: epochs loaded from a checkpoint (0: a fresh start).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""
    objective: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    passes_per_image_epoch: int = 0
    resumed_from: int = 0

    def metadata(self) -> dict[str, Any]:
        return {"objective": self.objective, "options": self.options, "key": self.key, "history": self.history,
                "passes_per_image_epoch": self.passes_per_image_epoch}


def run_key(classifier: Classifier, objective: TrainingObjective, options: TrainingOptions, images: Tensor,
            labels: Tensor) -> str:
    """The identity of a training run (what a checkpoint must match to be resumed)."""
    from idls.core.digests import tensor_digest

    loop = {k: v for k, v in options.as_dict().items() if k != "progress"}
    start = tensor_digest(*[t.detach() for t in classifier.net.state_dict().values()])
    return json_digest({"model": classifier.info.name, "start": start, "objective": objective.describe(),
                        "objective_options": objective.options.as_dict(), "loop": loop,
                        "data": dataset_digest(images, labels)})


def _learning_rate(options: TrainingOptions, step: int, total: int) -> float:
    return 0.5 * options.lr * (1 + math.cos(math.pi * step / max(total, 1)))


def train_classifier(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    objective: TrainingObjective,
    options: TrainingOptions | None = None,
    *,
    checkpoint: str | Path | None = None,
) -> TrainingRun:
    """Train ``classifier`` in place on ``images`` ``N x C x H x W`` in [0, 1] with ``labels`` ``N``.

    The model is left in eval mode. A checkpoint of the same run is resumed (its epochs are not
    repeated); the checkpoint file stays after the last epoch (delete it, or keep it as a record).

    Returns:
        :class:`TrainingRun` with the per-epoch history.
    """
    options = options or TrainingOptions()
    check_images(images)
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise UserError(f"training needs one label per image; got {images.shape[0]} images and labels of shape "
                        f"{tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= classifier.num_classes:
        raise UserError(f"training labels must lie in [0, {classifier.num_classes - 1}] for {classifier.info.name}")
    device = classifier.device
    run = TrainingRun(key=run_key(classifier, objective, options, images, labels), objective=objective.describe(),
                      options={k: v for k, v in options.as_dict().items() if k != "progress"},
                      passes_per_image_epoch=objective.passes_per_image())
    params = [p for p in classifier.net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    store = FitCheckpoint(checkpoint, run.key, kind=CHECKPOINT_KIND)
    state = store.load()
    if state is not None:
        classifier.net.load_state_dict({k[len(NET_PREFIX):]: v.to(device) for k, v in state.tensors.items()
                                        if k.startswith(NET_PREFIX)})
        load_optimizer_tensors(optimizer, {k: v.to(device) for k, v in state.tensors.items() if k.startswith("optim.")})
        run.history = list(state.counters.get("history", []))
        run.resumed_from = state.epochs_done
    steps_per_epoch = math.ceil(len(images) / options.batch_size)
    total = options.epochs * steps_per_epoch
    try:
        for epoch in range(run.resumed_from, options.epochs):
            run.history.append(_epoch(classifier, images, labels, objective, options, optimizer, epoch,
                                      steps_per_epoch, total, device))
            tensors = {NET_PREFIX + k: v for k, v in classifier.net.state_dict().items()}
            store.save(epoch + 1, {**tensors, **optimizer_tensors(optimizer)}, {"history": run.history})
    finally:
        classifier.eval()
    return run


def _epoch(classifier: Classifier, images: Tensor, labels: Tensor, objective: TrainingObjective,
           options: TrainingOptions, optimizer: torch.optim.Optimizer, epoch: int, steps_per_epoch: int,
           total: int, device: torch.device) -> dict[str, Any]:
    """One pass over the data; returns the epoch's mean statistics."""
    from idls.progress import progress_bar

    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    sums: dict[str, float] = {}
    seen = 0
    started = time.perf_counter()
    classifier.train()
    batches = order.split(options.batch_size)
    with progress_bar(batches, desc=f"{objective.name} epoch {epoch + 1}/{options.epochs}",
                      disable=not options.progress, leave=False) as bar:
        for step, index in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            lr = _learning_rate(options, global_step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = images[index]
            if options.augment:
                x = augment_batch(x, generator)
            x, y = x.to(device), labels[index].to(device)
            loss, stats = objective.loss(classifier, x, y, progress=global_step / total, generator=generator)
            if not torch.isfinite(loss):
                raise UserError(f"the training loss became {float(loss)} at epoch {epoch + 1}, step {step + 1}; "
                                "lower lr or gamma")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in stats.items():
                sums[name] = sums.get(name, 0.0) + value * len(index)
            seen += len(index)
            bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items() if k in ("loss", "accuracy", "adv_accuracy")},
                            refresh=False)
    means = {name: value / seen for name, value in sums.items()}
    return {"epoch": epoch + 1, **means, "lr_end": _learning_rate(options, (epoch + 1) * steps_per_epoch, total),
            "seconds": round(time.perf_counter() - started, 3)}


def save_trained(classifier: Classifier, path: str | Path, run: TrainingRun, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the trained network's state dict (loadable as ``--weights PATH``) with the run's metadata."""
    tensors = dict(classifier.net.state_dict())
    metadata = {"kind": TRAINED_KIND, "model": classifier.info.name, **run.metadata(), **dict(extra or {})}
    return save_artifact(path, tensors, metadata)


def read_training_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`save_trained` wrote (objective, options, history, ...)."""
    return dict(load_artifact(path, kind=TRAINED_KIND).metadata)


__all__ = ["CHECKPOINT_KIND", "TRAINED_KIND", "TrainingOptions", "TrainingRun", "read_training_metadata",
           "run_key", "save_trained", "train_classifier"]
