"""Joint-attack cost per iteration as a ratio to one forward + backward pass (issue 3).

For every attack x interpreter row this measures one iteration of the attack's main phase
and divides it by one forward + backward pass of the classifier at the same batch size
(RTS: also by one pass of classifier + RTS network), the cost limit of docs/design.md §6.

How an iteration is timed. Each row runs its attack through the public API twice, with
``0`` and with ``span`` iterations of the main phase (no warm start, every sample runs
every iteration); the difference divided by ``span`` is one iteration, and the one-time
setup (target maps, edge weights, final evaluation) cancels. ``span`` is a multiple of
``select_every``, so the periodic real-map selection of Grad / IG is included at its
amortised cost. Targets are the clean predictions, so every sample succeeds at every
iteration and that selection runs on the whole batch (the worst case). C&W runs one
binary-search round without abort-early. ADV²-MASK: the outer iteration (prediction step
+ inner + look-ahead + bisection + success check) is timed as above with its resets
switched off (an interpreter of 0 MASK steps and a fixed target map keep its setup
cheap); one reset = one full MASK run, timed per MASK step and scaled to the
interpreter's default iteration count, is added divided by ``reset_every``.
Each repeat times the denominator(s) and both runs back to back (interleaved); the
reported numbers are medians over repeats. One CPU thread; all times are the process's CPU
time (``time.process_time``), because on a shared machine wall time also counts the time
other processes hold the core.

Seconds per image at the default iteration counts (:func:`idls.attacks.defaults.joint_defaults`
and each attack's defaults) are *extrapolated*: setup (the 0-iteration run) + warm-start
steps x plain PGD's iteration + main-phase iterations x this row's iteration (+ MASK runs
x their cost). C&W counts all its binary-search rounds at full length (abort-early can
only shorten them), so its figure is an upper bound.

    OMP_NUM_THREADS=1 python benchmarks/joint_cost.py [--configs cifar,imagenet] [--rows pgd,adv2-cam] [--repeats 5] [--merge]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _timing import CONFIGS, RESULTS, SHARED_DATA, build_interpreter, cpu_seconds, forward_backward_step, write

from idls.attacks import create_attack
from idls.attacks.base import Attack
from idls.attacks.cw import DEFAULT_SEARCH_STEPS
from idls.attacks.cw import DEFAULT_STEPS as CW_STEPS
from idls.attacks.defaults import JointDefaults
from idls.attacks.joint_mask import lookahead_distance, region_contrast
from idls.attacks.pgd import DEFAULT_STEPS as PGD_STEPS
from idls.attacks.stadv import DEFAULT_STEPS as STADV_STEPS
from idls.data.datasets import load_images
from idls.interpreters import Interpreter
from idls.models import create_model
from idls.system import Classifier

PRETRAINED = {"cifar_resnet20": SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"}
IMAGES = {32: SHARED_DATA / "cifar10" / "images", 224: SHARED_DATA / "imagenet-samples" / "images"}
CAM_FAMILY_TARGET = 1.3  # PGD, ADV²-CAM (issue 3); by the same argument CAM-like rows and plain C&W / StAdv
GRAD_TARGET = 4.0
NO_RESETS = 10**9  # reset_every that never triggers inside a timing run
MIN_SPAN = {32: 4, 224: 2}  # by input side: iterations per timing run (rounded up to a multiple of the period)
MASK_PROBE_STEPS = {32: 10, 224: 2}  # by input side: MASK steps timed to price one reset


# ---------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One benchmarked attack.

    Attributes:
        name: table label.
        attack: attack registry name.
        interpreter: interpreter registry name (joint attacks), or ``None``.
        framework: ``'pgd'``, ``'cw'`` or ``'stadv'``.
        large_inputs: also run at 224 px (IG is too slow there to time routinely).
        max_repeats: cap on the repeats of this row (heavy rows).
    """

    name: str
    attack: str
    interpreter: str | None = None
    framework: str = "pgd"
    large_inputs: bool = True
    max_repeats: int | None = None

    @property
    def joint(self) -> bool:
        return self.interpreter is not None

    @property
    def is_mask(self) -> bool:
        return self.interpreter == "mask"


