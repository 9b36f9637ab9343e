"""Interpretation-based detectors: what several interpreters say about one input.

* ``multi-interpreter`` (paper 000 §VIII, "Adversarial Detector", Tables V and VI): the
  maps of 2 or 3 interpreters (optionally with the product of two as a third channel)
  are stacked into an ``M``-channel image, a feature extractor
  (:mod:`idls.defenses.detectors.extractors`) summarises it, and a gradient-boosting
  classifier trained on benign and adversarial stacks gives the probability that the
  input is adversarial. Supervised.
* ``interpreter-ensemble`` (the papers' "ensemble of interpreters" future-work defence):
  interpreters look at different behaviour of the model, and an attack that keeps one
  map benign-looking need not keep the others consistent with it. Score = mean over
  pairs of interpreters of their maps' disagreement. Unsupervised: the threshold is the
  false-positive rate on benign images.

Every map explains the classifier's prediction (docs/design.md §1). Example::

    detector = create_detector("multi-interpreter", interpreters=["grad", "cam"], product_channel=True)
    detector.fit(classifier, benign, x_adv)
    stack = detector.map_stack(x)            # B x 3 x S x S, reusable across experiments
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idls.core.options import option
from idls.defenses.detectors.base import (
    DETECTORS,
    Detector,
    DetectorOptions,
    threshold_at_fpr,
)
from idls.defenses.detectors.extractors import (
    Extractor,
    check_extractor_spec,
    extractor_from_spec,
)
from idls.errors import UserError
from idls.interpreters import (
    Interpreter,
    interpreter_class,
    interpreter_for,
    minmax_normalize,
)
from idls.system import Classifier

#: the disagreement measures of the interpreter ensemble
MEASURES = ("l1", "pearson", "spearman")
#: which side of the benign disagreement the interpreter ensemble flags
DIRECTIONS = ("higher", "lower", "two-sided")

#: what a saved gradient-boosting model may contain (checked before skops builds anything)
TRUSTED_SKOPS_TYPES = (
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.preprocessing._label.LabelEncoder",
)


# -- maps ------------------------------------------------------------------------------------------
def resize_maps(maps: Tensor, side: int) -> Tensor:
    """Maps ``B x h x w`` -> ``B x side x side``: bilinear upsampling, area averaging to go down (differentiable)."""
    if maps.shape[-2:] == (side, side):
        return maps
    if maps.shape[-1] < side or maps.shape[-2] < side:
        return F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return F.adaptive_avg_pool2d(maps[:, None], side)[:, 0]


def build_interpreters(names: tuple[str, ...], classifier: Classifier) -> list[Interpreter]:
    """The named interpreters for ``classifier``; one that cannot explain it is a one-line UserError."""
    built = []
    for name in names:
        reason = interpreter_class(name).unavailable_reason(classifier, {})
        if reason is not None:
            raise UserError(f"interpreter {name!r} cannot explain model {classifier.info.name!r}: {reason}; "
                            "choose other interpreters (e.g. interpreters=[grad,gradcam])")
        built.append(interpreter_for(name, classifier))
    return built


def in_graph_maps(interpreters: list[Interpreter], x: Tensor) -> list[Tensor]:
    """Differentiable maps ``B x h x w`` of the predicted classes, one per interpreter (joint-attack path).

    Each interpreter's :meth:`~idls.interpreters.base.Interpreter.joint_forward` of its
    ``for_joint_attack()`` twin: the real map where ``joint_map_is_exact``, else the
    smooth-surrogate map (Grad, IG) or MASK's look-ahead map.
    """
    with torch.no_grad():
        classes = interpreters[0].classifier(x).argmax(1)
    return [twin.joint_forward(x, classes).maps for twin in interpreters]


def _check_interpreter_names(names: tuple[str, ...], low: int, high: int | None) -> None:
    if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise UserError(f"interpreters must be a list of interpreter names, e.g. interpreters=[grad,cam]; got {names!r}")
    if len(names) < low or (high is not None and len(names) > high):
        wanted = f"{low} or {high}" if high == low + 1 else f"at least {low}"
        raise UserError(f"interpreters takes {wanted} interpreter names, got {len(names)}: {list(names)}")
    for name in names:
        interpreter_class(name)  # unknown names: UserError listing the choices


def _check_side(name: str, side: int | None) -> None:
    if side is not None and (not isinstance(side, int) or isinstance(side, bool) or side < 1):
        raise UserError(f"{name} must be a positive integer (or null for the default), got {side!r}")


# -- multi-interpreter ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class MultiInterpreterOptions(DetectorOptions):
    interpreters: tuple[str, ...] = option(("grad", "cam"), "2 or 3 interpreters whose maps are stacked")
    product_channel: bool = option(False, "with 2 interpreters, add their maps' product as a 3rd channel "
                                          "(paper 000's 3-channel samples)")
    extractor: str = option("random-conv", "feature extractor spec NAME or NAME:KEY=VALUE,... "
                                           "(random-conv, pooled, vgg16:weights=PATH)")
    map_size: int | None = option(None, "side the maps are resized to before feature extraction "
                                        "(null: the classifier's input size, at most 64)")
    max_iter: int = option(200, "gradient boosting: boosting iterations")
    learning_rate: float = option(0.1, "gradient boosting: learning rate")
    max_leaf_nodes: int = option(31, "gradient boosting: leaves per tree")
    min_samples_leaf: int = option(20, "gradient boosting: smallest leaf")
    l2_regularization: float = option(0.0, "gradient boosting: L2 penalty on leaf values")
    threads: int | None = option(None, "OpenMP threads of gradient boosting (null: torch's thread count; "
                                       "spinning threads on a busy machine slow it down many times)")

    def check(self) -> None:
        super().check()
        _check_interpreter_names(self.interpreters, 2, 3)
        if self.product_channel and len(self.interpreters) != 2:
            raise UserError("product_channel needs exactly 2 interpreters (3 already make 3 channels)")
        _check_side("map_size", self.map_size)
        _check_side("threads", self.threads)
        if self.max_iter < 1 or self.max_leaf_nodes < 2 or self.min_samples_leaf < 1:
            raise UserError("gradient boosting needs max_iter >= 1, max_leaf_nodes >= 2, min_samples_leaf >= 1")
        if not self.learning_rate > 0 or self.l2_regularization < 0:
            raise UserError("gradient boosting needs learning_rate > 0 and l2_regularization >= 0")
        check_extractor_spec(self.extractor)


@DETECTORS.register("multi-interpreter")
class MultiInterpreterDetector(Detector):
    """Paper 000's multi-interpreter detector: stacked maps -> features -> gradient boosting.

    ``map_stack(x)`` is ``B x M x S x S``: channel ``i`` is interpreter ``i``'s map of the
    predicted class, resized to ``S = map_size`` (bilinear up, area down; for feature
    extraction only), ``M`` = number of interpreters, plus their product with
    ``product_channel``. The classifier is scikit-learn's
    ``HistGradientBoostingClassifier`` (seeded); score = its probability that the input
    is adversarial. The fitted model is saved with skops (no pickle), and loading
    refuses any type outside :data:`TRUSTED_SKOPS_TYPES`.
    """

    name = "multi-interpreter"
    Options = MultiInterpreterOptions
    needs_adversarial = True
    natural_threshold = 0.5

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.model: Any = None
        self._extractor: Extractor | None = None
        self._interpreters: tuple[Classifier, list[Interpreter]] | None = None

    # -- pieces -------------------------------------------------------------------------
    @property
    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = extractor_from_spec(self.options.extractor)
        return self._extractor

    def interpreters_for(self, classifier: Classifier) -> list[Interpreter]:
        """The detector's interpreters, built once per classifier."""
        if self._interpreters is None or self._interpreters[0] is not classifier:
            self._interpreters = (classifier, build_interpreters(self.options.interpreters, classifier))
        return self._interpreters[1]

    def side(self, classifier: Classifier) -> int:
        """The common side ``S`` of the stacked maps."""
        return self.options.map_size or min(int(classifier.input_size), 64)

    def map_stack(self, x: Tensor, classifier: Classifier | None = None) -> Tensor:
        """Stacked maps ``B x M x S x S`` in [0, 1] of images ``B x C x H x W`` (in batches of ``batch_size``).

        ``classifier`` defaults to the fitted one.
        """
        classifier = classifier if classifier is not None else self._require_classifier()
        interpreters = self.interpreters_for(classifier)
        side = self.side(classifier)
        parts = []
        for xs in x.split(self.options.batch_size):
            maps = [resize_maps(interpreter.attribute(xs), side) for interpreter in interpreters]
            if self.options.product_channel:
                maps.append(maps[0] * maps[1])
            parts.append(torch.stack(maps, 1).detach())
        channels = len(interpreters) + int(self.options.product_channel)
        return torch.cat(parts) if parts else x.new_zeros(0, channels, side, side)

    def features(self, stack: Tensor) -> np.ndarray:
        """Extractor features ``B x F`` (numpy float32) of stacked maps."""
        parts = [self.extractor(s).cpu() for s in stack.split(self.options.batch_size)]
        return torch.cat(parts).numpy().astype(np.float32) if parts else np.zeros((0, 0), np.float32)

    def _require_classifier(self) -> Classifier:
        if self.classifier is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        return self.classifier

    # -- fitting and scoring ----------------------------------------------------------------
    def fit_stacks(self, benign_stack: Tensor, adversarial_stack: Tensor) -> None:
        """Train the gradient-boosting classifier on precomputed stacks (benign = 0, adversarial = 1)."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        o = self.options
        features = np.concatenate([self.features(benign_stack), self.features(adversarial_stack)])
        labels = np.r_[np.zeros(benign_stack.shape[0], np.int64), np.ones(adversarial_stack.shape[0], np.int64)]
        self.model = HistGradientBoostingClassifier(
            max_iter=o.max_iter, learning_rate=o.learning_rate, max_leaf_nodes=o.max_leaf_nodes,
            min_samples_leaf=o.min_samples_leaf, l2_regularization=o.l2_regularization, random_state=o.seed,
        )
        with self._threads():
            self.model.fit(features, labels)

    def _threads(self) -> Any:
        """Limit scikit-learn's OpenMP threads to ``threads`` (default: torch's count) for a block."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(self.options.threads or torch.get_num_threads(), user_api="openmp")

    def fit_from_stacks(self, classifier: Classifier, benign_stack: Tensor,
                        adversarial_stack: Tensor) -> MultiInterpreterDetector:
        """:meth:`fit` on stacks already computed by :meth:`map_stack` (experiments compute them once
        and fit several detectors); the same calibration split and threshold as :meth:`fit`."""
        if benign_stack.shape[0] == 0 or adversarial_stack.shape[0] == 0:
            raise UserError(f"detector {self.name!r} needs benign and adversarial map stacks to fit on")
        self.classifier = classifier
        train, calibration = self._calibration_split(benign_stack)
        self.fit_stacks(train, adversarial_stack)
        self.threshold = (float(self.natural_threshold) if self.options.fpr is None  # type: ignore[arg-type]
                          else threshold_at_fpr(self.score_stack(calibration), self.options.fpr))
        self.fit_info = {"n_benign": int(benign_stack.shape[0]), "n_calibration": int(calibration.shape[0]),
                         "n_adversarial": int(adversarial_stack.shape[0])}
        return self

    def _fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None, *, progress: bool) -> None:
        assert adversarial is not None
        self.fit_stacks(self.map_stack(benign, classifier), self.map_stack(adversarial, classifier))

    def score_stack(self, stack: Tensor) -> Tensor:
        """Probability adversarial ``B`` of precomputed stacks."""
        if self.model is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        if stack.shape[0] == 0:
            return torch.zeros(0)
        features = self.features(stack)
        with self._threads():
            probability = self.model.predict_proba(features)[:, 1]
        return torch.from_numpy(probability.astype(np.float32))

    def _score(self, x: Tensor) -> Tensor:
        return self.score_stack(self.map_stack(x)).to(x.device)

    # -- artifacts --------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        import skops.io

        data = skops.io.dumps(self.model)
        return {"model_skops": torch.frombuffer(bytearray(data), dtype=torch.uint8)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.model = load_skops_model(bytes(tensors["model_skops"].cpu().numpy().tobytes()))

    def describe(self) -> str:
        names = "+".join(self.options.interpreters) + ("+product" if self.options.product_channel else "")
        return f"multi-interpreter({names}, {self.extractor.describe()})"


def load_skops_model(data: bytes) -> Any:
    """A scikit-learn model from skops bytes; any type outside :data:`TRUSTED_SKOPS_TYPES` is refused."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=data)
    refused = sorted(set(untrusted) - set(TRUSTED_SKOPS_TYPES))
    if refused:
        raise UserError(f"refusing to load a detector model with untrusted types: {', '.join(refused)}; "
                        "refit the detector")
    return skops.io.loads(data, trusted=list(untrusted))


# -- interpreter ensemble -------------------------------------------------------------------------
def _ranks(flat: Tensor) -> Tensor:
    """Ranks (0 .. N-1, ties broken by position) of each row of ``B x N``; not differentiable."""
    return flat.argsort(1).argsort(1).to(flat.dtype)


def _pearson_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return 1.0 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def map_disagreement(maps: list[Tensor], measure: str = "l1", side: int | None = None) -> Tensor:
    """Mean over pairs of maps of their disagreement: ``B`` values (differentiable for l1 and pearson).

    Args:
        maps: ``k >= 2`` tensors ``B x h_i x w_i`` (native sides may differ).
        measure: ``'l1'``: mean ``|a - b|`` per pixel after bringing both to ``side`` and
            min-max normalising, in [0, 1]; ``'pearson'``: ``1 - Pearson correlation``, in
            [0, 2]; ``'spearman'``: ``1 - Spearman rank correlation`` (ranks: not differentiable).
        side: the common side; ``None``: the smallest native side (larger maps are
            area-averaged down, so no map is upsampled and nothing is invented).
    """
    if len(maps) < 2:
        raise UserError(f"the interpreter ensemble needs at least 2 maps, got {len(maps)}")
    if measure not in MEASURES:
        raise UserError(f"unknown disagreement measure {measure!r}; choose one of: {', '.join(MEASURES)}")
    side = side or min(min(m.shape[-2:]) for m in maps)
    flat = [minmax_normalize(resize_maps(m, side)).flatten(1) for m in maps]
    if measure == "spearman":
        flat = [_ranks(f) for f in flat]
    total = flat[0].new_zeros(flat[0].shape[0])
    pairs = list(itertools.combinations(flat, 2))
    for a, b in pairs:
        total = total + ((a - b).abs().mean(1) if measure == "l1" else _pearson_distance(a, b))
    return total / len(pairs)


@dataclass(frozen=True, eq=False, kw_only=True)
class InterpreterEnsembleOptions(DetectorOptions):
    interpreters: tuple[str, ...] = option(("grad", "cam", "gradcam"),
                                           "2 or more interpreters whose maps should agree on benign inputs")
    measure: str = option("l1", "disagreement of two maps: l1 (mean |a - b| of min-max maps), pearson "
                                "(1 - correlation) or spearman (1 - rank correlation; no differentiable score)")
    side: int | None = option(None, "common side the maps are compared at (null: the smallest native side)")
    direction: str = option("higher", "what is flagged: higher disagreement than on benign images, lower "
                                      "(attacks that make the maps agree more), or two-sided (distance from the "
                                      "benign median in benign median absolute deviations)")

    def check(self) -> None:
        super().check()
        if self.direction not in DIRECTIONS:
            raise UserError(f"unknown direction {self.direction!r}; choose one of: {', '.join(DIRECTIONS)}")
        _check_interpreter_names(self.interpreters, 2, None)
        if self.measure not in MEASURES:
            raise UserError(f"unknown measure {self.measure!r}; choose one of: {', '.join(MEASURES)}")
        _check_side("side", self.side)


@DETECTORS.register("interpreter-ensemble")
class InterpreterEnsembleDetector(Detector):
    """Disagreement among interpreters (:func:`map_disagreement` of their maps of the prediction).

    Unsupervised: ``fit`` sets the threshold at ``fpr`` on benign images. Score by
    ``direction``: ``higher`` (default) the disagreement ``d``; ``lower`` ``-d``;
    ``two-sided`` ``|d - median| / MAD`` with the median and median absolute deviation
    of ``d`` on the benign fit images (learnt by ``fit``, saved with the detector).

    Differentiable score: with ``create_graph=True`` each interpreter's map comes from
    its joint-attack path (``for_joint_attack().joint_forward``), the same in-graph map
    the joint attacks differentiate. For interpreters whose ``joint_map_is_exact`` is
    false the in-graph score is the disagreement of *surrogate* maps: Grad and IG are
    computed on the smooth-ReLU surrogate of the classifier (the real ReLU network's
    second derivatives vanish), MASK on its look-ahead map; its value then differs from
    :meth:`score` without the graph (which always uses the real maps), while its gradient
    is what an adaptive attack can follow. The ``spearman`` measure has no in-graph score.
    """

    name = "interpreter-ensemble"
    Options = InterpreterEnsembleOptions
    differentiable_score = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._built: tuple[Classifier, list[Interpreter], list[Interpreter]] | None = None
        self.benign_median = torch.tensor(0.0)
        self.benign_mad = torch.tensor(1.0)

    def interpreters_for(self, classifier: Classifier) -> tuple[list[Interpreter], list[Interpreter]]:
        """``(interpreters, their joint-attack twins)``, built once per classifier."""
        if self._built is None or self._built[0] is not classifier:
            plain = build_interpreters(self.options.interpreters, classifier)
            self._built = (classifier, plain, [interpreter.for_joint_attack() for interpreter in plain])
        return self._built[1], self._built[2]

    def maps(self, x: Tensor, *, in_graph: bool = False) -> list[Tensor]:
        """Each interpreter's maps ``B x h_i x w_i`` of the predicted classes (in-graph: the joint-attack maps)."""
        classifier = self.classifier
        if classifier is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        plain, twins = self.interpreters_for(classifier)
        if in_graph:
            return in_graph_maps(twins, x)
        return [interpreter.attribute(x) for interpreter in plain]

    def disagreement(self, x: Tensor) -> Tensor:
        """:func:`map_disagreement` ``B`` of images ``B x C x H x W`` (in the graph when grad is enabled)."""
        in_graph = torch.is_grad_enabled()  # Detector.score runs plain scoring under no_grad
        if in_graph and self.options.measure == "spearman":
            raise UserError("the spearman measure has no differentiable score; use measure=l1 or measure=pearson")
        return map_disagreement(self.maps(x, in_graph=in_graph), self.options.measure, self.options.side)

    def _fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None, *, progress: bool) -> None:
        if self.options.direction != "two-sided":
            return
        with torch.no_grad():
            values = torch.cat([self.disagreement(xs) for xs in benign.split(self.options.batch_size)]).double().cpu()
        self.benign_median = values.median()
        self.benign_mad = (values - self.benign_median).abs().median().clamp_min(1e-12)

    def _score(self, x: Tensor) -> Tensor:
        d = self.disagreement(x)
        if self.options.direction == "lower":
            return -d
        if self.options.direction == "two-sided":
            median, mad = self.benign_median.to(d), self.benign_mad.to(d)
            return (d - median).abs() / mad
        return d

    def state_tensors(self) -> dict[str, Tensor]:
        return {"benign_median": self.benign_median.reshape(1), "benign_mad": self.benign_mad.reshape(1)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.benign_median = tensors["benign_median"].cpu().double()[0]
        self.benign_mad = tensors["benign_mad"].cpu().double()[0]

    def describe(self) -> str:
        direction = "" if self.options.direction == "higher" else f", {self.options.direction}"
        return f"interpreter-ensemble({'+'.join(self.options.interpreters)}, {self.options.measure}{direction})"


__all__ = [
    "DIRECTIONS",
    "MEASURES",
    "TRUSTED_SKOPS_TYPES",
    "InterpreterEnsembleDetector",
    "MultiInterpreterDetector",
    "build_interpreters",
    "in_graph_maps",
    "load_skops_model",
    "map_disagreement",
    "resize_maps",
]
