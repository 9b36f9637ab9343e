"""Helpers of benchmarks/joint_quality.py that decide which numbers are compared and which cells stay valid."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from idls import evaluate
from idls.errors import UserError

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "joint_quality.py"
_SPEC = importlib.util.spec_from_file_location("joint_quality", _PATH)
jq = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = jq  # dataclasses look their module up there
_SPEC.loader.exec_module(jq)


def _records(n: int) -> list[dict]:
    return [{"image_id": f"img{i}", "success": i % 3 != 0, "map_l1": 0.1 * i, "map_iou": 1 / (i + 1),
             "noise_rate": 0.01 * i} for i in range(n)]


def _entry(records: list[dict], **extra) -> dict:
    return {"n": len(records), "summary": evaluate.summarize(records), "images": jq.image_columns(records), **extra}


def test_summary_over_a_prefix_equals_the_summary_of_those_images():
    records = _records(10)
    entry = _entry(records)
    assert jq.summary_over(entry, 10) is entry["summary"]
    prefix, direct = jq.summary_over(entry, 4), evaluate.summarize(records[:4])
    for name in jq.IMAGE_FIELDS:
        assert prefix[name] == pytest.approx(direct[name])
    assert jq.summary_over(entry, 11) is None  # more images than the cell has
    legacy = {"n": 10, "summary": entry["summary"], "prefix_summaries": {"4": {"map_iou": 0.5}}}
    assert jq.summary_over(legacy, 4) == {"map_iou": 0.5} and jq.summary_over(legacy, 3) is None


def test_changed_settings_counts_new_fields_at_their_neutral_default_as_unchanged():
    now = {"steps": 240, "region_weight": 0.0, "lookahead_steps": 2}
    assert jq.changed_settings({"steps": 240, "lookahead_steps": 2}, now) == []  # region_weight added since, at 0
    assert jq.changed_settings({"steps": 240, "lookahead_steps": 4, "region_weight": 0.0}, now) == ["lookahead_steps"]
    assert jq.changed_settings({"steps": 240, "lookahead_steps": 2}, {**now, "region_weight": 3.0}) == ["region_weight"]


def test_merge_as_prefix_refuses_runs_of_another_setting(tmp_path):
    settings = {"data": "d", "model": "m", "seed": 0, "image_ids_first": ["a"], "overrides": {},
                "attack_sources": {}}
    large = {**_entry(_records(10)), "settings": settings, "finished": "t"}
    small = {**_entry(_records(4)), "settings": settings, "finished": "t"}
    main, side = tmp_path / "main.json", tmp_path / "side.json"
    main.write_text(json.dumps({"cells": {"pgd|adv2|mask|benign": large}}))
    side.write_text(json.dumps({"cells": {"pgd|adv2|mask|benign": small}}))
    assert jq.merge_as_prefix(main, side) == ["pgd|adv2|mask|benign"]
    stored = json.loads(main.read_text())["cells"]["pgd|adv2|mask|benign"]["prefix_summaries"]["4"]
    assert stored["map_iou"] == pytest.approx(small["summary"]["map_iou"])
    side.write_text(json.dumps({"cells": {"pgd|adv2|mask|benign": {**small, "settings": {**settings, "seed": 1}}}}))
    with pytest.raises(UserError, match="differ in seed"):
        jq.merge_as_prefix(main, side)


def test_benchmark_groups_run_as_experiments_of_the_one_orchestrator():
    """Each benchmark group is an idls experiment: the plain baseline one cell evaluated with every interpreter
    of the group, a joint cell one attack against its interpreter, on class-interleaved images."""
    from types import SimpleNamespace

    from idls.experiments.cells import expand_cells
    from idls.experiments.config import experiment_from_mapping

    setup = SimpleNamespace(weights="random", interpreter_options={"cam": {}}, source="embedded", batch_size=4,
                            seed=0, device="cpu", attack_options={"steps": 5})
    plain = experiment_from_mapping(jq.group_experiment([jq.Cell("pgd", "pgd", "cam"), jq.Cell("pgd", "pgd", "gradcam")],
                                                        setup, 8))
    (cell,) = expand_cells(plain)
    assert cell.attack == "pgd" and set(cell.evaluated) == {"cam", "gradcam"} and cell.options["epsilon"] == jq.EPSILON
    assert plain.data.order == "classes-interleaved" and plain.data.n == 8 and not plain.data.shuffle
    joint = experiment_from_mapping(jq.group_experiment([jq.Cell("cw", "adv2", "cam", "patch")], setup, 8))
    (cell,) = expand_cells(joint)
    assert (cell.attack, cell.framework, cell.target, cell.attacked_interpreter) == ("adv2", "cw", "patch", "cam")
    assert cell.evaluated == ("cam",) and cell.options["steps"] == 5
