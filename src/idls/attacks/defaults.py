"""Default settings of the joint attacks (ADV², AdvEdge), per interpreter, framework and input size.

One table, one lookup (:func:`joint_defaults`); every value can be overridden by
the attack's keyword arguments.

Sources. ImageNet-size rows (input side >= 128 px) follow paper 001, Appendix B
(Table 10: PGD; Table 11: StAdv; iteration counts and the MASK bilevel counts)
and the docs/design.md (§4: warm start CAM 400, RTS 300, GRAD 300, MASK 400); they have
not been re-measured here (no pretrained ImageNet classifier offline).
Small-input rows (CIFAR 32 px, the embedded 64 px set) were tuned on the
pretrained CIFAR ResNet-20 (lossless + JPEG CIFAR-10 test images it classifies
correctly, targeted, eps 8/255). What mattered most: a *smaller sign step in the
joint phase* (``joint_step_size``; 0.25/255 for CAM/RTS/MASK, 0.1/255 for GRAD)
after a warm start at 1/255. These rows also stop each sample once its map distance has
converged (``stop_patience`` checks without a ``stop_tolerance`` relative improvement, with
the prediction ``stop_margin`` logits on target; :mod:`idls.attacks.joint_stopping`).
The table is the ``'paper'`` level of the ``budget`` knob (:mod:`idls.attacks.budgets`
declares ``'fast'`` and ``'best'``). The quality and cost measured with these defaults
are in docs/benchmarks.md (written by ``benchmarks/write_docs.py`` from the
benchmarks' JSON); the tuning experiments behind them are recorded in
docs/notes/measured.md. MASK's own maps vary with the seed of its jitter, so its
benign maps are a moving target: the region term of :mod:`idls.attacks.joint_mask`
and frequent real-map candidates (``reset_every``) are what its rows rely on.

Lambda scale. The interpretation loss is the *mean* squared error between maps
in [0, 1] at the interpreter's native resolution. The paper's coefficients are
for sums of squares (GRAD, RTS) or per-cell means (CAM), so they convert by
the number of map cells: CAM 0.204 on a 7 x 7 mean-of-sums ~ 10 = the end of
the ramp of docs/design.md §4 c = 5 -> 2c; RTS 0.002 x 56 x 56 cells ~ 6; GRAD 0.007 x
56 x 56 ~ 22, inside the range of the tuned phases c = 10 -> 10 .. 500. A mean
error does not grow with the map size, so one coefficient serves all sizes.
With sign steps only the *ratio* of the two gradients matters, so lambda is
forgiving. The
MASK bilevel loop takes separate sign steps for the two goals, so there lambda
has no effect (its balance is ``max_step`` and ``margin``); on C&W/StAdv it
weights the look-ahead error against the framework's own losses.

Lambda schedules (:class:`LambdaSchedule` in :mod:`idls.attacks.joint`):
``'ramp'`` c -> 2c linearly over the joint steps (CAM, Grad-CAM, RTS);
``'phases'`` c times the multipliers of :data:`GRAD_PHASES` (GRAD, IG; the
reference code's 301/201/101/101 steps at 1, 4, 10, 50 x c); ``'constant'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from idls.attacks.budgets import DEFAULT_BUDGET, LARGE, SMALL, budget_level
from idls.errors import UserError

Schedule = Literal["ramp", "phases", "constant"]
SCHEDULES: tuple[str, ...] = ("ramp", "phases", "constant")
#: the defaults tables: a framework attack names the one it uses (its ``joint_table``)
TABLES: tuple[str, ...] = ("pgd", "cw", "stadv")
#: the interpreter families with tuned rows (an interpreter declares its ``family``)
FAMILIES: tuple[str, ...] = ("grad", "cam", "rts", "mask")
#: (share of the joint steps, multiplier of c) for the 'phases' schedule
GRAD_PHASES: tuple[tuple[float, float], ...] = ((0.43, 1.0), (0.28, 4.0), (0.145, 10.0), (0.145, 50.0))
LARGE_INPUT = 128  #: input sides from here on use the paper's (ImageNet) settings
DEFAULT_CHECK_EVERY = 10  #: joint iterations between per-sample stopping checks


@dataclass(frozen=True)
class JointDefaults:
    """Settings of one joint attack (all overridable).

    Attributes:
        steps: joint iterations after the warm start.
        warm_start: plain prediction-only iterations first.
        lam: the interpretation coefficient c (see the module notes for its scale).
        schedule: how lambda evolves over the joint steps.
        label_smoothing: ``(start, end)`` probability of the target class in the
            smoothed cross-entropy (GRAD: 0.95 -> 0.99), or ``None``; ``(1, 1)``
            is the plain cross-entropy (how to switch it off in an override).
        encoder_weight: weight of the RTS encoder's cross-entropy towards the target.
        select_every: evaluate the real interpreter's map distance (for the
            best-iterate choice) every this many joint iterations (and at the last).
        joint_step_size: PGD sign-step size of the joint phase (``None``: the
            attack's ``step_size``, 1/255); the warm start always uses ``step_size``.
        inner_steps: MASK: Adam steps on the inner mask per iteration.
        lookahead_steps: MASK: differentiable look-ahead steps per iteration.
        reset_every: MASK: iterations between resets of the inner mask to a fresh MASK run
            (the real map, which is also when the best iterate is chosen).
        max_step: MASK: largest interpretation step (sign step, [0, 1] pixel scale).
        bisection_steps: MASK: bisection steps on the per-sample step size.
        margin: MASK: logit margin (target minus best other) the interpretation step must keep.
        region_weight: MASK: weight of the region term added to the look-ahead distance,
            ``p_t(phi(x; m_t)) - p_t(phi(x; 1 - m_t))`` (deleting the target map's region
            should remove the target class, deleting the rest should keep it; see
            :func:`idls.attacks.joint_mask.region_contrast`); 0 switches it off.
        check_every: joint iterations between per-sample stopping checks (step frameworks).
        stop_patience: per-sample stopping (step frameworks, see
            :class:`idls.attacks.joint_stopping.StopRule`): a sample whose best iterate leads by
            ``stop_margin`` logits stops once its best real-map distance improved by at most
            ``stop_tolerance`` (relative) over the last ``stop_patience`` checks; 0 switches it off.
        stop_tolerance: relative improvement below which a sample counts as converged.
        stop_margin: logit lead of the target class (over the best other) the best iterate needs to stop.
    """

    steps: int
    warm_start: int
    lam: float
    schedule: Schedule = "ramp"
    label_smoothing: tuple[float, float] | None = None
    encoder_weight: float = 0.0
    select_every: int = 1
    joint_step_size: float | None = None
    inner_steps: int = 4
    lookahead_steps: int = 4
    reset_every: int = 50
    max_step: float = 2 / 255
    bisection_steps: int = 12
    margin: float = 10.0
    region_weight: float = 0.0
    check_every: int = DEFAULT_CHECK_EVERY
    stop_patience: int = 0
    stop_tolerance: float = 0.0
    stop_margin: float = 0.0

    def validate(self, names: Mapping[str, str] | None = None) -> None:
        """Raise :class:`UserError` on values that cannot work.

        Args:
            names: how the caller spells each setting (e.g. ``{'region_weight':
                'mask_region_weight'}``), so that the error names the option the user typed.
        """
        def label(name: str) -> str:
            return (names or {}).get(name, name)

        for name in ("steps", "warm_start", "lam", "encoder_weight", "max_step", "region_weight", "stop_patience",
                     "stop_margin"):
            if getattr(self, name) < 0:
                raise UserError(f"{label(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.stop_tolerance < 1:
            raise UserError(f"{label('stop_tolerance')} must be in [0, 1), got {self.stop_tolerance}")
        for name in ("select_every", "inner_steps", "lookahead_steps", "reset_every", "bisection_steps",
                     "check_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{label(name)} must be >= 1, got {getattr(self, name)}")
        if self.joint_step_size is not None and self.joint_step_size <= 0:
            raise UserError(f"{label('joint_step_size')} must be > 0, got {self.joint_step_size}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown lambda schedule {self.schedule!r} ({label('schedule')}); "
                            f"choose one of: {', '.join(SCHEDULES)}")
        if self.label_smoothing is not None:
            start, end = self.label_smoothing
            if not (0 < start <= 1 and 0 < end <= 1):
                raise UserError(f"{label('label_smoothing')} must be (start, end) target probabilities in (0, 1], "
                                f"got {self.label_smoothing}")

    def override(self, names: Mapping[str, str] | None = None, **values: Any) -> JointDefaults:
        """A copy with the given non-``None`` values replaced (unknown names raise).

        ``names`` maps setting names to the caller's option names for error messages
        (see :meth:`validate`).
        """
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown joint-attack setting(s): {', '.join(sorted(unknown))}")
        changed = replace(self, **{k: v for k, v in values.items() if v is not None})
        changed.validate(names)
        return changed


# ---------------------------------------------------------------------------------
# The table: (interpreter family, framework, size class) -> settings
# ---------------------------------------------------------------------------------
_GRAD_SMOOTHING = (0.95, 0.99)

_PGD_LARGE: dict[str, JointDefaults] = {
    "grad": JointDefaults(steps=800, warm_start=300, lam=10.0, schedule="phases", label_smoothing=_GRAD_SMOOTHING,
                          select_every=10),
    "cam": JointDefaults(steps=1200, warm_start=400, lam=5.0),
    "rts": JointDefaults(steps=1200, warm_start=300, lam=5.0, encoder_weight=0.1),
    "mask": JointDefaults(steps=1000, warm_start=400, lam=1.0, schedule="constant", max_step=2 / 255, margin=10.0,
                          region_weight=3.0),
}
# per-sample stopping of the small-input PGD rows (tuned on CIFAR training photos: the map L1 of RTS has plateaus
# while lambda ramps, and GRAD's improves mostly in the later phases, so they wait longer)
_STOP = {"stop_tolerance": 0.01, "stop_margin": 1.0}
_PGD_SMALL: dict[str, JointDefaults] = {
    "grad": JointDefaults(steps=400, warm_start=20, lam=10.0, schedule="phases", label_smoothing=_GRAD_SMOOTHING,
                          select_every=5, joint_step_size=0.1 / 255, stop_patience=5, **_STOP),
    "cam": JointDefaults(steps=300, warm_start=40, lam=5.0, joint_step_size=0.25 / 255, stop_patience=3, **_STOP),
    "rts": JointDefaults(steps=300, warm_start=40, lam=5.0, encoder_weight=0.1, joint_step_size=0.25 / 255,
                         stop_patience=6, **_STOP),
    "mask": JointDefaults(steps=240, warm_start=20, lam=1.0, schedule="constant", reset_every=20,
                          joint_step_size=0.25 / 255, max_step=0.5 / 255, margin=5.0, region_weight=3.0,
                          bisection_steps=8, lookahead_steps=2),
}
# Adam frameworks: the joint term is added to the framework's own objective (margin loss, L2 or flow).
_ADAM_LARGE: dict[str, JointDefaults] = {
    "grad": JointDefaults(steps=800, warm_start=0, lam=70.0, schedule="constant", select_every=10),
    "cam": JointDefaults(steps=600, warm_start=0, lam=30.0, schedule="constant"),
    "rts": JointDefaults(steps=600, warm_start=0, lam=120.0, schedule="constant", encoder_weight=0.1),
    "mask": JointDefaults(steps=1000, warm_start=0, lam=30.0, schedule="constant", region_weight=3.0),
}
_ADAM_SMALL: dict[str, JointDefaults] = {
    "grad": JointDefaults(steps=300, warm_start=0, lam=300.0, schedule="constant", select_every=5),
    "cam": JointDefaults(steps=300, warm_start=0, lam=30.0, schedule="constant"),
    "rts": JointDefaults(steps=300, warm_start=0, lam=30.0, schedule="constant", encoder_weight=0.1),
    "mask": JointDefaults(steps=200, warm_start=0, lam=30.0, schedule="constant", reset_every=25, region_weight=3.0),
}
# StAdv's flow moves CAM-like maps less per unit of loss than C&W's additive noise, so CAM-like rows take a
# larger lambda there; against GRAD the joint run from the clean image leaves some images unfooled at lambda 300,
# so it starts from a short plain StAdv run (docs/notes/measured.md).
_STADV_SMALL: dict[str, JointDefaults] = {
    **_ADAM_SMALL,
    "grad": replace(_ADAM_SMALL["grad"], warm_start=50),
    "cam": JointDefaults(steps=300, warm_start=0, lam=300.0, schedule="constant"),
}
_TABLE: dict[tuple[str, bool], dict[str, JointDefaults]] = {
    ("pgd", True): _PGD_LARGE,
    ("pgd", False): _PGD_SMALL,
    ("cw", True): _ADAM_LARGE,
    ("cw", False): _ADAM_SMALL,
    ("stadv", True): _ADAM_LARGE,
    ("stadv", False): _STADV_SMALL,
}
def joint_defaults(family: str, table: str, input_size: int, budget: str = DEFAULT_BUDGET) -> JointDefaults:
    """Default settings of an interpreter ``family`` on the framework ``table`` at ``input_size`` px.

    Args:
        family: the interpreter's declared family (``Interpreter.family``): grad, cam, rts or mask.
        table: the framework attack's declared table (``Attack.joint_table``): pgd, cw or stadv.
        input_size: the input side in pixels (from :data:`LARGE_INPUT` on, the paper's settings).
        budget: a level of :mod:`idls.attacks.budgets` (``'paper'``: the table's row as it is).
    """
    if table not in TABLES:
        raise UserError(f"unknown joint-attack defaults table {table!r}; choose one of: {', '.join(TABLES)}")
    if family not in FAMILIES:
        raise UserError(f"no joint-attack defaults for interpreter family {family!r}; "
                        f"choose one of: {', '.join(FAMILIES)}")
    large = input_size >= LARGE_INPUT
    row = _TABLE[(table, large)][family]
    level = budget_level(budget)
    tuned = level.tuned.get((table, LARGE if large else SMALL, family))
    if tuned is not None:
        return replace(row, **tuned)
    row = replace(row, steps=max(1, round(row.steps * level.scale)), warm_start=round(row.warm_start * level.scale))
    return row if level.stops else replace(row, stop_patience=0)


__all__ = [
    "DEFAULT_CHECK_EVERY",
    "FAMILIES",
    "GRAD_PHASES",
    "JointDefaults",
    "LARGE_INPUT",
    "SCHEDULES",
    "TABLES",
    "joint_defaults",
]
