"""Universal perturbations: attacks fitted once over a data set, then applied to any image.

The fit/apply seam. A :class:`UniversalAttack` is *fitted* on labelled images
(:meth:`UniversalAttack.fit`) and returns a :class:`UniversalPerturbation`, one
``1 x C x H x W`` pattern ``delta`` inside an L_inf or L2 budget, with metadata
recording the attack, its options, the model (name, weights digest, defence) and
a digest of the fit data. Applied to a batch, ``x -> clamp(x + delta, 0, 1)``.
:meth:`UniversalAttack.run` keeps the per-batch contract of every attack, so
orchestrators evaluate a fitted perturbation like any other attack::

    from idls.attacks import create_attack
    from idls.data import load_images

    fit_data = load_images("../shared/data/cifar10/train", input_size=32, n=2000)
    attack = create_attack("sgd-uap", epsilon=10 / 255)
    perturbation = attack.fit(classifier, fit_data, progress=True)
    perturbation.save("uap.safetensors")                     # + uap.safetensors.json

    reused = create_attack("sgd-uap", perturbation="uap.safetensors")
    result = reused.run(classifier, x_test, y_test)          # AttackResult; x_test held out

Evaluating on images the perturbation was fitted on is refused
(:meth:`UniversalPerturbation.check_held_out`): the comparison uses per-image content
fingerprints, because disjoint splits reuse file names.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from idls.attacks.base import Attack, Perturbation
from idls.attacks.fit_checkpoint import FitCheckpoint
from idls.attacks.options import AttackOptions, option
from idls.attacks.pgd import NORMS, Norm
from idls.attacks.targets import TargetMode
from idls.attacks.threats import LpBall
from idls.core import (
    dataset_digest,
    image_fingerprints,
    json_digest,
    load_artifact,
    save_artifact,
    sha256_file,
    short_hex,
)
from idls.errors import UserError, check_images
from idls.system import Classifier

if TYPE_CHECKING:
    from idls.data.datasets import LabeledImages

#: ``kind`` of a universal perturbation artifact
ARTIFACT_KIND = "universal-perturbation"
#: artifact layout version
FORMAT_VERSION = 1
#: relative slack when checking a loaded perturbation against its budget (float rounding)
_BUDGET_SLACK = 1e-5


# ---------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------
def perturbation_norm(delta: Tensor, norm: Norm) -> float:
    """The L_inf or L2 norm of a whole perturbation ``1 x C x H x W``."""
    flat = delta.detach().flatten().double()
    return float(flat.abs().max()) if norm == "linf" and flat.numel() else float(flat.norm())


def project_delta(delta: Tensor, epsilon: float, norm: Norm) -> Tensor:
    """Project a perturbation ``1 x C x H x W`` onto the ``norm`` ball of radius ``epsilon`` around 0."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    length = float(delta.flatten().norm())
    return delta * min(1.0, epsilon / length) if length > 0 else delta


# ---------------------------------------------------------------------------------
# Model identity
# ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_digest(classifier: Classifier) -> str | None:
    """SHA-256 of the classifier's weights file when ``info.weights`` names an existing file, else ``None``."""
    weights = classifier.info.weights
    if not weights:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        return None
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def model_record(classifier: Classifier) -> dict[str, Any]:
    """What the metadata records about the model: name, weights (as given), weights digest, defence."""
    return {
        "model": classifier.info.name,
        "weights": classifier.info.weights,
        "weights_sha256": weights_digest(classifier),
        "defense": classifier.info.extra.get("defense"),
    }