ROWS: tuple[Row, ...] = (
    Row("pgd", "pgd"),
    Row("adv2-cam", "adv2", "cam"),
    Row("adv2-gradcam", "adv2", "gradcam"),
    Row("adv2-rts", "adv2", "rts"),
    Row("adv2-grad", "adv2", "grad"),
    Row("adv2-ig", "adv2", "ig", large_inputs=False, max_repeats=2),
    Row("adv2-mask", "adv2", "mask", max_repeats=3),
    Row("advedge-cam", "advedge", "cam"),
    Row("advedge+-cam", "advedge+", "cam"),
    Row("cw", "cw", framework="cw"),
    Row("cw-adv2-cam", "adv2", "cam", framework="cw"),
    Row("stadv", "stadv", framework="stadv"),
    Row("stadv-adv2-cam", "adv2", "cam", framework="stadv"),
)


def target_ratio(row: Row, settings: JointDefaults | None) -> tuple[float | None, str]:
    """The issue's ceiling on the row's ratio, and where it comes from."""
    if row.interpreter == "grad":
        return GRAD_TARGET, "issue 3: ADV²-Grad <= 4"
    if row.is_mask:
        assert settings is not None
        return 3.0 + settings.inner_steps + settings.lookahead_steps, "issue 3: 3 + inner + look-ahead steps"
    if row.interpreter == "rts":
        return CAM_FAMILY_TARGET, "issue 3: <= 1.3 x (classifier + RTS network)"
    if row.interpreter == "ig":
        return None, "no target (IG integrates over its path: ~2-3 x IG steps passes)"
    if row.name in ("pgd", "adv2-cam"):
        return CAM_FAMILY_TARGET, "issue 3"
    return CAM_FAMILY_TARGET, "by analogy with PGD / ADV²-CAM (one forward + backward per iteration)"


# ---------------------------------------------------------------------------------
# One configuration: model, batch, denominators, attack factories
# ---------------------------------------------------------------------------------
@dataclass
class Setting:
    key: str
    classifier: Classifier
    x: torch.Tensor
    labels: torch.Tensor  # nominal labels: any class other than the target
    targets: torch.Tensor  # the clean predictions: every sample succeeds at every iteration
    weights: str
    images: str

    @property
    def size(self) -> int:
        return int(self.x.shape[-1])

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])


def load_setting(key: str, device: str | torch.device = "cpu", batch: int | None = None) -> Setting:
    """Classifier (pretrained where the shared data has it) and a batch (real images if present) on ``device``;
    ``batch`` overrides the configuration's batch size."""
    model_name, size, default_batch = CONFIGS[key]
    batch = batch or default_batch
    torch.manual_seed(0)
    path = PRETRAINED.get(model_name)
    pretrained = path is not None and path.is_file()
    classifier = create_model(model_name, weights=str(path) if pretrained else None, device=device)
    folder = IMAGES[size]
    if folder.is_dir():
        x = load_images(str(folder), input_size=size, n=batch, seed=0).images
        images = f"{batch} images of {folder}"
    else:
        x = torch.rand(batch, 3, size, size)
        images = "uniform noise"
    x = x.to(classifier.device)
    targets = classifier.predict(x)
    labels = (targets + 1) % classifier.num_classes
    return Setting(key, classifier, x, labels, targets, "pretrained" if pretrained else "random", images)


