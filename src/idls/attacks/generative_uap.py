"""Generative universal perturbations: GAP (classifier loss only) and JUAP (paper 004, joint).

A generator ``G`` (:mod:`idls.attacks.generators`, ``resnet`` or ``unet``) maps one
fixed noise image ``n ~ U(0, 1)`` (``1 x C x H x W``, seeded) to the universal
perturbation, scaled into the budget by Eq. 6: ``n_hat = min(1, eps / ||G(n)||_p) G(n)``.
Training (Algorithm 1) runs Adam on ``G``'s weights over minibatches of the fit
data, minimising the mean over the batch of Eq. 16
(:class:`~idls.attacks.juap_objective.JointGeneratorObjective`). ``gap`` is the
same generator trained with the classifier loss alone; ``juap`` adds the
interpreter term for one interpreter (CAM, Grad-CAM, RTS, Grad, ...; not MASK,
whose map is itself an optimisation).

Example::

    juap = create_attack("juap", interpreter="cam", generator="resnet", norm="linf")
    perturbation = juap.fit(classifier, fit_data, progress=True)   # UniversalPerturbation
    result = juap.run(classifier, x_test, y_test)

The saved perturbation also holds the generator's weights and the noise
(``generator.*``, ``noise``), so :func:`generator_from` can rebuild the generator
and draw further perturbations from new noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from idls.attacks.base import ATTACKS
from idls.attacks.fit_checkpoint import (
    FitCheckpoint,
    load_optimizer_tensors,
    optimizer_tensors,
)
from idls.attacks.generators import GENERATOR_KINDS, build_generator, scale_to_budget
from idls.attacks.juap_objective import (
    CLASSIFIER_LOSSES,
    DEFAULT_FLOOR,
    JointGeneratorObjective,
    benign_reference,
    default_lam,
    optimised_map_reason,
)
from idls.attacks.options import option
from idls.attacks.targets import TargetMode
from idls.attacks.universal import (
    BudgetOptions,
    UniversalAttack,
    UniversalPerturbation,
    epoch_order,
    predictions,
)
from idls.errors import UserError
from idls.interpreters import Interpreter, interpreter_for
from idls.optim import flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier

#: the paper's Adam learning rate
PAPER_LR = 2e-4


@dataclass(frozen=True, eq=False, kw_only=True)
class GenerativeOptions(BudgetOptions):
    """Options of the generator-based universal attacks (GAP, JUAP)."""

    generator: str = option("resnet", "generator architecture: 'resnet' (R-JUAP) or 'unet' (U-JUAP)")
    loss: str = option("cmin", "classifier loss: 'cmin' (least-likely class, Eq. 8, the paper's default), "
                               "'ce' (Eq. 7) or 'target' (Eq. 9, with target_class)")
    floor: float = option(DEFAULT_FLOOR, "floor of the classifier loss (delta of Eq. 16)")
    epochs: int = option(30, "passes over the fit data")
    batch_size: int = option(32, "images per Adam step")
    lr: float = option(PAPER_LR, "Adam learning rate of the generator (the paper's 2e-4)")
    width: int | None = option(None, "generator width (default: 32 up to 64 px, 64 above)")
    levels: int | None = option(None, "generator's stride-2 levels (default: resnet 2, unet min(5, log2(side) - 2)); "
                                      "resnet with 0 keeps the full resolution")

    def check(self) -> None:
        super().check()
        if self.generator not in GENERATOR_KINDS:
            raise UserError(f"unknown generator {self.generator!r}; choose one of: {', '.join(GENERATOR_KINDS)}")
        if self.loss not in CLASSIFIER_LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; choose one of: {', '.join(CLASSIFIER_LOSSES)}")
        if (self.loss == "target") != (self.target_class is not None) and self.perturbation is None:
            raise UserError("loss='target' and target_class go together: pass both (a targeted universal "
                            "perturbation) or neither")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if self.width is not None and self.width < 4:
            raise UserError(f"width must be >= 4, got {self.width}")
        if self.levels is not None and self.levels < 0:
            raise UserError(f"levels must be >= 0, got {self.levels}")


@dataclass(frozen=True, eq=False, kw_only=True)
class JUAPOptions(GenerativeOptions):
    """Options of :class:`JUAP`: the generative options plus the attacked interpreter."""

    untyped: ClassVar[tuple[str, ...]] = ("perturbation", "interpreter", "interpreter_options")

    interpreter: Any = option(help="the attacked interpreter: an Interpreter of the classifier or a registry name")
    lam: float | None = option(None, "weight of the interpretation term (default by interpreter family; "
                                     "0 trains the generator like GAP)")
    encoder_weight: float = option(1.0, "RTS: weight of the encoder shift relative to the map shift")
    interpreter_options: dict = option(factory=dict, help="options when interpreter is a name")

    def check(self) -> None:
        super().check()
        if not isinstance(self.interpreter, (Interpreter, str)):
            raise UserError(f"interpreter must be an Interpreter or a registry name, "
                            f"got {type(self.interpreter).__name__}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise UserError(f"lam must be a number >= 0, got {self.lam}")
        self._set("interpreter_options", dict(self.interpreter_options or {}))


class GenerativeUAP(UniversalAttack):
    """Shared fitting loop of the generator-based universal attacks (see the module docstring).

    Subclasses say which interpreter, if any, the objective includes (:meth:`_interpreter`) and
    with which weight (:meth:`_lam`). The progress bar shows the epoch's running fooling ratio
    and mean map shift; a checkpoint after each epoch holds the generator and Adam state.
    """

    Options = GenerativeOptions
    modes: ClassVar[tuple[TargetMode, ...]] = (TargetMode.UNTARGETED, TargetMode.TARGETED)
    generator: str
    loss: str
    floor: float
    epochs: int
    batch_size: int
    lr: float
    width: int | None
    levels: int | None

    def variant(self) -> str:
        """Generator (with ``-levels<k>`` when set), loss, norm and target class, e.g. ``'resnet-cmin-linf'``."""
        levels = "" if self.levels is None else f"-levels{self.levels}"
        return f"{self.generator}{levels}-{self.loss}-{super().variant()}"

    def _interpreter(self, classifier: Classifier) -> Interpreter | None:
        """The real interpreter whose benign maps the objective keeps, or ``None``."""
        return None

    def _lam(self, interpreter: Interpreter | None) -> float:
        return 0.0

    def _encoder_weight(self) -> float:
        return 0.0

    def build_generator(self, image_size: tuple[int, int, int]) -> nn.Module:
        """A fresh generator for images ``C x H x W``, its weights seeded with the attack's seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build_generator(self.generator, image_size, width=self.width, levels=self.levels)

    def noise(self, image_size: tuple[int, int, int]) -> Tensor:
        """The fixed noise input ``1 x C x H x W``, uniform in [0, 1) (Eq. 5), seeded."""
        return torch.rand((1, *image_size), generator=torch.Generator().manual_seed(self.seed + 1))

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool,
             checkpoint: FitCheckpoint) -> tuple[Tensor, dict[str, Any]]:
        device, count, size = classifier.device, images.shape[0], tuple(int(s) for s in images.shape[1:])
        real = self._interpreter(classifier)
        lam = self._lam(real)
        reference = benign_reference(classifier, real if lam > 0 else None, images)
        objective = JointGeneratorObjective(classifier, real.for_joint_attack() if real is not None and lam > 0 else None,
                                            self.loss, lam, self.floor, self._encoder_weight())
        generator = self.build_generator(size).to(device)
        noise = self.noise(size).to(device)
        optimizer = torch.optim.Adam(generator.parameters(), lr=self.lr)
        start = 0
        state = checkpoint.load()
        if state is not None:
            generator.load_state_dict({k[len("generator."):]: v for k, v in state.tensors.items()
                                       if k.startswith("generator.")})
            load_optimizer_tensors(optimizer, state.tensors)
            start = state.epochs_done
        target = None if self.target_class is None else torch.tensor(self.target_class, device=device)
        batches = math.ceil(count / self.batch_size)
        history: list[dict[str, float]] = []
        with flush_denormal(), progress_bar(total=self.epochs * batches, initial=start * batches,
                                            desc=self.name, disable=not progress, leave=False) as bar:
            for epoch in range(start, self.epochs):
                fooled = seen = 0
                shift_sum = 0.0
                for index in epoch_order(count, epoch, self.seed).split(self.batch_size):
                    x = images[index.to(images.device)].to(device)
                    ref = reference.take(index).to(device)
                    delta = scale_to_budget(generator(noise), self.epsilon, self.norm)
                    terms = objective((x + delta).clamp(0.0, 1.0), ref,
                                      None if target is None else target.expand(index.numel()))
                    optimizer.zero_grad(set_to_none=True)
                    terms.total.mean().backward()
                    optimizer.step()
                    fooled += int((terms.logits.argmax(1) != ref.pred).sum())
                    shift_sum += float(terms.shift.sum())
                    seen += index.numel()
                    bar.update(1)
                    bar.set_postfix(fooling=f"{fooled / seen:.3f}", map_shift=f"{shift_sum / seen:.4f}", refresh=False)
                history.append({"fooling": fooled / seen, "map_shift": shift_sum / seen})
                checkpoint.save(epoch + 1, {**{f"generator.{k}": v for k, v in generator.state_dict().items()},
                                            **optimizer_tensors(optimizer)})
        with torch.no_grad():
            delta = scale_to_budget(generator(noise), self.epsilon, self.norm)
        fooling = float((predictions(classifier, images, delta) != reference.pred).float().mean())
        self._fitted = {**{f"generator.{k}": v.detach().cpu() for k, v in generator.state_dict().items()},
                        "noise": noise.cpu()}
        return delta, {"fit_fooling_ratio": fooling, "lam": lam, "history": history,
                       "generator": self.generator, "generator_width": self.width, "generator_levels": self.levels}

    def _fitted_tensors(self) -> dict[str, Tensor]:
        """The generator's weights (``generator.*``) and its noise (``noise``), saved with the perturbation."""
        return self._fitted