# ---------------------------------------------------------------------------------
# The fitted state
# ---------------------------------------------------------------------------------
@dataclass(repr=False)
class UniversalPerturbation:
    """A fitted universal perturbation.

    Attributes:
        delta: ``1 x C x H x W`` float pattern added to every image.
        norm: ``'linf'`` or ``'l2'``, the budget's norm.
        epsilon: the budget's radius on the [0, 1] pixel scale.
        metadata: JSON-serialisable record: ``attack``, ``options``, ``model``, ``weights``,
            ``weights_sha256``, ``defense``, ``fit_digest`` (of the fit images + labels),
            ``fit_size``, ``image_size`` ``[C, H, W]``, and whatever the attack adds.
        fit_fingerprints: ``N`` int64 per-image fingerprints of the fit images
            (:func:`~idls.core.image_fingerprints`), for the held-out check.
        tensors: further named tensors of the fitted state (a generator's weights, its noise).
    """

    delta: Tensor
    norm: Norm
    epsilon: float
    metadata: dict[str, Any] = field(default_factory=dict)
    fit_fingerprints: Tensor | None = None
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if not isinstance(self.delta, Tensor) or self.delta.dim() != 4 or self.delta.shape[0] != 1:
            shape = tuple(self.delta.shape) if isinstance(self.delta, Tensor) else type(self.delta).__name__
            raise UserError(f"a universal perturbation must have shape 1 x C x H x W, got {shape}")
        if not self.delta.is_floating_point():
            raise UserError(f"a universal perturbation must be floating point, got {self.delta.dtype}")
        self.epsilon = float(self.epsilon)
        if not math.isfinite(self.epsilon) or self.epsilon < 0:
            raise UserError(f"epsilon must be a finite non-negative number, got {self.epsilon}")
        size = perturbation_norm(self.delta, self.norm)
        if not size <= self.epsilon * (1 + _BUDGET_SLACK) + 1e-12:
            raise UserError(f"the perturbation's {self.norm} norm {size:.6g} exceeds its budget {self.epsilon:.6g}; "
                            "re-fit it or pass the budget it was fitted with")

    def __repr__(self) -> str:
        c, h, w = self.image_size
        return (f"UniversalPerturbation({self.norm} eps={self.epsilon:.4g}, {c}x{h}x{w}, "
                f"attack={self.metadata.get('attack')!r}, model={self.metadata.get('model')!r}, "
                f"fit={short_hex(self.metadata.get('fit_digest'))})")

    # -- applying -------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images it applies to."""
        return tuple(int(s) for s in self.delta.shape[1:])  # type: ignore[return-value]

    def check_images(self, x: Tensor) -> None:
        """Raise :class:`UserError` unless ``x`` is ``B x C x H x W`` with this perturbation's ``C x H x W``."""
        check_images(x)
        if tuple(x.shape[1:]) != self.image_size:
            raise UserError(
                f"images are {tuple(x.shape[1:])} (C x H x W) but the universal perturbation was fitted on "
                f"{self.image_size}; load the images at that size or fit a perturbation for this size"
            )

    def apply(self, x: Tensor) -> Tensor:
        """``clamp(x + delta, 0, 1)`` for images ``x`` ``B x C x H x W`` in [0, 1] (same shape back)."""
        self.check_images(x)
        return (x + self.delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)

    def check_classifier(self, classifier: Classifier) -> None:
        """Check the classifier against the recorded model.

        A different input size is an error; a different model name, weights digest or
        defence is a warning (transfer to another model is a legitimate experiment).
        """
        _, h, w = self.image_size
        if (h, w) != (classifier.input_size, classifier.input_size):
            raise UserError(
                f"the universal perturbation is {h} x {w} but model {classifier.info.name!r} expects "
                f"{classifier.input_size} x {classifier.input_size}; fit a perturbation for this model"
            )
        recorded = {key: self.metadata.get(key) for key in ("model", "weights_sha256", "defense")}
        current = model_record(classifier)
        if recorded["model"] is not None and recorded["model"] != current["model"]:
            warnings.warn(f"the universal perturbation was fitted on model {recorded['model']!r} and is applied to "
                          f"{current['model']!r} (a transfer setting)", UserWarning, stacklevel=3)
        elif recorded["weights_sha256"] and current["weights_sha256"] and recorded["weights_sha256"] != current["weights_sha256"]:
            warnings.warn(f"the universal perturbation was fitted on weights {short_hex(recorded['weights_sha256'])} "
                          f"and is applied to weights {short_hex(current['weights_sha256'])}", UserWarning, stacklevel=3)
        if recorded["defense"] != current["defense"] and "defense" in self.metadata:
            warnings.warn(f"the universal perturbation was fitted against defence {recorded['defense']!r} and is "
                          f"applied against {current['defense']!r}", UserWarning, stacklevel=3)

    def check_held_out(self, images: Tensor, labels: Tensor | None = None) -> None:
        """Raise :class:`UserError` if any of ``images`` (``B x C x H x W``) was in the fit data.

        Compares per-image content fingerprints with those recorded at fit time. A
        perturbation saved without them falls back to the whole-set ``fit_digest`` of
        the metadata (needs ``labels`` ``B``; catches only an evaluation on exactly the fit set).
        """
        if images.shape[0] == 0:
            return
        if self.fit_fingerprints is not None:
            seen = torch.isin(image_fingerprints(images), self.fit_fingerprints.cpu())
        elif labels is not None and self.metadata.get("fit_digest") == dataset_digest(images, labels):
            seen = torch.ones(images.shape[0], dtype=torch.bool)
        else:
            return
        if bool(seen.any()):
            rows = seen.nonzero().flatten().tolist()
            raise UserError(
                f"evaluation images overlap the fit data of the universal perturbation ({len(rows)} of "
                f"{images.shape[0]}, e.g. batch position {rows[0]}); evaluate on held-out images"
            )

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors: ``delta``, ``fit_fingerprints``; metadata in the header) and ``PATH.json``."""
        clash = {"delta", "fit_fingerprints"} & set(self.tensors)
        if clash:
            raise ValueError(f"extra tensor names {sorted(clash)} are reserved")
        tensors = {**self.tensors, "delta": self.delta}
        if self.fit_fingerprints is not None:
            tensors["fit_fingerprints"] = self.fit_fingerprints
        metadata = {**self.metadata, "kind": ARTIFACT_KIND, "format": FORMAT_VERSION,
                    "norm": self.norm, "epsilon": self.epsilon, "image_size": list(self.image_size)}
        return save_artifact(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> UniversalPerturbation:
        """Read a perturbation written by :meth:`save` (safetensors only; nothing is unpickled)."""
        artifact = load_artifact(path, kind=ARTIFACT_KIND)
        metadata = dict(artifact.metadata)
        if metadata.get("format") != FORMAT_VERSION:
            raise UserError(f"{str(path)!r} has universal-perturbation format {metadata.get('format')!r}, this idls "
                            f"reads format {FORMAT_VERSION}; re-fit the perturbation")
        if "delta" not in artifact.tensors or "norm" not in metadata or "epsilon" not in metadata:
            raise UserError(f"{str(path)!r} lacks the delta tensor or its budget; re-fit the perturbation")
        extra = {k: v for k, v in artifact.tensors.items() if k not in ("delta", "fit_fingerprints")}
        perturbation = cls(delta=artifact.tensors["delta"], norm=metadata["norm"], epsilon=metadata["epsilon"],
                           metadata=metadata, fit_fingerprints=artifact.tensors.get("fit_fingerprints"),
                           tensors=extra)
        if list(perturbation.image_size) != list(metadata.get("image_size", perturbation.image_size)):
            raise UserError(f"{str(path)!r}: the delta's shape disagrees with its recorded image size; re-fit it")
        return perturbation


# ---------------------------------------------------------------------------------
# The attack base class
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class UniversalOptions(AttackOptions):
    """Options of every universal attack: a fitted perturbation to reuse, and the untargeted default."""

    untyped: ClassVar[tuple[str, ...]] = ("perturbation",)

    mode: TargetMode = option(TargetMode.UNTARGETED, "'untargeted' (the mode universal attacks support)")
    perturbation: Any = option(None, "a fitted UniversalPerturbation or the path of a saved one, applied "
                                     "without fitting (its own budget is used)")

    def check(self) -> None:
        if isinstance(self.perturbation, (str, Path)):
            self._set("perturbation", UniversalPerturbation.load(self.perturbation))
        if self.perturbation is not None and not isinstance(self.perturbation, UniversalPerturbation):
            raise UserError(f"perturbation must be a UniversalPerturbation or a file path, "
                            f"got {type(self.perturbation).__name__}")


class UniversalAttack(Attack):
    """Base class of attacks fitted once on a data set: ``fit(...)``, then ``run(...)`` per batch.

    Subclasses implement :meth:`_fit` and declare their options (a subclass of
    :class:`UniversalOptions`, usually :class:`BudgetOptions`); this class resolves
    the budget, records the metadata, applies the fitted perturbation in
    :meth:`_perturb` and refuses images of the fit data. A fit given a
    ``checkpoint`` path resumes from it (:mod:`idls.attacks.fit_checkpoint`).
    """

    name: ClassVar[str] = "universal"
    Options = UniversalOptions
    needs_fit = True
    #: target modes the attack supports (targeted: one ``target_class`` for every image)
    modes: ClassVar[tuple[TargetMode, ...]] = (TargetMode.UNTARGETED,)
    #: the budget of a fit; subclasses' options resolve both (a loaded perturbation carries its own;
    #: ``epsilon`` ``None`` until the fit sees the image size)
    norm: Norm = "linf"
    epsilon: float | None = None
    target_class: int | None = None
    perturbation: UniversalPerturbation | None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.mode not in self.modes:
            raise UserError(f"{self.name} supports mode {', '.join(m.value for m in self.modes)}, "
                            f"not {self.mode.value!r}; use mode='{self.modes[0].value}'")
        fitted_by = None if self.perturbation is None else self.perturbation.metadata.get("attack")
        if fitted_by is not None and fitted_by != self.name:
            raise UserError(f"the perturbation was fitted by {fitted_by!r}, not {self.name!r}; "
                            f"build create_attack({fitted_by!r}, perturbation=...) instead")

    def variant(self) -> str:
        """The norm, and the target class of a targeted perturbation (e.g. ``'linf'``, ``'l2-t3'``)."""
        return self.norm + ("" if self.target_class is None else f"-t{self.target_class}")

    def threat(self) -> LpBall:
        if self.epsilon is None:
            raise UserError(f"attack {self.name!r} has no budget yet; fit it or pass epsilon")
        return LpBall(self.norm, self.epsilon)

    @property
    def fitted(self) -> bool:
        """Whether a perturbation is there to apply (fitted or loaded)."""
        return self.perturbation is not None

    def save_fitted(self, path: str | Path) -> Path:
        """Save the fitted perturbation (safetensors + JSON sidecar) for reuse with ``perturbation=PATH``."""
        if self.perturbation is None:
            raise UserError(f"attack {self.name!r} has nothing to save yet; fit it first")
        return self.perturbation.save(path)

    def recorded_options(self) -> dict[str, Any]:
        """The attack's options as recorded in the metadata (JSON-serialisable; without the perturbation)."""
        return {k: v for k, v in self.options.as_dict().items() if k != "perturbation"}

    def resolve_targets(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None,
                        indices: Tensor | None = None) -> Tensor | None:
        """Untargeted: ``None``. Targeted: ``target_class`` for every image (given targets must agree)."""
        if self.target_class is None:
            return super().resolve_targets(classifier, x, labels, targets, indices)
        if self.target_class >= classifier.num_classes:
            raise UserError(f"target_class {self.target_class} is not a class of model {classifier.info.name!r} "
                            f"(0..{classifier.num_classes - 1})")
        wanted = torch.full_like(labels, self.target_class)
        if targets is not None and not bool(torch.equal(targets.to(wanted), wanted)):
            raise UserError(f"a universal targeted attack sends every image to target_class {self.target_class}; "
                            "drop the per-image targets")
        return wanted

    # -- fitting ----------------------------------------------------------------------
    def fit(self, classifier: Classifier, data: LabeledImages, *, progress: bool = False,
            checkpoint: str | Path | None = None) -> UniversalPerturbation:
        """Fit the perturbation on ``data`` against ``classifier``; it is kept for :meth:`run` and returned.

        Args:
            classifier: the model, in eval mode.
            data: :class:`~idls.data.LabeledImages`, images ``N x C x H x W`` in [0, 1], labels ``N``.
            progress: show a progress bar (also on when the attack was built with ``progress=True``).
            checkpoint: a ``.safetensors`` path the fit saves its state to after each epoch and
                resumes from when it holds the state of this same fit; removed when the fit completes.
        """
        images, labels = data.images, data.labels
        check_images(images, name="fit images")
        if images.shape[0] == 0:
            raise UserError("the fit data is empty; pass at least one labelled image")
        if classifier.training:
            raise UserError("the classifier is in training mode; call classifier.eval() before fitting")
        if tuple(images.shape[-2:]) != (classifier.input_size, classifier.input_size):
            raise UserError(
                f"fit images are {tuple(images.shape[-2:])} but model {classifier.info.name!r} expects "
                f"{classifier.input_size} x {classifier.input_size}; load them with input_size={classifier.input_size}"
            )
        images = classifier.prepare(images)
        classifier.check_logits_of(images, what="fit image")  # a model that outputs NaN fails here, not with a NaN perturbation
        labels = self._check_classes(labels, images, classifier.num_classes, "fit labels")
        if self.target_class is not None and self.target_class >= classifier.num_classes:
            raise UserError(f"target_class {self.target_class} is not a class of model {classifier.info.name!r} "
                            f"(0..{classifier.num_classes - 1})")
        if self.epsilon is None:
            self.epsilon = default_epsilon(self.norm, tuple(images.shape[1:]))
        fit_digest = dataset_digest(images, labels)
        record = model_record(classifier)
        key = json_digest({"attack": self.name, "options": self.recorded_options(), "epsilon": self.epsilon,
                                     "model": record, "fit": fit_digest})
        saver = FitCheckpoint(checkpoint, key)
        delta, extra = self._fit(classifier, images, labels, progress=progress or self.progress, checkpoint=saver)
        metadata = {
            "attack": self.name,
            "options": {**self.recorded_options(), "epsilon": self.epsilon},
            **record,
            "target_class": self.target_class,
            "fit_digest": fit_digest,
            "fit_size": int(images.shape[0]),
            "image_size": [int(s) for s in images.shape[1:]],
            **extra,
        }
        delta = project_delta(delta.detach().to(device="cpu", dtype=torch.float32), self.epsilon, self.norm)
        self.perturbation = UniversalPerturbation(
            delta=delta.contiguous(), norm=self.norm, epsilon=self.epsilon, metadata=metadata,
            fit_fingerprints=image_fingerprints(images), tensors=dict(self._fitted_tensors()),
        )
        saver.remove()
        return self.perturbation

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool,
             checkpoint: FitCheckpoint) -> tuple[Tensor, dict[str, Any]]:
        """The optimisation: images ``N x C x H x W``, labels ``N`` -> (``delta`` ``1 x C x H x W``, extra metadata).

        ``self.epsilon`` is resolved; ``checkpoint`` saves and loads the state between epochs.
        """
        raise NotImplementedError

    def _fitted_tensors(self) -> dict[str, Tensor]:
        """Further tensors of the fitted state to save with the perturbation (after :meth:`_fit`); default none."""
        return {}

    # -- applying -----------------------------------------------------------------------
    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        """Apply the fitted perturbation to ``x`` ``B x C x H x W`` (no optimisation)."""
        perturbation = self.perturbation
        if perturbation is None:
            raise UserError(f"attack {self.name!r} has no fitted perturbation; call attack.fit(classifier, data) "
                            "first or build it with perturbation=PATH")
        perturbation.check_classifier(classifier)
        perturbation.check_held_out(x, labels)
        x_adv = perturbation.apply(x)
        with torch.no_grad():
            pred = classifier(x_adv).argmax(1)
        success = pred == targets if targets is not None else pred != labels
        first = torch.where(success, torch.zeros_like(pred), torch.full_like(pred, -1))
        return Perturbation(x_adv=x_adv, iterations_to_success=first, iterations_run=0, success=success)


