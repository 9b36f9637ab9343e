"""Detection tables: how often each detector flags each attack's images (paper 001 Table 4, paper 000 Tables V-VI).

Records of an experiment with ``detectors:`` carry per-image ``detector.LABEL.*`` fields
(:mod:`idls.experiments.detection`). The tables have one row per detector and one column per
attack configuration (attack, attacked interpreter, variant), plus the false-positive rate the
detector reached on the benign images of the same cells:

- ``detection``: share of the adversarial images flagged (001 Table 4's "detection rate");
- ``detection_accuracy``: balanced accuracy ``(detection rate + 1 - false-positive rate) / 2``
  (000 Tables V-VI report the detector's accuracy on balanced benign / adversarial sets);
- ``detection_auc``: ROC-AUC of adversarial against benign scores;
- ``evasion``: share of images the attack succeeded on *and* the detector missed.

Each image counts once per cell (records of the other evaluated interpreters repeat its fields).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from idls.analysis.groups import NONE, group_records, label, varying_keys
from idls.evaluate import detector_labels, detector_summary
from idls.report.tables import Table

#: (table name, summary field per label, caption)
DETECTION_TABLES: tuple[tuple[str, str, str], ...] = (
    ("detection", "flagged", "Detection rate: share of adversarial images the detector flags (paper 001 Table 4)."),
    ("detection_accuracy", "accuracy", "Detector accuracy on the benign and adversarial images of each cell, "
                                       "(detection rate + 1 - false-positive rate) / 2 (paper 000 Tables V-VI)."),
    ("detection_auc", "auc", "ROC-AUC of the detector's scores, adversarial against benign images."),
    ("evasion", "evaded", "Evasion: share of images on which the attack succeeded and the detector did not flag it."),
)
#: the fields that name an attack configuration in the column headers
COLUMN_KEYS: tuple[str, ...] = ("attack", "attacked_interpreter", "variant")


def one_record_per_image(records: Sequence[Mapping]) -> list[Mapping]:
    """The first record of each (cell, image): detector fields do not depend on the evaluated interpreter."""
    seen: set[tuple] = set()
    out = []
    for record in records:
        key = (record.get("cell"), record.get("image_id"))
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def column_label(fields: Mapping) -> str:
    """``'adv2 · cam'``, ``'pgd'``, ``'adaptive-adv2 · cam · bit-depth(2)'``."""
    return label(v for k, v in fields.items() if v != NONE and not (k == "variant" and v == fields.get("attack")))


def detection_tables(records: Sequence[Mapping]) -> list[Table]:
    """The tables above, or ``[]`` when no record carries detector fields."""
    attack_records = [r for r in records if r.get("kind", "attack") == "attack"]
    labels = detector_labels(attack_records)
    if not labels:
        return []
    images = one_record_per_image(attack_records)
    context = varying_keys(images, ("experiment", "model", "data", "epsilon"))
    keys = (*context, *COLUMN_KEYS)
    groups = group_records(images, keys)
    columns = {key: column_label(dict(zip(keys, key, strict=True))) for key in groups}
    summaries = {key: detector_summary(group) for key, group in groups.items()}
    tables = []
    for name, field, caption in DETECTION_TABLES:
        rows = []
        for detector in labels:
            prefix = f"detector.{detector}."
            row: dict = {"detector": detector}
            described = next((s.get(prefix + "describe") for s in summaries.values() if prefix + "describe" in s), "")
            row["setting"] = described or detector
            benign = [s[prefix + "benign_flagged"] for s in summaries.values() if prefix + "benign_flagged" in s]
            row["benign FPR"] = sum(benign) / len(benign) if benign else math.nan
            for key, s in summaries.items():
                row[columns[key]] = _value(s, prefix, field)
            rows.append(row)
        tables.append(Table(name, caption, ["detector", "setting", "benign FPR", *columns.values()], rows,
                            key_columns=2))
    return tables


def _value(s: Mapping, prefix: str, field: str) -> float:
    if prefix + "flagged" not in s:
        return math.nan
    if field == "accuracy":
        return (s[prefix + "flagged"] + 1.0 - s[prefix + "benign_flagged"]) / 2.0
    return float(s[prefix + field])


__all__ = ["DETECTION_TABLES", "column_label", "detection_tables", "one_record_per_image"]
