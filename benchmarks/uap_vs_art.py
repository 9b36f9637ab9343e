"""``uap`` (batched DeepFool) against ART's UniversalPerturbation (DeepFool), side by side.

Both fit an untargeted L_inf universal perturbation (Moosavi-Dezfooli et al. 2017) on
the same ``--fit-n`` CIFAR-10 training images against the pretrained ResNet-20 (eval
mode; ART's ``PyTorchClassifier`` wraps the same module), with the same budget
(``--epsilon``, default 10/255), the same stopping rule (fooling ratio ``1 - delta``,
``delta`` 0.2, or ``--max-passes`` passes over the fit data: ART's ``max_iter``) and the
same DeepFool settings (``--deepfool-steps`` steps, overshoot 0.02, all 10 classes as
candidates). ART visits one image at a time; ``uap`` runs DeepFool on the not-yet-fooled
images of a minibatch at once. Both are timed (wall and process CPU time) and evaluated
on the fit images and on the 250 shared test images (``cifar10/images``, held out):
the fooling ratio is the share of images whose prediction on ``clamp(x + delta, 0, 1)``
differs from that on ``x``. The speedup is ART's seconds over ``uap``'s.

``--variants`` adds rows that explain the comparison, at the same budget and passes:
``uap-mean`` / ``uap-sum`` (the other batched update rules; ``uap`` is ``sequential``),
``uap-batch1`` (minibatches of one image: exactly the paper's sequential algorithm),
``uap-art-clip`` (``uap`` with ART's update ``noise <- Proj(clip(x_i + noise + r_i) - x_i)``,
which drops the part of the pattern that image ``i`` clips away) and
``uap-to-art-fooling`` (``uap`` stopped once it reaches ART's fooling ratio on the fit
data, the time to ART's quality).

ART is a benchmark-only dependency, not one of the package's:
``pip install adversarial-robustness-toolbox``.

    OMP_NUM_THREADS=1 python benchmarks/uap_vs_art.py [--fit-n 500] [--max-passes 2] [--variants] [--skip-art]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _timing import SHARED_DATA, write

from idls.attacks.uap import DeepFoolUAP, deepfool
from idls.attacks.universal import epoch_order, project_delta
from idls.data.datasets import load_images
from idls.models import create_model
from idls.system import Classifier

PRETRAINED = SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"
FIT_IMAGES = SHARED_DATA / "cifar10" / "train"
TEST_IMAGES = SHARED_DATA / "cifar10" / "images"
OVERSHOOT = 0.02


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, process CPU seconds)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def fooling_ratio(classifier: Classifier, images: torch.Tensor, delta: torch.Tensor) -> float:
    """Share of ``images`` ``N x C x H x W`` whose prediction changes under ``clamp(x + delta, 0, 1)``."""
    clean = classifier.predict(images)
    return float((classifier.predict((images + delta).clamp(0, 1)) != clean).float().mean())


class ArtClipRule(DeepFoolUAP):
    """``uap`` with ART's update of the pattern: ``delta <- Proj(clamp(x_i + delta + r_i, 0, 1) - x_i)`` per image."""

    def _pass(self, classifier: Classifier, images: torch.Tensor, clean: torch.Tensor, delta: torch.Tensor,
              pass_: int, bar: Any) -> torch.Tensor:
        for index in epoch_order(images.shape[0], pass_, self.seed).split(self.batch_size):
            x = images[index]
            with torch.no_grad():
                z = (x + delta).clamp(0.0, 1.0)
                open_ = classifier(z).argmax(1) == clean[index]
            if bool(open_.any()):
                found = deepfool(classifier, z[open_], candidates=self.candidates, steps=self.deepfool_steps,
                                 overshoot=self.overshoot)
                for x_i, r_i in zip(x[open_][found.flipped].split(1), found.r[found.flipped].split(1), strict=True):
                    delta = project_delta((x_i + delta + r_i).clamp(0.0, 1.0) - x_i, self.epsilon, self.norm)
        return delta


def fit_ours(classifier: Classifier, images, args: argparse.Namespace, attack_class: type = DeepFoolUAP,
             **options: Any) -> dict:
    settings = {"epsilon": args.epsilon, "norm": "linf", "target_fooling": 1 - args.delta,
                "max_passes": args.max_passes, "deepfool_steps": args.deepfool_steps, "overshoot": OVERSHOOT,
                "candidates": 10, "batch_size": args.batch_size, "update": "sequential", "seed": 0}
    attack = attack_class(**{**settings, **options})
    perturbation, wall, cpu = timed(lambda: attack.fit(classifier, images))
    return {"delta": perturbation.delta, "seconds": wall, "cpu_seconds": cpu,
            "passes": perturbation.metadata["passes"]}


