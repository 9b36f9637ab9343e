"""Training, saving and loading RTS masking models (docs/design.md §3).

Objective for a mask ``m`` (``B x h x w``, upsampled bilinearly to the input
before blending) explaining class ``c``::

    destroyer + 8 * area + smoothness_weight * TV(m) + 0.3 * preserver
    area      = mean((m + 5e-4) ** 0.3)
    preserver = relu(kappa - margin_c(f(phi(x, m))))        keep c on top with the kept region
    destroyer = relu(kappa + margin_c(f(phi(x, 1 - m))))    c must lose once that region is removed
    phi(x, m) = m * x + (1 - m) * alternative,  alternative = blurred x or random colour + noise (50/50)

with ``margin_c(z) = z_c - max_{j != c} z_j`` on the classifier's logits (a
Carlini-Wagner style hinge, ``kappa = 2``: no pressure once the goal is met) and
``smoothness_weight = 0.05`` (TV = mean squared difference of neighbours).

Two phases (both Adam with a cosine learning-rate decay; the encoder = classifier
stays frozen):

1. *Class selector.* ``E`` and the per-class confidence offsets learn a location
   detector from the scores ``<deep_ij, E[c]> - confidence[c]``: for the image's
   label, the log-mean-exp of its scores (a smooth maximum: the class is seen
   somewhere) is pushed up; for every other class, *every location's* score is
   pushed down (binary cross-entropy on both sides). A wrong class's gate
   ``sigmoid(score)`` thus closes over the whole deepest feature map.
2. *Decoder* (selector frozen), with the fake-label trick of Dabkowski & Gal:
   each sample's class is replaced by a random wrong class with probability
   ``fake_label_prob`` (0.3); for such samples only area + smoothness count, so
   the decoder learns that a closed gate means an empty mask.

Checkpoints: ``save_rts`` writes the head's tensors as safetensors plus a JSON
sidecar (format, model name, a fingerprint of the classifier's weights, the head
configuration, a SHA-256 of the tensor file and the training history);
``load_rts`` checks all of it and raises a one-line :class:`UserError` on a
mismatch. :func:`embedded_rts_masker` loads the embedded CNN's masker shipped with
idls (:mod:`idls.pretrained`), or trains it once and caches it in
``cache_dir()/embedded/rts.safetensors``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.errors import UserError
from idls.interpreters.mask import gaussian_blur
from idls.interpreters.rts_model import RTSConfig, RTSHead, RTSMasker, model_family
from idls.system import Classifier

CHECKPOINT_FORMAT = "idls-rts"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RTSObjective:
    """Weights of the RTS training objective (defaults: docs/design.md §3)."""

    destroyer_weight: float = 1.0
    area_weight: float = 8.0
    preserver_weight: float = 0.3
    smoothness_weight: float = 0.05
    area_power: float = 0.3
    area_offset: float = 5e-4
    margin: float = 2.0
    blur_sigma_fraction: float = 1 / 16  # sigma of the blurred alternative, as a fraction of the image side
    noise_std: float = 0.2  # std of the noise added to the random-colour alternative


def alternative_images(x: Tensor, objective: RTSObjective, generator: torch.Generator) -> Tensor:
    """Per sample, 50/50: a blurred copy of ``x`` or a random colour plus noise (``B x C x H x W`` in [0, 1])."""
    b, c = x.shape[:2]
    blurred = gaussian_blur(x, max(1.0, objective.blur_sigma_fraction * x.shape[-1]))
    colour = torch.rand(b, c, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * objective.noise_std
    random_colour = (colour + noise).clamp(0, 1)
    use_blur = torch.rand(b, 1, 1, 1, generator=generator, device=x.device) < 0.5
    return torch.where(use_blur, blurred, random_colour)


def blend(x: Tensor, mask: Tensor, alternative: Tensor) -> Tensor:
    """``phi(x, m) = m * x + (1 - m) * alternative``; ``mask`` is ``B x H x W`` at input size."""
    m = mask[:, None]
    return m * x + (1 - m) * alternative


def upsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``B x h x w`` masks to ``B x H x W``."""
    return F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def class_margin(logits: Tensor, cls: Tensor) -> Tensor:
    """``z_c - max_{j != c} z_j`` per sample (``B x N`` logits -> ``B``)."""
    own = logits.gather(1, cls[:, None])[:, 0]
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return own - others


