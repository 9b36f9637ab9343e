"""Quality and cost of the joint attacks' budget levels (issue 15): ``-o budget=fast|paper|best``.

Setting: ADV² on the PGD framework against CAM, Grad-CAM, RTS and Grad, on the shared pretrained CIFAR
ResNet-20, targeted at seeded random wrong classes (the image's position seeds its target, as in the
experiment engine), epsilon 8/255, benign target maps. Two image sets, so that the levels are judged on
images they were not tuned on:

* ``tune``: the first ``--n`` correctly classified *training* photos (``cifar10/train``), as many of each
  class (classes interleaved): the levels were tuned on these;
* ``test``: the first ``--n`` correctly classified *test* photos (``cifar10/images``, classes interleaved),
  the images of ``benchmarks/joint_quality.py``: the check.

Quality: the real interpreter's map of the adversarial image (its predicted class) against the benign
map (the attack's ``adv_map`` and ``target_map`` extras, compared with ``idls.evaluate.map_fields``, the
metric code of every benchmark): L1, IoU@20%; success as the attack's final re-check reports it.

Cost, in forward + backward passes of the classifier per image: each sample's warm-start evaluations x 1
plus its joint-phase evaluations x the measured cost of one joint iteration of its interpreter (the
``ratios.classifier`` / ``ratio`` of the row ``adv2-<interpreter>`` of ``benchmarks/results/joint_cost.json``,
cifar), counted by the engine per sample (``extras['warm_evaluations']``, ``extras['joint_evaluations']``;
a sample that stopped early counts only the evaluations it took part in). The one-time target map and the
final evaluation (a few passes) are not counted. CPU seconds per image (one thread) are recorded too.

AdvEdge and AdvEdge+ (``--attacks``) are counted with ADV²'s ratios. Cells (``split|attack|level|interpreter``)
are merged into the results JSON as they finish::

    OMP_NUM_THREADS=1 python benchmarks/joint_budget.py --splits tune,test --levels fast,paper,best \\
        --interpreters cam,gradcam,rts,grad
    # tuning: overrides on top of a level, written elsewhere (recorded per cell)
    OMP_NUM_THREADS=1 python benchmarks/joint_budget.py --splits tune --levels fast --interpreters cam \\
        --attack-options '{"steps": 80}' --out /tmp/tune.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import shared_checkpoint  # noqa: E402
from joint_quality import (  # noqa: E402
    DEFAULT_RTS,
    DEFAULT_WEIGHTS,
    EPSILON,
    MODEL,
    SHARED_DATA,
    interpreter_options_for,
    load_results,
    merge_cells,
)

from idls import evaluate  # noqa: E402
from idls.attacks import create_attack  # noqa: E402
from idls.attacks.budgets import BUDGETS  # noqa: E402
from idls.data.datasets import LabeledImages, interleave_classes, load_images, select_correct  # noqa: E402
from idls.errors import UserError  # noqa: E402
from idls.interpreters import create_interpreter  # noqa: E402
from idls.models import create_model  # noqa: E402
from idls.system import Classifier  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "joint_budget.json"
JOINT_COST = HERE / "results" / "joint_cost.json"
SPLITS = {"tune": SHARED_DATA / "cifar10" / "train", "test": SHARED_DATA / "cifar10" / "images"}
INTERPRETERS = ("cam", "gradcam", "rts", "grad")
ATTACKS = ("adv2", "advedge", "advedge+")  #: their joint iterations cost about the same (edge weights are one product)
#: training photos per class looked at to find the correctly classified ones of the tuning set
TRAIN_POOL_FACTOR = 2


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_split(classifier: Classifier, split: str, n: int) -> LabeledImages:
    """The first ``n`` correctly classified images of a split, classes interleaved.

    ``test``: as ``benchmarks/joint_quality.py`` selects them. ``tune``: the training photos are read per
    class (the first ``TRAIN_POOL_FACTOR * n / classes`` of each), so the set has as many of each class.
    """
    folder = SPLITS[split]
    loaded = load_images(str(folder), input_size=classifier.input_size, num_classes=classifier.num_classes)
    if split == "tune":
        per_class = TRAIN_POOL_FACTOR * -(-n // classifier.num_classes)
        pool = interleave_classes(loaded)
        loaded = pool.subset(list(range(min(len(pool), per_class * classifier.num_classes))))
    correct = interleave_classes(select_correct(classifier, loaded, len(loaded)))
    return correct.subset(list(range(min(n, len(correct)))))


def joint_iteration_ratios(path: Path = JOINT_COST) -> dict[str, float]:
    """Forward + backward passes of the classifier per joint iteration, per interpreter (cifar rows)."""
    rows = json.loads(path.read_text())["cifar"]["rows"]
    ratios = {}
    for name in INTERPRETERS:
        row = rows[f"adv2-{name}"]
        ratios[name] = float(row.get("ratios", {}).get("classifier", row["ratio"]))
    return ratios


def run_cell(classifier: Classifier, data: LabeledImages, attack_name: str, interpreter_name: str, level: str,
             options: Mapping, interpreter_options: Mapping, ratio: float, batch_size: int) -> dict:
    """One (split, attack, level, interpreter) cell: per-image records, their summary and the cost."""
    interpreter = create_interpreter(interpreter_name, classifier, **interpreter_options)
    attack = create_attack(attack_name, interpreter=interpreter, framework="pgd", target_map="benign",
                           mode="targeted", seed=0, epsilon=EPSILON, budget=level, **options)
    settings = attack.settings_for(interpreter, classifier.input_size)
    records, passes, warm_evals, joint_evals, cpu = [], [], [], [], 0.0
    for start in range(0, len(data), batch_size):
        stop = min(start + batch_size, len(data))
        x, labels = data.images[start:stop], data.labels[start:stop]
        began = time.process_time()
        result = attack.run(classifier, x, labels, indices=torch.arange(start, stop))
        cpu += time.process_time() - began
        pair = evaluate.MapPair(benign=result.extras["target_map"], adversarial=result.extras["adv_map"])
        for i, fields in enumerate(evaluate.map_fields(pair)):
            records.append({"image_id": data.ids[start + i], "success": bool(result.success[i]), **fields})
        warm = result.extras["warm_evaluations"].tolist()
        joint = result.extras["joint_evaluations"].tolist()
        warm_evals += warm
        joint_evals += joint
        passes += [w + ratio * j for w, j in zip(warm, joint, strict=True)]
    n = len(records)
    summary = evaluate.summarize(records)
    return {
        "n": n, "success": summary["success"], "map_l1": summary["map_l1"], "map_iou": summary["map_iou"],
        "kendall_tau": summary["kendall_tau"],
        "passes_per_image": sum(passes) / n, "passes_max": max(passes),
        "warm_evaluations_per_image": sum(warm_evals) / n, "joint_evaluations_per_image": sum(joint_evals) / n,
        "stopped_early": sum(j < settings.steps + 1 for j in joint_evals) / n,
        "cpu_seconds_per_image": cpu / n, "joint_iteration_ratio": ratio,
        "settings": json.loads(json.dumps(dataclasses.asdict(settings))), "overrides": dict(options),
        "images": {"id": [r["image_id"] for r in records],
                   **{name: [float(r[name]) for r in records] for name in ("success", "map_l1", "map_iou")},
                   "passes": passes},
        "finished": _now(),
    }


def rts_identity(options: Mapping) -> dict:
    """The interpreter options as recorded: an RTS checkpoint by file name and the tensors' SHA-256 of its sidecar."""
    if "checkpoint" not in options:
        return dict(options)
    checkpoint = Path(options["checkpoint"])
    sidecar = checkpoint.with_suffix(".json")
    digest = json.loads(sidecar.read_text()).get("tensors_sha256") if sidecar.is_file() else None
    return {**options, "checkpoint": checkpoint.name, "tensors_sha256": digest}


