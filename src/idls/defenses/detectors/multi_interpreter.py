"""The multi-interpreter detector of paper 000 (§VIII, "Adversarial Detector", Tables V and VI).

The maps of 2 or 3 interpreters (optionally with the product of two as a third channel) are
stacked into an ``M``-channel image, a feature extractor (:mod:`idls.defenses.detectors.extractors`)
summarises it, and a gradient-boosting classifier trained on benign and adversarial stacks gives
the probability that the input is adversarial. Supervised. Example::

    detector = create_detector("multi-interpreter", interpreters=["grad", "cam"], product_channel=True)
    detector.fit(classifier, benign, x_adv)
    stack = detector.map_stack(x)            # B x 3 x S x S, reusable across experiments
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
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
from idls.defenses.detectors.maps import (
    build_interpreters,
    check_interpreter_names,
    check_side,
    resize_maps,
)
from idls.errors import UserError
from idls.interpreters import (
    Interpreter,
)
from idls.system import Classifier

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
        check_interpreter_names(self.interpreters, 2, 3)
        if self.product_channel and len(self.interpreters) != 2:
            raise UserError("product_channel needs exactly 2 interpreters (3 already make 3 channels)")
        check_side("map_size", self.map_size)
        check_side("threads", self.threads)
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


__all__ = ["TRUSTED_SKOPS_TYPES", "MultiInterpreterDetector", "MultiInterpreterOptions", "load_skops_model"]
