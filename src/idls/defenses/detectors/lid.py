"""LID detector (Ma et al. 2018, "Characterizing adversarial subspaces using local intrinsic dimensionality").

Adversarial images sit in regions of higher local intrinsic dimensionality (LID) of
the network's layer activations than benign ones. The detector describes an image by
one LID estimate per layer (the layers of :mod:`idls.defenses.detectors.activations`,
logits last), each against a *reference minibatch* of benign images, and a logistic
regression on the standardised features says how likely the image is adversarial.

* **Estimate** (:func:`lid_mle`, the maximum-likelihood estimator):
  ``LID(x) = -((1/k) sum_{i<=k} log(r_i / r_k))^-1`` over the distances ``r_1 <= .. <= r_k``
  from ``x`` to its ``k`` nearest reference points (Euclidean, in the layer's flattened
  activation space).
* **Fit** (supervised, following Ma et al.): the benign training images are cut into
  seeded minibatches of ``minibatch`` images (all of them when fewer; a last partial
  minibatch is filled up with images of the one before, which are not queried twice);
  for each, the LID features of its benign images (against their own minibatch), of
  noisy copies of them (Gaussian noise of standard deviation ``noise_std``, clipped to
  [0, 1]) and of a seeded share of the adversarial images (against the same benign
  minibatch). Negatives = benign + noisy, positives = adversarial. The features are
  standardised (scikit-learn ``StandardScaler``) and a class-balanced
  ``LogisticRegression`` is fitted, its ``C`` chosen by stratified cross-validation on
  the log-loss (``GridSearchCV``). Scaler and coefficients are kept as tensors; nothing
  is pickled.
* **Score**: LID features against a stored reference minibatch (the first seeded
  minibatch of the benign training images, kept in the artifact), standardised, then
  the probability of "adversarial"; the detector's own threshold is 0.5.
* **The point itself.** A point's own copy in the reference batch must not count as its
  neighbour (distance 0). Generalising this, the reference image nearest to a query in
  *pixel* space is left out when its L_inf pixel distance is at most ``same_image_linf``
  (default 0.25, about 64/255: above the usual perturbation budgets and the noise of
  the noisy copies, below the largest pixel difference of two distinct photos): the
  query itself (a benign image in its own minibatch), its source (a noisy copy, or an
  adversarial image crafted from a reference image), or a copy of it.
  *Deviation from Ma et al.*, whose code drops each query's nearest neighbour in every
  layer, adversarial images included: here an adversarial image made from a reference
  image does not see its source at a distance of about epsilon (which lowers its LID),
  just as at scoring time, where test images' sources are not in the reference batch.

``noise_std`` defaults to 0.03, about 8/255: Gaussian noise of that deviation has the L2
norm of a full L_inf 8/255 sign perturbation, the usual CIFAR budget (Ma et al. choose
noise of the adversarial perturbation's size that leaves the image correctly
classified; noisy copies are not filtered by their prediction here). Example::

    detector = create_detector("lid", k=20, minibatch=100).fit(classifier, benign, x_adv_fit)
    detector.score(x)                                   # B probabilities of "adversarial"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from idls.core.options import option
from idls.defenses.detectors.activations import layer_activations
from idls.defenses.detectors.base import DETECTORS, Detector, DetectorOptions
from idls.errors import UserError
from idls.system import Classifier

#: estimates are capped here: neighbours equidistant to within float precision have no measurable dimension
MAX_LID = 1e6


def lid_mle(distances: Tensor, k: int, max_lid: float = MAX_LID) -> Tensor:
    """Maximum-likelihood LID estimate from the ``k`` smallest of each row of ``distances``.

    ``LID = -((1/k) sum_{i<=k} log(r_i / r_k))^-1`` with ``r_1 <= .. <= r_k`` the ``k``
    smallest entries. Degenerate neighbourhoods give finite values, never NaN: a zero
    among the ``r_i`` (a duplicate point, or ``r_k = 0``) gives 0 (the limit: a point
    mass has dimension 0); equidistant neighbours (``r_1 = r_k > 0``) give ``max_lid``.

    Args:
        distances: ``... x n`` non-negative distances to ``n >= k`` reference points;
            ``+inf`` marks a point left out (at least ``k`` entries per row must be finite).
        k: the number of nearest neighbours.
        max_lid: the cap of the estimate.

    Returns:
        ``...`` estimates in ``[0, max_lid]``.
    """
    if not 1 <= k <= distances.shape[-1]:
        raise ValueError(f"k must be in [1, {distances.shape[-1]}] (the number of reference points), got {k}")
    r = torch.topk(distances, k, dim=-1, largest=False).values  # ascending
    r_k = r[..., -1:]
    ratios = r / torch.where(r_k > 0, r_k, torch.ones_like(r_k))  # r_k = 0: all ratios 0 -> estimate 0
    spread = -torch.log(ratios).mean(-1)  # in [0, inf]
    return 1.0 / spread.clamp_min(1.0 / max_lid)


def same_image_mask(queries: Tensor, reference: Tensor, max_linf: float) -> Tensor:
    """``B x m`` booleans: the reference image nearest to each query in pixel space, when within ``max_linf``.

    Args:
        queries: ``B x C x H x W`` pixels; reference: ``m x C x H x W`` pixels.
        max_linf: the largest L_inf pixel distance at which a reference image is taken
            for the query itself (or its source).
    """
    d = torch.cdist(queries.flatten(1).float(), reference.flatten(1).float(), p=math.inf)
    nearest = d.min(dim=1)
    mask = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    mask[torch.arange(d.shape[0], device=d.device), nearest.indices] = nearest.values <= max_linf
    return mask


def lid_features(queries: list[Tensor], reference: list[Tensor], k: int, leave_out: Tensor) -> Tensor:
    """Per-layer LID of the queries against the reference: ``B x L``.

    Args:
        queries: per layer, the queries' activations ``B x D_l``.
        reference: per layer, the reference activations ``m x D_l``.
        k: the number of nearest neighbours.
        leave_out: ``B x m`` booleans, reference points not to count as neighbours.
    """
    columns = []
    for q, r in zip(queries, reference, strict=True):
        d = torch.cdist(q.float(), r.float()).double().masked_fill(leave_out, math.inf)
        columns.append(lid_mle(d, k))
    return torch.stack(columns, dim=1)


@dataclass(frozen=True, eq=False, kw_only=True)
class LIDOptions(DetectorOptions):
    """Options of the LID detector."""

    fpr: float | None = option(0.05, "false-positive rate on benign calibration images the threshold is set at "
                                     "(null: the logistic regression's own threshold, probability 0.5)")
    k: int = option(20, "nearest neighbours of the LID estimate (Ma et al.: 20)")
    minibatch: int = option(100, "images per reference minibatch, at fit and at scoring (Ma et al.: 100)")
    noise_std: float = option(0.03, "standard deviation of the Gaussian noise of the noisy negatives (pixels in [0, 1]; "
                                    "about the size of an 8/255 perturbation)")
    same_image_linf: float = option(0.25, "largest L_inf pixel distance at which the nearest reference image is "
                                          "taken for the query itself or its source and left out of its neighbours")

    def check(self) -> None:
        super().check()
        if self.k < 1:
            raise UserError(f"k must be >= 1, got {self.k}; e.g. k=20")
        if self.k >= self.minibatch:
            raise UserError(f"k must be smaller than minibatch (a point has minibatch - 1 neighbours in its own "
                            f"minibatch), got k={self.k}, minibatch={self.minibatch}")
        if not 0.0 <= self.noise_std < self.same_image_linf / 5:
            raise UserError(f"noise_std must be in [0, same_image_linf / 5 = {self.same_image_linf / 5:g}) so a noisy "
                            f"copy is still recognised as its source, got {self.noise_std}")


def _minibatches(order: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    """``(reference, queries)`` index pairs: minibatches of exactly ``size`` along ``order``, each image queried once.

    The last minibatch is the last ``size`` images of ``order`` (overlapping the one before
    when ``size`` does not divide the count); its queries are only the images not yet queried.
    """
    n = order.numel()
    pairs = []
    for start in range(0, n, size):
        reference = order[start:start + size] if start + size <= n else order[n - size:]
        pairs.append((reference, order[start:start + size]))
    return pairs


@DETECTORS.register("lid")
class LIDDetector(Detector):
    """Local intrinsic dimensionality of every layer's activations + logistic regression (see the module docstring)."""

    name: ClassVar[str] = "lid"
    Options: ClassVar[type[DetectorOptions]] = LIDOptions
    needs_adversarial: ClassVar[bool] = True
    natural_threshold: ClassVar[float | None] = 0.5

    options: LIDOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._state: dict[str, Tensor] = {}
        self._reference_cache: tuple[int, list[Tensor]] | None = None

    # -- features ------------------------------------------------------------------------------
    def _activations(self, classifier: Classifier, x: Tensor) -> list[Tensor]:
        """Per-layer activations ``B x D_l`` of ``x``, in chunks of ``batch_size`` images."""
        chunks = [layer_activations(classifier, part)[1] for part in x.split(self.options.batch_size)]
        return [torch.cat(layer) for layer in zip(*chunks, strict=True)]

    def _features(self, classifier: Classifier, x: Tensor, reference: Tensor, reference_acts: list[Tensor]) -> Tensor:
        """LID features ``B x L`` of images ``x`` against the reference images and their activations."""
        leave_out = same_image_mask(x, reference, self.options.same_image_linf)
        return lid_features(self._activations(classifier, x), reference_acts, self.options.k, leave_out)

    # -- fit -----------------------------------------------------------------------------------
    def _fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None, *, progress: bool) -> None:
        assert adversarial is not None  # the base class checks needs_adversarial
        o = self.options
        n = benign.shape[0]
        if n <= o.k:
            raise UserError(f"lid needs more than k={o.k} benign training images, got {n}; "
                            "give more fit images or lower k")
        generator = torch.Generator().manual_seed(o.seed)
        batches = _minibatches(torch.randperm(n, generator=generator), min(o.minibatch, n))
        adversarial_order = torch.randperm(adversarial.shape[0], generator=generator)
        negatives, positives = [], []
        with torch.no_grad():
            for j, (reference_index, query_index) in enumerate(_progress(batches, progress)):
                reference = benign[reference_index.to(benign.device)]
                reference_acts = self._activations(classifier, reference)
                queries = benign[query_index.to(benign.device)]
                noise = torch.randn(queries.shape, generator=generator).to(queries.device) * o.noise_std
                negatives.append(self._features(classifier, queries, reference, reference_acts))
                negatives.append(self._features(classifier, (queries + noise).clamp(0, 1), reference, reference_acts))
                share = adversarial_order[j::len(batches)].to(adversarial.device)
                if share.numel():
                    positives.append(self._features(classifier, adversarial[share], reference, reference_acts))
        features = torch.cat(negatives + positives).cpu().numpy()
        labels = np.r_[np.zeros(sum(len(f) for f in negatives)), np.ones(adversarial.shape[0])]
        self._state = {"reference": benign[batches[0][0].to(benign.device)].detach().clone(),
                       **_fit_logistic_regression(features, labels)}
        self._reference_cache = None

    # -- score ---------------------------------------------------------------------------------
    def _reference_activations(self, classifier: Classifier, device: torch.device) -> list[Tensor]:
        """The stored reference images' activations (computed once per classifier)."""
        if self._reference_cache is None or self._reference_cache[0] != id(classifier):
            with torch.no_grad():
                acts = self._activations(classifier, self._state["reference"].to(device))
            self._reference_cache = (id(classifier), acts)
        return self._reference_cache[1]

    def _score(self, x: Tensor) -> Tensor:
        classifier = self._require_classifier()
        reference = self._state["reference"].to(x.device)
        features = self._features(classifier, x, reference, self._reference_activations(classifier, x.device))
        coef = self._state["coef"].to(x.device)
        if features.shape[1] != coef.numel():
            raise UserError(f"the classifier has {features.shape[1]} layers but the lid detector was fitted on "
                            f"{coef.numel()}; fit it again for this model")
        standardised = (features - self._state["mean"].to(x.device)) / self._state["scale"].to(x.device)
        return torch.sigmoid(standardised @ coef + self._state["intercept"].to(x.device))

    def _require_classifier(self) -> Classifier:
        if self.classifier is None or not self._state:
            raise UserError("detector 'lid' is not fitted; call fit(...) or load a saved detector")
        return self.classifier

    # -- artifacts -----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        return dict(self._state)

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        missing = {"reference", "mean", "scale", "coef", "intercept"} - set(tensors)
        if missing:
            raise UserError(f"the saved lid detector lacks {', '.join(sorted(missing))}; fit and save it again")
        self._state = dict(tensors)
        self._reference_cache = None

    def describe(self) -> str:
        return f"lid(k={self.options.k}, minibatch={self.options.minibatch})"


