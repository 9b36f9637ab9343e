"""The prediction-interpretation gap study (paper 001 §5 Q1, Tables 6-8 and Fig. 13).

Joint attacks aimed at a target map other than the benign one (a random patch, the map of
another class): does the classifier still follow (success, confidence) and does the adversarial
map land nearer the target map than the benign map (L1 and IoU to each)?
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from idls.analysis.groups import CONTEXT_KEYS, NONE, own_records, summaries_by

GAP_KEYS: tuple[str, ...] = (*CONTEXT_KEYS, "model", "attack", "framework", "target", "interpreter")
GAP_COLUMNS: tuple[str, ...] = (
    "n",
    "success",
    "confidence",
    "map_l1",
    "map_l1_to_target",
    "map_iou",
    "map_iou_to_target",
)


def gap_rows(records: Sequence[Mapping], targets: Sequence[str] | None = None) -> list[dict]:
    """One row per (context, model, attack, framework, target, interpreter) of joint attacks.

    ``map_l1`` / ``map_iou`` compare the adversarial map with the benign map (Table 7's Δb),
    ``map_l1_to_target`` / ``map_iou_to_target`` with the attack's target map (Δt).

    Args:
        targets: target kinds to include (default: every target except the benign map and "none").
    """
    chosen = [
        r for r in own_records(records)
        if str(r.get("attacked_interpreter", NONE)) != NONE
        and (r.get("target") in targets if targets is not None else r.get("target") not in ("benign", NONE))
    ]
    rows = []
    for key, summary in summaries_by(chosen, GAP_KEYS).items():
        fields = dict(zip(GAP_KEYS, key, strict=True))
        rows.append({**fields, **{c: summary.get(c) for c in GAP_COLUMNS}})
    return rows