def fit_art(classifier: Classifier, images, args: argparse.Namespace) -> dict:
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    wrapped = PyTorchClassifier(model=classifier, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                                nb_classes=classifier.num_classes, clip_values=(0.0, 1.0), device_type="cpu")
    attack = UniversalPerturbation(
        wrapped, attacker="deepfool",
        attacker_params={"max_iter": args.deepfool_steps, "epsilon": OVERSHOOT, "nb_grads": 10, "verbose": False},
        delta=args.delta, max_iter=args.max_passes, eps=args.epsilon, norm=np.inf, verbose=False)
    random.seed(0)  # ART shuffles with the random module
    x = images.images.numpy()
    _, wall, cpu = timed(lambda: attack.generate(x))
    delta = torch.from_numpy(np.asarray(attack.noise, dtype=np.float32))
    return {"delta": delta, "seconds": wall, "cpu_seconds": cpu, "passes": None,
            "converged": bool(attack.converged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit-n", type=int, default=500, help="fit images (CIFAR-10 train, seeded subset)")
    parser.add_argument("--max-passes", type=int, default=2, help="passes over the fit data (ART's max_iter), both")
    parser.add_argument("--epsilon", type=float, default=10 / 255, help="L_inf budget on the [0, 1] scale")
    parser.add_argument("--delta", type=float, default=0.2, help="stop at fooling ratio 1 - delta")
    parser.add_argument("--deepfool-steps", type=int, default=10, help="DeepFool steps per image, both")
    parser.add_argument("--batch-size", type=int, default=32, help="uap minibatch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both")
    parser.add_argument("--variants", action="store_true", help="also the rows that explain the comparison")
    parser.add_argument("--skip-art", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    classifier = create_model("cifar_resnet20", weights=str(PRETRAINED)).eval()
    fit = load_images(str(FIT_IMAGES), input_size=32, n=args.fit_n, seed=0)
    test = load_images(str(TEST_IMAGES), input_size=32)
    settings = {"model": "cifar_resnet20", "fit_n": len(fit), "test_n": len(test), "epsilon": args.epsilon,
                "norm": "linf", "delta": args.delta, "max_passes": args.max_passes,
                "deepfool_steps": args.deepfool_steps, "overshoot": OVERSHOOT, "candidates": 10,
                "batch_size": args.batch_size, "threads": args.threads}

    runs: dict[str, dict] = {"uap": fit_ours(classifier, fit, args)}
    if not args.skip_art:
        runs["art"] = fit_art(classifier, fit, args)
    if args.variants:
        for update in ("mean", "sum"):
            runs[f"uap-{update}"] = fit_ours(classifier, fit, args, update=update)
        runs["uap-batch1"] = fit_ours(classifier, fit, args, batch_size=1)
        runs["uap-art-clip"] = fit_ours(classifier, fit, args, ArtClipRule)
        if "art" in runs:
            art_fooling = fooling_ratio(classifier, fit.images, runs["art"]["delta"])
            row = fit_ours(classifier, fit, args, target_fooling=max(art_fooling, 1e-6))
            runs["uap-to-art-fooling"] = {**row, "art_fit_fooling_ratio": art_fooling,
                                          "reached": fooling_ratio(classifier, fit.images, row["delta"]) >= art_fooling}

    results: dict[str, dict] = {}
    for name, run in runs.items():
        delta = run.pop("delta")
        results[name] = {**run, "linf": float(delta.abs().max()), "l2": float(delta.norm()),
                         "fit_fooling_ratio": fooling_ratio(classifier, fit.images, delta),
                         "test_fooling_ratio": fooling_ratio(classifier, test.images, delta)}
        row = results[name]
        print(f"{name:18s} {row['seconds']:8.1f} s (cpu {row['cpu_seconds']:7.1f} s)  fooling fit "
              f"{row['fit_fooling_ratio']:.3f}  test {row['test_fooling_ratio']:.3f}  linf {row['linf'] * 255:.2f}/255")
    payload: dict[str, Any] = {"settings": settings, "results": results}
    if "art" in results:
        payload["speedup"] = results["art"]["seconds"] / results["uap"]["seconds"]
        payload["cpu_speedup"] = results["art"]["cpu_seconds"] / results["uap"]["cpu_seconds"]
        print(f"speedup (ART / uap): {payload['speedup']:.1f}x wall, {payload['cpu_speedup']:.1f}x cpu")
        if "uap-to-art-fooling" in results:
            payload["speedup_to_art_fooling"] = results["art"]["seconds"] / results["uap-to-art-fooling"]["seconds"]
            print(f"speedup to ART's fit fooling ratio: {payload['speedup_to_art_fooling']:.1f}x wall")
    write("uap_vs_art", payload)


if __name__ == "__main__":
    main()
