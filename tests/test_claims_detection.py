"""The detection claims (001 Obs. 3-4, 000 detector, ensemble-adaptive) on hand-made records."""

from __future__ import annotations

import pytest

from idls.reproduce.claims_detection import DETECTION_CLAIMS, interpreters_named

CLAIMS = {c.id: c for c in DETECTION_CLAIMS}
N = 20


def cell(attack: str, attacked: str = "none", variant: str | None = None, *, detectors: dict[str, tuple[str, str, float]],
         map_l1: float = 0.05, map_iou: float = 0.8, benign_flagged: float = 0.05, seconds: float = 1.0) -> list[dict]:
    """N image records of one cell; ``detectors``: label -> (name, describe, detection rate)."""
    records = []
    for i in range(N):
        record = {"kind": "attack", "experiment": "e", "data": "d", "model": "m", "epsilon": 0.03,
                  "cell": f"{attack}-{attacked}-{variant}", "image_id": str(i), "attack": attack,
                  "attacked_interpreter": attacked, "variant": variant or attack,
                  "interpreter": attacked if attacked != "none" else "cam", "success": True, "true_label": 0,
                  "pred_label": 1, "map_l1": map_l1, "map_iou": map_iou, "seconds": seconds}
        for label, (name, describe, rate) in detectors.items():
            flagged = i < round(rate * N)
            benign = i >= N - round(benign_flagged * N)
            record.update({f"detector.{label}.name": name, f"detector.{label}.describe": describe,
                           f"detector.{label}.flagged": flagged, f"detector.{label}.benign_flagged": benign,
                           f"detector.{label}.score": float(flagged), f"detector.{label}.benign_score": float(benign) / 2,
                           f"detector.{label}.evaded": not flagged})
        records.append(record)
    return records


def fs(rate: float) -> dict:
    return {"fs-b2": ("feature-squeezing", "feature-squeezing(bit-depth(2))", rate)}


def verdicts(claim: str, records: list[dict]) -> list[bool]:
    return [check.passed for check in CLAIMS[claim].measure(records)]


def test_obs3_compares_pgd_and_adv2_per_squeezer():
    assert verdicts("001-obs3", cell("pgd", detectors=fs(0.90)) + cell("adv2", "cam", detectors=fs(0.85))) == [True]
    assert verdicts("001-obs3", cell("pgd", detectors=fs(0.90)) + cell("adv2", "cam", detectors=fs(0.50))) == [False]
    assert verdicts("001-obs3", cell("adv2", "cam", detectors=fs(0.85))) == []  # no PGD cell: not run


@pytest.mark.parametrize("adaptive_rate, adaptive_l1, passed", [(0.2, 0.06, True), (0.5, 0.06, False),
                                                                 (0.2, 0.20, False)])
def test_obs4_needs_lower_detection_and_kept_maps(adaptive_rate, adaptive_l1, passed):
    records = (cell("adv2", "cam", detectors=fs(0.90), map_l1=0.05)
               + cell("adaptive-adv2", "cam", "bit-depth(2)", detectors=fs(adaptive_rate), map_l1=adaptive_l1))
    assert verdicts("001-obs4", records) == [passed]


def test_obs4_skips_an_adaptive_attack_without_its_squeezer_detector():
    records = cell("adv2", "cam", detectors=fs(0.9)) + cell("adaptive-adv2", "cam", "median(3x3)", detectors=fs(0.1))
    assert verdicts("001-obs4", records) == []


def test_detector_claim_bars_for_pairs_and_the_best_triple():
    pair = {"mi-gc": ("multi-interpreter", "multi-interpreter(grad+cam)", 0.95)}
    triple = {"mi-gcr": ("multi-interpreter", "multi-interpreter(grad+cam+rts)", 0.80)}
    records = cell("adv2", "grad", detectors={**pair, **triple}, benign_flagged=0.05)
    checks = {tuple(c.values["interpreters"]): c for c in CLAIMS["000-detector"].measure(records)}
    assert checks[("grad", "cam")].values["accuracy"] == pytest.approx((0.95 + 0.95) / 2)
    assert checks[("grad", "cam")].passed
    assert checks[("grad", "cam", "rts")].values["bar"] == 0.95 and not checks[("grad", "cam", "rts")].passed


