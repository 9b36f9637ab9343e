"""AID on the CIFAR ResNet-20: train RTS, fine-tune it with AID, evaluate like paper 001 Table 10 / Figure 15.

    .venv/bin/python benchmarks/aid_cifar.py            # about half an hour on one CPU thread
    .venv/bin/python benchmarks/aid_cifar.py --quick    # minutes: a smoke run, numbers not meaningful

Steps (each masker is cached in ``--out`` and loaded when its recipe matches):

1. RTS: :func:`~idls.interpreters.rts_training.train_rts` on ``--train-n`` images of
   ``cifar10/train`` (seeded subset, augmented).
2. RTS_A: :func:`~idls.defenses.aid.train_aid` from that masker (AID's defaults unless
   ``--aid-option KEY=VALUE``), on the same training images.
3. Control (``--control``): the same fine-tuning schedule without the AID step, to separate what
   AID does from what further RTS training does.
4. :func:`~idls.defenses.aid_evaluation.evaluate_aid` on the first ``--eval-n`` correctly classified
   images of ``cifar10/images`` (never used for training or tuning), and for the control its
   ADV² map L1 and benign agreement.

Writes ``benchmarks/results/aid_cifar.json`` (the maskers, ``.safetensors``, stay in ``--out``
and are not committed) and prints a table. Cost is recorded as CPU seconds of this process
(one thread) and wall seconds, and the inner attack's work as classifier forward + backward
passes per training image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import RESULTS, SHARED_DATA, machine  # noqa: E402

from idls import metrics  # noqa: E402
from idls.data.datasets import load_images, select_correct  # noqa: E402
from idls.defenses.aid import AIDOptions, aid_metadata, aid_options, train_aid  # noqa: E402
from idls.defenses.aid_evaluation import adv2_map_distances, evaluate_aid  # noqa: E402
from idls.interpreters.rts import RTSInterpreter, RTSMasker  # noqa: E402
from idls.interpreters.rts_training import load_rts, read_rts_metadata, save_rts, train_rts  # noqa: E402
from idls.models import create_model  # noqa: E402

CIFAR = SHARED_DATA / "cifar10"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(CIFAR / "models" / "resnet20-12fca82f.th"))
    parser.add_argument("--train-data", default=str(CIFAR / "train"))
    parser.add_argument("--eval-data", default=str(CIFAR / "images"))
    parser.add_argument("--train-n", type=int, default=2000, help="training images (seeded subset of --train-data)")
    parser.add_argument("--aid-n", type=int, default=1024, help="of those, how many AID fine-tunes on (the first)")
    parser.add_argument("--eval-n", type=int, default=100, help="correctly classified evaluation images")
    parser.add_argument("--rts-epochs", type=int, default=15)
    parser.add_argument("--rts-lr", type=float, default=2e-3)
    parser.add_argument("--rts-batch-size", type=int, default=32)
    parser.add_argument("--aid-option", action="append", default=[], help="an AID option KEY=VALUE")
    parser.add_argument("--control", action="store_true", help="also fine-tune and evaluate RTS without the AID step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "aid", help="folder of the maskers (not committed)")
    parser.add_argument("--json", type=Path, default=None, help="results file (default: results/aid_cifar.json; "
                                                                  "--quick: OUT/aid_cifar_quick.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_n, args.eval_n, args.rts_epochs = 64, 4, 1
        args.aid_option = ["epochs=1", "attack_warm_start=2", "attack_steps=2", *args.aid_option]
    if args.json is None:
        args.json = args.out / "aid_cifar_quick.json" if args.quick else RESULTS / "aid_cifar.json"
    return args


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as JSON values where they parse (numbers, true/false), else strings."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def timed(fn):
    """``(result, cpu seconds, wall seconds)`` of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, round(time.process_time() - cpu, 1), round(time.perf_counter() - wall, 1)


def cached(path: Path, recipe: dict, classifier, train) -> tuple[RTSMasker, dict]:
    """The masker at ``path`` if its sidecar records ``recipe``, else ``train()`` saved there with it."""
    if path.is_file():
        meta = read_rts_metadata(path)
        if (meta.get("extra") or {}).get("recipe") == recipe:
            return load_rts(classifier, path), {"loaded": True, **meta["extra"].get("cost", {})}
    masker, cpu, wall = timed(train)
    cost = {"cpu_seconds": cpu, "wall_seconds": wall}
    extra = recipe.get("aid_metadata", {})
    save_rts(masker, path, extra={**extra, "recipe": recipe, "cost": cost})
    return masker, {"loaded": False, **cost}