def generator_from(perturbation: UniversalPerturbation) -> tuple[nn.Module, Tensor]:
    """Rebuild the generator and its noise ``1 x C x H x W`` saved with a GAP/JUAP perturbation."""
    if "noise" not in perturbation.tensors:
        raise UserError("this universal perturbation holds no generator (it was not fitted by gap or juap)")
    generator = build_generator(perturbation.metadata.get("generator", "resnet"), perturbation.image_size,
                                width=perturbation.metadata.get("generator_width"),
                                levels=perturbation.metadata.get("generator_levels"))
    generator.load_state_dict({k[len("generator."):]: v for k, v in perturbation.tensors.items()
                               if k.startswith("generator.")})
    return generator.eval(), perturbation.tensors["noise"]


@ATTACKS.register("gap")
class GAP(GenerativeUAP):
    """Generative universal perturbation trained with the classifier loss only (GAP / GUAP's noise branch).

    Options: :class:`GenerativeOptions` (``idls options gap``).
    """

    name = "gap"


@ATTACKS.register("juap")
class JUAP(GenerativeUAP):
    """Joint universal perturbation (paper 004): fools the classifier, keeps one interpreter's maps.

    ``generator='resnet'`` is R-JUAP, ``'unet'`` U-JUAP. Options: :class:`JUAPOptions`
    (``idls options juap``).
    """

    name = "juap"
    Options = JUAPOptions
    interpreter: Any
    lam: float | None
    encoder_weight: float
    interpreter_options: dict

    def _interpreter(self, classifier: Classifier) -> Interpreter:
        interpreter = interpreter_for(self.interpreter, classifier, **self.interpreter_options)
        reason = optimised_map_reason(self.name, interpreter)
        if reason:
            raise UserError(reason)
        return interpreter

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        return optimised_map_reason(cls.name, interpreter)

    def variant(self) -> str:
        """As GAP's, with ``-lam<value>`` when ``lam`` was set explicitly (e.g. the ``lam=0`` ablation)."""
        return super().variant() + ("" if self.lam is None else f"-lam{self.lam:g}")

    def _lam(self, interpreter: Interpreter | None) -> float:
        assert interpreter is not None
        return default_lam(interpreter) if self.lam is None else float(self.lam)

    def _encoder_weight(self) -> float:
        return self.encoder_weight

    def recorded_options(self) -> dict[str, Any]:
        options = super().recorded_options()
        if not isinstance(options.get("interpreter"), str):
            options["interpreter"] = getattr(self.interpreter, "name", None)
        return options


__all__ = ["GAP", "JUAP", "GenerativeOptions", "GenerativeUAP", "JUAPOptions", "generator_from"]
