"""A seeded interpreter's (MASK's) benign maps vary between runs: records carry that run-to-run agreement."""

from __future__ import annotations

import math

import pytest
import torch

from idls import evaluate, metrics
from idls.attacks import create_attack
from idls.interpreters import create_interpreter, list_interpreters
from idls.report.tables import RERUN_COLUMN, summary_table
from idls.runner import evaluate_batch
from tests.universal_helpers import colour_task

MASK_OPTIONS = {"iterations": 40}


@pytest.fixture(scope="module")
def setting(colour_model):
    data = colour_task(4, 11, "img")
    return colour_model, data.images, colour_model.predict(data.images), data.ids


def _options(name: str) -> dict:
    return MASK_OPTIONS if name == "mask" else {"steps": 4} if name == "ig" else {}


@pytest.mark.parametrize("name", [n for n in list_interpreters() if n != "rts"])  # RTS needs a trained masker
def test_only_seeded_interpreters_have_another_run(setting, name):
    classifier, x, _, _ = setting
    interpreter = create_interpreter(name, classifier, **_options(name))
    if not interpreter.seeded:
        with pytest.raises(NotImplementedError, match="not seeded"):
            interpreter.another_run()
        return
    twin = interpreter.another_run()
    assert type(twin) is type(interpreter) and twin.classifier is interpreter.classifier
    first, again, second = interpreter.attribute(x), interpreter.attribute(x), twin.attribute(x)
    torch.testing.assert_close(first, again)  # a run is reproducible from its seed
    assert not torch.equal(first, second)  # another seed is another run
    assert interpreter.attribute(x).equal(first)  # making the twin left the original's stream alone


def test_records_of_a_seeded_interpreter_carry_its_run_to_run_agreement(setting):
    classifier, x, labels, ids = setting
    mask = create_interpreter("mask", classifier, **MASK_OPTIONS)
    cam = create_interpreter("cam", classifier)
    result = create_attack("pgd", steps=2, mode="untargeted").run(classifier, x, labels)
    batch = evaluate_batch(result, x, labels, ids, {"mask": mask, "cam": cam}, attack_name="pgd", attacked=None,
                           tensor_file="t.safetensors")
    expected = evaluate.rerun_fields(mask.attribute(x), create_interpreter("mask", classifier, seed=1,
                                                                           **MASK_OPTIONS).attribute(x))
    mask_rows = [r for r in batch.records if r["interpreter"] == "mask"]
    assert [r["benign_rerun_iou"] for r in mask_rows] == pytest.approx([e["benign_rerun_iou"] for e in expected])
    assert [r["benign_rerun_l1"] for r in mask_rows] == pytest.approx([e["benign_rerun_l1"] for e in expected])
    assert all(0 <= r["benign_rerun_iou"] <= 1 for r in mask_rows)
    assert not any("benign_rerun_iou" in r for r in batch.records if r["interpreter"] == "cam")

    # a cached second run (the experiment engine's) is used as given
    fixed = torch.zeros_like(mask.attribute(x))
    cached = evaluate_batch(result, x, labels, ids, {"mask": mask}, attack_name="pgd", attacked=None,
                            tensor_file="t.safetensors", benign_reruns=lambda name: fixed)
    assert [r["benign_rerun_iou"] for r in cached.records] == pytest.approx(
        metrics.topk_iou(mask.attribute(x), fixed, 0.2).tolist())

    summary = evaluate.summarize(mask_rows)
    assert summary["benign_rerun_iou"] == pytest.approx(sum(r["benign_rerun_iou"] for r in mask_rows) / len(mask_rows))
    assert "benign_rerun_iou" not in evaluate.summarize([r for r in batch.records if r["interpreter"] == "cam"])
    table = summary_table([{"kind": "attack", **r} for r in batch.records])
    assert RERUN_COLUMN in table.columns
    by_interpreter = {row["interpreter"]: row for row in table.rows}
    assert math.isnan(by_interpreter["cam"][RERUN_COLUMN])
    assert by_interpreter["mask"][RERUN_COLUMN] == pytest.approx(summary["benign_rerun_iou"])
    without = summary_table([{"kind": "attack", **r} for r in batch.records if r["interpreter"] == "cam"])
    assert RERUN_COLUMN not in without.columns
