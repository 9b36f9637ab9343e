"""How far MASK's own map moves when nothing adversarial happens: another seed, small random noise.

The ceiling behind issue 15's ADV²-MASK goal. MASK (``--iterations``, default 300 as in the
experiments) explains ``--n`` correctly classified CIFAR-10 *training* photos (a seeded shuffle of
``cifar10/train``; the test photos are not used) on the pretrained ResNet-20. Each row is the IoU@20%
between a second map and the benign map of the same photo and class:

- the same call again (same seed): MASK is deterministic per seed;
- another seed (its jitter stream);
- random ±k/255 signs added to the photo, same seed, over the photos whose prediction the noise
  leaves unchanged (their count is recorded).

Written to ``results/mask_stability.json``; ``docs/notes/measured.md`` quotes it.

    OMP_NUM_THREADS=1 python benchmarks/mask_stability.py [--n 40] [--iterations 300]
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import SHARED_DATA, shared_checkpoint, write

from idls import metrics
from idls.data.datasets import load_images, select_correct
from idls.interpreters import create_interpreter
from idls.models import create_model

NOISE_LEVELS = (1, 2, 4, 8)  #: random sign noise, in 1/255 steps


def measure(n: int, iterations: int, seed: int) -> dict:
    """IoU@20% rows (see the module docstring) on ``n`` correctly classified training photos."""
    checkpoint = shared_checkpoint("cifar_resnet20")
    if checkpoint is None:
        raise SystemExit(f"no pretrained cifar_resnet20 checkpoint under {SHARED_DATA}; set IDLS_SHARED_DATA")
    classifier = create_model("cifar_resnet20", weights=checkpoint)
    pool = load_images(str(SHARED_DATA / "cifar10" / "train"), input_size=32, n=5 * n, seed=seed, num_classes=10)
    photos = select_correct(classifier, pool, n)
    x, y = photos.images, photos.labels
    mask = create_interpreter("mask", classifier, seed=0, iterations=iterations)
    other_seed = create_interpreter("mask", classifier, seed=1, iterations=iterations)
    benign = mask.attribute(x, y).detach()

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(metrics.topk_iou(a, b, 0.2).mean())

    rows = [{"second map": "same call again (same seed)", "n": len(y), "iou@20": iou(benign, mask.attribute(x, y))},
            {"second map": "another seed", "n": len(y), "iou@20": iou(benign, other_seed.attribute(x, y))}]
    generator = torch.Generator().manual_seed(seed)
    for level in NOISE_LEVELS:
        signs = torch.randint(0, 2, x.shape, generator=generator).float() * 2 - 1
        noisy = (x + signs * level / 255).clamp(0, 1)
        with torch.no_grad():
            kept = classifier(noisy).argmax(1) == y
        maps = mask.attribute(noisy, y).detach()
        rows.append({"second map": f"random ±{level}/255 signs, same seed", "n": int(kept.sum()),
                     "iou@20": iou(benign[kept], maps[kept])})
    return {"n": len(y), "iterations": iterations, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="correctly classified training photos")
    parser.add_argument("--iterations", type=int, default=300, help="MASK iterations")
    parser.add_argument("--seed", type=int, default=1, help="seed of the photo shuffle and of the noise")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = measure(args.n, args.iterations, args.seed)
    for row in result["rows"]:
        print(f"{row['second map']:40s} n={row['n']:3d}  IoU@20% {row['iou@20']:.3f}")
    write("mask_stability", {"seconds": time.perf_counter() - started,
                             "written": time.strftime("%Y-%m-%d"), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
