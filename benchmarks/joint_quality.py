"""Quality benchmark of the joint attacks (ADV², AdvEdge, AdvEdge+) against their plain baselines.

Setting (issue 3): the shared pretrained CIFAR ResNet-20, correctly classified shared CIFAR-10 test
images, targeted attacks (seeded random wrong classes), epsilon 8/255. A *cell* is one
(framework, attack, interpreter, target map) combination; its summary (``idls.evaluate.summarize``
over per-image records built by ``idls.evaluate``) is merged into the results JSON as soon as it
finishes, so re-running a subset replaces only those cells.

* Plain baselines (``pgd``, ``cw``, ``stadv``; or ``plain`` = the baseline of each framework) run once
  per batch and every selected interpreter is evaluated on their images.
* Joint attacks run once per interpreter, against it (``--frameworks`` picks PGD, C&W or StAdv).
* Every adversarial map is the REAL interpreter's map of the adversarial image for its predicted class;
  the benign map explains the (correct) benign prediction.
* Patch targets (``--targets patch``): the attack aims at a random patch map (paper 001 §5, Table 7);
  the cell also holds the adversarial map's and the benign map's distance to that patch
  (``to_target`` and ``benign_to_target`` summaries, same metric code).

Examples (always single-threaded; one process at a time)::

    OMP_NUM_THREADS=1 python benchmarks/joint_quality.py --n 100 --frameworks pgd --attacks pgd,adv2 \\
        --interpreters cam,gradcam,rts,grad
    OMP_NUM_THREADS=1 python benchmarks/joint_quality.py --n 100 --attacks adv2 --targets patch --interpreters cam
    OMP_NUM_THREADS=1 python benchmarks/joint_quality.py --table          # markdown from the JSON alone
    # two processes in parallel write separate files; merge them into the main file afterwards:
    OMP_NUM_THREADS=1 python benchmarks/joint_quality.py --n 32 --frameworks stadv --attacks adv2 --out /tmp/a.json
    python benchmarks/joint_quality.py --merge /tmp/a.json
    # a tiny smoke run of MASK (overrides are recorded in the cell and flagged in the table):
    OMP_NUM_THREADS=1 python benchmarks/joint_quality.py --n 2 --attacks adv2 --interpreters mask \\
        --attack-options '{"steps": 4, "warm_start": 2, "mask_reset_every": 2}' \\
        --interpreter-options '{"mask": {"iterations": 10}}' --out /tmp/jq_smoke.json
    # a change of an attack module flags the cells that depend on it for a re-run (code digests per module);
    # after a change that cannot alter the numbers, keep them with a recorded reason (settings are re-checked):
    python benchmarks/joint_quality.py --recertify defaults.py --reason "error messages name the keyword"
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from idls import evaluate
from idls.attacks import create_attack
from idls.attacks.defaults import JointDefaults
from idls.data.datasets import LabeledImages, interleave_classes, load_images, select_correct
from idls.errors import UserError
from idls.interpreters import create_interpreter
from idls.interpreters.base import Interpreter
from idls.models import create_model
from idls.system import Classifier

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED_DATA = Path(os.environ.get("IDLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_WEIGHTS = SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"
DEFAULT_DATA = SHARED_DATA / "cifar10" / "images"
DEFAULT_RTS = HERE / "results" / "rts_cifar" / "rts_cifar_resnet20.safetensors"
DEFAULT_OUT = HERE / "results" / "joint_quality.json"
MODEL = "cifar_resnet20"
EPSILON = 8 / 255

PLAIN_ATTACKS = ("pgd", "cw", "stadv")  #: classifier-only baselines; each is its own framework
JOINT_ATTACKS = ("adv2", "advedge", "advedge+")
FRAMEWORKS = ("pgd", "mifgsm", "cw", "stadv")  # display order; the registry (list_frameworks) decides what exists
INTERPRETER_NAMES = ("grad", "cam", "gradcam", "rts", "mask")
TARGETS = ("benign", "patch")

# Requirements of issue 3 (the --table checks).
MIN_SUCCESS = 0.95
MAX_L1_VS_BASELINE = 0.40
MIN_IOU = 0.5
MIN_IOU_VS_BASELINE = 1.4
EDGE_SLACK = 0.02  #: AdvEdge(+) may trail ADV² by this much in success and IoU
MAX_PATCH_RATIO = 0.5  #: "clearly below": adversarial-to-patch L1 at most half the benign map's
TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------
# Cells and the results file
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One row of the benchmark: ``attack`` on ``framework``, evaluated with ``interpreter``, aiming at ``target``."""

    framework: str
    attack: str
    interpreter: str
    target: str = "benign"

    @property
    def key(self) -> str:
        return "|".join((self.framework, self.attack, self.interpreter, self.target))

    @classmethod
    def from_key(cls, key: str) -> Cell:
        return cls(*key.split("|"))


