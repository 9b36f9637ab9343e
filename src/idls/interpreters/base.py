"""The interpreter contract shared by Grad, IG, CAM, Grad-CAM, RTS and MASK.

Every interpreter follows Captum's uniform ``attribute`` call but, unlike Captum,
can return its map *inside* the autograd graph (``create_graph=True``), because
the joint attacks back-propagate through it (DESIGN §1).

Maps are ``B x h x w`` at the interpreter's native resolution with values in
[0, 1]; high means important.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from idls.system import Classifier

EPS = 1e-12


def minmax_normalize(maps: Tensor, eps: float = EPS) -> Tensor:
    """Per-sample min-max normalisation of ``B x h x w`` maps to [0, 1] (differentiable)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


class Interpreter(nn.Module):
    """Base class: explain ``classifier``'s decision for a batch of [0, 1] images.

    Subclasses implement :meth:`_attribute`; callers use :meth:`attribute`.
    """

    name: ClassVar[str] = "interpreter"
    #: gradients of the map w.r.t. the input need the smooth-ReLU surrogate (GRAD, IG)
    needs_smooth_surrogate: ClassVar[bool] = False

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def explained_class(self, x: Tensor, target: Tensor | int | None) -> Tensor:
        """The classes to explain: ``target`` if given, else the predicted class (``B`` long)."""
        if target is None:
            with torch.no_grad():
                return self.classifier(x).argmax(1)
        if isinstance(target, int):
            return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
        return target.to(device=x.device, dtype=torch.long)

    def attribute(self, x: Tensor, target: Tensor | int | None = None, *, create_graph: bool = False) -> Tensor:
        """Attribution maps ``B x h x w`` in [0, 1].

        Args:
            x: images ``B x C x H x W`` in [0, 1].
            target: classes to explain (``B`` long or int); default: the prediction.
            create_graph: keep the map differentiable w.r.t. ``x`` (for joint attacks).
        """
        cls = self.explained_class(x, target)
        if create_graph:
            return self._attribute(x, cls, create_graph=True)
        with torch.enable_grad():
            return self._attribute(x.detach(), cls, create_graph=False).detach()

    def forward(self, x: Tensor, target: Tensor | int | None = None) -> Tensor:
        """Differentiable maps (``attribute(..., create_graph=True)``)."""
        return self.attribute(x, target, create_graph=True)

    def map_size(self, input_size: int) -> int:
        """Side length of the native map for a square input of side ``input_size``."""
        x = torch.zeros(1, 3, input_size, input_size, device=self.classifier.device)
        return int(self.attribute(x, 0).shape[-1])

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:  # pragma: no cover
        raise NotImplementedError