def rts_forward_backward_step(interpreter: Interpreter, x: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """One forward + backward pass of classifier + RTS network (loss on both masks and logits)."""

    def step() -> None:
        xr = x.clone().requires_grad_(True)
        out = interpreter.attribute_and_logits(xr, targets, create_graph=True)
        loss = torch.nn.functional.cross_entropy(out.logits, targets) + out.mask.mean()
        torch.autograd.grad(loss, xr)

    return step


class RowRunner:
    """Builds and runs a row's attack with ``n`` main-phase iterations on a setting."""

    def __init__(self, row: Row, setting: Setting) -> None:
        self.row, self.setting = row, setting
        classifier = setting.classifier
        self.interpreter: Interpreter | None = None
        self.mask_maps: torch.Tensor | None = None
        if row.is_mask:
            # no MASK optimisation in setup / resets; a fixed target map instead of the benign MASK map
            self.interpreter = build_interpreter("mask", classifier, iterations=0)
            side = self.interpreter.map_size(setting.size)
            self.mask_maps = torch.rand(setting.batch, side, side,
                                        generator=torch.Generator().manual_seed(0)).to(setting.x.device)
        elif row.joint:
            self.interpreter = build_interpreter(row.interpreter, classifier)
        self.defaults = self.attack(None)  # the attack with its default iteration counts
        self.settings: JointDefaults | None = (
            self.defaults.settings_for(self.interpreter, setting.size) if row.joint else None
        )

    def attack(self, n: int | None) -> Attack:
        """The row's attack; ``n`` main-phase iterations (``None``: the defaults), set up for timing."""
        row = self.row
        if not row.joint:
            if n is None:
                return create_attack(row.attack)
            options: dict[str, Any] = {"steps": n}
            if row.attack == "pgd":
                options["early_stop"] = False
            if row.attack == "cw":
                options.update(search_steps=1, abort_early=False)
            return create_attack(row.attack, **options)
        options = {"interpreter": self.interpreter, "framework": row.framework}
        if self.mask_maps is not None:
            options["target_map"] = self.mask_maps
        if n is not None:
            options.update(steps=n, warm_start=0)
            if row.framework == "cw":
                options["framework_options"] = {"search_steps": 1, "abort_early": False}
            if row.is_mask:
                options["mask_reset_every"] = NO_RESETS
        return create_attack(row.attack, **options)

    def run(self, n: int) -> None:
        s = self.setting
        self.attack(n).run(s.classifier, s.x, s.labels, s.targets)

    @property
    def period(self) -> int:
        """Iterations after which the per-iteration work repeats (Grad / IG: the selection period)."""
        return self.settings.select_every if self.settings is not None and not self.row.is_mask else 1

    def span(self) -> int:
        minimum = 1 if self.row.is_mask else MIN_SPAN[self.setting.size]
        return self.period * math.ceil(minimum / self.period)

    def denominators(self) -> dict[str, Callable[[], None]]:
        s = self.setting
        out = {"classifier": forward_backward_step(s.classifier, s.x)}
        if self.row.interpreter == "rts":
            out["classifier+rts"] = rts_forward_backward_step(self.interpreter, s.x, s.targets)
        return out


# ---------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------
@dataclass
class Differenced:
    """Medians over repeats of one differenced measurement."""

    unit_seconds: float  # (run(span) - run(0)) / span
    base_seconds: float  # run(0)
    denominators: dict[str, float]  # seconds of each denominator
    ratios: dict[str, float]  # unit / denominator, median over repeats
    repeats: int


def differenced(run: Callable[[int], object], span: int, denominators: dict[str, Callable[[], None]],
                repeats: int, timer: Callable[[Callable[[], object]], float] = cpu_seconds) -> Differenced:
    """Time ``run(span) - run(0)`` per unit, interleaved with the denominators, ``repeats`` times, on ``timer``
    (default: this process's CPU time; on a GPU, synchronised wall time)."""
    run(1)  # warm-up: allocator, lazily built modules, one full iteration
    for fn in denominators.values():
        fn()
    units, bases = [], []
    denoms: dict[str, list[float]] = {k: [] for k in denominators}
    ratios: dict[str, list[float]] = {k: [] for k in denominators}
    for r in range(repeats):
        now = {k: timer(fn) for k, fn in denominators.items()}
        times = {n: timer(lambda n=n: run(n)) for n in ((0, span) if r % 2 == 0 else (span, 0))}
        unit = (times[span] - times[0]) / span
        units.append(unit)
        bases.append(times[0])
        for k, value in now.items():
            denoms[k].append(value)
            ratios[k].append(unit / value)
    median = statistics.median
    return Differenced(median(units), median(bases), {k: median(v) for k, v in denoms.items()},
                       {k: median(v) for k, v in ratios.items()}, repeats)


def interleaved_ratios(fns: dict[str, Callable[[], object]], denominator: Callable[[], None],
                       repeats: int, timer: Callable[[Callable[[], object]], float] = cpu_seconds) -> dict[str, float]:
    """Median over repeats of each ``fn``'s time / the denominator's (timed just before it)."""
    for fn in (denominator, *fns.values()):
        fn()  # warm-up
    ratios: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            ratios[k].append(timer(fn) / timer(denominator))
    return {k: statistics.median(v) for k, v in ratios.items()}


def mask_breakdown(runner: RowRunner, denominator: Callable[[], None], repeats: int,
                   timer: Callable[[Callable[[], object]], float] = cpu_seconds) -> dict[str, float]:
    """Forward+backward equivalents of the pieces of an ADV²-MASK outer iteration: one look-ahead
    step (unrolled, then back-propagated to the image), the region contrast (forward + backward of 2B
    deleted images) and one forward pass (a bisection step or the success check). The prediction step
    is one forward+backward; an inner step costs a MASK step."""
    s, interpreter, settings = runner.setting, runner.interpreter, runner.settings
    m = runner.mask_maps
    lookahead = settings.lookahead_steps

    def lookahead_pass() -> None:
        x = s.x.clone().requires_grad_(True)
        distance = lookahead_distance(s.classifier, x, m, s.targets, m, interpreter, lookahead)
        torch.autograd.grad(distance.sum(), x)

    def region_pass() -> None:
        x = s.x.clone().requires_grad_(True)
        config = interpreter.config_for(tuple(x.shape[-2:]))
        torch.autograd.grad(region_contrast(s.classifier, x, m, s.targets, config).sum(), x)

    def forward() -> None:
        with torch.no_grad():
            s.classifier(s.x)

    pieces = {"lookahead": lookahead_pass, "region": region_pass, "forward": forward}
    ratios = interleaved_ratios(pieces, denominator, repeats, timer)
    return {"lookahead_step_ratio": ratios["lookahead"] / lookahead, "region_ratio": ratios["region"],
            "forward_ratio": ratios["forward"]}


def mask_reset_cost(setting: Setting, denominator: Callable[[], None], repeats: int,
                    timer: Callable[[Callable[[], object]], float] = cpu_seconds) -> tuple[Differenced, int]:
    """Seconds of one MASK step on the batch (differenced) and the interpreter's default step count."""
    full = build_interpreter("mask", setting.classifier).iterations

    def run(n: int) -> None:
        build_interpreter("mask", setting.classifier, iterations=n).attribute(setting.x, setting.targets)

    return differenced(run, MASK_PROBE_STEPS[setting.size], {"classifier": denominator}, repeats, timer), full


# ---------------------------------------------------------------------------------
# Seconds per image at the defaults
# ---------------------------------------------------------------------------------
def default_iterations(runner: RowRunner) -> dict[str, int]:
    """Warm-start and main-phase iterations of the row's attack at its defaults."""
    row, settings, attack = runner.row, runner.settings, runner.defaults
    if not row.joint:
        steps = {"pgd": PGD_STEPS, "cw": CW_STEPS * DEFAULT_SEARCH_STEPS, "stadv": STADV_STEPS}[row.attack]
        return {"warm_start": 0, "main": steps}
    main = settings.steps
    if row.framework == "cw":
        main *= int(getattr(attack.framework_attack(), "search_steps", 1))
    return {"warm_start": settings.warm_start, "main": main}


def mask_runs(settings: JointDefaults) -> int:
    """Full MASK runs of one ADV²-MASK attack: benign target map, start, resets (incl. the last), final map."""
    resets = settings.steps // settings.reset_every + (settings.steps % settings.reset_every != 0)
    return 3 + resets


# ---------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------
def bench_row(row: Row, setting: Setting, repeats: int, pgd_unit: float | None,
              timer: Callable[[Callable[[], object]], float] = cpu_seconds) -> dict:
    runner = RowRunner(row, setting)
    repeats = min(repeats, row.max_repeats or repeats)
    span = runner.span()
    measured = differenced(runner.run, span, runner.denominators(), repeats, timer)
    primary = "classifier+rts" if row.interpreter == "rts" else "classifier"
    ratio = measured.ratios[primary]
    unit = measured.unit_seconds
    iterations = default_iterations(runner)
    setup = measured.base_seconds
    entry: dict[str, Any] = {}
    total_iteration = unit  # what each default main-phase iteration costs in the s/image figure
    if row.is_mask:
        step, full = mask_reset_cost(setting, runner.denominators()["classifier"], repeats, timer)
        run_seconds = step.unit_seconds * full
        amortised_ratio = step.ratios["classifier"] * full / runner.settings.reset_every
        entry["components"] = {
            "outer_iteration_without_reset_ratio": ratio,
            "outer_iteration_without_reset_ms": unit * 1000,
            "mask_step_ratio": step.ratios["classifier"],
            "mask_run_steps": full,
            "mask_run_seconds": run_seconds,
            "reset_every": runner.settings.reset_every,
            "amortised_reset_ratio": amortised_ratio,
        }
        pieces = mask_breakdown(runner, runner.denominators()["classifier"], repeats, timer)
        settings = runner.settings
        entry["components"].update(pieces)
        entry["components"]["accounted_outer_ratio"] = (
            1.0 + settings.inner_steps * step.ratios["classifier"] + settings.lookahead_steps
            * pieces["lookahead_step_ratio"] + (settings.bisection_steps + 1) * pieces["forward_ratio"]
            + (pieces["region_ratio"] if settings.region_weight else 0.0)
        )
        entry["components"]["accounted_as"] = ("1 prediction + inner x MASK step + look-ahead x look-ahead step "
                                               "+ (bisection + 1) x forward + region contrast")
        ratio += amortised_ratio
        unit += run_seconds / runner.settings.reset_every
        setup += mask_runs(runner.settings) * run_seconds  # the resets are counted here, exactly
    target, source = target_ratio(row, runner.settings)
    warm = 0.0
    if iterations["warm_start"]:
        warm = iterations["warm_start"] * (pgd_unit if pgd_unit is not None else math.nan)
    total = setup + warm + iterations["main"] * total_iteration
    note = "extrapolated: setup (0-iteration run) + warm start x PGD iteration + iterations x this iteration"
    if row.is_mask:
        note += ("; MASK: iterations x the outer iteration without reset + full MASK runs (benign map, start, "
                 "each reset, final map) x their cost")
    if row.attack == "cw" or row.framework == "cw":
        note += "; C&W: all binary-search rounds at full length (upper bound)"
    entry.update(
        attack=row.attack, interpreter=row.interpreter, framework=row.framework,
        ratio=ratio, target=target, target_source=source, passed=None if target is None else bool(ratio <= target),
        ratios=measured.ratios if row.interpreter == "rts" else {"classifier": measured.ratios["classifier"]},
        ms_per_iteration=unit * 1000, ms_per_image_per_iteration=unit * 1000 / setting.batch,
        denominator_ms={k: v * 1000 for k, v in measured.denominators.items()},
        span=span, repeats=repeats, setup_seconds=setup,
        default_iterations=iterations,
        seconds_per_image=total / setting.batch, seconds_per_image_note=note,
    )
    return entry


def print_row(setting: Setting, name: str, entry: dict) -> None:
    target = "-" if entry["target"] is None else f"{entry['target']:.1f}"
    verdict = {True: "ok", False: "MISS", None: ""}[entry["passed"]]
    print(f"{setting.classifier.info.name:15s} b{setting.batch:<3d} {name:16s} {entry['ms_per_iteration']:10.1f} "
          f"{entry['ratio']:7.2f} {target:>7s} {verdict:>5s} {entry['seconds_per_image']:10.2f}", flush=True)


def run_setting(key: str, rows: list[Row], repeats: int) -> dict:
    setting = load_setting(key)
    print(f"\n{key}: {setting.classifier.info.name} {setting.size}px batch {setting.batch}, "
          f"{setting.weights} weights, {setting.images}")
    print(f"{'model':15s} {'batch':4s} {'row':16s} {'ms/iter':>10s} {'ratio':>7s} {'target':>7s} {'':>5s} "
          f"{'s/image':>10s}")
    results: dict[str, dict] = {}
    pgd_unit = None
    for row in rows:
        if key != "cifar" and not row.large_inputs:
            continue
        entry = bench_row(row, setting, repeats, pgd_unit)
        if row.name == "pgd":
            pgd_unit = entry["ms_per_iteration"] / 1000
        results[row.name] = entry
        print_row(setting, row.name, entry)
    return {
        "model": setting.classifier.info.name, "input_size": setting.size, "batch": setting.batch,
        "weights": setting.weights, "images": setting.images, "load_average_at_end": os.getloadavg(),
        "rows": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="cifar,imagenet")
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS), help="row names (pgd always runs first)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="joint_cost", help="results/<name>.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep what is already in the file and not re-run (other configurations and rows)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    wanted = {"pgd", *args.rows.split(",")}
    unknown = wanted - {r.name for r in ROWS}
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    rows = [r for r in ROWS if r.name in wanted]
    settings = {"repeats": args.repeats, "threads": torch.get_num_threads(), "clock": "process CPU time",
                "min_span": MIN_SPAN, "mask_probe_steps": MASK_PROBE_STEPS}
    results = {key: {**run_setting(key, rows, args.repeats), "settings": settings} for key in args.configs.split(",")}
    previous = RESULTS / f"{args.output}.json"
    if args.merge and previous.is_file():  # keep the configurations and rows not re-run
        old = {k: v for k, v in json.loads(previous.read_text()).items() if k in CONFIGS}
        for key, config in old.items():
            if key in results:
                results[key]["rows"] = {**config.get("rows", {}), **results[key]["rows"]}
            else:
                results[key] = config
    write(args.output, {"method": __doc__.split("\n\n    OMP_NUM_THREADS")[0], **results})


if __name__ == "__main__":
    main()
