"""What training defences buy, shaped like paper 000 Table VII.

Rows: one per model entry (the normal model and each training defence, by the records' ``training``
field). Columns: the epsilons the experiment attacked at (epsilon 0 = no attack).

- ``robust_accuracy``: accuracy under untargeted PGD over the whole evaluation pool, i.e. the model's
  clean accuracy on the pool (``model_accuracy``) times the share of the attacked (correctly
  classified) images PGD did not flip;
- ``interpretation_tau``: mean Kendall's tau between the benign and the attacked map under the
  interpretation attack (``interpretation-pgd``), per attacked interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from idls.analysis.groups import group_records, mean_field
from idls.report.detection_tables import one_record_per_image
from idls.report.tables import Table

NORMAL = "normal"  #: the row label of a model without a training defence
PGD = "pgd"
INTERPRETATION_ATTACK = "interpretation-pgd"


def training_label(record: Mapping) -> str:
    return str(record.get("training") or NORMAL)


def epsilon_label(epsilon: float) -> str:
    """``'8/255'`` for epsilons on the 1/255 grid (the papers' notation), else the number."""
    scaled = epsilon * 255
    return f"{round(scaled):g}/255" if abs(scaled - round(scaled)) < 1e-3 else f"{epsilon:.4g}"


def robust_accuracy_rows(records: Sequence[Mapping]) -> dict[str, dict[float, float]]:
    """``{training: {epsilon: accuracy}}`` from untargeted PGD records (epsilon 0: the clean accuracy)."""
    images = one_record_per_image([r for r in records if r.get("kind", "attack") == "attack"
                                   and r.get("attack") == PGD and r.get("mode") == "untargeted"
                                   and r.get("model_accuracy") is not None])
    out: dict[str, dict[float, float]] = {}
    for (training, epsilon), rows in group_records(images, ("training", "epsilon")).items():
        clean = float(rows[0]["model_accuracy"])
        kept = sum(1 for r in rows if not r["success"]) / len(rows)
        row = out.setdefault(training_label({"training": training}), {0.0: clean})
        row[float(epsilon)] = clean * kept
    return out


def interpretation_tau_rows(records: Sequence[Mapping]) -> dict[tuple[str, str], dict[float, float]]:
    """``{(training, interpreter): {epsilon: mean Kendall's tau}}`` from the interpretation attack's own records."""
    own = [r for r in records if r.get("kind", "attack") == "attack" and r.get("attack") == INTERPRETATION_ATTACK
           and r.get("interpreter") == r.get("attacked_interpreter")]
    out: dict[tuple[str, str], dict[float, float]] = {}
    for (training, interpreter, epsilon), rows in group_records(own, ("training", "interpreter", "epsilon")).items():
        out.setdefault((training_label({"training": training}), str(interpreter)), {0.0: 1.0})[float(epsilon)] = \
            mean_field(rows, "kendall_tau")
    return out


def robustness_tables(records: Sequence[Mapping]) -> list[Table]:
    """The two tables above, or ``[]`` when the records hold neither kind of attack."""
    tables = []
    accuracy = robust_accuracy_rows(records)
    if accuracy:
        epsilons = sorted({e for row in accuracy.values() for e in row})
        columns = ["model", *(epsilon_label(e) for e in epsilons)]
        rows = [{"model": name, **{epsilon_label(e): row.get(e, math.nan) for e in epsilons}}
                for name, row in _normal_first(accuracy)]
        tables.append(Table("robust_accuracy", "Accuracy under untargeted PGD on the whole evaluation pool by epsilon "
                            "(0: clean accuracy), per training (paper 000 Table VII, upper half).", columns, rows,
                            key_columns=1))
    taus = interpretation_tau_rows(records)
    if taus:
        epsilons = sorted({e for row in taus.values() for e in row})
        columns = ["model", "interpreter", *(epsilon_label(e) for e in epsilons)]
        rows = [{"model": name, "interpreter": interpreter, **{epsilon_label(e): row.get(e, math.nan) for e in epsilons}}
                for (name, interpreter), row in _normal_first(taus)]
        tables.append(Table("interpretation_tau", "Kendall's tau between benign and attacked maps under the "
                            "interpretation attack (Eq. 20, label kept) by epsilon, per training (paper 000 Table VII, "
                            "lower half).", columns, rows, key_columns=2))
    return tables


def _normal_first(rows: Mapping) -> list:
    def name(key) -> str:
        return key[0] if isinstance(key, tuple) else key

    return sorted(rows.items(), key=lambda item: (name(item[0]) != NORMAL, str(item[0])))


__all__ = ["NORMAL", "epsilon_label", "interpretation_tau_rows", "robust_accuracy_rows", "robustness_tables",
           "training_label"]
