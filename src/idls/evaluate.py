"""Turn attack outputs into per-image result records (docs/design.md §1 "Results").

One record per attacked image and interpreter: ids, true / target / predicted
class, success, confidence, perturbation norms, map distances, noise rate and
time. The same definitions (``idls.metrics``) are used everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from idls import metrics
from idls.interpreters.base import Interpreter

DEFAULT_IOU_KS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)


@dataclass
class MapPair:
    """Benign and adversarial maps of one interpreter, ``B x h x w`` each."""

    benign: Tensor
    adversarial: Tensor


def explain_pair(interpreter: Interpreter, x: Tensor, x_adv: Tensor, benign_maps: Tensor | None = None) -> MapPair:
    """Maps of the benign and adversarial images, each explaining its own prediction (the IDLS workflow)."""
    benign = interpreter.attribute(x) if benign_maps is None else benign_maps
    return MapPair(benign=benign.detach(), adversarial=interpreter.attribute(x_adv).detach())


def image_records(
    *,
    ids: Sequence[str],
    x: Tensor,
    x_adv: Tensor,
    labels: Tensor,
    targets: Tensor,
    preds: Tensor,
    success: Tensor,
    confidence: Tensor,
    seconds_per_image: float,
    iterations_to_success: Tensor | None = None,
    cpu_seconds_per_image: float | None = None,
) -> list[dict]:
    """Prediction-side fields of the records of one batch (no interpreter yet)."""
    linf = metrics.linf_norm(x_adv, x)
    l2 = metrics.l2_norm(x_adv, x)
    noise = metrics.noise_rate(x, x_adv)
    its = iterations_to_success if iterations_to_success is not None else torch.full_like(labels, -1)
    return [
        {
            "image_id": str(ids[i]),
            "true_label": int(labels[i]),
            "target_label": int(targets[i]),
            "pred_label": int(preds[i]),
            "success": bool(success[i]),
            "confidence": float(confidence[i]),
            "linf": float(linf[i]),
            "l2": float(l2[i]),
            "noise_rate": float(noise[i]),
            "seconds": float(seconds_per_image),
            **({} if cpu_seconds_per_image is None else {"cpu_seconds": float(cpu_seconds_per_image)}),
            "iterations_to_success": int(its[i]),
        }
        for i in range(len(ids))
    ]


def map_fields(pair: MapPair, ks: Sequence[float] = DEFAULT_IOU_KS) -> list[dict]:
    """Map-side fields (L1, L2, IoU@k, Kendall's tau) per image of one interpreter."""
    l1 = metrics.map_l1(pair.benign, pair.adversarial)
    l2 = metrics.map_l2(pair.benign, pair.adversarial)
    ious = {k: metrics.topk_iou(pair.benign, pair.adversarial, k) for k in ks}
    tau = metrics.kendall_tau(pair.benign, pair.adversarial)
    out = []
    for i in range(pair.benign.shape[0]):
        row = {"map_l1": float(l1[i]), "map_l2": float(l2[i]), "map_iou": float(ious.get(0.2, ious[ks[0]])[i])}
        row.update({f"map_iou@{int(round(k * 100))}": float(v[i]) for k, v in ious.items()})
        row["kendall_tau"] = float(tau[i])
        out.append(row)
    return out


def rerun_fields(benign: Tensor, rerun: Tensor) -> list[dict]:
    """Run-to-run agreement of a seeded interpreter's benign maps ``B x h x w`` (two seeds): IoU@20% and L1.

    The attack's map similarity cannot beat it: two honest runs on the same image agree only this well.
    """
    iou = metrics.topk_iou(benign, rerun, 0.2)
    l1 = metrics.map_l1(benign, rerun)
    return [{"benign_rerun_iou": float(iou[i]), "benign_rerun_l1": float(l1[i])} for i in range(benign.shape[0])]


#: why a field of :func:`summarize` can be NaN (tables show "-" and this reason, see :mod:`idls.report.cells`)
MISSING_REASONS: dict[str, str] = {
    "confidence": "no successful image (the confidence is the target-class probability over successes)",
    "iterations_to_success": "no successful image",
    "benign_rerun_iou": "the interpreter is not seeded: two runs give the same map",
    "benign_rerun_l1": "the interpreter is not seeded: two runs give the same map",
    "fooling_ceiling": "the pattern sends no class most of the images (no sink class, see idls.analysis.sink_class)",
}

MEAN_FIELDS = ("confidence", "linf", "l2", "noise_rate", "seconds", "map_l1", "map_l2", "map_iou", "kendall_tau")
#: averaged only where records carry them (seeded interpreters: :func:`rerun_fields`)
OPTIONAL_MEAN_FIELDS = ("benign_rerun_iou", "benign_rerun_l1")
#: averaged only where every record carries them (records written before the field existed lack it)
COMPLETE_MEAN_FIELDS = ("cpu_seconds",)


def summarize(records: Sequence[Mapping]) -> dict:
    """Aggregate records with the same field names: rates and means (confidence over successes)."""
    if not records:
        return {"n": 0}
    n = len(records)
    successes = [r for r in records if r["success"]]
    summary: dict = {"n": n, "success": len(successes) / n, "attack_success_rate": len(successes) / n}
    if all("pred_label" in r and "true_label" in r for r in records):
        # the attacked images are classified correctly, so a changed prediction is a wrong one
        summary["fooling_ratio"] = sum(r["pred_label"] != r["true_label"] for r in records) / n
    for key in MEAN_FIELDS:
        pool = successes if key == "confidence" else records
        values = [float(r[key]) for r in pool if key in r and r[key] == r[key]]
        summary[key] = sum(values) / len(values) if values else float("nan")
    for key in OPTIONAL_MEAN_FIELDS:
        values = [float(r[key]) for r in records if key in r and r[key] == r[key]]
        if values:
            summary[key] = sum(values) / len(values)
    for key in COMPLETE_MEAN_FIELDS:
        if all(key in r and r[key] == r[key] for r in records):
            summary[key] = sum(float(r[key]) for r in records) / n
    iou_keys = sorted({k for r in records for k in r if k.startswith("map_iou@")})
    for key in iou_keys:
        summary[key] = sum(float(r[key]) for r in records) / n
    its = [r["iterations_to_success"] for r in records if r.get("iterations_to_success", -1) >= 0]
    summary["iterations_to_success"] = sum(its) / len(its) if its else float("nan")
    summary.update(detector_summary(records))
    return summary


#: per-image detector fields (``detector.LABEL.FIELD``, see :mod:`idls.experiments.detection`) that are averaged
DETECTOR_RATE_FIELDS = ("flagged", "benign_flagged", "evaded", "score", "benign_score")


def detector_labels(records: Sequence[Mapping]) -> list[str]:
    """Labels of the detectors whose fields the records carry, in first-seen order."""
    labels: dict[str, None] = {}
    for record in records:
        for key in record:
            if key.startswith("detector.") and key.endswith(".flagged") and not key.endswith(".benign_flagged"):
                labels[key[len("detector."):-len(".flagged")]] = None
    return list(labels)


def detector_summary(records: Sequence[Mapping]) -> dict:
    """Per detector label: detection rate (mean ``flagged``), false-positive rate (``benign_flagged``), evasion
    rate (``evaded``), mean scores and the ROC-AUC of adversarial against benign scores."""
    from idls.defenses.detectors.base import roc_auc

    out: dict = {}
    for label in sorted(detector_labels(records)):
        prefix = f"detector.{label}."
        rows = [r for r in records if prefix + "flagged" in r]
        for name in DETECTOR_RATE_FIELDS:
            out[prefix + name] = sum(float(r[prefix + name]) for r in rows) / len(rows)
        for name in ("name", "describe"):
            if prefix + name in rows[0]:
                out[prefix + name] = rows[0][prefix + name]
        out[prefix + "auc"] = roc_auc(torch.tensor([float(r[prefix + "benign_score"]) for r in rows]),
                                      torch.tensor([float(r[prefix + "score"]) for r in rows]))
    return out


def group_summaries(records: Sequence[Mapping], keys: Sequence[str] = ("attack", "interpreter")) -> dict:
    """Nested ``{attack: {interpreter: summary}}`` over records."""
    groups: dict = {}
    for r in records:
        node = groups
        for key in keys[:-1]:
            node = node.setdefault(str(r[key]), {})
        node.setdefault(str(r[keys[-1]]), []).append(r)

    def reduce(node):
        return summarize(node) if isinstance(node, list) else {k: reduce(v) for k, v in node.items()}

    return reduce(groups)
