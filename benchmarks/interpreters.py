"""Seconds per image of every interpreter, and its cost in classifier forward+backward passes.

Configurations: cifar_resnet20 at 32 px (batch 64) and resnet50 at 224 px (batch 8), random
weights (cost does not depend on the weights' values). MASK at 224 px is timed over a few
iterations and extrapolated to its default iteration count (stated in the output).

    python benchmarks/interpreters.py [--configs cifar,imagenet] [--mask-probe 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import CONFIGS, build_interpreter, forward_backward_seconds, write

from idls.interpreters import create_interpreter
from idls.models import create_model

NAMES = ("grad", "ig", "cam", "gradcam", "rts", "mask")


def timed(fn) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_config(key: str, mask_probe: int) -> dict:
    model_name, size, batch = CONFIGS[key]
    torch.manual_seed(0)
    classifier = create_model(model_name)
    x = torch.rand(batch, 3, size, size)
    fb = forward_backward_seconds(classifier, x)
    rows = {}
    for name in NAMES:
        probe = mask_probe if (name == "mask" and key == "imagenet") else None
        interp = build_interpreter(name, classifier, **({} if probe is None else {"iterations": probe}))
        seconds = timed(lambda: interp.attribute(x))
        note = ""
        if probe is not None:
            full = create_interpreter("mask", classifier).iterations  # the default iteration count
            seconds = seconds / probe * full
            note = f"extrapolated from {probe} iterations to {full}"
        rows[name] = {
            "seconds_per_image": seconds / batch,
            "forward_backward_equivalents": seconds / fb,
            "note": note,
        }
        print(f"{model_name:15s} {name:8s} {seconds / batch * 1000:10.2f} ms/image  {seconds / fb:8.2f} x fwd+bwd")
    return {"model": model_name, "input_size": size, "batch": batch, "forward_backward_seconds": fb, "interpreters": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="cifar,imagenet")
    parser.add_argument("--mask-probe", type=int, default=5, help="MASK iterations timed at 224 px")
    args = parser.parse_args()
    results = {key: run_config(key, args.mask_probe) for key in args.configs.split(",")}
    write("interpreters", results)


if __name__ == "__main__":
    main()
