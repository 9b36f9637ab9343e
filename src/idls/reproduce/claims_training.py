"""The training-defence claim of paper 000 §VIII (Table VII): interpretation-robust training keeps the maps
and the predictions under attack.

Records of an experiment whose models carry ``training:`` (:mod:`idls.defenses.training`) hold untargeted
PGD and ``interpretation-pgd`` cells per model entry; :mod:`idls.report.robustness_tables` turns them into
accuracy-under-PGD and Kendall's-tau rows by epsilon. The claim compares, per experiment and data set, the
interpretation-robust row with the normal one at the epsilon nearest 8/255 that both were attacked at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from idls.analysis.groups import group_records
from idls.reproduce.claims import Check, Claim, _f, parts
from idls.report.robustness_tables import NORMAL, epsilon_label, interpretation_tau_rows, robust_accuracy_rows

ROBUST_OBJECTIVE = "interpretation-robust"
#: 000-robust pass marks (the paper: tau 0.706 vs -0.083, accuracy 0.280 vs 0.085, clean 0.785 -> 0.685)
ROBUST_TAU = 0.6
NORMAL_TAU = 0.2
ACCURACY_RATIO = 3.0
CLEAN_LOSS = 0.15
EPSILON = 8 / 255


def _nearest(epsilons, target: float = EPSILON) -> float | None:
    candidates = [e for e in epsilons if e > 0]
    return min(candidates, key=lambda e: abs(e - target)) if candidates else None


def measure_robust(records: Sequence[Mapping]) -> list[Check]:
    checks = []
    for (experiment, data), rows in group_records(records, ("experiment", "data")).items():
        accuracy = robust_accuracy_rows(rows)
        taus = interpretation_tau_rows(rows)
        normal_acc = accuracy.get(NORMAL)
        for training, robust_acc in accuracy.items():
            if not training.startswith(ROBUST_OBJECTIVE) or normal_acc is None:
                continue
            for (tau_training, interpreter), robust_tau in taus.items():
                normal_tau = taus.get((NORMAL, interpreter))
                if tau_training != training or normal_tau is None:
                    continue
                epsilon = _nearest(set(robust_acc) & set(normal_acc) & set(robust_tau) & set(normal_tau))
                if epsilon is None:
                    continue
                values = {"epsilon": epsilon, "tau_robust": robust_tau[epsilon], "tau_normal": normal_tau[epsilon],
                          "accuracy_robust": robust_acc[epsilon], "accuracy_normal": normal_acc[epsilon],
                          "clean_robust": robust_acc[0.0], "clean_normal": normal_acc[0.0]}
                passed = (values["tau_robust"] >= ROBUST_TAU and values["tau_normal"] <= NORMAL_TAU
                          and values["accuracy_robust"] >= ACCURACY_RATIO * values["accuracy_normal"]
                          and values["accuracy_robust"] > values["accuracy_normal"]
                          and values["clean_normal"] - values["clean_robust"] <= CLEAN_LOSS)
                text = (f"eps {epsilon_label(epsilon)}: tau {_f(values['tau_robust'])} vs normal "
                        f"{_f(values['tau_normal'])}; PGD accuracy {_f(values['accuracy_robust'])} vs "
                        f"{_f(values['accuracy_normal'])}; clean {_f(values['clean_robust'])} vs "
                        f"{_f(values['clean_normal'])}")
                n = sum(1 for r in rows if r.get("training") in (None, training))
                checks.append(Check(parts([experiment, training, interpreter]), values, text, passed, n))
    return checks


TRAINING_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "000-robust", "000", "000 §VIII: interpretation-robust training keeps maps and predictions under attack",
        "at 8/255: Kendall's tau 0.706 (robust) vs -0.083 (normal); PGD accuracy 0.280 vs 0.085; clean accuracy "
        "0.685 vs 0.785 (Wide-ResNet, CIFAR-10, CAM; Table VII)",
        f"at the epsilon nearest 8/255: tau(robust) >= {ROBUST_TAU}, tau(normal) <= {NORMAL_TAU}, PGD accuracy "
        f"(robust) >= {ACCURACY_RATIO:g} x normal's and above it, clean accuracy lost <= {CLEAN_LOSS}",
        measure_robust,
    ),
)

__all__ = ["TRAINING_CLAIMS", "measure_robust"]
