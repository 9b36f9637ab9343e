"""Table VII rows and the 000-robust claim, computed from hand-made store records."""

from __future__ import annotations

import pytest

from idls.report.robustness_tables import epsilon_label, robustness_tables
from idls.reproduce.claims_training import measure_robust

EPS = 0.0313725


def _records(training, *, accuracy, flipped, tau, n=10):
    out = []
    for i in range(n):
        base = {"kind": "attack", "experiment": "e", "data": "d", "model": "m", "cell": f"{training}-{i}",
                "image_id": str(i), "mode": "untargeted", "epsilon": EPS, "model_accuracy": accuracy,
                **({} if training is None else {"training": training})}
        out.append({**base, "cell": f"pgd-{training}", "attack": "pgd", "attacked_interpreter": "none",
                    "interpreter": "cam", "success": i < flipped})
        out.append({**base, "cell": f"ip-{training}", "attack": "interpretation-pgd", "attacked_interpreter": "cam",
                    "interpreter": "cam", "success": False, "kendall_tau": tau})
    return out


def test_tables_compute_accuracy_over_the_pool_and_mean_tau():
    records = _records(None, accuracy=0.9, flipped=10, tau=0.1) + \
        _records("interpretation-robust", accuracy=0.8, flipped=5, tau=0.7)
    tables = {t.name: t for t in robustness_tables(records)}
    accuracy = {row["model"]: row for row in tables["robust_accuracy"].rows}
    assert accuracy["normal"]["0/255"] == pytest.approx(0.9) and accuracy["normal"]["8/255"] == pytest.approx(0.0)
    assert accuracy["interpretation-robust"]["8/255"] == pytest.approx(0.8 * 0.5)
    taus = {row["model"]: row for row in tables["interpretation_tau"].rows}
    assert taus["interpretation-robust"]["8/255"] == pytest.approx(0.7) and taus["normal"]["0/255"] == 1.0
    assert tables["robust_accuracy"].rows[0]["model"] == "normal"  # the baseline first


@pytest.mark.parametrize("robust_flipped, robust_tau, robust_clean, passes", [
    (5, 0.7, 0.8, True),
    (5, 0.5, 0.8, False),    # maps not kept
    (10, 0.7, 0.8, False),   # no accuracy under attack: not above the normal model's
    (5, 0.7, 0.7, False),    # too much clean accuracy lost (0.2 > 0.15)
])
def test_robust_claim_applies_every_pass_mark(robust_flipped, robust_tau, robust_clean, passes):
    records = _records(None, accuracy=0.9, flipped=10, tau=0.1) + \
        _records("interpretation-robust:epochs=2", accuracy=robust_clean, flipped=robust_flipped, tau=robust_tau)
    (check,) = measure_robust(records)
    assert check.passed is passes
    assert check.values["epsilon"] == EPS


def test_robust_claim_needs_both_models():
    assert measure_robust(_records("interpretation-robust", accuracy=0.8, flipped=5, tau=0.7)) == []


def test_epsilon_labels_use_the_papers_notation():
    assert epsilon_label(8 / 255) == "8/255" and epsilon_label(0.0313725) == "8/255" and epsilon_label(0.1234) == "0.1234"
