"""JAP (paper 004, Sec. III-E, Eq. 17): image-dependent joint perturbations from one generator per image.

For a batch ``x`` ``B x C x H x W`` the attack trains ``B`` generators at once (one
module with grouped convolutions, :func:`~idls.attacks.generators.build_generator`
with ``groups=B``), each mapping the same noise image to its own image's
perturbation, scaled into the budget by Eq. 6, with the objective of JUAP
(:class:`~idls.attacks.juap_objective.JointGeneratorObjective`, Eq. 16) summed over
the images, so every generator follows its own image's gradient. Every generator
starts from the same seeded weights, so an image's result does not depend on the
rest of its batch. Per image the attack keeps the successful iterate with the
smallest map shift (the in-graph map: the real one for CAM and RTS, the smooth
surrogate's for gradient interpreters).

Untargeted by default (the paper's Table IV reports fooling ratios) with the
least-likely loss (Eq. 8); ``mode='targeted'`` or ``'least_likely'`` uses the
target loss (Eq. 9) towards each image's target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS, Attack
from idls.attacks.generators import GENERATOR_KINDS, build_generator, scale_to_budget
from idls.attacks.juap_objective import (
    DEFAULT_FLOOR,
    JointGeneratorObjective,
    benign_reference,
    default_lam,
    optimised_map_reason,
)
from idls.attacks.options import AttackOptions, option
from idls.attacks.pgd import NORMS
from idls.attacks.targets import TargetMode
from idls.attacks.threats import LpBall
from idls.attacks.universal import default_epsilon
from idls.errors import UserError
from idls.interpreters import Interpreter, interpreter_for
from idls.optim import BestIterate, Perturbation, StepOutcome, flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier


@dataclass(frozen=True, eq=False, kw_only=True)
class JAPOptions(AttackOptions):
    """Options of :class:`JAP`."""

    untyped: ClassVar[tuple[str, ...]] = ("interpreter", "interpreter_options")

    mode: TargetMode = option(TargetMode.UNTARGETED, "'untargeted' (least-likely loss, the default), 'targeted' "
                                                     "or 'least_likely' (target loss)")
    interpreter: Any = option(help="the attacked interpreter: an Interpreter of the classifier or a registry name")
    norm: str = option("linf", "'linf' or 'l2'")
    epsilon: float | None = option(None, "budget radius on the [0, 1] scale (default as the universal attacks: "
                                         "10/255 for linf, the paper's L2 scaled to the image size)")
    generator: str = option("resnet", "generator architecture: 'resnet' or 'unet'")
    width: int = option(8, "width of each image's generator")
    steps: int = option(200, "Adam steps")
    lr: float = option(0.003, "Adam learning rate of the generators")
    lam: float | None = option(None, "weight of the interpretation term (default by interpreter family)")
    floor: float = option(DEFAULT_FLOOR, "floor of the classifier loss (delta of Eq. 16)")
    encoder_weight: float = option(1.0, "RTS: weight of the encoder shift relative to the map shift")
    interpreter_options: dict = option(factory=dict, help="options when interpreter is a name")

    def check(self) -> None:
        if not isinstance(self.interpreter, (Interpreter, str)):
            raise UserError(f"interpreter must be an Interpreter or a registry name, "
                            f"got {type(self.interpreter).__name__}")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.generator not in GENERATOR_KINDS:
            raise UserError(f"unknown generator {self.generator!r}; choose one of: {', '.join(GENERATOR_KINDS)}")
        for name in ("epsilon", "lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"lam must be a number >= 0, got {self.lam}")
        if self.steps < 1 or self.width < 4:
            raise UserError(f"steps must be >= 1 and width >= 4, got {self.steps} and {self.width}")
        self._set("interpreter_options", dict(self.interpreter_options or {}))


@ATTACKS.register("jap")
class JAP(Attack):
    """Image-dependent joint perturbations, one generator per image (see the module docstring).

    Options: :class:`JAPOptions` (``idls options jap``).
    """

    name = "jap"
    Options = JAPOptions
    interpreter: Any
    norm: str
    epsilon: float | None
    generator: str
    width: int
    steps: int
    lr: float
    lam: float | None
    floor: float
    encoder_weight: float
    interpreter_options: dict

    def variant(self) -> str:
        return f"{self.generator}-{self.norm}"

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        return optimised_map_reason(cls.name, interpreter)

    def threat(self) -> LpBall:
        if self.epsilon is None:
            raise UserError("jap has no budget until it sees an image size; pass epsilon or run it first")
        return LpBall(self.norm, self.epsilon)

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        size = tuple(int(s) for s in x.shape[1:])
        if self.epsilon is None:
            self.epsilon = default_epsilon(self.norm, size)
        real = interpreter_for(self.interpreter, classifier, **self.interpreter_options)
        reason = optimised_map_reason(self.name, real)
        if reason:
            raise UserError(reason)
        lam = default_lam(real) if self.lam is None else float(self.lam)
        batch = x.shape[0]
        reference = benign_reference(classifier, real, x).to(x.device)
        objective = JointGeneratorObjective(classifier, real.for_joint_attack(), "cmin" if targets is None else "target",
                                            lam, self.floor, self.encoder_weight)
        generators = self._generators(size, batch).to(x.device)
        noise = torch.rand((1, *size), generator=torch.Generator().manual_seed(self.seed + 1)).to(x.device)
        noise = noise.repeat(1, batch, 1, 1)
        optimizer = torch.optim.Adam(generators.parameters(), lr=self.lr)
        best = BestIterate(x)
        rows = torch.arange(batch, device=x.device)
        with flush_denormal(), progress_bar(total=self.steps, desc=self.name, disable=not self.progress, leave=False) as bar:
            for step in range(self.steps):
                delta = scale_to_budget(generators(noise).view(batch, *size), self.epsilon, self.norm)
                x_hat = (x + delta).clamp(0.0, 1.0)
                terms = objective(x_hat, reference, targets)
                pred = terms.logits.argmax(1)
                succeeded = pred == targets if targets is not None else pred != labels
                best.update(rows, StepOutcome(loss=terms.total.detach(), x_adv=x_hat.detach(), succeeded=succeeded,
                                              score=terms.shift), step)
                optimizer.zero_grad(set_to_none=True)
                terms.total.sum().backward()
                optimizer.step()
                bar.update(1)
                bar.set_postfix(success=f"{float(best.succeeded.float().mean()):.3f}", refresh=False)
        x_adv = torch.where(best.succeeded.view(-1, 1, 1, 1), best.best_x, best.latest_x)
        return Perturbation(x_adv=x_adv, iterations_to_success=best.first_success, iterations_run=self.steps,
                            success=best.succeeded)

    def _generators(self, size: tuple[int, int, int], batch: int) -> torch.nn.Module:
        """``batch`` generators in one grouped module, each with the same seeded starting weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            single = build_generator(self.generator, size, width=self.width)
        grouped = build_generator(self.generator, size, groups=batch, width=self.width)
        with torch.no_grad():
            for target, source in zip(grouped.state_dict().values(), single.state_dict().values(), strict=True):
                target.copy_(source.repeat(batch, *([1] * (source.dim() - 1))) if target.shape != source.shape
                             else source)
        return grouped


__all__ = ["JAP", "JAPOptions"]
