"""Universal perturbations on the pretrained CIFAR-10 ResNet-20 (issue goals of paper 004).

Fits each configuration on ``--fit-n`` shared training images and evaluates it on the
correctly classified shared test images: fooling ratio (share whose prediction changes),
map L1 and IoU@20% of the perturbed images' maps against the benign ones, per
interpreter; plus the fitting time (CPU seconds on one compute thread, so the numbers
are the work itself on a shared machine). docs/benchmarks.md turns the time per epoch
into forward + backward passes per training image per epoch, relative to SGD-UAP's
epoch, which is exactly one such pass per image.

    python benchmarks/universal_quality.py                         # all rows (about 15 min)
    python benchmarks/universal_quality.py --rows sgd-uap,juap-cam # a subset
    python benchmarks/universal_quality.py --lams 0,0.3,1,3        # the lam trade-off of R-JUAP-CAM
    python benchmarks/universal_quality.py --rows sgd-uap,juap-cam --transfer 32,44,56 --out ...transfer.json
                                       # also evaluate each perturbation on the deeper CIFAR ResNets whose
                                       # checkpoints are in the shared data (transfer; others are skipped)

Writes ``benchmarks/results/universal_quality.json`` (merging rows into an existing file).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, SHARED_DATA, shared_checkpoint  # noqa: E402

from idls import metrics  # noqa: E402
from idls.attacks import create_attack  # noqa: E402
from idls.data import load_images  # noqa: E402
from idls.interpreters import create_interpreter  # noqa: E402
from idls.models import create_model  # noqa: E402

OUTPUT = RESULTS / "universal_quality.json"
INTERPRETERS = ("cam", "gradcam")
#: row name -> (attack, options); juap rows attack the interpreter their name ends with
ROWS: dict[str, tuple[str, dict]] = {
    "random-sign": ("random-sign", {}),
    "chessboard-1px": ("chessboard", {"cell": 1}),
    "chessboard-2px": ("chessboard", {"cell": 2}),
    "chessboard-4px": ("chessboard", {"cell": 4}),
    "uap": ("uap", {}),
    "uap-target0.95": ("uap", {"target_fooling": 0.95}),
    "sgd-uap": ("sgd-uap", {}),
    "gap": ("gap", {}),
    "juap-cam": ("juap", {"interpreter": "cam"}),
    "juap-cam-lam0": ("juap", {"interpreter": "cam", "lam": 0.0}),
    "juap-gradcam": ("juap", {"interpreter": "gradcam"}),
    "ujuap-cam": ("juap", {"interpreter": "cam", "generator": "unet"}),
    # the ResNet generator at full resolution (levels 0) instead of two down- and upsamplings
    "gap-levels0": ("gap", {"levels": 0}),
    "juap-cam-levels0": ("juap", {"interpreter": "cam", "levels": 0}),
    "juap-gradcam-levels0": ("juap", {"interpreter": "gradcam", "levels": 0}),
}


def evaluate(classifier, interpreters, x, clean_pred, benign, delta) -> dict:
    """Fooling ratio and, per interpreter, map L1 / IoU@20 of the perturbed images (``x`` correct images)."""
    x_adv = (x + delta).clamp(0, 1)
    with torch.no_grad():
        pred = torch.cat([classifier(chunk).argmax(1) for chunk in x_adv.split(250)])
    out = {"fooling_ratio": float((pred != clean_pred).float().mean())}
    for name, interpreter in interpreters.items():
        maps = interpreter.attribute(x_adv)
        out[name] = {"map_l1": float(metrics.map_l1(maps, benign[name]).mean()),
                     "map_iou": float(metrics.topk_iou(maps, benign[name]).mean())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    parser.add_argument("--lams", default="", help="extra R-JUAP-CAM rows at these lam values (the trade-off)")
    parser.add_argument("--fit-n", type=int, default=2000)
    parser.add_argument("--norm", default="linf")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument("--transfer", default="", help="depths of CIFAR ResNets to evaluate each perturbation on")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    classifier = create_model("cifar_resnet20", weights=str(SHARED_DATA / "cifar10/models/resnet20-12fca82f.th"))
    fit = load_images(str(SHARED_DATA / "cifar10/train"), input_size=32, n=args.fit_n, seed=0)
    test = load_images(str(SHARED_DATA / "cifar10/images"), input_size=32)
    with torch.no_grad():
        clean = classifier(test.images).argmax(1)
    correct = clean == test.labels
    x, clean_pred = test.images[correct], clean[correct]
    interpreters = {name: create_interpreter(name, classifier) for name in INTERPRETERS}
    benign = {name: interp.attribute(x) for name, interp in interpreters.items()}
    receivers = {}
    for depth in (d for d in args.transfer.split(",") if d):
        checkpoint = shared_checkpoint(f"cifar_resnet{depth}")
        if checkpoint is None:
            print(f"no resnet{depth} checkpoint in the shared data; skipping its transfer column")
            continue
        model = create_model(f"cifar_resnet{depth}", weights=str(checkpoint))
        with torch.no_grad():
            own = model(test.images).argmax(1)
        ok = own == test.labels
        maps = {name: create_interpreter(name, model) for name in INTERPRETERS}
        receivers[f"cifar_resnet{depth}"] = (model, maps, test.images[ok], own[ok],
                                             {n: m.attribute(test.images[ok]) for n, m in maps.items()})
    rows = {name: ROWS[name] for name in args.rows.split(",") if name}
    for lam in (float(v) for v in args.lams.split(",") if v):
        rows[f"juap-cam-lam{lam:g}"] = ("juap", {"interpreter": "cam", "lam": lam})
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("rows", {})
    for name, (attack_name, options) in rows.items():
        attack = create_attack(attack_name, norm=args.norm, **options)
        started, cpu = time.perf_counter(), time.process_time()
        perturbation = attack.fit(classifier, fit, progress=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        row = evaluate(classifier, interpreters, x, clean_pred, benign, perturbation.delta)
        row["transfer"] = {name: evaluate(model, maps, xs, preds, benigns, perturbation.delta)
                           for name, (model, maps, xs, preds, benigns) in receivers.items()}
        epochs = getattr(attack, "epochs", None) or perturbation.metadata.get("passes")
        row.update({"attack": attack_name, "options": {k: v for k, v in options.items()}, "fit_seconds": seconds,
                    "fit_cpu_seconds": cpu_seconds, "epochs": epochs, "lam": perturbation.metadata.get("lam"),
                    "fit_fooling_ratio": perturbation.metadata.get("fit_fooling_ratio")})
        results["rows"][f"{name}@{args.norm}" if args.norm != "linf" else name] = row
        cells = ", ".join(f"{k} L1 {row[k]['map_l1']:.3f} IoU {row[k]['map_iou']:.3f}" for k in INTERPRETERS)
        print(f"{name:18s} FR {row['fooling_ratio']:.3f}  {cells}  fit {seconds:.0f} s", flush=True)
        results.update({
            "settings": {"model": "cifar_resnet20", "fit_n": args.fit_n, "fit_data": "shared cifar10/train",
                         "test": "shared cifar10/images, correctly classified", "test_n": int(x.shape[0]),
                         "epsilon_linf": 10 / 255, "threads": 1},
            "machine": {"torch": torch.__version__, "processor": platform.machine(), "threads": 1},
        })
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