# ---------------------------------------------------------------------------------
# Budgets shared by the fitted attacks
# ---------------------------------------------------------------------------------
#: the paper's budgets (004) on the 0-255 scale at 224 x 224 x 3: L_inf 10, L2 2000
PAPER_LINF, PAPER_L2, PAPER_VALUES = 10.0, 2000.0, 224 * 224 * 3


def default_epsilon(norm: Norm, image_size: tuple[int, ...]) -> float:
    """The default budget on the [0, 1] scale for images ``C x H x W``.

    L_inf: 10/255 at any size. L2: the paper's 2000 (0-255 scale, 224 x 224 x 3) kept at the
    same energy per value, ``(2000 / 255) * sqrt(d / (224 * 224 * 3))`` for ``d = C * H * W``
    values: 7.84 at 224 px, 1.12 at 32 x 32 x 3.
    """
    if norm == "linf":
        return PAPER_LINF / 255
    values = math.prod(int(s) for s in image_size)
    return PAPER_L2 / 255 * math.sqrt(values / PAPER_VALUES)


@dataclass(frozen=True, eq=False, kw_only=True)
class BudgetOptions(UniversalOptions):
    """Options of universal attacks that fit a perturbation inside an L_inf or L2 budget.

    ``epsilon`` ``None`` resolves at fit time (:func:`default_epsilon`, which depends on the
    image size for L2); a loaded perturbation brings its own norm and budget.
    """

    norm: str | None = option(None, "'linf' (default) or 'l2' (a loaded perturbation's own)")
    epsilon: float | None = option(None, "budget radius on the [0, 1] scale (default: 10/255 for linf; for l2 the "
                                         "paper's 2000/255 at 224x224x3 scaled to the image size, 1.12 at 32x32x3)")
    target_class: int | None = option(None, "targeted universal attack: the one class every image is sent to "
                                            "(sets mode 'targeted')")

    def check(self) -> None:
        super().check()
        norm, epsilon = self.norm, self.epsilon
        if norm is not None and norm not in NORMS:
            raise UserError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
            raise UserError(f"epsilon must be a positive number, got {epsilon}")
        if self.target_class is not None:
            if isinstance(self.target_class, bool) or not isinstance(self.target_class, int) or self.target_class < 0:
                raise UserError(f"target_class must be a class index >= 0, got {self.target_class!r}")
            self._set("mode", TargetMode.TARGETED)
        elif self.mode is TargetMode.TARGETED and self.perturbation is None:
            raise UserError("a targeted universal attack sends every image to one class; pass target_class=C")
        loaded = self.perturbation
        if loaded is not None:
            if epsilon is not None and not math.isclose(epsilon, loaded.epsilon, rel_tol=1e-6):
                raise UserError(f"epsilon={epsilon} disagrees with the loaded perturbation's {loaded.epsilon}; "
                                "drop epsilon")
            if norm is not None and norm != loaded.norm:
                raise UserError(f"norm={norm!r} disagrees with the loaded perturbation's {loaded.norm!r}; drop norm")
            norm, epsilon = loaded.norm, loaded.epsilon
            recorded = loaded.metadata.get("target_class")
            if recorded is not None and self.target_class is None:
                self._set("target_class", int(recorded))
                self._set("mode", TargetMode.TARGETED)
        self._set("norm", "linf" if norm is None else norm)
        self._set("epsilon", None if epsilon is None else float(epsilon))


def epoch_order(count: int, epoch: int, seed: int) -> Tensor:
    """The shuffled order ``count`` of the fit images in ``epoch`` (seeded per epoch, so a resumed fit repeats it)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def predictions(classifier: Classifier, images: Tensor, delta: Tensor | None, chunk: int = 256) -> Tensor:
    """Predicted classes ``N`` of ``clamp(images + delta, 0, 1)`` (``images`` ``N x C x H x W`` on any device).

    Chunks are moved to the classifier's device one at a time; ``delta`` ``None``: the clean images.
    """
    device = classifier.device
    out = []
    for x in images.split(chunk):
        x = x.to(device)
        out.append(classifier(x if delta is None else (x + delta).clamp(0.0, 1.0)).argmax(1))
    return torch.cat(out)


__all__ = [
    "ARTIFACT_KIND",
    "BudgetOptions",
    "UniversalAttack",
    "UniversalOptions",
    "UniversalPerturbation",
    "model_record",
    "perturbation_norm",
    "project_delta",
    "default_epsilon",
    "epoch_order",
    "predictions",
    "weights_digest",
]