def inner_attack_passes(options: AIDOptions) -> int:
    """Classifier forward + backward passes per training image and epoch spent in the inner ADV²
    (one per iteration; the RTS head and the few evaluation passes come on top)."""
    return options.attack_warm_start + options.attack_steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    classifier = create_model("cifar_resnet20", weights=args.weights)
    train = load_images(args.train_data, input_size=32, n=args.train_n, seed=args.seed, num_classes=10)
    evaluation = select_correct(classifier, load_images(args.eval_data, input_size=32, num_classes=10), args.eval_n)
    options = aid_options(**{"seed": args.seed, **parse_options(args.aid_option)})
    aid_n = min(args.aid_n, len(train))
    x_aid, y_aid = train.images[:aid_n], train.labels[:aid_n]
    args.out.mkdir(parents=True, exist_ok=True)

    rts_recipe = {"train_data": Path(args.train_data).name, "train_n": len(train), "epochs": args.rts_epochs,
                  "lr": args.rts_lr, "batch_size": args.rts_batch_size, "augment": True, "seed": args.seed}
    base, base_cost = cached(args.out / "rts.safetensors", rts_recipe, classifier, lambda: train_rts(
        classifier, train.images, train.labels, epochs=args.rts_epochs, batch_size=args.rts_batch_size,
        lr=args.rts_lr, seed=args.seed, augment=True))
    base_sha = read_rts_metadata(args.out / "rts.safetensors")["tensors_sha256"]

    aid_recipe = {"initial": base_sha, "train_n": aid_n, "aid_metadata": aid_metadata(options)}
    aid, aid_cost = cached(args.out / "rts_aid.safetensors", aid_recipe, classifier, lambda: train_aid(
        classifier, base, x_aid, y_aid, options, checkpoint=args.out / "rts_aid.checkpoint.safetensors"))

    control = control_cost = None
    if args.control:
        control_recipe = {"initial": base_sha, "train_n": aid_n, "control_of": options.as_dict()}
        control, control_cost = cached(args.out / "rts_control.safetensors", control_recipe, classifier, lambda: train_rts(
            classifier, x_aid, y_aid, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
            seed=options.seed, selector_epochs=0, fake_label_prob=options.fake_label_prob, augment=options.augment,
            initial=base))

    x, y = evaluation.images, evaluation.labels
    result, eval_cpu, eval_wall = timed(lambda: evaluate_aid(classifier, base, aid, x, y, seed=args.seed))
    control_result = None
    if control is not None:
        attack = adv2_map_distances(classifier, control, x, y, seed=args.seed)
        with torch.no_grad():
            benign = metrics.map_l1(RTSInterpreter(classifier, masker=base).attribute(x),
                                    RTSInterpreter(classifier, masker=control).attribute(x))
        control_result = {"adv2_success_rate": float(attack["success"].float().mean()),
                          "adv2_map_l1": float(attack["map_l1"].mean()), "benign_map_l1": float(benign.mean())}

    adv2 = result["adv2"]
    report = {
        "model": "cifar_resnet20",
        "train_data": Path(args.train_data).name,
        "train_images": len(train),
        "aid_images": aid_n,
        "eval_data": Path(args.eval_data).name,
        "eval_images": len(x),
        "quick": args.quick,
        "rts": {**rts_recipe, **base_cost},
        "aid": {"options": options.as_dict(), **aid_cost,
                "inner_attack_passes_per_image_epoch": inner_attack_passes(options),
                "history": [h for h in aid.history if "extra_loss" in h]},
        "control": None if control is None else {**control_cost, **(control_result or {})},
        "evaluation": result,
        "evaluation_cost": {"cpu_seconds": eval_cpu, "wall_seconds": eval_wall},
        "goals": {
            "adv2_ratio_at_least_5": adv2["ratio"] is not None and adv2["ratio"] >= 5,
            "benign_map_l1_at_most_0.05": result["benign_map_l1"] <= 0.05,
        },
        "threads": args.threads,
        "machine": machine(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    evaluation = report["evaluation"]
    adv2, paper = evaluation["adv2"], evaluation["paper"]
    print(f"\nAID on cifar_resnet20: {report['eval_images']} evaluation images (map L1; paper 001 Table 10 in brackets)")
    print(f"{'':28}{'RTS':>10}{'RTS_A':>10}")
    print(f"{'ADV² map L1 (both fooled)':28}{adv2['rts']['map_l1_both_succeeded']:>10.4f}"
          f"{adv2['rts_aid']['map_l1_both_succeeded']:>10.4f}   [{paper['adv2_map_l1_rts']} / "
          f"{paper['adv2_map_l1_rts_aid']}]  ratio {adv2['ratio']:.2f} (goal >= 5)")
    print(f"{'ADV² success rate':28}{adv2['rts']['success_rate']:>10.2f}{adv2['rts_aid']['success_rate']:>10.2f}")
    print(f"{'benign RTS vs RTS_A':28}{evaluation['benign_map_l1']:>20.4f}   [{paper['benign_map_l1_rts_vs_rts_aid']}]"
          "  (goal <= 0.05)")
    for row in evaluation["noise"]:
        label = f"{row['kind']} {row['target_rate']:.0%} (scale {row['scale']:.3f})"
        print(f"{label:28}{row['rts']['map_l1']:>10.4f}{row['rts_aid']['map_l1']:>10.4f}")
    if report["control"]:
        control = report["control"]
        print(f"control (fine-tuned without AID): ADV² map L1 {control['adv2_map_l1']:.4f}, "
              f"benign vs RTS {control['benign_map_l1']:.4f}")
    print(f"AID: {report['aid'].get('cpu_seconds')} CPU s; evaluation {report['evaluation_cost']['cpu_seconds']} CPU s")


if __name__ == "__main__":
    main()
