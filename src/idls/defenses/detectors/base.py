"""The detector contract: fit on a fit split, score every image, flag at a threshold set by a false-positive rate.

A :class:`Detector` decides whether an input to a classifier is adversarial. It is
configured by its options (declared once, :class:`DetectorOptions`), fitted on
benign images of a fit split (and adversarial ones where the method is supervised,
``needs_adversarial``), and then scores images: ``score(x)`` is ``B`` floats,
higher = more likely adversarial. ``fit`` ends by setting ``threshold`` so that the
requested fraction ``fpr`` of benign calibration images is flagged
(:func:`threshold_at_fpr`); supervised detectors calibrate on benign images held out
of their training. ``flag(x)`` is ``score(x) > threshold``. Example::

    detector = create_detector("feature-squeezing", fpr=0.05)
    detector.fit(classifier, benign_fit_images)
    flagged = detector.flag(x_adv)                 # B booleans
    detector.evaluate(benign_test, x_adv)          # detection rate, FPR reached, ROC-AUC

A fitted detector is an artifact (safetensors + JSON metadata; :meth:`Detector.save`,
:func:`idls.defenses.detectors.load_detector`); nothing is unpickled on load.
Subclasses implement :meth:`Detector._score` and, when they learn something,
:meth:`Detector._fit`, :meth:`Detector.state_tensors` and :meth:`Detector.load_state_tensors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls.core.artifacts import load_artifact, save_artifact
from idls.core.options import Options, option
from idls.errors import UserError, check_images
from idls.registry import Registry
from idls.system import Classifier

#: ``kind`` of a saved detector artifact
DETECTOR_KIND = "detector"


@dataclass(frozen=True, eq=False, kw_only=True)
class DetectorOptions(Options):
    """Options every detector takes."""

    kind: ClassVar[str] = "detector"

    fpr: float | None = option(0.05, "false-positive rate on benign calibration images the threshold is set at "
                                     "(null: the detector's own decision threshold, for supervised detectors)")
    calibration_fraction: float = option(0.25, "supervised detectors: share of the benign fit images held out "
                                               "of training to set the threshold on")
    batch_size: int = option(100, "images per scoring batch")
    seed: int = option(0, "seeds every random choice of the fit (splits, reference batches, noise)")
    progress: bool = option(False, "show progress bars while fitting and scoring")

    def check(self) -> None:
        if self.fpr is not None and not 0.0 <= self.fpr < 1.0:
            raise UserError(f"fpr must be in [0, 1), got {self.fpr}; e.g. fpr=0.05")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise UserError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")


def threshold_at_fpr(benign_scores: Tensor, fpr: float) -> float:
    """The threshold ``t`` that flags (``score > t``) at most ``floor(fpr * n)`` of ``n`` benign scores.

    With distinct scores exactly ``floor(fpr * n)`` are flagged; ties can only lower
    the count. ``benign_scores`` is ``n`` finite floats.
    """
    scores = benign_scores.detach().double().flatten().cpu()
    if scores.numel() == 0:
        raise UserError("cannot set a detector threshold without benign calibration images")
    if not torch.isfinite(scores).all():
        raise RuntimeError("a detector produced a non-finite score on benign images")
    allowed = math.floor(fpr * scores.numel() + 1e-9)
    ordered = torch.sort(scores, descending=True).values
    return float(ordered[min(allowed, scores.numel() - 1)])


@dataclass(frozen=True)
class DetectionSummary:
    """How a detector does on benign and adversarial images.

    Attributes:
        detection_rate: share of adversarial images flagged (true-positive rate).
        false_positive_rate: share of benign images flagged.
        auc: ROC-AUC of the scores (adversarial = positive); ``nan`` when one side is empty.
        accuracy: balanced accuracy at the threshold, ``(detection_rate + 1 - false_positive_rate) / 2``.
        n_benign, n_adversarial: how many images of each.
    """

    detection_rate: float
    false_positive_rate: float
    auc: float
    accuracy: float
    n_benign: int
    n_adversarial: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def roc_auc(benign_scores: Tensor, adversarial_scores: Tensor) -> float:
    """ROC-AUC with adversarial as the positive class (scikit-learn); ``nan`` if either side is empty."""
    from sklearn.metrics import roc_auc_score

    if benign_scores.numel() == 0 or adversarial_scores.numel() == 0:
        return float("nan")
    scores = torch.cat([benign_scores.flatten(), adversarial_scores.flatten()]).double().cpu().numpy()
    truth = [0] * benign_scores.numel() + [1] * adversarial_scores.numel()
    return float(roc_auc_score(truth, scores))


class Detector:
    """Base class of detectors (see the module docstring for the contract).

    Class attributes a detector declares:
        name: its registry name.
        Options: its options dataclass (a :class:`DetectorOptions` subclass).
        needs_adversarial: ``fit`` needs adversarial images (a supervised detector).
        differentiable_score: :meth:`score` with ``create_graph=True`` stays in the autograd
            graph of the images, so adaptive attacks can add it to their loss.
        natural_threshold: the score at which the detector's own decision flips (a
            probability: 0.5), used when ``fpr`` is ``None``; ``None`` if it has none.
    """

    name: ClassVar[str] = "detector"
    Options: ClassVar[type[DetectorOptions]] = DetectorOptions
    needs_adversarial: ClassVar[bool] = False
    differentiable_score: ClassVar[bool] = False
    natural_threshold: ClassVar[float | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = type(self).Options.from_user(self.name, options)
        if self.options.fpr is None and self.natural_threshold is None:
            raise UserError(f"detector {self.name!r} has no decision threshold of its own; set fpr, e.g. fpr=0.05")
        self.classifier: Classifier | None = None
        self.threshold: float | None = None
        self.fit_info: dict[str, Any] = {}

    # -- hooks for subclasses ----------------------------------------------------------------
    def _fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None, *, progress: bool) -> None:
        """Learn from ``benign`` (``N x C x H x W``) and ``adversarial`` (``M x C x H x W`` or ``None``)."""

    def _score(self, x: Tensor) -> Tensor:
        """Scores of one batch ``B x C x H x W`` -> ``B`` (higher = more likely adversarial).

        Runs under ``torch.no_grad()`` unless the caller asked for the graph (then only
        detectors with ``differentiable_score`` are called).
        """
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """What the fit learnt, as named tensors (saved in the artifact)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""

    def describe(self) -> str:
        """A short label with the defining options, e.g. ``'feature-squeezing(bit-depth-1, median-2x2)'``."""
        return self.name

    # -- the contract ------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.classifier is not None and self.threshold is not None

    def fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None = None, *,
            progress: bool = False) -> Detector:
        """Fit on benign (and, for supervised detectors, adversarial) images, then set the threshold.

        Args:
            classifier: the defended classifier (eval mode); the detector keeps it.
            benign: ``N x C x H x W`` in [0, 1], images of the fit split.
            adversarial: ``M x C x H x W`` in [0, 1], adversarial images made from the fit split
                (required when ``needs_adversarial``, ignored otherwise).
            progress: show progress bars (also on when built with ``progress=True``).

        Returns:
            ``self``, fitted: ``threshold`` flags a share ``fpr`` of benign calibration images.
        """
        if not isinstance(classifier, Classifier):
            raise UserError(f"detectors need an idls Classifier, got {type(classifier).__name__}")
        if classifier.training:
            raise UserError("put the classifier in eval mode (classifier.eval()) before fitting a detector")
        check_images(benign, name="benign fit images")
        if self.needs_adversarial:
            if adversarial is None or adversarial.shape[0] == 0:
                raise UserError(f"detector {self.name!r} is supervised: fit it with adversarial images too "
                                "(e.g. --fit-attack adv2)")
            check_images(adversarial, name="adversarial fit images")
        else:
            adversarial = None
        progress = progress or self.options.progress
        self.classifier = classifier
        train, calibration = self._calibration_split(benign)
        self._fit(classifier, train, adversarial, progress=progress)
        if self.options.fpr is None:
            self.threshold = float(self.natural_threshold)  # type: ignore[arg-type]
        else:
            self.threshold = threshold_at_fpr(self.score(calibration, progress=progress), self.options.fpr)
        self.fit_info = {"n_benign": int(benign.shape[0]), "n_calibration": int(calibration.shape[0]),
                         "n_adversarial": 0 if adversarial is None else int(adversarial.shape[0])}
        return self

    def _calibration_split(self, benign: Tensor) -> tuple[Tensor, Tensor]:
        """``(train, calibration)``: all benign images twice for unsupervised detectors; a seeded split otherwise."""
        if not self.needs_adversarial or self.options.fpr is None:
            return benign, benign
        n = benign.shape[0]
        held = max(1, round(self.options.calibration_fraction * n))
        if n - held < 1:
            raise UserError(f"detector {self.name!r} needs at least 2 benign fit images, got {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.options.seed))
        return benign[order[held:].to(benign.device)], benign[order[:held].to(benign.device)]

    def _require_fitted(self) -> Classifier:
        if self.classifier is None or self.threshold is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        return self.classifier

    def score(self, x: Tensor, *, create_graph: bool = False, progress: bool = False) -> Tensor:
        """Scores ``B`` (higher = more likely adversarial) of images ``B x C x H x W`` in [0, 1].

        With ``create_graph=True`` (detectors with ``differentiable_score`` only) the
        scores stay in the autograd graph of ``x`` and the batch is scored in one piece.
        ``progress`` shows a bar over the scoring batches.
        """
        if self.classifier is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        check_images(x, name="images to score")
        if create_graph:
            if not self.differentiable_score:
                raise UserError(f"detector {self.name!r} has no differentiable score; attack it through BPDA "
                                "or leave it out of the loss")
            return self._score(x)
        from idls.progress import progress_bar

        outputs = []
        starts = range(0, x.shape[0], self.options.batch_size)
        with torch.no_grad():
            for start in progress_bar(starts, desc=f"scoring with {self.name}", unit="batch",
                                      disable=not progress, leave=False):
                outputs.append(self._score(x[start:start + self.options.batch_size]).detach().float())
        return torch.cat(outputs) if outputs else x.new_zeros(0)

    def flag(self, x: Tensor) -> Tensor:
        """``B`` booleans: ``score(x) > threshold``."""
        self._require_fitted()
        return self.score(x) > self.threshold

    def evaluate(self, benign: Tensor, adversarial: Tensor) -> DetectionSummary:
        """Detection rate, false-positive rate reached, ROC-AUC and balanced accuracy on held-out images."""
        self._require_fitted()
        return summarize_scores(self.score(benign), self.score(adversarial), float(self.threshold))  # type: ignore[arg-type]

    # -- artifacts ---------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What the artifact records besides the tensors."""
        classifier = self._require_fitted()
        from idls.attacks.universal import model_record

        return {"kind": DETECTOR_KIND, "detector": self.name, "options": self.options.as_dict(),
                "threshold": self.threshold, **model_record(classifier), "input_size": classifier.input_size,
                "fit": self.fit_info, "describe": self.describe()}

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to ``path`` (safetensors + ``PATH.json``)."""
        self._require_fitted()
        return save_artifact(path, self.state_tensors(), self.metadata())


def summarize_scores(benign_scores: Tensor, adversarial_scores: Tensor, threshold: float) -> DetectionSummary:
    """:class:`DetectionSummary` of benign and adversarial scores at ``threshold`` (flag: score > threshold)."""
    fp = float((benign_scores > threshold).float().mean()) if benign_scores.numel() else float("nan")
    tp = float((adversarial_scores > threshold).float().mean()) if adversarial_scores.numel() else float("nan")
    return DetectionSummary(detection_rate=tp, false_positive_rate=fp, auc=roc_auc(benign_scores, adversarial_scores),
                            accuracy=(tp + 1.0 - fp) / 2.0, n_benign=int(benign_scores.numel()),
                            n_adversarial=int(adversarial_scores.numel()))


DETECTORS: Registry[type[Detector]] = Registry("detector")


def create_detector(name: str, **options: Any) -> Detector:
    """Build detector ``name`` with its options (unknown options are one-line errors)."""
    return DETECTORS.get(name)(**options)


def load_detector(path: str | Path, classifier: Classifier) -> Detector:
    """A detector saved by :meth:`Detector.save`, bound to ``classifier`` (which must be the model it was fitted on)."""
    artifact = load_artifact(path, kind=DETECTOR_KIND)
    meta = artifact.metadata
    if meta.get("model") != classifier.info.name:
        raise UserError(f"detector {path} was fitted on model {meta.get('model')!r}, not {classifier.info.name!r}; "
                        "fit one for this model (idls detector fit)")
    from idls.attacks.universal import weights_digest

    current = weights_digest(classifier)
    if meta.get("weights_sha256") and current and meta["weights_sha256"] != current:
        raise UserError(f"detector {path} was fitted on other weights of {classifier.info.name} "
                        f"({meta.get('weights')}); fit one for these weights (idls detector fit)")
    if meta.get("defense") != classifier.info.extra.get("defense"):
        raise UserError(f"detector {path} was fitted on the classifier with defence {meta.get('defense')!r}, "
                        f"not {classifier.info.extra.get('defense')!r}")
    detector = create_detector(meta["detector"], **meta["options"])
    detector.classifier = classifier
    detector.threshold = float(meta["threshold"])
    detector.fit_info = dict(meta.get("fit", {}))
    detector.load_state_tensors({k: v.to(classifier.device) for k, v in artifact.tensors.items()})
    return detector


__all__ = ["DETECTORS", "DETECTOR_KIND", "DetectionSummary", "Detector", "DetectorOptions", "create_detector",
           "load_detector", "roc_auc", "summarize_scores", "threshold_at_fpr"]