def load_results(path: Path) -> dict:
    """The results file's content (``{'cells': {key: entry}}``), empty when absent."""
    if not path.exists():
        return {"cells": {}}
    return json.loads(path.read_text())


def merge_cells(path: Path, entries: Mapping[str, Mapping]) -> None:
    """Replace (or add) these cells in the results file, atomically; other cells stay."""
    results = load_results(path)
    results.setdefault("cells", {}).update(entries)
    results["updated"] = _now()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True, default=float))
    tmp.replace(path)


def merge_as_prefix(path: Path, source: Path) -> list[str]:
    """Store the cells of ``source`` (a run on the first n images) as ``prefix_summaries[n]`` of the cells
    with the same key in ``path`` (runs on more images), so that cells with n images compare on the same
    images (:func:`summary_over`). Both runs must share data, model, seed, first images and settings.

    Returns:
        The keys merged.
    """
    results, incoming = load_results(path), load_results(source).get("cells", {})
    same = ("data", "model", "seed", "image_ids_first", "overrides", "joint_settings", "interpreter_options")
    merged = {}
    for key, small in incoming.items():
        large = results.get("cells", {}).get(key)
        if large is None or large["n"] <= small["n"]:
            raise UserError(f"{key}: {path} has no cell on more than {small['n']} images to add a prefix to")
        differ = [name for name in same if large["settings"].get(name) != small["settings"].get(name)]
        if differ:
            raise UserError(f"{key}: the runs differ in {', '.join(differ)}; only a run of the same setting on the "
                            "first images can stand for a prefix")
        summary = {name: small["summary"][name] for name in IMAGE_FIELDS}
        large.setdefault("prefix_summaries", {})[str(small["n"])] = {
            **summary, "finished": small["finished"], "attack_sources": small["settings"]["attack_sources"],
            "note": "separate run on the first n images (batch composition differs; the images are the same)"}
        merged[key] = large
    merge_cells(path, merged)
    return sorted(merged)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything the runs share: the classifier, its images and how to build interpreters."""

    classifier: Classifier
    data: LabeledImages
    interpreter_options: dict[str, dict]
    attack_options: dict
    batch_size: int
    seed: int
    source: str
    weights: str
    device: str
    _interpreters: dict[str, Interpreter] = field(default_factory=dict)

    def interpreter(self, name: str) -> Interpreter:
        if name not in self._interpreters:
            options = self.interpreter_options.get(name, {})
            self._interpreters[name] = create_interpreter(name, self.classifier, **options)
        return self._interpreters[name]


def interpreter_options_for(name: str, given: Mapping[str, Mapping], rts_checkpoint: Path) -> dict:
    options = dict(given.get(name, {}))
    if name == "rts":
        options.setdefault("checkpoint", str(rts_checkpoint))
    return options


def build_attack(cell: Cell, setup: Setup):
    """The attack of a cell (targeted, seeded, epsilon 8/255 where the framework has one).

    Seeded targets and patch maps follow each image's data-set position (``run(..., indices=...)``).
    """
    if cell.attack in PLAIN_ATTACKS:
        options = {"epsilon": EPSILON} if cell.attack in ("pgd", "cw") else {}
        return create_attack(cell.attack, mode="targeted", seed=setup.seed, **options)
    options = dict(setup.attack_options)
    if cell.framework != "stadv":
        options.setdefault("epsilon", EPSILON)
    return create_attack(cell.attack, interpreter=setup.interpreter(cell.interpreter), framework=cell.framework,
                         target_map=cell.target, mode="targeted", seed=setup.seed, **options)


@dataclass
class CellRecords:
    """Per-image records of a cell: the main ones and, for patch targets, the distances to the patch."""

    main: list[dict] = field(default_factory=list)
    to_target: list[dict] = field(default_factory=list)
    benign_to_target: list[dict] = field(default_factory=list)
    attack_seconds: float = 0.0

    def summary(self) -> dict:
        out = {"summary": evaluate.summarize(self.main)}
        if self.to_target:
            out["to_target"] = evaluate.summarize(self.to_target)
            out["benign_to_target"] = evaluate.summarize(self.benign_to_target)
        return out


def map_records(base: Sequence[dict], pair: evaluate.MapPair) -> list[dict]:
    """``base`` records extended by the map fields of ``pair`` (benign vs adversarial, or target vs map)."""
    return [{**record, **fields} for record, fields in zip(base, evaluate.map_fields(pair), strict=True)]


def group_experiment(cells: Sequence[Cell], setup: Setup, n: int) -> dict:
    """The experiment (idls' one orchestrator) of a group of cells sharing one attack run."""
    first = cells[0]
    names = [cell.interpreter for cell in cells]
    config: dict = {
        "name": "joint-quality",
        "models": [{"name": MODEL, "weights": setup.weights,
                    "interpreter_options": {name: setup.interpreter_options.get(name, {}) for name in names}}],
        "data": {"source": setup.source, "n": n, "batch_size": setup.batch_size, "shuffle": False,
                 "order": "classes-interleaved", "seed": 0},
        "interpreters": names, "mode": "targeted", "seeds": [setup.seed], "device": setup.device,
    }
    if first.attack in PLAIN_ATTACKS:
        options = {"epsilon": EPSILON} if first.attack in ("pgd", "cw") else {}
        config["attacks"] = [{"name": first.attack, "options": options}]
    else:
        options = dict(setup.attack_options)
        if first.framework != "stadv":
            options.setdefault("epsilon", EPSILON)
        config.update(attacks=[{"name": first.attack, "options": options}], frameworks=[first.framework],
                      targets=[first.target])
    return config


def _target_records(store: Path, records: Sequence[Mapping], name: str) -> tuple[list[dict], list[dict]]:
    """Per-image map fields of (target map, adversarial map) and (target map, benign map), from the store's tensors."""
    from safetensors import safe_open

    to_target, benign_to_target = [], []
    for record in records:
        file, where = record["adv_path"].split("#")
        row = int(where.rsplit(":", 1)[1])
        with safe_open(str(store / file), framework="pt") as handle:
            target = handle.get_tensor(f"{name}/target_map")[row:row + 1]
            adversarial = handle.get_tensor(f"adversarial_map/{name}")[row:row + 1]
            benign = handle.get_tensor(f"benign_map/{name}")[row:row + 1]
        to_target += map_records([record], evaluate.MapPair(target, adversarial))
        benign_to_target += map_records([record], evaluate.MapPair(target, benign))
    return to_target, benign_to_target


def run_group(cells: Sequence[Cell], setup: Setup, n: int, log: Callable[[str], None], stores: Path) -> dict[str, dict]:
    """Run (or resume) a group of cells sharing one attack run through idls' experiment engine
    (its store under ``stores``), then summarise each cell from the store's records."""
    from idls.analysis.store_reader import load_store
    from idls.experiments import run_experiment
    from idls.experiments.config import experiment_from_mapping

    first = cells[0]
    attack = build_attack(first, setup)  # for the recorded settings only
    store = stores / first.key.replace("|", ".").replace("+", "plus")
    log(f"  {first.attack}/{first.framework} [{','.join(c.interpreter for c in cells)}|{first.target}] -> {store}")
    started = time.perf_counter()
    run_experiment(experiment_from_mapping(group_experiment(cells, setup, n), default_name="joint-quality"), store,
                   progress=False)
    wall = time.perf_counter() - started
    records = [r for r in load_store(store).records if r.get("kind") == "attack"]
    entries = {}
    for cell in cells:
        main = [r for r in records if r["interpreter"] == cell.interpreter]
        bucket = CellRecords(main=main, attack_seconds=sum(float(r["seconds"]) for r in main))
        if cell.target != "benign":
            bucket.to_target, bucket.benign_to_target = _target_records(store, main, cell.interpreter)
        count = len(main)
        entries[cell.key] = {
            "framework": cell.framework, "attack": cell.attack, "interpreter": cell.interpreter,
            "target": cell.target, "n": count, **bucket.summary(),
            "attack_seconds": bucket.attack_seconds, "seconds_per_image": bucket.attack_seconds / max(count, 1),
            "wall_seconds_group": wall, "shared_attack_with": [c.interpreter for c in cells] if len(cells) > 1 else [],
            "settings": settings_of(attack, setup, cell), "store": str(store.relative_to(ROOT)) if
            store.is_relative_to(ROOT) else str(store),
            "images": image_columns(main),
            "finished": _now(),
        }
    return entries


#: per-image fields kept in a cell (``images``), enough to compare two cells on their common images
IMAGE_FIELDS = ("success", "map_l1", "map_iou", "noise_rate")


def image_columns(records: Sequence[Mapping]) -> dict[str, list]:
    """``{'id': [...], field: [...]}`` of the per-image records (first image first)."""
    columns: dict[str, list] = {"id": [r["image_id"] for r in records]}
    for name in IMAGE_FIELDS:
        columns[name] = [float(r[name]) for r in records]
    return columns


def summary_over(entry: Mapping | None, n: int) -> Mapping | None:
    """A cell's summary over its first ``n`` images (the same images as another cell with ``n``), or ``None``.

    Exact when the cell ran on ``n`` images, has per-image columns (``images``) for at least ``n``, or
    holds a summary of a separate run on its first ``n`` images (``prefix_summaries``, see
    :func:`merge_as_prefix`).
    """
    if entry is None:
        return None
    if entry["n"] == n:
        return entry["summary"]
    columns = entry.get("images")
    if columns and len(columns["id"]) >= n:
        return evaluate.summarize([{name: columns[name][i] for name in IMAGE_FIELDS} for i in range(n)])
    return entry.get("prefix_summaries", {}).get(str(n))


def attack_fields(attack) -> dict:
    """The attack's public attributes as JSON values (modules such as the interpreter by name)."""
    fields = {"class": type(attack).__name__}
    for name, value in vars(attack).items():
        if name.startswith("_") or isinstance(value, Tensor):
            continue
        if isinstance(value, torch.nn.Module):
            value = getattr(value, "name", type(value).__name__)
        fields[name] = value if isinstance(value, (int, float, str, bool, type(None), dict, list)) else repr(value)
    return fields


def code_digest(source: str) -> str:
    """SHA-256 prefix of Python code without its comments and docstrings (edits of prose do not count)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:12]


def attack_sources() -> dict[str, str]:
    """Code digests of the attack modules, to tell which cells predate a change of the library."""
    folder = ROOT / "src" / "idls" / "attacks"
    return {path.name: code_digest(path.read_text()) for path in sorted(folder.glob("*.py"))}


def settings_of(attack, setup: Setup, cell: Cell) -> dict:
    """What a cell ran with (enough to reproduce it)."""
    settings = {
        "attack_sources": attack_sources(),
        "model": MODEL, "data": setup.source, "image_ids_first": setup.data.ids[:3],
        "image_ids_sha256": hashlib.sha256("\n".join(setup.data.ids).encode()).hexdigest()[:16], "seed": setup.seed,
        "batch_size": setup.batch_size, "threads": torch.get_num_threads(), "attack": attack_fields(attack),
        "interpreter_options": setup.interpreter_options.get(cell.interpreter, {}),
    }
    if cell.attack not in PLAIN_ATTACKS:
        settings["overrides"] = dict(setup.attack_options)
        settings["joint_settings"] = joint_settings_of(attack, setup, cell)
    return settings


def joint_settings_of(attack, setup: Setup, cell: Cell) -> dict:
    """The effective joint settings (defaults table + overrides) of a joint attack, as JSON values."""
    joint = attack.settings_for(setup.interpreter(cell.interpreter), setup.classifier.input_size)
    return json.loads(json.dumps(dataclasses.asdict(joint)))


#: the defaults of :class:`JointDefaults`'s optional fields, as JSON values (see :func:`changed_settings`)
NEUTRAL_SETTINGS = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(JointDefaults)
                                          if f.default is not dataclasses.MISSING}))


def changed_settings(recorded: Mapping, now: Mapping) -> list[str]:
    """Joint settings that differ between a cell's record and now. A setting added since the cell ran
    counts as unchanged at its neutral default (new settings default to the old behaviour)."""
    return sorted(name for name, value in now.items()
                  if recorded.get(name, NEUTRAL_SETTINGS.get(name, dataclasses.MISSING)) != value)


def recertify(path: Path, modules: Sequence[str], reason: str, setup: Setup) -> tuple[list[str], list[str]]:
    """Mark cells as still valid after a change of ``modules`` that cannot alter their numbers.

    Only cells whose changed modules are all in ``modules`` qualify, and a joint cell only if its
    effective settings (:func:`joint_settings_of`, with its recorded overrides) are unchanged. Each
    qualifying cell gets the current digests and a ``recertified`` record (date, module, old and new
    digest, ``reason``) in its settings.

    Returns:
        ``(recertified keys, refused keys with why)``.
    """
    results = load_results(path)
    current = attack_sources()
    done, refused = [], []
    for key, entry in results.get("cells", {}).items():
        cell = Cell.from_key(key)
        changed = changed_sources(cell, entry, current)
        if not changed:
            continue
        settings = entry["settings"]
        others = sorted(set(changed) - set(modules))
        if others:
            refused.append(f"{key} (also changed: {', '.join(others)})")
            continue
        if "joint_settings" in settings:
            given = dataclasses.replace(setup, attack_options=dict(settings.get("overrides", {})))
            differ = changed_settings(settings["joint_settings"], joint_settings_of(build_attack(cell, given), given, cell))
            if differ:
                refused.append(f"{key} (its settings changed: {', '.join(differ)})")
                continue
        for name in changed:
            settings.setdefault("recertified", []).append({
                "date": _now()[:10], "module": name, "from": settings["attack_sources"][name], "to": current[name],
                "reason": reason})
            settings["attack_sources"][name] = current[name]
        done.append(key)
    merge_cells(path, {key: results["cells"][key] for key in done})
    return done, refused


def plan(frameworks: Sequence[str], attacks: Sequence[str], interpreters: Sequence[str],
         targets: Sequence[str]) -> list[list[Cell]]:
    """Groups of cells sharing one attack run, in the order given."""
    groups: list[list[Cell]] = []
    for framework in frameworks:
        for attack in attacks:
            if attack in PLAIN_ATTACKS or attack == "plain":
                if attack not in (framework, "plain"):
                    continue  # a plain attack is its own framework
                groups.append([Cell(framework, framework, name) for name in interpreters])
                continue
            for target in targets:
                groups.extend([Cell(framework, attack, name, target)] for name in interpreters)
    if not groups:
        raise UserError(f"nothing to run: plain attacks {PLAIN_ATTACKS} only run on their own framework "
                        f"(given frameworks {list(frameworks)}, attacks {list(attacks)})")
    return groups


def build_setup(args: argparse.Namespace) -> Setup:
    torch.manual_seed(args.seed)
    classifier = create_model(MODEL, weights=str(args.weights), device=args.device)
    loaded = load_images(str(args.data), input_size=classifier.input_size, num_classes=classifier.num_classes)
    correct = interleave_classes(select_correct(classifier, loaded, len(loaded)))
    data = correct.subset(list(range(min(args.n, len(correct)))))
    if len(data) < args.n:
        print(f"warning: only {len(data)} of the {len(loaded)} images are classified correctly (asked {args.n})",
              file=sys.stderr)
    names = set(args.interpreters)
    if "rts" in names and "checkpoint" not in args.interpreter_options.get("rts", {}) and not args.rts_checkpoint.is_file():
        raise UserError(f"no RTS checkpoint at {args.rts_checkpoint}; train it with `OMP_NUM_THREADS=1 python "
                        "benchmarks/train_rts_cifar.py` (about 4 minutes; one thread reproduces the committed "
                        "sidecar's tensors_sha256) or pass --rts-checkpoint FILE")
    options = {name: interpreter_options_for(name, args.interpreter_options, args.rts_checkpoint) for name in names}
    return Setup(classifier=classifier, data=data, interpreter_options=options, attack_options=args.attack_options,
                 batch_size=args.batch_size, seed=args.seed, source=str(args.data.resolve()),
                 weights=str(args.weights.resolve()), device=args.device)


def run(args: argparse.Namespace) -> None:
    groups = plan(args.frameworks, args.attacks, args.interpreters, args.targets)
    setup = build_setup(args)
    log_path = args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with open(log_path, "a") as handle:
            handle.write(f"{_now()} {line}\n")

    log(f"start: {len(groups)} run(s), n={len(setup.data)}, batch {setup.batch_size}, out {args.out}")
    stores = args.stores or args.out.with_name(args.out.stem + "_stores")
    for cells in groups:
        entries = run_group(cells, setup, args.n, log, stores)
        merge_cells(args.out, entries)
        for key, entry in entries.items():
            s = entry["summary"]
            log(f"done {key}: n={entry['n']} success={s['success']:.3f} L1={s['map_l1']:.3f} "
                f"IoU@20={s['map_iou']:.3f} noise={s['noise_rate']:.4f} "
                f"{entry['seconds_per_image']:.2f} s/img (group wall {entry['wall_seconds_group']:.0f} s)")


# ---------------------------------------------------------------------------------
# The table (from the JSON alone)
# ---------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _check(label: str, ok: bool | None) -> str:
    return f"{label} n/a" if ok is None else f"{label} {'PASS' if ok else 'FAIL'}"


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound`` up to float rounding (0.98 vs 1.0 - 0.02)."""
    return value >= bound - TOLERANCE


def benign_checks(cell: Cell, summary: Mapping, baseline: Mapping | None, adv2: Mapping | None) -> list[str]:
    """PASS/FAIL of issue 3's requirements for a benign-target cell."""
    success, l1, iou, noise = summary["success"], summary["map_l1"], summary["map_iou"], summary["noise_rate"]
    if cell.attack == "adv2":
        base_l1 = baseline["map_l1"] if baseline else None
        base_iou = baseline["map_iou"] if baseline else None
        return [
            _check(f"ASR>={MIN_SUCCESS}", _at_least(success, MIN_SUCCESS)),
            _check(f"L1<={MAX_L1_VS_BASELINE}xbase",
                   None if base_l1 is None else _at_least(MAX_L1_VS_BASELINE * base_l1, l1)),
            _check(f"IoU>={MIN_IOU}", _at_least(iou, MIN_IOU)),
            _check(f"IoU>={MIN_IOU_VS_BASELINE}xbase",
                   None if base_iou is None else _at_least(iou, MIN_IOU_VS_BASELINE * base_iou)),
        ]
    if cell.attack in ("advedge", "advedge+"):
        if adv2 is None:
            return [_check("vs ADV²", None)]
        return [
            _check(f"ASR>=ADV²-{EDGE_SLACK}", _at_least(success, adv2["success"] - EDGE_SLACK)),
            _check(f"IoU>=ADV²-{EDGE_SLACK}", _at_least(iou, adv2["map_iou"] - EDGE_SLACK)),
            _check("noise<ADV²", noise < adv2["noise_rate"]),
        ]
    return []


def non_default(entry: Mapping) -> bool:
    """Whether a cell ran with attack overrides or interpreter options other than the RTS checkpoint."""
    settings = entry.get("settings", {})
    options = {k: v for k, v in settings.get("interpreter_options", {}).items() if k != "checkpoint"}
    return bool(settings.get("overrides") or options)


def relevant_modules(cell: Cell) -> set[str]:
    """The attack modules whose code a cell's numbers depend on (shared machinery + its own pieces)."""
    modules = {"__init__.py", "base.py", "targets.py", "pgd.py", f"{cell.framework}.py"}
    if cell.attack in PLAIN_ATTACKS:
        return modules
    modules |= {"defaults.py", "joint.py", "target_maps.py"}
    if cell.attack in ("advedge", "advedge+"):
        modules.add("edge.py")
    if cell.interpreter == "mask":
        modules |= {"joint_mask.py", "cw.py"}  # the bilevel loop reuses C&W's best-iterate tracker
    return modules


def changed_sources(cell: Cell, entry: Mapping, current: Mapping[str, str]) -> list[str]:
    """Modules the cell depends on (:func:`relevant_modules`) whose code changed since it ran (empty when
    unknown)."""
    ran = entry.get("settings", {}).get("attack_sources", {})
    relevant = relevant_modules(cell)
    return sorted(name for name, digest in ran.items() if current.get(name) != digest and name in relevant)


BENIGN_HEADER = (
    "## Benign target maps (ADV² goal: keep the benign explanation)\n\n"
    "Baseline (base) = the plain attack of the same framework (PGD: 100 steps of 1/255; C&W; StAdv) on the same "
    "images, evaluated with the same interpreter. Maps: the real interpreter on the adversarial image for its "
    "predicted class vs the benign map. IoU = top-20% IoU. noise = 1 - SSIM.\n\n"
    "| framework | interpreter | attack | n | ASR | L1 | L1/base | IoU@20 | IoU/base | IoU-ADV² | noise "
    "| noise/ADV² | s/img | checks |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
PATCH_HEADER = (
    "## Random patch target maps (paper 001 Table 7)\n\n"
    "dist(adv, patch) = L1 of the adversarial map to the patch; dist(benign, patch) = the benign map's L1 to the "
    f"same patch; PASS needs ASR >= {MIN_SUCCESS} and ratio <= {MAX_PATCH_RATIO}. dist(adv, benign) is the paper's "
    "Delta_b. IoU with a binary patch: top-20% of each map, ties go to the earlier cell in raster order.\n\n"
    "| framework | interpreter | attack | n | ASR | dist(adv, patch) | dist(benign, patch) | ratio "
    "| IoU(adv, patch) | IoU(benign, patch) | dist(adv, benign) | s/img | checks |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _row(values: Iterable[object]) -> str:
    return "| " + " | ".join(str(value) for value in values) + " |"


def benign_row(cell: Cell, entry: Mapping, baseline: Mapping | None, adv2: Mapping | None, mark: str) -> str:
    """One benign-target row: the cell's summary, its ratios to the baseline / ADV², and the checks."""
    s = entry["summary"]
    is_baseline = cell.attack == cell.framework
    vs_base = (lambda key: "-") if is_baseline else (lambda key: _fmt(_ratio(s[key], baseline and baseline[key]), 2))
    iou_vs_adv2 = None if adv2 is None else s["map_iou"] - adv2["map_iou"]
    return _row([
        cell.framework, cell.interpreter, cell.attack + mark, entry["n"], _fmt(s["success"], 2),
        _fmt(s["map_l1"]), vs_base("map_l1"), _fmt(s["map_iou"]), vs_base("map_iou"), _fmt(iou_vs_adv2),
        _fmt(s["noise_rate"], 4), _fmt(_ratio(s["noise_rate"], adv2 and adv2["noise_rate"]), 2),
        _fmt(entry["seconds_per_image"], 2), "; ".join(benign_checks(cell, s, baseline, adv2)) or "-",
    ])


def patch_row(cell: Cell, entry: Mapping, mark: str) -> str:
    """One patch-target row: distances of the adversarial and the benign map to the patch, and the checks."""
    s, to_patch, benign_to_patch = entry["summary"], entry["to_target"], entry["benign_to_target"]
    ratio = _ratio(to_patch["map_l1"], benign_to_patch["map_l1"])
    checks = [_check(f"ASR>={MIN_SUCCESS}", _at_least(s["success"], MIN_SUCCESS)),
              _check(f"ratio<={MAX_PATCH_RATIO}", None if ratio is None else _at_least(MAX_PATCH_RATIO, ratio))]
    return _row([
        cell.framework, cell.interpreter, cell.attack + mark, entry["n"], _fmt(s["success"], 2),
        _fmt(to_patch["map_l1"]), _fmt(benign_to_patch["map_l1"]), _fmt(ratio, 2), _fmt(to_patch["map_iou"]),
        _fmt(benign_to_patch["map_iou"]), _fmt(s["map_l1"]), _fmt(entry["seconds_per_image"], 2), "; ".join(checks),
    ])


def _sort_key(cell: Cell) -> tuple:
    attacks = PLAIN_ATTACKS + JOINT_ATTACKS
    return (FRAMEWORKS.index(cell.framework) if cell.framework in FRAMEWORKS else len(FRAMEWORKS),
            INTERPRETER_NAMES.index(cell.interpreter) if cell.interpreter in INTERPRETER_NAMES else 99,
            attacks.index(cell.attack) if cell.attack in attacks else 99, cell.target)


def table(results: Mapping) -> str:
    """Markdown tables (benign targets; patch targets) with the checks of issue 3."""
    cells = {Cell.from_key(key): entry for key, entry in results.get("cells", {}).items()}

    def reference(framework: str, attack: str, interpreter: str, n: int) -> tuple[Mapping | None, bool]:
        """The reference cell's summary on the same images as a cell of ``n`` (``same=True``), else over all
        of its own images (``same=False``), else ``None``."""
        entry = cells.get(Cell(framework, attack, interpreter, "benign"))
        same = summary_over(entry, n)
        if same is not None:
            return same, True
        return (entry["summary"] if entry else None), False

    current = attack_sources()
    benign_rows, patch_rows, stale, overridden, other_images = [], [], [], False, False
    for cell in sorted(cells, key=_sort_key):
        entry = cells[cell]
        mark = " *" if non_default(entry) else ""
        overridden = overridden or bool(mark)
        changed = changed_sources(cell, entry, current)
        if changed:
            stale.append(f"{cell.key} ({', '.join(changed)})")
        if cell.target == "benign":
            is_edge = cell.attack in ("advedge", "advedge+")
            adv2, adv2_same = (reference(cell.framework, "adv2", cell.interpreter, entry["n"]) if is_edge
                               else (None, True))
            baseline, baseline_same = reference(cell.framework, cell.framework, cell.interpreter, entry["n"])
            if not (adv2_same and baseline_same):
                mark += " †"
                other_images = True
            benign_rows.append(benign_row(cell, entry, baseline, adv2, mark))
        else:
            patch_rows.append(patch_row(cell, entry, mark))
    lines = [BENIGN_HEADER, *benign_rows]
    if patch_rows:
        lines += ["", PATCH_HEADER, *patch_rows]
    if overridden:
        lines += ["", "\\* non-default attack or interpreter settings (see the cell's `settings` in the JSON)."]
    if other_images:
        lines += ["", "† compared with a baseline or ADV² cell that ran on other images (a different n) and holds no "
                      "result on this cell's first n (per-image columns or a prefix summary): ratios and checks mix "
                      "image sets."]
    if stale:
        lines += ["", "Cells run before a change of these attack modules (re-run them): " + "; ".join(stale) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------
def _names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        bad = [name for name in names if name not in allowed]
        if bad or not names:
            problem = f"unknown {', '.join(bad)}" if bad else "empty list"
            raise argparse.ArgumentTypeError(f"{problem}; choose from {', '.join(allowed)}")
        return names

    return parse


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="correctly classified images (first n)")
    parser.add_argument("--interpreters", type=_names(INTERPRETER_NAMES), default=["cam", "gradcam", "rts", "grad"])
    parser.add_argument("--attacks", type=_names(PLAIN_ATTACKS + JOINT_ATTACKS + ("plain",)), default=["pgd", "adv2"],
                        help="plain baselines (pgd, cw, stadv, or 'plain' = each framework's) and joint attacks")
    parser.add_argument("--frameworks", type=_names(FRAMEWORKS), default=["pgd"])
    parser.add_argument("--targets", type=_names(TARGETS), default=["benign"], help="target maps of joint attacks")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-options", type=_json, default={},
                        help="JSON overrides for the joint attacks (e.g. '{\"steps\": 4}'); recorded per cell")
    parser.add_argument("--interpreter-options", type=_json, default={},
                        help="JSON {interpreter: options}, e.g. '{\"mask\": {\"iterations\": 10}}'")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rts-checkpoint", type=Path, default=DEFAULT_RTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stores", type=Path, default=None,
                        help="where the experiment stores of the runs go (default: <out>_stores/; a re-run resumes "
                             "them, so delete a group's store to run it again)")
    parser.add_argument("--table", action="store_true", help="write <out>.md from the JSON (no attack runs)")
    parser.add_argument("--merge-as-prefix", type=Path, nargs="+", metavar="JSON",
                        help="add the cells of these results files (runs on the first n images) as summaries over "
                             "the first n images of the same cells in --out, so that cells with n images compare on "
                             "the same images; then write the table")
    parser.add_argument("--recertify", nargs="+", metavar="MODULE",
                        help="after a change of these attack modules (e.g. defaults.py) that cannot alter the numbers "
                             "(messages, validation), keep the cells that depend on them instead of flagging them "
                             "for a re-run; needs --reason; cells whose effective settings changed are refused")
    parser.add_argument("--reason", help="why the --recertify change leaves the numbers alone (recorded per cell)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="copy the cells of these results files into --out (runs in parallel processes write "
                             "separate files), then write the table; no attack runs")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be positive")
    if args.recertify and not (args.reason or "").strip():
        parser.error("--recertify needs --reason 'why the change cannot alter the numbers'")
    if args.recertify:
        unknown = sorted(set(args.recertify) - set(attack_sources()))
        if unknown:
            parser.error(f"unknown attack module(s) {', '.join(unknown)}; choose from {', '.join(attack_sources())}")
    if not all(isinstance(v, dict) for v in args.interpreter_options.values()):
        parser.error("--interpreter-options must map interpreter names to JSON objects")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        if args.merge:
            for path in args.merge:
                if not path.exists():
                    raise UserError(f"no results at {path}; check the path given to --merge")
                merge_cells(args.out, load_results(path).get("cells", {}))
            args.table = True
        for source in args.merge_as_prefix or ():
            if not source.exists():
                raise UserError(f"no results at {source}; check the path given to --merge-as-prefix")
            print(f"prefix summaries added to: {', '.join(merge_as_prefix(args.out, source))}")
            args.table = True
        if args.recertify:
            if not args.out.exists():
                raise UserError(f"no results at {args.out}; check --out")
            cells = load_results(args.out)["cells"]
            args.n, args.interpreters = 1, sorted({Cell.from_key(key).interpreter for key in cells})
            done, refused = recertify(args.out, args.recertify, args.reason, build_setup(args))
            print(f"recertified {len(done)} cell(s)" + "".join(f"\nrefused {why}" for why in refused))
            args.table = True
        if args.table:
            if not args.out.exists():
                raise UserError(f"no results at {args.out}; run the benchmark first")
            text = table(load_results(args.out))
            args.out.with_suffix(".md").write_text(text)
            print(text)
            return 0
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
