"""Feature squeezing (Xu, Evans & Qi, NDSS 2018): flag inputs whose prediction moves when the input is squeezed.

A *squeezer* is an input transform that removes detail an honest image does not need
(bit-depth reduction, median smoothing, non-local means; :mod:`idls.transforms`).
For an image ``x`` and squeezers ``s_1 .. s_S`` the detector computes the softmax vectors
``p(x)`` and ``p(s_j(x))`` and scores

    score(x) = max_j || p(x) - p(s_j(x)) ||_1            (in [0, 2])

Benign images barely move under squeezing; adversarial perturbations, tuned to the exact
pixels, often do. The detector is unsupervised: ``fit`` only sets the threshold at the
requested false-positive rate on benign images. One forward pass of ``x`` is shared by all
squeezers, so scoring costs ``1 + S`` classifier forwards per image.

Squeezers are defence specs (``defense_from_spec``). Without them the detector uses Xu
et al.'s joint configuration for the input size seen at fit time: bit depth 5, median 2 x 2
and non-local means 13-3-2 (search-patch-strength) for inputs of at most 64 px (CIFAR-10),
and bit depth 5, median 2 x 2, non-local means 11-3-4 for larger ones (ImageNet). The
resolved specs are recorded in ``fit_info["squeezers"]`` and in :meth:`FeatureSqueezing.describe`.

The score is differentiable (``score(x, create_graph=True)``): bit depth and non-local means
pass the BPDA identity gradient, the median its real gradient (to the selected pixels), so
adaptive attacks can add the score to their loss. Example::

    detector = create_detector("feature-squeezing", squeezers=["bit-depth:bits=4", "median:size=3"])
    detector.fit(classifier, benign)                  # threshold at 5 % benign false positives
    detector.squeezer_scores(x_adv)                   # B x 2: the L1 distance per squeezer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls.core.options import option
from idls.defenses.detectors.base import DETECTORS, Detector, DetectorOptions
from idls.errors import UserError, check_images
from idls.system import Classifier
from idls.transforms import InputTransform, defense_from_spec

#: the largest input side that gets Xu et al.'s CIFAR-10 configuration by default
SMALL_INPUT_MAX = 64
#: Xu et al.'s joint configuration for CIFAR-10-sized inputs
SMALL_INPUT_SQUEEZERS = ("bit-depth:bits=5", "median:size=2", "non-local-means:search=13,patch=3,strength=2")
#: Xu et al.'s joint configuration for ImageNet-sized inputs
LARGE_INPUT_SQUEEZERS = ("bit-depth:bits=5", "median:size=2", "non-local-means:search=11,patch=3,strength=4")


def default_squeezers(side: int) -> tuple[str, ...]:
    """Xu et al.'s joint squeezers for inputs whose larger side is ``side`` pixels."""
    return SMALL_INPUT_SQUEEZERS if side <= SMALL_INPUT_MAX else LARGE_INPUT_SQUEEZERS


def build_squeezers(specs: tuple[str, ...]) -> list[InputTransform]:
    """The transforms named by defence specs (``'median:size=2'``); a bad spec is a one-line :class:`UserError`."""
    squeezers = []
    for spec in specs:
        try:
            squeezers.append(defense_from_spec(spec))
        except UserError as exc:
            raise UserError(f"feature-squeezing squeezer {spec!r}: {exc}") from None
    return squeezers


@dataclass(frozen=True, eq=False, kw_only=True)
class SqueezingOptions(DetectorOptions):
    """Options of :class:`FeatureSqueezing`."""

    squeezers: tuple[str, ...] | None = option(
        None, "defence specs of the squeezers, e.g. [bit-depth:bits=5, median:size=2, "
              "'non-local-means:search=13,patch=3,strength=2'] (null: Xu et al.'s joint configuration "
              "for the input size: 13-3-2 non-local means up to 64 px, 11-3-4 above)")

    def check(self) -> None:
        super().check()
        if self.squeezers is None:
            return
        specs = (self.squeezers,) if isinstance(self.squeezers, str) else self.squeezers
        specs = tuple(specs) if isinstance(specs, list) else specs
        if not isinstance(specs, tuple) or not specs or not all(isinstance(s, str) for s in specs):
            raise UserError(f"squeezers must be a non-empty list of defence specs such as "
                            f"[bit-depth:bits=5, median:size=2], got {self.squeezers!r}")
        build_squeezers(specs)  # every spec must name a defence with valid options
        self._set("squeezers", specs)