def _names(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        bad = [name for name in names if name not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{'unknown ' + ', '.join(bad) if bad else 'empty list'}; "
                                             f"choose from {', '.join(allowed)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=_names(tuple(SPLITS)), default=["tune", "test"])
    parser.add_argument("--attacks", type=_names(ATTACKS), default=["adv2"])
    parser.add_argument("--levels", type=_names(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--interpreters", type=_names(INTERPRETERS), default=list(INTERPRETERS))
    parser.add_argument("--n", type=int, default=100, help="images per split")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--attack-options", type=json.loads, default={},
                        help="JSON overrides on top of the level (tuning), recorded per cell")
    parser.add_argument("--tag", default="", help="cells are keyed split|level+TAG|interpreter (a variant of a "
                                                   "level beside it, e.g. 'nostop' with stop_patience 0)")
    parser.add_argument("--model", default=MODEL, help="a CIFAR model of the shared data (cells of another model than "
                                                     f"{MODEL} are keyed SPLIT@MODEL: a check on a model not tuned on)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="the model's checkpoint (default: its file in the shared data)")
    parser.add_argument("--rts-checkpoint", type=Path, default=DEFAULT_RTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        parser.error("--n and --batch-size must be positive")
    if not isinstance(args.attack_options, dict):
        parser.error("--attack-options must be a JSON object")
    if args.weights is None:
        args.weights = DEFAULT_WEIGHTS if args.model == MODEL else shared_checkpoint(args.model)
        if args.weights is None:
            parser.error(f"no checkpoint of {args.model} in the shared data; pass --weights FILE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        if "rts" in args.interpreters and not args.rts_checkpoint.is_file():
            raise UserError(f"no RTS checkpoint at {args.rts_checkpoint}; train it with `OMP_NUM_THREADS=1 python "
                            "benchmarks/train_rts_cifar.py` or pass --rts-checkpoint FILE")
        classifier = create_model(args.model, weights=str(args.weights))
        ratios = joint_iteration_ratios()
        for split in args.splits:
            split_key = split if args.model == MODEL else f"{split}@{args.model}"
            data = load_split(classifier, split, args.n)
            for attack, level, name in itertools.product(args.attacks, args.levels, args.interpreters):
                options = interpreter_options_for(name, {}, args.rts_checkpoint)
                entry = run_cell(classifier, data, attack, name, level, args.attack_options, options, ratios[name],
                                 args.batch_size)
                label = f"{level}+{args.tag}" if args.tag else level
                entry.update(split=split_key, attack=attack, level=label, interpreter=name, data=str(SPLITS[split]),
                             model=args.model,
                             image_ids_first=data.ids[:3], interpreter_options=rts_identity(options))
                merge_cells(args.out, {f"{split_key}|{attack}|{label}|{name}": entry})
                print(f"{split_key} {attack} {label} {name}: n={entry['n']} success={entry['success']:.2f} "
                      f"L1={entry['map_l1']:.4f} IoU={entry['map_iou']:.3f} passes={entry['passes_per_image']:.0f} "
                      f"(max {entry['passes_max']:.0f}, stopped {entry['stopped_early']:.2f}) "
                      f"cpu={entry['cpu_seconds_per_image']:.2f} s/img", flush=True)
        results = load_results(args.out)
        results["method"] = __doc__.split("\n\n", 1)[1].split("\n\nCells")[0]
        results["joint_iteration_ratios"] = ratios
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True, default=float))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
