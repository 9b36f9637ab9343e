"""Paper 004's claims on synthetic records where each is known to pass, fail or be absent."""

from __future__ import annotations

import pytest
from store_factory import attack_record

from idls.reproduce import evaluate_claims
from idls.reproduce.claims_universal import UNIVERSAL_CLAIMS, variant_parts

IMAGES = [f"img{i}" for i in range(10)]


def universal(attack: str, variant: str, *, fooled: int, l1: float, iou: float, interpreter: str = "cam",
              attacked: str = "none", pred: int = 2) -> list[dict]:
    """Ten records of one universal configuration: ``fooled`` of them change prediction."""
    rows = []
    for i, image in enumerate(IMAGES):
        r = attack_record(attack=attack, interpreter=interpreter, image_id=image, success=i < fooled, map_l1=l1,
                          map_iou=iou, framework=attack, target="none", attacked=attacked, epsilon=None)
        r.update(variant=variant, mode="untargeted", pred_label=pred if i < fooled else 1, target_label=1)
        rows.append(r)
    return rows


def by_id(records):
    return {row["id"]: row for row in evaluate_claims(records, UNIVERSAL_CLAIMS)}


def plain(l1: float = 0.2, iou: float = 0.4, fooled: int = 9) -> list[dict]:
    return (universal("sgd-uap", "linf", fooled=fooled, l1=l1, iou=iou)
            + universal("uap", "linf", fooled=fooled - 1, l1=l1, iou=iou)
            + universal("gap", "resnet-cmin-linf", fooled=fooled - 2, l1=l1, iou=iou))


def juap(generator: str = "resnet", loss: str = "cmin", norm: str = "linf", *, fooled: int = 9, l1: float = 0.1,
         iou: float = 0.6) -> list[dict]:
    return universal("juap", f"{generator}-{loss}-{norm}", fooled=fooled, l1=l1, iou=iou, attacked="cam")


def test_variant_labels_are_read_back():
    assert variant_parts({"variant": "unet-target-l2-t3-lam0.5"}) == {
        "norm": "l2", "generator": "unet", "loss": "target", "target_class": "3", "lam": "0.5"}
    assert variant_parts({"variant": "linf"})["norm"] == "linf" and variant_parts({})["norm"] is None


def test_juap_as_strong_and_with_closer_maps_passes():
    rows = by_id(plain() + juap())
    assert rows["004-fr"]["pass"] is True and rows["004-maps"]["pass"] is True
    assert rows["004-generators"]["pass"] is None and rows["004-jap"]["pass"] is None  # not run


def test_the_fooling_ratio_check_names_the_class_the_baseline_sends_the_images_to():
    """SGD-UAP sends all ten images to class 2; the two that are class 2 cannot be fooled that way: ceiling 0.8."""
    baseline = universal("sgd-uap", "linf", fooled=8, l1=0.2, iou=0.4)
    for i, record in enumerate(baseline):
        record.update(pred_label=2, true_label=1 if i < 8 else 2, success=i < 8)
    check = by_id(baseline + juap(fooled=8))["004-fr"]["details"][0]
    assert check["values"]["baseline_sink_share"] == 1.0 and check["values"]["baseline_ceiling"] == 0.8
    assert "sgd-uap sends 100% of the images to class 2, whose own 20%" in check["text"]
    assert "ceiling" not in by_id(plain() + juap())["004-fr"]["details"][0]["text"]  # none of its images is class 2


@pytest.mark.parametrize(("fooled", "l1", "iou", "fr_pass", "maps_pass"), [
    (6, 0.1, 0.6, False, True),    # fools fewer images than SGD-UAP by more than the tolerance
    (9, 0.25, 0.6, True, False),   # maps further than the baselines' (L1)
    (9, 0.1, 0.35, True, False),   # IoU not above the baselines'
])
def test_juap_failures(fooled, l1, iou, fr_pass, maps_pass):
    rows = by_id(plain() + juap(fooled=fooled, l1=l1, iou=iou))
    assert rows["004-fr"]["pass"] is fr_pass and rows["004-maps"]["pass"] is maps_pass


def test_generators_norms_and_losses():
    records = plain() + juap() + juap("unet", fooled=9)
    records += [dict(r, variant="l2") for r in universal("sgd-uap", "l2", fooled=9, l1=0.2, iou=0.4)]
    records += juap(norm="l2") + juap(loss="ce", fooled=6)
    rows = by_id(records)
    assert rows["004-generators"]["pass"] is True
    assert rows["004-norms"]["pass"] is True
    assert rows["004-losses"]["pass"] is False  # CE fools 0.6 vs C_min 0.9


def test_targeted_juap_must_reach_its_class():
    hits = universal("juap", "resnet-target-linf-t2", fooled=8, l1=0.1, iou=0.6, attacked="cam", pred=2)
    misses = universal("juap", "resnet-target-linf-t2", fooled=8, l1=0.1, iou=0.6, attacked="cam", pred=5)
    assert by_id(hits)["004-losses"]["pass"] is True
    assert by_id(misses)["004-losses"]["pass"] is False


def test_jap_needs_full_success_and_closer_maps_than_pgd():
    pgd = [attack_record(attack="pgd", interpreter="gradcam", image_id=i, map_l1=0.2, map_iou=0.4) for i in IMAGES]
    good = [attack_record(attack="jap", framework="jap", target="none", interpreter="gradcam", attacked="gradcam",
                          image_id=i, map_l1=0.05, map_iou=0.8) for i in IMAGES]
    assert by_id(pgd + good)["004-jap"]["pass"] is True
    weak = [dict(r, success=r["image_id"] != "img0") for r in good]
    assert by_id(pgd + weak)["004-jap"]["pass"] is False
