"""The interpreter contract shared by Grad, IG, CAM, Grad-CAM, RTS and MASK.

Every interpreter follows Captum's uniform ``attribute`` call but, unlike Captum,
can return its map *inside* the autograd graph (``create_graph=True``), because
the joint attacks back-propagate through it (docs/design.md §1).

Maps are ``B x h x w`` at the interpreter's native resolution with values in
[0, 1]; high means important.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from idls.errors import UserError
from idls.system import Classifier

EPS = 1e-12


def minmax_normalize(maps: Tensor, eps: float = EPS) -> Tensor:
    """Per-sample min-max normalisation of ``B x h x w`` maps to [0, 1] (differentiable)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


@dataclass
class JointOutput:
    """What a joint attack needs from one pass at an iterate (all inside the autograd graph).

    Attributes:
        logits: ``B x N`` classifier logits.
        maps: ``B x h x w`` differentiable maps of the explained classes.
        encoder_logits: ``B x N`` logits of the interpreter's own encoder, if it has one (RTS).
    """

    logits: Tensor
    maps: Tensor
    encoder_logits: Tensor | None = None


class Interpreter(nn.Module):
    """Base class: explain ``classifier``'s decision for a batch of [0, 1] images.

    Subclasses implement :meth:`_attribute`; callers use :meth:`attribute`. A
    subclass declares what the rest of the library needs to know about it as
    class attributes and hooks, so that no code outside this package asks for
    an interpreter by name:

    * :attr:`family`: the row of the joint attacks' defaults table it uses
      (``'grad'``, ``'cam'``, ``'rts'`` or ``'mask'``; ``None``: no tuned
      defaults, joint attacks refuse it until it declares one);
    * :attr:`needs_smooth_surrogate`: its map's input gradient needs the
      smooth-ReLU surrogate (then the in-graph map is not the real map);
    * :attr:`map_is_optimised`: its map is itself the result of an optimisation
      (MASK), so joint attacks run their bilevel loop instead of
      differentiating :meth:`joint_forward`;
    * :attr:`has_encoder`: :meth:`joint_forward` also returns the logits of the
      interpreter's own encoder (RTS);
    * :attr:`seeded` and :meth:`another_run`: its map depends on a random stream
      (MASK's jitter), so evaluations also report how well two runs agree;
    * :meth:`joint_forward`: logits and differentiable maps in one pass;
    * :meth:`unavailable_reason`: why it cannot explain a given classifier;
    * :attr:`taxonomy` and :attr:`display_order`: how reports group and order it.
    """

    name: ClassVar[str] = "interpreter"
    #: row of the joint-attack defaults table (see :mod:`idls.attacks.defaults`)
    family: ClassVar[str | None] = None
    #: kind of explanation in paper 001's taxonomy (reports group by it): 'back-propagation',
    #: 'representation', 'model-guided', 'perturbation', or another word for a new kind
    taxonomy: ClassVar[str] = "other"
    #: position in tables and figures (lower first; ties by name)
    display_order: ClassVar[int] = 100
    #: gradients of the map w.r.t. the input need the smooth-ReLU surrogate (GRAD, IG)
    needs_smooth_surrogate: ClassVar[bool] = False
    #: the map is the result of an optimisation per image (MASK): joint attacks use the bilevel loop
    map_is_optimised: ClassVar[bool] = False
    #: :meth:`joint_forward` fills ``encoder_logits`` (the interpreter has an encoder of its own: RTS)
    has_encoder: ClassVar[bool] = False
    #: the map depends on a seeded random stream (MASK's jitter): :meth:`another_run` gives an independent run
    seeded: ClassVar[bool] = False

    def another_run(self) -> "Interpreter":
        """The same interpreter drawing another random stream (for :attr:`seeded` interpreters only).

        The agreement of its benign maps with this interpreter's is the ceiling of any map
        similarity an attack can reach against it.
        """
        raise NotImplementedError(f"{self.name} is not seeded: its maps do not vary between runs")

    @classmethod
    def unavailable_reason(cls, classifier: Classifier, options: dict[str, Any]) -> str | None:
        """Why this interpreter cannot explain ``classifier`` with ``options``, or ``None`` if it can."""
        return None

    @property
    def joint_map_is_exact(self) -> bool:
        """Whether :meth:`joint_forward`'s map equals the real map (else a surrogate's)."""
        return not self.needs_smooth_surrogate

    def joint_forward(self, x: Tensor, classes: Tensor | None) -> JointOutput:
        """Logits ``B x N`` and differentiable maps ``B x h x w`` of ``classes`` at images ``x``.

        ``classes`` ``None``: each image's predicted class (the explanation a user would see).

        The default runs the classifier and :meth:`attribute` with ``create_graph=True``
        (two passes); interpreters that can share one pass override it.
        """
        logits = self.classifier(x)
        classes = logits.argmax(1).detach() if classes is None else classes
        return JointOutput(logits, self.attribute(x, classes, create_graph=True))

    def for_joint_attack(self) -> Interpreter:
        """The interpreter a joint attack differentiates (called once per attacked batch).

        Gradient interpreters return a twin with a smooth surrogate; most return ``self``.
        """
        return self

    def attribute_in_chunks(self, x: Tensor, target: Tensor, chunk: int = 256) -> Tensor:
        """Real (non-differentiable) maps ``B x h x w`` of ``target`` classes, ``chunk`` images at a time."""
        parts = [self.attribute(xs, cs) for xs, cs in zip(x.detach().split(chunk), target.split(chunk), strict=True)]
        return torch.cat(parts) if parts else x.new_zeros(0)

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def explained_class(self, x: Tensor, target: Tensor | int | None) -> Tensor:
        """The classes to explain: ``target`` if given, else the predicted class (``B`` long)."""
        if target is None:
            with torch.no_grad():
                return self.classifier.check_logits(self.classifier(x)).argmax(1)
        if isinstance(target, int):
            return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
        return target.to(device=x.device, dtype=torch.long)

    def attribute(self, x: Tensor, target: Tensor | int | None = None, *, create_graph: bool = False) -> Tensor:
        """Attribution maps ``B x h x w`` in [0, 1].

        Args:
            x: images ``B x C x H x W`` in [0, 1] (another float dtype or the channels-last layout is
                converted first, ``Classifier.prepare``: the maps are in the classifier's dtype).
            target: classes to explain (``B`` long or int); default: the prediction.
            create_graph: keep the map differentiable w.r.t. ``x`` (for joint attacks).

        Raises:
            UserError: the classifier's logits (explaining its prediction) or, without ``create_graph``,
                the maps hold NaN or Inf.
        """
        x = self.classifier.prepare(x)
        if create_graph:
            return self._explain(x, target, create_graph=True)
        maps = self._explain(x, target, create_graph=False)
        broken = ~torch.isfinite(maps.flatten(1)).all(1)
        if bool(broken.any()):
            rows = broken.nonzero().flatten().tolist()
            raise UserError(f"{self.name} gave NaN or Inf maps for {len(rows)} of {maps.shape[0]} image(s) (rows "
                            f"{rows[:5]}) of {self.classifier.info.name}; check the model's weights")
        return maps

    def _explain(self, x: Tensor, target: Tensor | int | None, *, create_graph: bool) -> Tensor:
        """Maps ``B x h x w`` of images already prepared; detached unless ``create_graph``."""
        cls = self.explained_class(x, target)
        if create_graph:
            return self._attribute(x, cls, create_graph=True)
        with torch.enable_grad():
            return self._attribute(x.detach(), cls, create_graph=False).detach()

    def attribute_classes(self, x: Tensor, classes: Sequence[Tensor], *, create_graph: bool = False) -> list[Tensor]:
        """Maps ``B x h x w`` of the same images for several class choices (each ``B`` long), in order.

        The default calls :meth:`attribute` once per choice; interpreters whose maps of every class
        come from one pass (CAM) override it.
        """
        return [self.attribute(x, cls, create_graph=create_graph) for cls in classes]

    def forward(self, x: Tensor, target: Tensor | int | None = None) -> Tensor:
        """Differentiable maps (``attribute(..., create_graph=True)``)."""
        return self.attribute(x, target, create_graph=True)

    def map_size(self, input_size: int) -> int:
        """Side length of the native map for a square input of side ``input_size``."""
        x = torch.zeros(1, 3, input_size, input_size, device=self.classifier.device)
        return int(self.attribute(x, 0).shape[-1])

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:  # pragma: no cover
        raise NotImplementedError