@DETECTORS.register("feature-squeezing")
class FeatureSqueezing(Detector):
    """Feature squeezing: the largest L1 change of the softmax vector under any squeezer (see the module).

    Attributes (after ``fit`` or ``load_detector``):
        specs: the resolved squeezer specs (the option, or Xu et al.'s defaults for the fit size).
        squeezers: the transforms built from them, in the same order.
    """

    name = "feature-squeezing"
    Options: ClassVar[type[DetectorOptions]] = SqueezingOptions
    needs_adversarial = False
    differentiable_score = True

    options: SqueezingOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.specs: tuple[str, ...] | None = None
        self.squeezers: list[InputTransform] = []
        if self.options.squeezers is not None:
            self._use(self.options.squeezers)

    def _use(self, specs: tuple[str, ...]) -> None:
        self.specs = tuple(specs)
        self.squeezers = build_squeezers(self.specs)

    # -- the Detector hooks -------------------------------------------------------------------
    def _fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None, *, progress: bool) -> None:
        """Resolve the default squeezers from the size of the fit images (``N x C x H x W``); nothing is learnt."""
        if self.options.squeezers is None:
            self._use(default_squeezers(max(benign.shape[-2:])))

    def fit(self, classifier: Classifier, benign: Tensor, adversarial: Tensor | None = None, *,
            progress: bool = False) -> FeatureSqueezing:
        """:meth:`Detector.fit`, recording the resolved squeezer specs in ``fit_info["squeezers"]``."""
        super().fit(classifier, benign, adversarial, progress=progress)
        self.fit_info["squeezers"] = list(self.specs or ())
        return self

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Nothing is learnt; rebuild the squeezers recorded at fit time (``fit_info`` is restored first)."""
        recorded = self.fit_info.get("squeezers")
        if self.options.squeezers is None and recorded:
            self._use(tuple(recorded))

    def _squeezers_for(self, x: Tensor) -> list[InputTransform]:
        if not self.squeezers:  # a detector bound to a classifier without fit: resolve by the image size
            self._use(default_squeezers(max(x.shape[-2:])))
        return self.squeezers

    def _squeezer_scores(self, x: Tensor) -> Tensor:
        """One batch ``B x C x H x W`` -> ``B x S`` L1 distances (in the autograd graph of ``x`` when enabled)."""
        classifier = self.classifier
        assert classifier is not None
        probabilities = torch.softmax(classifier(x), dim=1)                       # B x K
        distances = [(probabilities - torch.softmax(classifier(squeeze(x)), dim=1)).abs().sum(dim=1)
                     for squeeze in self._squeezers_for(x)]
        return torch.stack(distances, dim=1)

    def _score(self, x: Tensor) -> Tensor:
        return self._squeezer_scores(x).amax(dim=1)

    # -- per-squeezer scores ------------------------------------------------------------------
    def squeezer_scores(self, x: Tensor, *, create_graph: bool = False) -> Tensor:
        """``B x S``: the L1 distance between the softmax vectors of ``x`` and of each squeezer's output.

        Column ``j`` belongs to ``specs[j]``; :meth:`score` is the row maximum. Batched and
        without gradients like :meth:`Detector.score` unless ``create_graph=True``.
        """
        if self.classifier is None:
            raise UserError(f"detector {self.name!r} is not fitted; call fit(...) or load a saved detector")
        check_images(x, name="images to score")
        if create_graph:
            return self._squeezer_scores(x)
        outputs = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.options.batch_size):
                outputs.append(self._squeezer_scores(x[start:start + self.options.batch_size]).float())
        return torch.cat(outputs) if outputs else x.new_zeros(0, len(self.squeezers))

    def describe(self) -> str:
        """E.g. ``'feature-squeezing(bit-depth(5), median(2x2), non-local-means(13-3-2))'`` (``(xu-joint)`` before fit)."""
        if not self.squeezers:
            return f"{self.name}(xu-joint)"
        return f"{self.name}({', '.join(s.describe() for s in self.squeezers)})"


__all__ = ["LARGE_INPUT_SQUEEZERS", "SMALL_INPUT_MAX", "SMALL_INPUT_SQUEEZERS", "FeatureSqueezing",
           "SqueezingOptions", "build_squeezers", "default_squeezers"]