def _fit_logistic_regression(features: np.ndarray, labels: np.ndarray) -> dict[str, Tensor]:
    """Standardise ``N x L`` features and fit a class-balanced logistic regression (``C`` by cross-validation).

    Returns the scaler's ``mean`` and ``scale`` and the model's ``coef`` (``L``) and
    ``intercept`` (``1``) as float64 tensors.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    folds = int(min(3, (labels == 0).sum(), (labels == 1).sum()))
    if folds < 2:
        raise UserError(f"lid needs at least 2 adversarial and 2 benign training images, got "
                        f"{int((labels == 1).sum())} adversarial; give more adversarial fit images")
    scaler = StandardScaler().fit(features)
    search = GridSearchCV(LogisticRegression(class_weight="balanced", solver="newton-cholesky", max_iter=1000),
                          {"C": np.logspace(-2, 2, 5)}, scoring="neg_log_loss",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=0))
    model = search.fit(scaler.transform(features), labels).best_estimator_

    def tensor(values: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(-1))

    return {"mean": tensor(scaler.mean_), "scale": tensor(scaler.scale_), "coef": tensor(model.coef_),
            "intercept": tensor(model.intercept_)}


def _progress(batches: list, enabled: bool):
    from idls.progress import progress_bar

    return progress_bar(batches, desc="lid: minibatch features", unit="batch", disable=None if enabled else True,
                        leave=False)


__all__ = ["MAX_LID", "LIDDetector", "LIDOptions", "lid_features", "lid_mle", "same_image_mask"]
