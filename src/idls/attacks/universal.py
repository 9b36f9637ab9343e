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
    attack = create_attack("mean-grad-uap", epsilon=10 / 255)
    perturbation = attack.fit(classifier, fit_data, progress=True)
    perturbation.save("uap.safetensors")                     # + uap.safetensors.json

    reused = create_attack("mean-grad-uap", perturbation="uap.safetensors")
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
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from idls.attacks.base import ATTACKS, Attack, Perturbation, flush_denormal
from idls.attacks.options import AttackOptions, option
from idls.attacks.pgd import NORMS, Norm, step_direction
from idls.attacks.threats import LpBall
from idls.attacks.targets import TargetMode
from idls.core import (
    dataset_digest,
    image_fingerprints,
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
    """

    delta: Tensor
    norm: Norm
    epsilon: float
    metadata: dict[str, Any] = field(default_factory=dict)
    fit_fingerprints: Tensor | None = None

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
        tensors = {"delta": self.delta}
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
        perturbation = cls(delta=artifact.tensors["delta"], norm=metadata["norm"], epsilon=metadata["epsilon"],
                           metadata=metadata, fit_fingerprints=artifact.tensors.get("fit_fingerprints"))
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
    :class:`UniversalOptions`); this class records the metadata, applies the
    fitted perturbation in :meth:`_perturb` and refuses images of the fit data.
    """

    name: ClassVar[str] = "universal"
    Options = UniversalOptions
    needs_fit = True
    #: target modes the attack supports
    modes: ClassVar[tuple[TargetMode, ...]] = (TargetMode.UNTARGETED,)
    #: the budget of a fit; subclasses' options resolve both (a loaded perturbation carries its own)
    norm: Norm = "linf"
    epsilon: float = 0.0
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

    def threat(self) -> LpBall:
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

    # -- fitting ----------------------------------------------------------------------
    def fit(self, classifier: Classifier, data: LabeledImages, *, progress: bool = False) -> UniversalPerturbation:
        """Fit the perturbation on ``data`` against ``classifier``; it is kept for :meth:`run` and returned.

        Args:
            classifier: the model, in eval mode.
            data: :class:`~idls.data.LabeledImages`, images ``N x C x H x W`` in [0, 1], labels ``N``.
            progress: show a progress bar (also on when the attack was built with ``progress=True``).
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
        labels = self._check_classes(labels, images, classifier.num_classes, "fit labels")
        delta, extra = self._fit(classifier, images, labels, progress=progress or self.progress)
        metadata = {
            "attack": self.name,
            "options": self.recorded_options(),
            **model_record(classifier),
            "fit_digest": dataset_digest(images, labels),
            "fit_size": int(images.shape[0]),
            "image_size": [int(s) for s in images.shape[1:]],
            **extra,
        }
        self.perturbation = UniversalPerturbation(
            delta=delta.detach().to(device="cpu", dtype=torch.float32).contiguous(),
            norm=self.norm, epsilon=self.epsilon, metadata=metadata, fit_fingerprints=image_fingerprints(images),
        )
        return self.perturbation

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool) -> tuple[Tensor, dict[str, Any]]:
        """The optimisation: images ``N x C x H x W``, labels ``N`` -> (``delta`` ``1 x C x H x W``, extra metadata)."""
        raise NotImplementedError

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
# Mean-gradient UAP
# ---------------------------------------------------------------------------------
#: default budgets on the [0, 1] pixel scale (L2: for 32 x 32 images; scale with the side for larger ones)
DEFAULT_EPSILON: dict[str, float] = {"linf": 10 / 255, "l2": 2.0}
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True, eq=False, kw_only=True)
class MeanGradUAPOptions(UniversalOptions):
    """Options of :class:`MeanGradUAP`."""

    epsilon: float | None = option(None, "budget radius on the [0, 1] scale (default 10/255 for linf, 2.0 for l2; "
                                         "a loaded perturbation's own)")
    norm: str | None = option(None, "'linf' (default) or 'l2' (a loaded perturbation's own)")
    epochs: int = option(DEFAULT_EPOCHS, "passes over the fit data")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "images per gradient step")
    step_size: float | None = option(None, "step length (default epsilon / 8)")

    def check(self) -> None:
        super().check()
        norm, epsilon = self.norm, self.epsilon
        if norm is not None and norm not in NORMS:
            raise UserError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        for name, value in (("epsilon", epsilon), ("step_size", self.step_size)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        loaded = self.perturbation
        if loaded is not None:
            if epsilon is not None and not math.isclose(epsilon, loaded.epsilon, rel_tol=1e-6):
                raise UserError(f"epsilon={epsilon} disagrees with the loaded perturbation's {loaded.epsilon}; "
                                "drop epsilon")
            if norm is not None and norm != loaded.norm:
                raise UserError(f"norm={norm!r} disagrees with the loaded perturbation's {loaded.norm!r}; drop norm")
            norm, epsilon = loaded.norm, loaded.epsilon
        norm = "linf" if norm is None else norm
        self._set("norm", norm)
        self._set("epsilon", float(DEFAULT_EPSILON[norm] if epsilon is None else epsilon))
        self._set("step_size", float(self.epsilon / 8 if self.step_size is None else self.step_size))


@ATTACKS.register("mean-grad-uap")
class MeanGradUAP(UniversalAttack):
    """Untargeted universal perturbation by projected ascent on the mean cross-entropy.

    Per minibatch ``x`` ``b x C x H x W`` with true labels ``y`` of the (seeded,
    reshuffled each epoch) fit data::

        g = grad_delta mean_i CE(f(clamp(x_i + delta, 0, 1)), y_i)        # 1 x C x H x W
        delta <- Proj_eps(delta + step_size * direction(g))

    with ``direction`` the sign (L_inf) or ``g / ||g||_2`` (L2), starting from
    ``delta = 0``. The progress bar shows the running fooling ratio of the epoch
    (share of images whose prediction on ``x + delta`` differs from that on ``x``);
    the metadata records the final fooling ratio on the fit data
    (``fit_fooling_ratio``).

    Options: :class:`MeanGradUAPOptions` (``idls options mean-grad-uap``).
    """

    name = "mean-grad-uap"
    Options = MeanGradUAPOptions
    epochs: int
    batch_size: int
    step_size: float

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool) -> tuple[Tensor, dict[str, Any]]:
        device = classifier.device
        count = images.shape[0]
        clean = _predictions(classifier, images, None)
        labels = labels.to(device)
        delta = torch.zeros((1, *images.shape[1:]), device=device, dtype=torch.float32)
        order_generator = torch.Generator().manual_seed(self.seed)
        batches = math.ceil(count / self.batch_size)
        with flush_denormal(), tqdm(total=self.epochs * batches, desc=self.name, disable=not progress, leave=False) as bar:
            for _ in range(self.epochs):
                fooled = seen = 0
                for index in torch.randperm(count, generator=order_generator).split(self.batch_size):
                    x = images[index.to(images.device)].to(device)
                    on_device = index.to(device)
                    step_from = delta.detach().requires_grad_(True)
                    with torch.enable_grad():
                        logits = classifier((x + step_from).clamp(0.0, 1.0))
                        loss = F.cross_entropy(logits, labels[on_device])
                        (grad,) = torch.autograd.grad(loss, step_from)
                    with torch.no_grad():
                        fooled += int((logits.argmax(1) != clean[on_device]).sum())
                        seen += index.numel()
                        delta = project_delta(delta + self.step_size * step_direction(grad, self.norm), self.epsilon, self.norm)
                    bar.update(1)
                    bar.set_postfix(fooling=f"{fooled / seen:.3f}", refresh=False)
        fooling = float((_predictions(classifier, images, delta) != clean).float().mean())
        return delta, {"fit_fooling_ratio": fooling}


@torch.no_grad()
def _predictions(classifier: Classifier, images: Tensor, delta: Tensor | None, chunk: int = 256) -> Tensor:
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
    "DEFAULT_EPSILON",
    "MeanGradUAP",
    "UniversalAttack",
    "UniversalPerturbation",
    "model_record",
    "perturbation_norm",
    "project_delta",
    "weights_digest",
]
