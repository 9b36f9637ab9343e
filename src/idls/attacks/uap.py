"""UAP (Moosavi-Dezfooli et al. 2017): a universal perturbation built from DeepFool steps.

Algorithm 1 of "Universal adversarial perturbations", with the inner DeepFool step
run on a whole minibatch at once. From ``delta = 0``, each pass over the fit data
(seeded shuffled order, minibatches of ``batch_size``)::

    for a minibatch x (b x C x H x W):
        z = clamp(x + delta, 0, 1)
        keep the images with k(z_i) == k(x_i)              (not fooled yet)
        r_i = DeepFool(z_i)  for all of them at once       (minimal L2 perturbation flipping k(z_i))
        delta <- Proj_eps(delta + r_i)  for the flipped ones (see ``update``)

until the fooling ratio over the fit data (share of images with ``k(x + delta) != k(x)``)
reaches ``target_fooling`` (the paper's ``1 - delta``) or after ``max_passes`` passes.
The DeepFool step is the L2 one for both budgets, as in the paper (the L_inf budget
enters through the projection only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS
from idls.attacks.fit_checkpoint import FitCheckpoint
from idls.attacks.options import option
from idls.attacks.pgd import Norm
from idls.attacks.targets import TargetMode
from idls.attacks.universal import (
    BudgetOptions,
    UniversalAttack,
    epoch_order,
    predictions,
    project_delta,
)
from idls.errors import UserError
from idls.optim import flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier

if TYPE_CHECKING:
    from tqdm.std import tqdm

#: how the DeepFool perturbations of one minibatch update the universal delta
UPDATES = ("sequential", "mean", "sum")
#: added to |f| in each DeepFool step (as in the reference implementation), so a step crosses the boundary
_STEP_SLACK = 1e-4


# ---------------------------------------------------------------------------------
# Batched DeepFool
# ---------------------------------------------------------------------------------
@dataclass
class DeepFoolResult:
    """What :func:`deepfool` returns for a batch of ``b`` images.

    Attributes:
        r: ``b x C x H x W`` perturbation, ``clamp(x + (1 + overshoot) * r_total, 0, 1) - x``.
        flipped: ``b`` bool, whether ``x + r`` is classified other than ``x``.
        iterations: ``b`` int64, DeepFool steps taken per image.
    """

    r: Tensor
    flipped: Tensor
    iterations: Tensor


def deepfool(classifier: Classifier, x: Tensor, *, candidates: int = 10, steps: int = 10,
             overshoot: float = 0.02) -> DeepFoolResult:
    """Untargeted L2 DeepFool (Moosavi-Dezfooli et al. 2016) on a whole batch at once.

    Each image keeps its own iterate and stops once its label flips. Per step, for the
    images still running, one forward pass of the batch and ``candidates - 1`` backward
    passes give the per-image gradients ``w_k = grad (f_k - f_orig)`` of the logit
    differences to the ``candidates - 1`` runner-up classes (chosen once, from the logits
    of ``x``); each image steps towards its nearest linearised boundary
    ``l = argmin_k |f_k - f_orig| / ||w_k||`` by ``r = (|f_l - f_orig| + 1e-4) / ||w_l||^2 * w_l``.
    The model is evaluated at ``clamp(x + (1 + overshoot) * r_total, 0, 1)``.

    Args:
        classifier: the model, in eval mode (images of a batch must not interact).
        x: ``b x C x H x W`` images in [0, 1] on the classifier's device.
        candidates: classes considered, the original one included (capped at the class count).
        steps: at most this many steps per image.
        overshoot: the final ``r_total`` is scaled by ``1 + overshoot``.

    Returns:
        :class:`DeepFoolResult` (``r`` ``b x C x H x W``, ``flipped`` ``b``, ``iterations`` ``b``).
    """
    count = x.shape[0]
    scale = 1.0 + overshoot
    with torch.no_grad():
        logits = classifier(x)
    k = max(2, min(candidates, logits.shape[1]))
    classes = logits.topk(k, dim=1).indices                     # b x k, column 0: the original class
    original, others = classes[:, :1], classes[:, 1:]
    r_total = torch.zeros_like(x)
    flipped = torch.zeros(count, dtype=torch.bool, device=x.device)
    iterations = torch.zeros(count, dtype=torch.long, device=x.device)
    active = torch.arange(count, device=x.device)
    for _ in range(steps):
        point = (x[active] + scale * r_total[active]).clamp(0.0, 1.0).requires_grad_(True)
        with torch.enable_grad():
            out = classifier(point)
            gaps = out.gather(1, others[active]) - out.gather(1, original[active])   # a x (k - 1), < 0
            done = out.argmax(1) != original[active, 0]
            flipped[active[done]] = True
            if bool(done.all()):
                active = active[:0]
                break
            best_distance = torch.full((active.numel(),), math.inf, device=x.device)
            best_gap = torch.zeros_like(best_distance)
            best_w = torch.zeros_like(point)
            for j in range(k - 1):
                (w,) = torch.autograd.grad(gaps[:, j].sum(), point, retain_graph=j < k - 2)
                with torch.no_grad():
                    length = w.flatten(1).norm(dim=1)
                    distance = gaps[:, j].detach().abs() / length
                    distance = torch.where(length > 0, distance, torch.full_like(distance, math.inf))
                    closer = distance < best_distance
                    best_distance = torch.where(closer, distance, best_distance)
                    best_gap = torch.where(closer, gaps[:, j].detach(), best_gap)
                    best_w = torch.where(closer.view(-1, 1, 1, 1), w, best_w)
        with torch.no_grad():
            length2 = best_w.flatten(1).pow(2).sum(1).clamp_min(1e-24)
            step = ((best_gap.abs() + _STEP_SLACK) / length2).view(-1, 1, 1, 1) * best_w
            running = ~done
            moving = active[running]
            r_total[moving] += step[running]
            iterations[moving] += 1
            active = moving
    if active.numel():
        with torch.no_grad():
            point = (x[active] + scale * r_total[active]).clamp(0.0, 1.0)
            flipped[active] = classifier(point).argmax(1) != original[active, 0]
    with torch.no_grad():
        r = (x + scale * r_total).clamp(0.0, 1.0) - x
    return DeepFoolResult(r=r, flipped=flipped, iterations=iterations)


def update_delta(delta: Tensor, r: Tensor, epsilon: float, norm: Norm, update: str) -> Tensor:
    """Fold the DeepFool perturbations ``r`` ``m x C x H x W`` into ``delta`` ``1 x C x H x W``.

    ``'sequential'``: ``delta <- Proj(delta + r_i)`` for each ``i`` in order (the paper's
    update, with every ``r_i`` computed at the minibatch's starting ``delta``);
    ``'mean'`` / ``'sum'``: ``delta <- Proj(delta + mean_i r_i)`` / ``Proj(delta + sum_i r_i)``.
    """
    if r.shape[0] == 0:
        return delta
    if update == "sequential":
        for r_i in r.split(1):
            delta = project_delta(delta + r_i, epsilon, norm)
        return delta
    folded = r.mean(0, keepdim=True) if update == "mean" else r.sum(0, keepdim=True)
    return project_delta(delta + folded, epsilon, norm)


# ---------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class UAPOptions(BudgetOptions):
    """Options of :class:`DeepFoolUAP`."""

    target_fooling: float = option(0.8, "stop once the fooling ratio over the fit data reaches this "
                                        "(the paper's 1 - delta)")
    max_passes: int = option(10, "at most this many passes over the fit data")
    batch_size: int = option(32, "images per minibatch; DeepFool runs on its not-yet-fooled images at once")
    update: str = option("sequential", "how a minibatch's DeepFool perturbations update delta: 'sequential' "
                                       "(project after each image, as the paper), 'mean' or 'sum' (then project)")
    candidates: int = option(10, "DeepFool: classes considered (top by logit, the original one included)")
    deepfool_steps: int = option(10, "DeepFool: at most this many steps per image")
    overshoot: float = option(0.02, "DeepFool: the total step is scaled by 1 + overshoot")

    def check(self) -> None:
        super().check()
        if self.target_class is not None:
            raise UserError("uap is untargeted; drop target_class")
        if not 0 < self.target_fooling <= 1:
            raise UserError(f"target_fooling must be in (0, 1], got {self.target_fooling}")
        for name in ("max_passes", "batch_size", "deepfool_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.candidates < 2:
            raise UserError(f"candidates must be >= 2 (the original class and one other), got {self.candidates}")
        if not (math.isfinite(self.overshoot) and self.overshoot >= 0):
            raise UserError(f"overshoot must be a non-negative number, got {self.overshoot}")
        if self.update not in UPDATES:
            raise UserError(f"unknown update {self.update!r}; choose one of: {', '.join(UPDATES)}")


@ATTACKS.register("uap")
class DeepFoolUAP(UniversalAttack):
    """Universal adversarial perturbation of Moosavi-Dezfooli et al. (2017), untargeted.

    Minibatches of the fit data are visited in a seeded shuffled order; the images of a
    minibatch not fooled by the current ``delta`` get their minimal DeepFool perturbation
    at ``clamp(x + delta, 0, 1)`` in one batched call (:func:`deepfool`), and those whose
    label flipped update ``delta`` (:func:`update_delta`). Passes stop once the fooling
    ratio over the fit data reaches ``target_fooling`` or after ``max_passes``.

    The batched update. The paper folds each image's perturbation into ``delta`` before
    looking at the next image; here the perturbations of one minibatch are all computed
    at the minibatch's starting ``delta``. The default, ``update='sequential'``, then
    still projects after each image in order (``delta <- Proj(delta + r_i)``), which is
    the paper's update with slightly stale ``r_i`` and, at ``batch_size=1``, exactly the
    paper's algorithm. ``'mean'`` (one averaged step per minibatch) and ``'sum'`` (the
    summed steps, then one projection) are the alternatives. Measured on the pretrained
    CIFAR ResNet-20 at the same L_inf budget, passes and fit images
    (benchmarks/uap_vs_art.py ``--updates``), the sequential update reached the highest
    fooling ratio, on the fit and on held-out images; ``'sum'`` came close, and
    ``'mean'`` stayed far behind (its step is ``1/m`` of the others', so ``delta`` hardly
    leaves the origin and more images stay unfooled, which also makes it the slowest).

    Only perturbations that flip the label enter ``delta`` (an image DeepFool cannot flip
    within ``deepfool_steps`` is skipped for this pass). The progress bar shows the
    pass's running fooling ratio (images fooled when visited); the metadata records the
    final fooling ratio on the fit data (``fit_fooling_ratio``) and the passes run
    (``passes``). Checkpoints after each pass. Options: :class:`UAPOptions`
    (``idls options uap``).
    """

    name = "uap"
    Options = UAPOptions
    modes: ClassVar[tuple[TargetMode, ...]] = (TargetMode.UNTARGETED,)
    target_fooling: float
    max_passes: int
    batch_size: int
    update: str
    candidates: int
    deepfool_steps: int
    overshoot: float

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool,
             checkpoint: FitCheckpoint) -> tuple[Tensor, dict[str, Any]]:
        """Images ``N x C x H x W``, labels ``N`` (unused: fooling is measured against the clean predictions)
        -> (``delta`` ``1 x C x H x W``, ``{'fit_fooling_ratio', 'passes'}``)."""
        device, count = classifier.device, images.shape[0]
        clean = predictions(classifier, images, None)
        delta = torch.zeros((1, *images.shape[1:]), device=device)
        start, fooling = 0, 0.0
        state = checkpoint.load()
        if state is not None:
            delta, start = state.tensors["delta"].to(device), state.epochs_done
            fooling = float(state.counters.get("fooling", 0.0))
        passes = start
        batches = math.ceil(count / self.batch_size)
        with flush_denormal(), progress_bar(total=self.max_passes * batches, initial=start * batches,
                                            desc=self.name, disable=not progress, leave=False) as bar:
            for pass_ in range(start, self.max_passes):
                if fooling >= self.target_fooling:
                    break
                delta = self._pass(classifier, images, clean, delta, pass_, bar)
                fooling = float((predictions(classifier, images, delta) != clean).float().mean())
                passes = pass_ + 1
                checkpoint.save(passes, {"delta": delta}, {"fooling": fooling})
        if passes == start:  # nothing ran after a resume: measure the loaded delta
            fooling = float((predictions(classifier, images, delta) != clean).float().mean())
        return delta, {"fit_fooling_ratio": fooling, "passes": passes}

    def _pass(self, classifier: Classifier, images: Tensor, clean: Tensor, delta: Tensor, pass_: int,
              bar: tqdm) -> Tensor:
        """One pass over the fit images ``N x C x H x W`` (clean predictions ``N``): the updated ``delta``."""
        device = classifier.device
        fooled = seen = 0
        for index in epoch_order(images.shape[0], pass_, self.seed).split(self.batch_size):
            x = images[index.to(images.device)].to(device)
            with torch.no_grad():
                z = (x + delta).clamp(0.0, 1.0)
                open_ = classifier(z).argmax(1) == clean[index.to(device)]
            fooled += int((~open_).sum())
            seen += index.numel()
            if bool(open_.any()):
                found = deepfool(classifier, z[open_], candidates=self.candidates, steps=self.deepfool_steps,
                                 overshoot=self.overshoot)
                with torch.no_grad():
                    delta = update_delta(delta, found.r[found.flipped], self.epsilon, self.norm, self.update)
            bar.update(1)
            bar.set_postfix(fooling=f"{fooled / seen:.3f}", refresh=False)
        return delta


__all__ = ["DeepFoolResult", "DeepFoolUAP", "UAPOptions", "UPDATES", "deepfool", "update_delta"]
