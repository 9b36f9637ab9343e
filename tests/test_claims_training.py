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


# -- AID (a study record) ----------------------------------------------------------------------------------
def _aid_record(base=0.01, hardened=0.08, benign=0.03):
    return {"kind": "study", "study": "aid_cifar", "model": "m", "images": 20, "benign_map_l1": benign,
            "adv2": {"rts": {"success_rate": 1.0, "map_l1_both_succeeded": base},
                     "rts_aid": {"success_rate": 0.9, "map_l1_both_succeeded": hardened},
                     "both_succeeded": 18, "ratio": hardened / base},
            "noise": [{"kind": "gaussian", "target_rate": 0.03, "misclassification": 0.05, "scale": 0.02,
                       "rts": {"map_l1": 0.02}, "rts_aid": {"map_l1": 0.03}}]}


@pytest.mark.parametrize("hardened, benign, passes", [(0.08, 0.03, True), (0.03, 0.03, False), (0.08, 0.09, False)])
def test_aid_claim_reads_the_study_record(hardened, benign, passes):
    from idls.reproduce.claims_training import measure_aid

    (check,) = measure_aid([_aid_record(hardened=hardened, benign=benign)])
    assert check.passed is passes and check.values["images_both"] == 18


def test_aid_tables_show_both_maskers_and_the_noise_levels():
    from idls.report.study_tables import aid_tables

    adv2, noise = aid_tables([_aid_record()])
    assert [row["masker"] for row in adv2.rows] == ["RTS", "RTS_A (AID)"]
    assert noise.rows[0]["map L1 RTS_A (AID)"] == 0.03


def test_a_study_runs_once_and_its_claim_is_scored(tmp_path):
    from idls.analysis.store_reader import load_store
    from idls.reproduce.claims_training import TRAINING_CLAIMS
    from idls.reproduce.scorecard import evaluate_claims
    from idls.reproduce.studies import Study, StudyContext, run_study

    calls = []

    def measure(context):
        calls.append(context.out)
        return {key: value for key, value in _aid_record().items() if key not in ("kind", "study")}

    study = Study("aid_test", "a stand-in", measure)
    context = StudyContext(tmp_path / "aid_test", "m", None, "d", "f", quick=True, progress=False)
    first = run_study(study, context)
    again = run_study(study, context)  # resumed: not measured twice
    assert len(calls) == 1 and again["adv2"] == first["adv2"]
    store = load_store(tmp_path)
    (row,) = [r for r in evaluate_claims(store.records, TRAINING_CLAIMS, store.studies) if r["id"] == "001-obs8"]
    assert row["pass"] is True


@pytest.mark.slow
def test_the_embedded_aid_study_runs_end_to_end_and_is_scored(tmp_path):
    from idls.analysis.store_reader import load_store
    from idls.reproduce.claims_training import measure_aid
    from idls.reproduce.studies import STUDIES, StudyContext, run_study

    context = StudyContext(tmp_path / "aid_embedded", "embedded_cnn", "pretrained", "embedded", "embedded-train",
                           quick=True, progress=False)
    record = run_study(STUDIES["aid_embedded"], context)
    assert record["adv2"]["rts"]["success_rate"] >= 0 and record["benign_map_l1"] >= 0
    assert (tmp_path / "aid_embedded" / "rts_aid.safetensors").is_file()
    (check,) = measure_aid(load_store(tmp_path).studies)
    assert check.values["images_both"] == record["adv2"]["both_succeeded"]
