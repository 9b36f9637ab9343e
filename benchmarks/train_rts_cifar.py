"""Train an RTS masking model for the CIFAR ResNet-20 and measure what its masks do.

    .venv/bin/python benchmarks/train_rts_cifar.py --epochs 100 --out benchmarks/results/rts_cifar

Data: the shared CIFAR-10 JPEGs (250 images, labels.csv). With so few images the
training batches are augmented (flips, shifts) and ``--holdout`` images are kept
out of training to evaluate on. There are no ground-truth masks for CIFAR, so the
masks are judged by their effect on the classifier (the RTS objective itself):

- *preserved*: accuracy on phi(x, m) (only the mask kept; should stay high);
- *destroyed*: accuracy on phi(x, 1 - m) (the mask removed; should fall);
- the same with each image's mask swapped for another image's mask (same area
  distribution, wrong place): a mask that finds the evidence beats it on both;
- mean mask area for the predicted class vs a random wrong class (the class
  selector should shrink the latter).

Accuracy is agreement with the classifier's own prediction on the clean image
(that is the class explained), for blur and random-colour alternatives alike.
Writes the masker (``.safetensors`` + sidecar) and ``train_rts_cifar.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import machine  # noqa: E402

from idls.data.datasets import load_images  # noqa: E402
from idls.interpreters.rts import RTSMasker  # noqa: E402
from idls.interpreters.rts_training import (  # noqa: E402
    RTSObjective,
    alternative_images,
    blend,
    save_rts,
    train_rts,
    upsample_mask,
)
from idls.models import create_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--weights", default=str(SHARED / "models" / "resnet20-12fca82f.th"))
    parser.add_argument("--data", default=str(SHARED / "images"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=int, default=50, help="images kept out of training for evaluation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the checkpoint is bit-reproducible only at the same count (the committed "
                             "sidecar's tensors_sha256 was trained with 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "rts_cifar")
    return parser.parse_args()


@torch.no_grad()
def mask_effect(masker: RTSMasker, x: torch.Tensor, seed: int) -> dict:
    """Agreement with the clean prediction on phi(x, m) and phi(x, 1 - m), with true and swapped masks."""
    classifier = masker.classifier
    out = masker(x)  # masks of the predicted class
    prediction = out.logits.argmax(1)
    generator = torch.Generator().manual_seed(seed)
    alternative = alternative_images(x, RTSObjective(), generator)
    swapped = out.mask.roll(1, dims=0)  # every image gets its neighbour's mask
    wrong = (prediction + torch.randint(1, classifier.num_classes, prediction.shape, generator=generator)) % classifier.num_classes

    def agreement(mask: torch.Tensor) -> float:
        return float((classifier(blend(x, mask, alternative)).argmax(1) == prediction).float().mean())

    full, full_swapped = upsample_mask(out.mask, x.shape[-2:]), upsample_mask(swapped, x.shape[-2:])
    return {
        "images": len(x),
        "preserved_accuracy": agreement(full),
        "destroyed_accuracy": agreement(1 - full),
        "swapped_mask_preserved_accuracy": agreement(full_swapped),
        "swapped_mask_destroyed_accuracy": agreement(1 - full_swapped),
        "mask_area_predicted_class": float(out.mask.mean()),
        "mask_area_wrong_class": float(masker(x, wrong).mask.mean()),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    classifier = create_model(args.model, weights=args.weights)
    data = load_images(args.data, input_size=classifier.input_size, num_classes=classifier.num_classes)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
    test_index, train_index = order[: args.holdout], order[args.holdout :]
    x_train, y_train = data.images[train_index], data.labels[train_index]
    x_test = data.images[test_index]
    clean_accuracy = float((classifier.predict(data.images) == data.labels).float().mean())

    start = time.perf_counter()
    masker = train_rts(
        classifier, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, augment=True
    )
    seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = save_rts(masker, args.out / f"rts_{args.model}.safetensors")
    last = {phase: [h for h in masker.history if h["phase"] == phase][-1] for phase in ("selector", "decoder")}
    report = {
        "model": args.model,
        "weights": args.weights,
        "data": args.data,
        "train_images": len(train_index),
        "holdout_images": len(test_index),
        "clean_accuracy_vs_labels": clean_accuracy,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "training_seconds": round(seconds, 2),
        "final_losses": last,
        "effect_holdout": mask_effect(masker, x_test, args.seed) if len(test_index) else None,
        "effect_train": mask_effect(masker, x_train, args.seed),
        "checkpoint": str(checkpoint),
        "machine": machine(),
    }
    (args.out / "train_rts_cifar.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