def area_term(mask: Tensor, objective: RTSObjective) -> Tensor:
    """``mean((m + offset) ** power)`` per sample (``B x h x w`` -> ``B``)."""
    return (mask + objective.area_offset).pow(objective.area_power).flatten(1).mean(1)


def smoothness_term(mask: Tensor) -> Tensor:
    """Total variation: mean squared difference of neighbouring entries per sample (``B``)."""
    dy = (mask[:, 1:, :] - mask[:, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (mask[:, :, 1:] - mask[:, :, :-1]).pow(2).flatten(1).mean(1)
    return dx + dy


def objective_terms(
    classifier: Classifier,
    x: Tensor,
    mask: Tensor,
    cls: Tensor,
    objective: RTSObjective,
    generator: torch.Generator,
    real: Tensor | None = None,
) -> dict[str, Tensor]:
    """The RTS objective and its terms (scalars) for masks ``B x h x w`` explaining ``cls``.

    ``real`` (``B`` bool, default all true) marks samples whose class is genuine;
    fake-label samples contribute only area and smoothness.
    """
    if real is None:
        real = torch.ones_like(cls, dtype=torch.bool)
    full_mask = upsample_mask(mask, x.shape[-2:])
    alternative = alternative_images(x, objective, generator)
    logits = classifier(torch.cat([blend(x, full_mask, alternative), blend(x, 1 - full_mask, alternative)]))
    preserved, destroyed = logits.chunk(2)
    weight = real.to(x.dtype) / real.sum().clamp(min=1)
    preserver = (F.relu(objective.margin - class_margin(preserved, cls)) * weight).sum()
    destroyer = (F.relu(objective.margin + class_margin(destroyed, cls)) * weight).sum()
    area = area_term(mask, objective).mean()
    smoothness = smoothness_term(mask).mean()
    total = (
        objective.destroyer_weight * destroyer
        + objective.area_weight * area
        + objective.smoothness_weight * smoothness
        + objective.preserver_weight * preserver
    )
    return {"total": total, "destroyer": destroyer, "area": area, "smoothness": smoothness, "preserver": preserver}


def selector_loss(head: RTSHead, deep: Tensor, labels: Tensor) -> Tensor:
    """Phase-1 loss on deepest features ``B x C x h x w`` and labels ``B``.

    Positive (the label): binary cross-entropy of the log-mean-exp pooled score (a
    smooth maximum: the class must be seen somewhere). Negatives (every other
    class): binary cross-entropy of *every location's* score against 0, so a wrong
    class's gate closes everywhere. Both sides get equal weight.
    """
    scores = head.selector.all_scores(deep).flatten(2)  # B x N x hw
    positive = scores.gather(1, labels[:, None, None].expand(-1, 1, scores.shape[-1]))[:, 0]  # B x hw
    pooled = torch.logsumexp(positive, 1) - math.log(positive.shape[-1])
    positive_loss = F.softplus(-pooled).mean()
    is_negative = torch.ones_like(scores[:, :, 0], dtype=torch.bool).scatter(1, labels[:, None], False)
    negative_loss = F.softplus(scores)[is_negative].mean()
    return positive_loss + negative_loss


# ----------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------
def augment_batch(x: Tensor, generator: torch.Generator, max_shift: float = 0.125) -> Tensor:
    """Random horizontal flips and integer translations (reflect padding), batched.

    ``x`` is ``B x C x H x W``; shifts are up to ``max_shift`` of the side.
    """
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    limit = max(1, int(max_shift * w))
    shifts = torch.randint(-limit, limit + 1, (b, 2), generator=generator, device=x.device).to(x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0).to(x.dtype)
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * shifts[:, 0] / w
    theta[:, 1, 2] = 2 * shifts[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _fake_labels(labels: Tensor, num_classes: int, prob: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Replace each label by a random *other* class with probability ``prob``; returns (classes, real)."""
    real = torch.rand(labels.shape, generator=generator, device=labels.device) >= prob
    offset = torch.randint(1, num_classes, labels.shape, generator=generator, device=labels.device)
    return torch.where(real, labels, (labels + offset) % num_classes), real


def _adam_step(optimizer: torch.optim.Optimizer, loss: Tensor, params: list[Tensor]) -> None:
    """One Adam step on ``params`` only (``autograd.grad`` leaves the frozen classifier's ``.grad`` alone)."""
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()


class RTSTrainingHook(Protocol):
    """An extra per-batch loss supplied by a higher layer (AID: :mod:`idls.defenses.aid`).

    After each decoder step, :func:`train_rts` calls the hook on the same batch (``x``:
    ``B x C x H x W`` as trained on, augmented where augmentation is on; ``y``: ``B`` true
    labels; ``step``: the decoder step, counted from 0 over all epochs, for per-step seeds)
    and takes one more Adam step on the decoder, with its own optimiser at learning rate
    :attr:`lr` and the same cosine decay, on the returned ``'loss'`` (a scalar): the
    alternating minimisation of paper 001 Appendix A2. Every returned term (scalars) is
    recorded in the history as ``extra_<name>``.
    """

    lr: float

    def __call__(self, masker: RTSMasker, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]: ...

    def describe(self) -> dict:
        """Everything that makes the hook's loss what it is (JSON): part of a resumable run's identity."""
        ...


def _starting_masker(classifier: Classifier, initial: RTSMasker | None, width: int | None, seed: int) -> RTSMasker:
    """A fresh masker (seeded initialisation, global RNG untouched) or a copy of ``initial`` to fine-tune."""
    if initial is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return RTSMasker(classifier, width=width)
    if width is not None and width != initial.config.width:
        raise UserError(f"width {width} differs from the initial masker's width {initial.config.width}; drop width")
    if model_family(initial.classifier.info.name) != model_family(classifier.info.name):
        raise UserError(f"the initial RTS masker was trained for {initial.classifier.info.name!r}, "
                        f"not {classifier.info.name!r}; start from a masker of this model")
    masker = RTSMasker(classifier, head=copy.deepcopy(initial.head))
    masker.history = [dict(record) for record in initial.history]
    return masker


def train_rts(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    selector_epochs: int | None = None,
    fake_label_prob: float = 0.3,
    augment: bool = False,
    width: int | None = None,
    objective: RTSObjective = RTSObjective(),
    initial: RTSMasker | None = None,
    hook: RTSTrainingHook | None = None,
    checkpoint: str | Path | None = None,
) -> RTSMasker:
    """Train an RTS masker for ``classifier`` on ``images`` (``B x 3 x H x W`` in [0, 1]) and ``labels`` (``B``).

    Args:
        epochs: decoder epochs (phase 2).
        selector_epochs: class-selector epochs (phase 1); default ``max(1, epochs // 4)``, or 0
            (the selector stays as it is) when fine-tuning ``initial``.
        fake_label_prob: share of decoder samples explaining a random wrong class.
        augment: random flips and shifts of each batch (for small training sets).
        width: decoder width (default :func:`~idls.interpreters.rts.default_width`).
        initial: a trained masker to fine-tune (a copy; ``initial`` itself is left alone); its
            history is continued.
        hook: an extra loss minimised in its own step after every decoder step
            (:class:`RTSTrainingHook`); ``None`` trains RTS alone.
        checkpoint: a ``.safetensors`` file the loop saves its whole state to after every epoch
            and resumes from (the same run: classifier weights, data, settings, initial masker and
            hook); removed once training completes. A resumed run ends with the same weights as an
            uninterrupted one (same device and thread count).

    Returns:
        the trained masker (eval mode); ``masker.history`` holds per-epoch mean losses.
    """
    images, labels = _check_training_data(classifier, images, labels)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError(f"RTS training needs epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    if selector_epochs is None:
        selector_epochs = 0 if initial is not None else max(1, epochs // 4)
    if selector_epochs < 0:
        raise UserError(f"selector_epochs must be >= 0, got {selector_epochs}")
    device = classifier.device
    masker = _starting_masker(classifier, initial, width, seed)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    saver = None
    if checkpoint is not None:
        settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "selector_epochs": selector_epochs,
                    "fake_label_prob": fake_label_prob, "augment": augment, "objective": asdict(objective)}
        saver = _RunCheckpoint(checkpoint, _run_key(masker, images, labels, settings, hook), masker, order_gen, noise_gen)
    done = saver.restore() if saver is not None else 0
    was_training = classifier.training
    classifier.eval()
    start = time.perf_counter()
    steps_per_epoch = math.ceil(len(images) / batch_size)
    try:
        selector_params = list(masker.head.selector.parameters())
        decoder_params = list(masker.head.decoder.parameters())
        phases = [("selector", selector_epochs, selector_params), ("decoder", epochs, decoder_params)]
        finished = 0  # epochs of earlier phases
        for phase, n_epochs, params in phases:
            first, finished = min(n_epochs, max(0, done - finished)), finished + n_epochs
            if first == n_epochs:
                continue
            optimizers = [torch.optim.Adam(params, lr=lr)]
            if hook is not None and phase == "decoder":
                optimizers.append(torch.optim.Adam(params, lr=hook.lr))
            schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n_epochs * steps_per_epoch)
                         for o in optimizers]
            if first and saver is not None:
                saver.restore_optimizers(optimizers, schedules)
            for epoch in range(first, n_epochs):
                sums: dict[str, float] = {}
                batches = torch.randperm(len(images), generator=order_gen).split(batch_size)
                for batch, index in enumerate(_progress(batches, progress, f"RTS {phase} {epoch + 1}/{n_epochs}")):
                    x = images[index].to(device)
                    y = labels[index].to(device)
                    if augment:
                        x = augment_batch(x, noise_gen)
                    with torch.no_grad():
                        levels = masker.pyramid(x)
                    if phase == "selector":
                        terms = {"total": selector_loss(masker.head, levels[-1], y)}
                    else:
                        cls, real = _fake_labels(y, classifier.num_classes, fake_label_prob, noise_gen)
                        mask = masker.masks_from_pyramid(levels, cls)
                        terms = objective_terms(classifier, x, mask, cls, objective, noise_gen, real)
                    _adam_step(optimizers[0], terms["total"], params)
                    if len(optimizers) > 1:  # the hook's alternating step on the same batch
                        assert hook is not None
                        hook_terms = hook(masker, x, y, epoch * steps_per_epoch + batch)
                        _adam_step(optimizers[1], hook_terms["loss"], params)
                        terms.update({f"extra_{k}": v for k, v in hook_terms.items()})
                    for schedule in schedules:
                        schedule.step()
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(index)
                record = {"phase": phase, "epoch": epoch + 1, **{k: v / len(images) for k, v in sums.items()}}
                record["seconds"] = round(time.perf_counter() - start, 3)
                masker.history.append(record)
                if saver is not None:
                    saver.save(finished - n_epochs + epoch + 1, optimizers, schedules)
    finally:
        classifier.train(was_training)
    if saver is not None:
        saver.checkpoint.remove()
    return masker.eval()


def _run_key(masker: RTSMasker, images: Tensor, labels: Tensor, settings: dict, hook: RTSTrainingHook | None) -> str:
    """Digest of everything that determines a training run (for its checkpoint)."""
    from idls.core import dataset_digest, json_digest, tensor_digest

    head = masker.head.state_dict()
    return json_digest({
        "classifier": classifier_fingerprint(masker.classifier),
        "data": dataset_digest(images, labels),
        "initial_head": tensor_digest(*(head[k] for k in sorted(head))),
        "initial_history": len(masker.history),
        "settings": settings,
        "hook": None if hook is None else {"lr": hook.lr, **hook.describe()},
    })


class _RunCheckpoint:
    """The whole state of a :func:`train_rts` run after an epoch: head, optimisers, schedules, generators, history."""

    kind = "rts-training-checkpoint"

    def __init__(self, path: str | Path, key: str, masker: RTSMasker, order_gen: torch.Generator,
                 noise_gen: torch.Generator) -> None:
        from idls.core.checkpoints import FitCheckpoint

        self.checkpoint = FitCheckpoint(path, key, kind=self.kind)
        self.masker, self.order_gen, self.noise_gen = masker, order_gen, noise_gen
        self.state = None

    def restore(self) -> int:
        """Load a saved state into the masker and generators; returns the epochs done (0: fresh start)."""
        self.state = self.checkpoint.load()
        if self.state is None:
            return 0
        tensors = self.state.tensors
        head = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        self.masker.head.load_state_dict(head)
        self.masker.history = [dict(r) for r in self.state.counters["history"]]
        self.order_gen.set_state(tensors["generator.order"])
        self.noise_gen.set_state(tensors["generator.noise"])
        return self.state.epochs_done

    def restore_optimizers(self, optimizers: list[torch.optim.Optimizer], schedules: list) -> None:
        """Restore the optimisers and schedules of the phase the saved state stopped in."""
        from idls.core.checkpoints import load_optimizer_tensors

        assert self.state is not None
        for i, (optimizer, schedule) in enumerate(zip(optimizers, schedules, strict=True)):
            load_optimizer_tensors(optimizer, self.state.tensors, prefix=f"optim{i}.")
            schedule.load_state_dict(self.state.counters["schedules"][i])
            for group, lr in zip(optimizer.param_groups, self.state.counters["lrs"][i], strict=True):
                group["lr"] = lr

    def save(self, epochs_done: int, optimizers: list[torch.optim.Optimizer], schedules: list) -> None:
        from idls.core.checkpoints import optimizer_tensors

        tensors = {f"head.{k}": v for k, v in self.masker.head.state_dict().items()}
        for i, optimizer in enumerate(optimizers):
            tensors.update(optimizer_tensors(optimizer, prefix=f"optim{i}."))
        tensors["generator.order"] = self.order_gen.get_state()
        tensors["generator.noise"] = self.noise_gen.get_state()
        counters = {"history": self.masker.history, "schedules": [s.state_dict() for s in schedules],
                    "lrs": [[g["lr"] for g in o.param_groups] for o in optimizers]}
        self.checkpoint.save(epochs_done, tensors, counters)


def _check_training_data(classifier: Classifier, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    from idls.errors import check_images

    check_images(images)
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise UserError(
            f"RTS training needs one label per image; got {images.shape[0]} images and labels {tuple(labels.shape)}"
        )
    if len(images) == 0:
        raise UserError("RTS training needs at least one image")
    if int(labels.min()) < 0 or int(labels.max()) >= classifier.num_classes:
        raise UserError(f"labels must lie in [0, {classifier.num_classes - 1}] for model {classifier.info.name!r}")
    if images.shape[-1] != classifier.input_size or images.shape[-2] != classifier.input_size:
        raise UserError(
            f"model {classifier.info.name!r} takes {classifier.input_size} px images, got "
            f"{images.shape[-2]}x{images.shape[-1]}; load the data with input_size={classifier.input_size}"
        )
    return images, labels


def _progress(batches, enabled: bool, description: str):
    if not enabled:
        return batches
    from idls.progress import progress_bar

    return progress_bar(batches, desc=description, leave=False, file=sys.stderr)


# ----------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------
def classifier_fingerprint(classifier: Classifier) -> str:
    """SHA-256 (16 hex digits) of the classifier's floating-point weights and buffers."""
    digest = hashlib.sha256()
    for key, value in sorted(classifier.net.state_dict().items()):
        if value.is_floating_point():
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a ``.safetensors`` checkpoint."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_rts(masker: RTSMasker, path: str | Path, *, extra: dict | None = None) -> Path:
    """Save ``masker``'s trainable head to ``path`` (``.safetensors``) plus a JSON sidecar.

    ``extra`` (JSON-serialisable) is stored in the sidecar under ``"extra"``. Both
    files are written atomically; a save interrupted between the two leaves a
    tensor file that fails the sidecar's SHA-256 check. Returns the tensor file's path.
    """
    from safetensors.torch import save

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise UserError(f"RTS checkpoints are .safetensors files; got {str(path)!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in masker.head.state_dict().items()}
    blob = save(tensors)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_family(masker.classifier.info.name),
        "classifier_fingerprint": classifier_fingerprint(masker.classifier),
        "input_size": masker.classifier.input_size,
        "config": masker.config.to_json(),
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        "history": masker.history,
        "extra": extra,
    }
    _atomic_write(path, blob)
    _atomic_write(sidecar_path(path), json.dumps(meta, indent=2).encode())
    return path


def read_rts_metadata(path: str | Path) -> dict:
    """The sidecar of an RTS checkpoint; one-line :class:`UserError` when missing or unreadable."""
    path = Path(path).expanduser()
    hint = "train one with `idls train-rts --model M --data D`"
    if not path.is_file():
        raise UserError(f"RTS checkpoint {str(path)!r} does not exist; {hint}")
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise UserError(f"RTS checkpoint {str(path)!r} has no sidecar {meta_path.name}; re-save it with save_rts or {hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read RTS sidecar {str(meta_path)!r} ({type(exc).__name__}); {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{str(meta_path)!r} is not an idls RTS sidecar; {hint}")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise UserError(
            f"RTS checkpoint {str(path)!r} has format version {meta.get('version')}, "
            f"expected {CHECKPOINT_VERSION}; {hint}"
        )
    return meta


def load_rts(classifier: Classifier, path: str | Path) -> RTSMasker:
    """Load a masker saved by :func:`save_rts` for ``classifier``.

    Raises:
        UserError: missing file or sidecar, a checkpoint trained for another model or
            other weights, or a corrupt tensor file.
    """
    from safetensors.torch import load

    path = Path(path).expanduser()
    meta = read_rts_metadata(path)
    name = model_family(classifier.info.name)
    if meta.get("model") != name:
        raise UserError(
            f"RTS checkpoint {str(path)!r} was trained for model {meta.get('model')!r}, not {name!r}; "
            f"train one with `idls train-rts --model {name} --data D`"
        )
    classifier.feature_pyramid_check()
    if meta.get("classifier_fingerprint") != classifier_fingerprint(classifier):
        raise UserError(
            f"RTS checkpoint {str(path)!r} was trained for other weights of {name!r}; "
            f"load the weights it was trained with or retrain with `idls train-rts --model {name} --data D`"
        )
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise UserError(f"RTS checkpoint {str(path)!r} does not match its sidecar (corrupt or replaced); retrain or re-save it")
    try:
        head = RTSHead(RTSConfig.from_json(meta["config"]))
        head.load_state_dict(load(blob))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"RTS checkpoint {str(path)!r} is unreadable ({type(exc).__name__}); retrain it") from None
    masker = RTSMasker(classifier, head=head.to(device=classifier.device))
    masker.history = list(meta.get("history", []))
    return masker.eval()


# ----------------------------------------------------------------------------------
# Embedded system: train once, cache
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddedRTSSettings:
    """How the embedded CNN's masker is trained (about 13 CPU-seconds: well under a minute on 2 cores).

    The images are the first ``train_images`` of the synthetic training split (the
    classifier's own training images).
    """

    train_images: int = 768
    epochs: int = 4
    selector_epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


EMBEDDED_RTS = EmbeddedRTSSettings()


def embedded_rts_path() -> Path:
    """Where the embedded CNN's trained masker is cached."""
    from idls.paths import cache_dir

    return cache_dir() / "embedded" / "rts.safetensors"


def _embedded_recipe(settings: EmbeddedRTSSettings) -> dict:
    """What the cached masker depends on besides the classifier's weights."""
    from idls.data.synthetic import GENERATOR_VERSION, TRAIN_SEED

    return {
        **asdict(settings),
        "train_seed": TRAIN_SEED,
        "generator_version": GENERATOR_VERSION,
        "objective": asdict(RTSObjective()),
    }


def packaged_embedded_rts_path() -> Path:
    """Where the embedded CNN's masker shipped with idls lies (:mod:`idls.pretrained`)."""
    from idls.pretrained import EMBEDDED_RTS_FILE, packaged_path

    return packaged_path(EMBEDDED_RTS_FILE)


def embedded_rts_masker(classifier: Classifier, *, progress: bool = False, packaged: bool = True) -> RTSMasker:
    """The trained RTS masker of the embedded CNN: shipped, else cached, else trained once and cached.

    A masker made for other classifier weights or another training recipe is not loaded but retrained;
    ``packaged=False`` skips the shipped one (``python -m idls.pretrained.rebuild`` trains afresh).
    """
    if not classifier.info.embedded:
        raise UserError(f"the cached RTS masker is for the embedded model, not {classifier.info.name!r}; "
                        "use idls train-rts")
    recipe = _embedded_recipe(EMBEDDED_RTS)
    for path in ([packaged_embedded_rts_path()] if packaged else []) + [embedded_rts_path()]:
        try:
            if read_rts_metadata(path).get("extra") == recipe:
                return load_rts(classifier, path)  # refuses a masker made for other weights
        except UserError:
            pass  # missing, unreadable, made for other weights or damaged: trained anew below
    if progress:
        print("idls: training the embedded RTS masker (once, then cached)", file=sys.stderr)
    masker = train_embedded_rts(classifier, progress=progress)
    save_rts(masker, embedded_rts_path(), extra=recipe)
    return masker


def train_embedded_rts(
    classifier: Classifier, settings: EmbeddedRTSSettings = EMBEDDED_RTS, *, progress: bool = False
) -> RTSMasker:
    """Train the embedded CNN's masker on the embedded synthetic training split."""
    from idls.data.synthetic import TRAIN_SEED, make_synthetic
    from idls.threads import torch_threads

    data = make_synthetic(settings.train_images, seed=TRAIN_SEED)
    with torch_threads(1):  # bit-reproducible cache entry; see idls.threads
        return train_rts(
            classifier,
            data.images,
            data.labels,
            epochs=settings.epochs,
            selector_epochs=settings.selector_epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=settings.seed,
            progress=progress,
        )


__all__ = [
    "EMBEDDED_RTS",
    "RTSObjective",
    "classifier_fingerprint",
    "embedded_rts_masker",
    "load_rts",
    "objective_terms",
    "save_rts",
    "train_rts",
]