def test_ensemble_claim_compares_adaptive_and_basic_adv2():
    ensemble = {"ens": ("interpreter-ensemble", "interpreter-ensemble(grad+cam+gradcam)", 0.6)}
    evading = {"ens": ("interpreter-ensemble", "interpreter-ensemble(grad+cam+gradcam)", 0.1)}
    records = cell("adv2", "cam", detectors=ensemble) + cell("ensemble-adv2", "cam", detectors=evading, seconds=2.0)
    [check] = CLAIMS["ensemble-adaptive"].measure(records)
    assert check.passed and check.values["adaptive_seconds"] == 2.0


def test_ensemble_claim_checks_the_adaptive_attack_against_the_detector_it_adapted_to():
    """ensemble-adv2 with detector 'ens' (variant 'vs ens') is not judged by a two-sided detector it never saw."""
    one_sided = ("interpreter-ensemble", "interpreter-ensemble(cam+grad, l1)")
    two_sided = ("interpreter-ensemble", "interpreter-ensemble(cam+grad, l1, two-sided)")
    basic = cell("adv2", "cam", detectors={"ens": (*one_sided, 0.3), "ens-2s": (*two_sided, 0.2)})
    adaptive = cell("ensemble-adv2", "cam", "vs ens", detectors={"ens": (*one_sided, 0.0), "ens-2s": (*two_sided, 0.5)})
    [check] = CLAIMS["ensemble-adaptive"].measure(basic + adaptive)
    assert check.passed and check.values["adaptive_detection"] == 0.0
    # a variant naming the detector's description is matched too; one naming no detector is checked against all
    described = [{**r, "variant": "vs " + two_sided[1]} for r in adaptive]
    assert [c.passed for c in CLAIMS["ensemble-adaptive"].measure(basic + described)] == [False]
    unnamed = [{**r, "variant": "ensemble-adv2"} for r in adaptive]
    assert sorted(c.passed for c in CLAIMS["ensemble-adaptive"].measure(basic + unnamed)) == [False, True]


def test_ensemble_claim_reads_the_scores_when_neither_attack_is_flagged():
    """On a few images both rates can be 0: the adaptive attack still passes when the detector scores it lower."""
    ensemble = {"ens": ("interpreter-ensemble", "interpreter-ensemble(cam+grad, l1)", 0.0)}
    basic = cell("adv2", "cam", detectors=ensemble)
    lower = [{**r, "detector.ens.score": -1.0} for r in cell("ensemble-adv2", "cam", "vs ens", detectors=ensemble)]
    [check] = CLAIMS["ensemble-adaptive"].measure(basic + lower)
    assert check.passed and check.values["adaptive_auc"] < check.values["basic_auc"]
    same = cell("ensemble-adv2", "cam", "vs ens", detectors=ensemble)
    assert [c.passed for c in CLAIMS["ensemble-adaptive"].measure(basic + same)] == [False]


def test_interpreter_names_are_read_in_order_and_whole():
    assert interpreters_named("multi-interpreter(gradcam+grad)") == ["gradcam", "grad"]
    assert interpreters_named("multi-interpreter(cam+mask)") == ["cam", "mask"]


def test_claims_skip_experiments_whose_cells_the_detector_did_not_score():
    guarded = cell("pgd", detectors=fs(0.9)) + cell("adv2", "cam", detectors=fs(0.85))
    unguarded = [{**r, "experiment": "other"} for r in cell("pgd", detectors={}) + cell("adv2", "cam", detectors={})]
    assert verdicts("001-obs3", guarded + unguarded) == [True]


def test_obs4_matches_an_amortised_smoothing_attack_to_its_squeezer_detector():
    """adaptive-adv2 against median names itself 'median(3x3), every 2' (squeeze_every's default): still matched."""
    median = {"fs-m3": ("feature-squeezing", "feature-squeezing(median(3x3))", 0.9)}
    records = (cell("adv2", "cam", detectors=median)
               + cell("adaptive-adv2", "cam", "median(3x3), every 2",
                      detectors={"fs-m3": ("feature-squeezing", "feature-squeezing(median(3x3))", 0.1)}))
    assert verdicts("001-obs4", records) == [True]
