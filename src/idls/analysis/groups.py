"""Grouping of store records and their summaries (built on :func:`idls.evaluate.summarize`).

Record roles (store contract): a record is the attack's *own* result when its evaluated
``interpreter`` is the one the attack was crafted against, or the attack is classifier-only
(``attacked_interpreter == "none"``); otherwise it is an interpreter-transfer record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

from idls import evaluate
from idls.interpreters import INTERPRETERS, interpreters_in_order

NONE = "none"
GROUP_KEYS: tuple[str, ...] = ("model", "attack", "framework", "target", "attacked_interpreter", "interpreter")
CONTEXT_KEYS: tuple[str, ...] = ("experiment", "data", "epsilon", "mode", "variant", "training")

#: registered interpreters in their declared display order (a new interpreter joins by registering)
INTERPRETER_ORDER: tuple[str, ...] = tuple(interpreters_in_order())
ATTACK_ORDER: tuple[str, ...] = ("pgd", "cw", "stadv", "adv2", "advedge", "advedge+")
FRAMEWORK_ORDER: tuple[str, ...] = ("pgd", "cw", "stadv")
TARGET_ORDER: tuple[str, ...] = ("none", "benign", "patch", "other-class")

def family(interpreter: str) -> str:
    """The interpreter's kind in paper 001's taxonomy, as its class declares it (its own name when unknown)."""
    return INTERPRETERS.get(interpreter).taxonomy if interpreter in INTERPRETERS else interpreter


def is_own(record: Mapping) -> bool:
    """Whether the record evaluates the interpreter the attack was crafted against (or a classifier-only attack)."""
    attacked = str(record.get("attacked_interpreter", NONE))
    return attacked == NONE or attacked == str(record.get("interpreter"))


def own_records(records: Iterable[Mapping]) -> list[Mapping]:
    return [r for r in records if is_own(r)]


def matches(record: Mapping, selector: Mapping) -> bool:
    """Whether every ``selector`` field equals the record's (a tuple/list/set value means any of them)."""
    for key, wanted in selector.items():
        value = record.get(key)
        if isinstance(wanted, (tuple, list, set, frozenset)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def select(records: Iterable[Mapping], **selector) -> list[Mapping]:
    return [r for r in records if matches(r, selector)]


def group_records(records: Iterable[Mapping], keys: Sequence[str]) -> dict[tuple, list[Mapping]]:
    """Records by the tuple of their ``keys`` values (insertion order kept)."""
    groups: dict[tuple, list[Mapping]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


def _without_nulls(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if v is not None}


def summary(records: Sequence[Mapping]) -> dict:
    """:func:`idls.evaluate.summarize` of records (null fields treated as absent) plus the target-map distances."""
    out = evaluate.summarize([_without_nulls(r) for r in records])
    for key in ("map_l1_to_target", "map_iou_to_target"):
        out[key] = mean_field(records, key)
    return out


def summaries_by(records: Iterable[Mapping], keys: Sequence[str]) -> dict[tuple, dict]:
    """One :func:`summary` per group of ``keys`` values."""
    return {k: summary(group) for k, group in group_records(records, keys).items()}


def mean_field(records: Iterable[Mapping], key: str) -> float:
    """Mean of a numeric field over the records that have it (nulls and NaNs skipped; NaN when none)."""
    values = [float(r[key]) for r in records if isinstance(r.get(key), (int, float)) and not _isnan(r[key])]
    return sum(values) / len(values) if values else math.nan


def _isnan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def varying_keys(records: Iterable[Mapping], candidates: Sequence[str] = CONTEXT_KEYS) -> tuple[str, ...]:
    """The ``candidates`` that take more than one value over the records (they must stay apart in tables)."""
    records = list(records)
    return tuple(k for k in candidates if len({_hashable(r.get(k)) for r in records}) > 1)


def _hashable(value):
    return json_key(value) if isinstance(value, (list, dict)) else value


def json_key(value) -> str:
    """A stable string for an unhashable value (lists, dicts)."""
    return json.dumps(value, sort_keys=True)


def ordered(values: Iterable, preferred: Sequence = ()) -> list:
    """Distinct values, those in ``preferred`` first in its order, then the rest sorted as strings."""
    distinct = list(dict.fromkeys(values))
    first = [v for v in preferred if v in distinct]
    return first + sorted((v for v in distinct if v not in preferred), key=str)


def label(values: Iterable) -> str:
    """Human-readable join of key values, skipping empty ones: ``'cifar_resnet20 · pgd · cam'``."""
    return " · ".join(str(v) for v in values if v not in (None, ""))
