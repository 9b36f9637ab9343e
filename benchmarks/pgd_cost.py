"""PGD iteration cost as a ratio to one forward+backward pass of the same classifier and batch.

The ratio is how far the implementation is from the limit (docs/design.md §6), independent of the
machine. Random weights; early stopping off so every iteration runs.

    python benchmarks/pgd_cost.py [--configs cifar,imagenet] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import CONFIGS, forward_backward_seconds, write

from idls.attacks import create_attack
from idls.models import create_model


def run_config(key: str, steps: int) -> dict:
    model_name, size, batch = CONFIGS[key]
    torch.manual_seed(0)
    classifier = create_model(model_name)
    x = torch.rand(batch, 3, size, size)
    labels = classifier.predict(x)
    fb = forward_backward_seconds(classifier, x)
    out = {"model": model_name, "input_size": size, "batch": batch, "forward_backward_seconds": fb}
    for norm in ("linf", "l2"):
        attack = create_attack("pgd", steps=steps, norm=norm, early_stop=False)
        attack.run(classifier, x[:2], labels[:2])  # warm-up
        start = time.perf_counter()
        result = attack.run(classifier, x, labels)
        seconds = time.perf_counter() - start
        per_iteration = seconds / result.iterations_run
        out[norm] = {
            "iterations": result.iterations_run,
            "seconds_per_iteration": per_iteration,
            "ratio_to_forward_backward": per_iteration / fb,
            "seconds_per_image_per_iteration": per_iteration / batch,
        }
        print(f"{model_name:15s} pgd-{norm:4s} {per_iteration * 1000:8.1f} ms/iteration  ratio {per_iteration / fb:5.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="cifar,imagenet")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    write("pgd_cost", {key: run_config(key, args.steps) for key in args.configs.split(",")})


if __name__ == "__main__":
    main()
