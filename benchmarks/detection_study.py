"""The detection study on the CIFAR-10 ResNet-20: summaries of the detection experiments, and detector costs.

Two parts, written to ``results/detection_study.json`` (``docs/benchmarks.md`` renders it):

``--stores DIR [DIR ...]``: stores of ``idls run experiments/squeezing_cifar.yaml``,
``detector_cifar.yaml`` and ``ensemble_cifar.yaml`` (any subset). For each: the detection tables
(detection rate, false-positive rate on the evaluated benign images, ROC-AUC, evasion per detector and
attack configuration; :mod:`idls.report.detection_tables`), the map metrics and seconds per image of
each attack configuration, and the detection claims of the scorecard (001-obs3, 001-obs4,
000-detector, ensemble-adaptive). The adaptive attacks' cost is their seconds per image over basic
ADV²'s on the same images.

``--cost``: what fitting and scoring cost, on ``--fit-n`` benign CIFAR training photos and as many PGD
images made from them (8/255, 10 steps, untargeted): the multi-interpreter detector (Grad + CAM) fitted
on the ``2 x fit-n`` maps (maps included, and the boosting fit alone), LID, and feature squeezing's
classifier forwards per scored image (counted with a forward hook) next to its squeezers' count.

``--fpr``: feature squeezing's false-positive rate, per squeezer setting of ``squeezing_cifar.yaml``, at the
5% threshold set on ``--fit-n`` benign training photos (a seeded shuffle of the folder), measured on 4,000
other training photos, on all the test photos and on the correctly classified ones alone (the images the
experiments attack, so the benign column of their tables), each with its binomial standard deviation at 5%.

    OMP_NUM_THREADS=1 python benchmarks/detection_study.py --stores runs/squeezing_cifar runs/detector_cifar \
        runs/ensemble_cifar --cost --fpr [--fit-n 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _timing import RESULTS, SHARED_DATA, write

from idls.reproduce.scorecard import json_safe

PRETRAINED = SHARED_DATA / "cifar10" / "models" / "resnet20-12fca82f.th"
FIT_IMAGES = SHARED_DATA / "cifar10" / "train"
TEST_IMAGES = SHARED_DATA / "cifar10" / "images"


def store_summary(path: Path) -> dict[str, Any]:
    """Detection tables, per-configuration map metrics and seconds, and the detection claims of one store."""
    from idls.analysis.groups import group_records, own_records, summary
    from idls.analysis.store_reader import load_store
    from idls.report.detection_tables import column_label, detection_tables
    from idls.reproduce.claims_detection import DETECTION_CLAIMS
    from idls.reproduce.scorecard import evaluate_claims

    store = load_store(path)
    records = [r for r in store.records if r.get("kind", "attack") == "attack"]
    tables = {t.name: {"columns": t.columns, "rows": t.rows} for t in detection_tables(records)}
    attacks = {}
    keys = ("attack", "attacked_interpreter", "variant")
    for key, rows in group_records(own_records(records), keys).items():
        s = summary(rows)
        attacks[column_label(dict(zip(keys, key, strict=True)))] = {
            "n": len({r["image_id"] for r in rows}),  # images (a plain attack has one record per interpreter)
            **{field: s.get(field) for field in ("success", "confidence", "map_l1", "map_iou", "seconds")}}
    basic = {label.split(" · ")[1]: row["seconds"] for label, row in attacks.items()
             if label.startswith("adv2 · ") and row.get("seconds")}
    for label, row in attacks.items():
        parts = label.split(" · ")
        if parts[0] in ("adaptive-adv2", "ensemble-adv2") and len(parts) > 1 and parts[1] in basic:
            row["seconds_over_adv2"] = row["seconds"] / basic[parts[1]]
    claims = [{k: c[k] for k in ("id", "measured", "pass", "n", "details") if k in c}
              for c in evaluate_claims(records, DETECTION_CLAIMS)]
    experiment = store.parts[0].name if store.parts else path.name
    config = (store.parts[0].config or {}) if store.parts else {}
    return {"experiment": experiment, "store": Path(path).name, "n_records": len(records), "tables": tables,
            "attacks": attacks, "claims": claims, "data": config.get("data", {})}


def cost(fit_n: int) -> dict[str, Any]:
    """Fit and scoring costs of the detectors (see the module docstring)."""
    from idls.attacks import create_attack
    from idls.data.datasets import load_images, select_correct
    from idls.defenses.detectors import create_detector
    from idls.models import create_model

    classifier = create_model("cifar_resnet20", weights=str(PRETRAINED))
    images = load_images(str(FIT_IMAGES), input_size=32, n=fit_n, seed=0, num_classes=10)
    correct = select_correct(classifier, images, len(images))
    start = time.perf_counter()
    adversarial = create_attack("pgd", epsilon=8 / 255, steps=10, mode="untargeted").run(
        classifier, correct.images, correct.labels).x_adv
    pgd_seconds = time.perf_counter() - start
    out: dict[str, Any] = {"fit_n": fit_n, "benign": int(correct.images.shape[0]),
                           "adversarial": int(adversarial.shape[0]), "pgd_seconds": pgd_seconds}

    detector = create_detector("multi-interpreter", interpreters=["grad", "cam"], fpr=None)
    start = time.perf_counter()
    benign_stack = detector.map_stack(correct.images, classifier)
    adversarial_stack = detector.map_stack(adversarial, classifier)
    maps_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detector.fit_from_stacks(classifier, benign_stack, adversarial_stack)
    out["multi_interpreter"] = {"maps": int(benign_stack.shape[0] + adversarial_stack.shape[0]),
                                "maps_seconds": maps_seconds, "fit_seconds": time.perf_counter() - start}
    out["multi_interpreter"]["total_seconds"] = maps_seconds + out["multi_interpreter"]["fit_seconds"]

    lid = create_detector("lid")
    start = time.perf_counter()
    lid.fit(classifier, correct.images, adversarial)
    out["lid"] = {"fit_seconds": time.perf_counter() - start}

    # held out: PGD images of the test photos, against every detector fitted here
    test = select_correct(classifier, load_images(str(TEST_IMAGES), input_size=32, seed=0, num_classes=10), 250)
    test_adversarial = create_attack("pgd", epsilon=8 / 255, steps=10, mode="untargeted").run(
        classifier, test.images, test.labels).x_adv
    squeezing_joint = create_detector("feature-squeezing").fit(classifier, correct.images)
    ensemble = create_detector("interpreter-ensemble").fit(classifier, correct.images)
    out["held_out_pgd"] = {name: detector.evaluate(test.images, test_adversarial).as_dict() for name, detector in
                           (("multi-interpreter (grad+cam)", detector), ("lid", lid),
                            ("feature-squeezing (joint)", squeezing_joint), ("interpreter-ensemble", ensemble))}

    squeezing = create_detector("feature-squeezing").fit(classifier, correct.images[:200])
    forwards = 0

    def count(module, inputs, output) -> None:
        nonlocal forwards
        forwards += inputs[0].shape[0]

    handle = classifier.register_forward_hook(count)
    try:
        scored = correct.images[:100]
        squeezing.score(scored)
    finally:
        handle.remove()
    out["feature_squeezing"] = {"squeezers": len(squeezing.specs), "forwards_per_image": forwards / scored.shape[0],
                                "describe": squeezing.describe()}
    return out


#: the experiment whose feature-squeezing detectors ``--fpr`` measures
SQUEEZING_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "squeezing_cifar.yaml"
HELD_OUT_N = 4000


def squeezing_detectors() -> dict[str, dict[str, Any]]:
    """``label -> options`` of the feature-squeezing detectors of :data:`SQUEEZING_EXPERIMENT`."""
    import yaml

    entries = yaml.safe_load(SQUEEZING_EXPERIMENT.read_text())["detectors"]
    return {entry["label"]: dict(entry.get("options") or {}) for entry in entries
            if isinstance(entry, dict) and entry.get("name") == "feature-squeezing"}


def squeezing_fpr(fit_n: int, target: float = 0.05) -> dict[str, Any]:
    """Feature squeezing's false-positive rates at a ``target`` threshold (see the module docstring)."""
    import math

    import torch

    from idls.data.datasets import load_images
    from idls.defenses.detectors import create_detector
    from idls.models import create_model

    classifier = create_model("cifar_resnet20", weights=str(PRETRAINED))
    pool = load_images(str(FIT_IMAGES), input_size=32, num_classes=10)
    order = torch.randperm(len(pool.images), generator=torch.Generator().manual_seed(0))
    fit = pool.images[order[:fit_n]]
    held = pool.images[order[fit_n:fit_n + HELD_OUT_N]]
    test = load_images(str(TEST_IMAGES), input_size=32, num_classes=10)
    with torch.no_grad():
        correct = classifier(test.images).argmax(1) == test.labels
    sd = lambda n: math.sqrt(target * (1 - target) / n)  # noqa: E731
    rows: dict[str, Any] = {}
    for label, options in squeezing_detectors().items():
        detector = create_detector("feature-squeezing", **{**options, "fpr": target})
        detector.fit(classifier, fit)
        flagged = lambda x: float((detector.score(x) > detector.threshold).float().mean())  # noqa: E731
        test_flags = detector.score(test.images) > detector.threshold
        rows[label] = {"threshold": detector.threshold, "fit": flagged(fit), "held_out_train": flagged(held),
                       "test_all": float(test_flags.float().mean()),
                       "test_correct": float(test_flags[correct].float().mean()),
                       "test_misclassified": float(test_flags[~correct].float().mean()) if bool((~correct).any())
                       else None}
        print(label, rows[label], flush=True)
    return {"target": target, "fit_n": fit_n, "held_out_n": int(held.shape[0]), "test_n": int(test.images.shape[0]),
            "test_correct_n": int(correct.sum()),
            "sd": {"held_out_train": sd(held.shape[0]), "test_all": sd(test.images.shape[0]),
                   "test_correct": sd(int(correct.sum()))},
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", nargs="*", type=Path, default=[], help="stores of the detection experiments")
    parser.add_argument("--cost", action="store_true", help="measure fitting and scoring costs")
    parser.add_argument("--fpr", action="store_true", help="measure feature squeezing's false-positive rates")
    parser.add_argument("--fit-n", type=int, default=2000,
                        help="--cost: benign fit photos (as many PGD images); --fpr: threshold photos")
    args = parser.parse_args(argv)
    path = RESULTS / "detection_study.json"
    payload = json.loads(path.read_text())["study"] if path.exists() else {}
    payload.setdefault("stores", {})
    for store in args.stores:
        summary = store_summary(store)
        payload["stores"][summary["experiment"]] = summary
        for claim in summary["claims"]:
            print(f"{summary['experiment']}: {claim['id']}: {claim.get('measured')} -> {claim.get('pass')}")
    if args.cost:
        payload["cost"] = cost(args.fit_n)
        print(json.dumps(payload["cost"], indent=2))
    if args.fpr:
        payload["squeezing_fpr"] = squeezing_fpr(args.fit_n)
    payload["written"] = time.strftime("%Y-%m-%d")
    write("detection_study", {"study": json_safe(payload)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
