"""Interpretation-robust and PGD (Madry) fine-tuning of the CIFAR ResNet-20, evaluated like paper 000 Table VII.

    .venv/bin/python benchmarks/robust_training.py --epochs 2 --out benchmarks/results/robust

Fine-tunes the pretrained ResNet-20 on the CIFAR-10 training photos (``--train``) with each
``--objectives`` entry (checkpointed per epoch in ``--out``, so a killed run resumes), then evaluates
the normal model and every fine-tuned one on the test photos (``--eval``): accuracy under PGD and
Kendall's tau of CAM under the interpretation attack at paper 000's epsilons. Writes
``benchmarks/results/robust_training.json`` (the table, training histories, cost in passes per image
and seconds) and prints the table. The weights themselves stay in ``--out`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import machine  # noqa: E402

from idls.data.datasets import load_images  # noqa: E402
from idls.defenses.training import TrainingOptions, create_objective, save_trained, train_classifier  # noqa: E402
from idls.defenses.training.evaluation import PAPER_TABLE_VII, TABLE_VII_EPSILONS, robustness_table  # noqa: E402
from idls.models import create_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    parser.add_argument("--train", default=str(SHARED / "train"))
    parser.add_argument("--eval", default=str(SHARED / "images"))
    parser.add_argument("--n-train", type=int, default=0, help="training photos (0 = all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--objectives", nargs="+", default=["interpretation-robust", "adversarial"])
    parser.add_argument("--option", action="append", default=[], help="objective option KEY=VALUE (all objectives)")
    parser.add_argument("--steps", type=int, default=20, help="PGD / interpretation-attack steps in the evaluation")
    parser.add_argument("--n-eval", type=int, default=0, help="evaluation photos (0 = all; a seeded subset)")
    parser.add_argument("--out", default="benchmarks/results/robust")
    parser.add_argument("--result", default="benchmarks/results/robust_training.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_images(args.train, input_size=32, num_classes=10, n=args.n_train or None, seed=0)
    evaluation = load_images(args.eval, input_size=32, num_classes=10, n=args.n_eval or None, seed=0)
    epsilons = tuple(e / 255 for e in TABLE_VII_EPSILONS)
    result = {"written": time.strftime("%Y-%m-%d"), "machine": machine(), "train": args.train, "n_train": len(train), "eval": args.eval,
              "n_eval": len(evaluation), "evaluation_steps": args.steps, "epochs": args.epochs, "lr": args.lr, "paper": PAPER_TABLE_VII, "models": {}}
    earlier = json.loads(Path(args.result).read_text()) if Path(args.result).is_file() else {}
    if earlier.get("n_eval") == len(evaluation) and earlier.get("eval") == args.eval and \
            earlier.get("evaluation_steps") == args.steps and "standard" in earlier.get("models", {}):
        result["models"]["standard"] = earlier["models"]["standard"]  # the normal model's table does not change
    else:
        base = create_model("cifar_resnet20", weights=args.weights)
        started = time.perf_counter()
        result["models"]["standard"] = {"table": robustness_table(base, evaluation.images, evaluation.labels,
                                                                  epsilons=epsilons, pgd_steps=args.steps,
                                                                  interpretation_steps=args.steps),
                                        "evaluation_seconds": round(time.perf_counter() - started, 1)}
    _print("standard", result["models"]["standard"]["table"])
    Path(args.result).write_text(json.dumps(result, indent=2))
    extra = dict(_parse(kv) for kv in args.option)
    for name in args.objectives:
        classifier = create_model("cifar_resnet20", weights=args.weights)
        objective = create_objective(name, **{k: v for k, v in extra.items()
                                              if k in type(create_objective(name)).Options.names()})
        started = time.perf_counter()
        run = train_classifier(classifier, train.images, train.labels, objective,
                               TrainingOptions(epochs=args.epochs, lr=args.lr),
                               checkpoint=out / f"{name}.checkpoint.safetensors")
        seconds = time.perf_counter() - started
        save_trained(classifier, out / f"{name}.safetensors", run)
        started = time.perf_counter()
        table = robustness_table(classifier, evaluation.images, evaluation.labels, epsilons=epsilons,
                                 pgd_steps=args.steps, interpretation_steps=args.steps)
        result["models"][name] = {"objective": objective.describe(), "history": run.history, "table": table,
                                  "passes_per_image_epoch": run.passes_per_image_epoch,
                                  "training_seconds_this_process": round(seconds, 1), "resumed_from": run.resumed_from,
                                  "evaluation_seconds": round(time.perf_counter() - started, 1)}
        _print(name, table)
        Path(args.result).write_text(json.dumps(result, indent=2))
    Path(args.result).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.result}")


def _parse(pair: str) -> tuple[str, float]:
    key, value = pair.split("=", 1)
    return key, float(value)


def _print(name: str, table) -> None:
    print(name)
    for row in table:
        print(f"  eps {row['epsilon_255']:>4}/255  accuracy {row['accuracy']:.3f}  tau {row['kendall_tau']:.3f}")


if __name__ == "__main__":
    main()
