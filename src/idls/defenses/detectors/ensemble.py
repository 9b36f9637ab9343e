"""The interpreter-ensemble detector (the "ensemble of interpreters" future-work defence of papers 000 and 001).

Interpreters look at different behaviour of the model, and an attack that keeps one map
benign-looking need not keep the others consistent with it. Score = mean over pairs of
interpreters of their maps' disagreement. Unsupervised: the threshold is the false-positive rate
on benign images. The score can stay in the autograd graph, so adaptive attacks can add it to
their loss. Example::

    detector = create_detector("interpreter-ensemble", interpreters=["grad", "cam", "gradcam"]).fit(classifier, benign)
    detector.score(x_adv)                    # B disagreements
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from idls.core.options import option
from idls.defenses.detectors.base import (
    DETECTORS,
    Detector,
    DetectorOptions,
)
from idls.defenses.detectors.maps import (
    build_interpreters,
    check_interpreter_names,
    check_side,
    in_graph_maps,
    resize_maps,
)
from idls.errors import UserError
from idls.interpreters import (
    Interpreter,
    minmax_normalize,
)
from idls.system import Classifier

#: the disagreement measures of the interpreter ensemble
MEASURES = ("l1", "pearson", "spearman")
#: which side of the benign disagreement the interpreter ensemble flags
DIRECTIONS = ("higher", "lower", "two-sided")

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
        check_interpreter_names(self.interpreters, 2, None)
        if self.measure not in MEASURES:
            raise UserError(f"unknown measure {self.measure!r}; choose one of: {', '.join(MEASURES)}")
        check_side("side", self.side)


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


__all__ = ["DIRECTIONS", "MEASURES", "InterpreterEnsembleDetector", "InterpreterEnsembleOptions", "map_disagreement"]
