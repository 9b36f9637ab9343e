"""benchmarks/quick_vs_full.py: the quick and the full scorecard side by side, and its docs section."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _reproduction(folder: Path, quick: bool, verdicts: dict, seconds: dict, *, settled: bool = True,
                  stores: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "adv2_cifar").mkdir()
    records = [{"cell": "c1", "batch": 0, "image_id": image, "interpreter": interpreter, "seconds": 2.0}
               for image in ("a", "b") for interpreter in ("cam", "grad")]  # one attack per image, two maps
    (folder / "adv2_cifar" / "records.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{torn")
    rows = [{"id": claim, "claim": f"claim {claim}", "pass": verdict, "n": 0 if verdict is None else 8,
             "settled": settled and verdict is not None,
             "details": [] if verdict is None else [{"group": "adv2_cifar · grad", "pass": verdict},
                                                    {"group": "adv2_cifar · cam", "pass": True}]}
            for claim, verdict in verdicts.items()]
    (folder / "scorecard.json").write_text(json.dumps(rows))
    (folder / "reproduce.json").write_text(json.dumps({"system": "cifar_resnet20", "quick": quick,
                                                       "seconds": sum(seconds.values()) + 2,
                                                       "seconds_per_experiment": seconds, "invocations": 2,
                                                       "stores": stores or {}}))
    return folder


def test_verdicts_side_by_side_and_rendered(tmp_path):
    quick_vs_full, write_docs = _module("quick_vs_full"), _module("write_docs")
    quick = _reproduction(tmp_path / "quick", True, {"a": True, "b": False, "c": True, "d": False},
                          {"adv2_cifar": 100.0})
    full = _reproduction(tmp_path / "full", False, {"a": True, "b": False, "c": False, "d": None},
                         {"adv2_cifar": 5000.0, "jap_cifar": 700.0})
    out = tmp_path / "results" / "quick_vs_full.json"
    assert quick_vs_full.main(["--quick", str(quick), "--full", str(full), "--out", str(out),
                               "--note", "full targets_cifar: 25 of 100 images"]) == 0
    result = json.loads(out.read_text())
    agree = {row["id"]: row["agree"] for row in result["claims"]}
    assert agree == {"a": True, "b": True, "c": False, "d": None}  # 'd': the full run has not measured it
    c = next(row for row in result["claims"] if row["id"] == "c")
    assert c["quick"]["failing"] == [] and c["full"]["failing"] == ["adv2_cifar · grad"]
    page = "\n".join(write_docs.quick_vs_full_section(out.parent))
    assert "2 of the 3 claims settled in both runs agree; 1 are not settled in at least one." in page
    assert "| c | PASS (8) | FAIL (8) | **no** | - | adv2_cifar · grad |" in page
    assert "- full targets_cifar: 25 of 100 images" in page
    assert result["full"]["attack_seconds_per_experiment"] == {"adv2_cifar": 4.0}
    assert "| jap_cifar | - | 700 | - | - |" in page and "| adv2_cifar | 100 | 5000 | 4.00 | 4.00 |" in page
    assert "| total (with scorecard and report) | 102 | 5702 |  |  |" in page


def test_refuses_swapped_or_missing_runs(tmp_path):
    quick_vs_full = _module("quick_vs_full")
    quick = _reproduction(tmp_path / "quick", True, {"a": True}, {})
    full = _reproduction(tmp_path / "full", False, {"a": True}, {})
    with pytest.raises(SystemExit, match="must be a quick reproduction"):
        quick_vs_full.main(["--quick", str(full), "--full", str(quick), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="no scorecard.json"):
        quick_vs_full.main(["--quick", str(tmp_path), "--full", str(full), "--out", str(tmp_path / "x.json")])


def test_only_settled_verdicts_are_compared_and_update_keeps_what_a_new_run_does_not_settle(tmp_path):
    quick_vs_full = _module("quick_vs_full")
    quick = _reproduction(tmp_path / "quick", True, {"a": True, "b": False, "c": True}, {"adv2_cifar": 10.0})
    partial = _reproduction(tmp_path / "partial", False, {"a": True, "b": False, "c": False}, {"adv2_cifar": 50.0},
                            settled=False)
    out = tmp_path / "result.json"
    quick_vs_full.main(["--quick", str(quick), "--full", str(partial), "--out", str(out)])
    first = {row["id"]: row for row in json.loads(out.read_text())["claims"]}
    assert {claim: row["agree"] for claim, row in first.items()} == {"a": None, "b": None, "c": None}
    assert first["a"]["full"]["settled"] is False and first["a"]["full"]["groups"] == ["adv2_cifar · grad", "adv2_cifar · cam"]
    # a later run that completes adv2_cifar (reproduce.json: every cell done) settles what reads only it
    done = _reproduction(tmp_path / "done", False, {"a": True, "b": None, "c": False}, {"adv2_cifar": 70.0},
                         settled=False, stores={"adv2_cifar": {"cells": 4, "complete_cells": 4}})
    quick_vs_full.main(["--full", str(done), "--out", str(out), "--update", "--note", "adv2_cifar finished"])
    result = json.loads(out.read_text())
    rows = {row["id"]: row for row in result["claims"]}
    assert rows["a"]["agree"] is True and rows["c"]["agree"] is False
    assert rows["b"]["full"]["verdict"] == "FAIL" and rows["b"]["agree"] is None  # the earlier side is kept
    assert rows["a"]["quick"] == first["a"]["quick"]  # no quick run given: its sides stay
    assert result["full"]["seconds_per_experiment"] == {"adv2_cifar": 70.0} and result["full"]["invocations"] == 4
    assert result["notes"][-1].endswith(": adv2_cifar finished")
    rerun = _reproduction(tmp_path / "rerun", True, {"a": True}, {"adv2_cifar": 3.0},
                          stores={"adv2_cifar": {"cells": 4, "complete_cells": 4}})
    quick_vs_full.main(["--quick", str(rerun), "--out", str(out), "--update", "--verdicts-only"])
    kept = json.loads(out.read_text())
    assert kept["quick"] == result["quick"]  # the re-scoring run's time is not the quick schedule's
    fresh = _reproduction(tmp_path / "fresh", True, {"a": True}, {"adv2_cifar": 8.0})
    quick_vs_full.main(["--quick", str(fresh), "--out", str(out), "--update", "--replace-times"])
    replaced = json.loads(out.read_text())["quick"]  # a new whole quick reproduction: its time alone
    assert (replaced["seconds"], replaced["invocations"], replaced["seconds_per_experiment"]) == (10.0, 2, {"adv2_cifar": 8.0})
    with pytest.raises(SystemExit, match="--replace-times replaces"):
        quick_vs_full.main(["--quick", str(fresh), "--out", str(out), "--update", "--replace-times", "--verdicts-only"])
    with pytest.raises(SystemExit, match="add --update"):
        quick_vs_full.main(["--quick", str(rerun), "--full", str(done), "--out", str(out), "--verdicts-only"])
    with pytest.raises(SystemExit, match="does not exist"):
        quick_vs_full.main(["--full", str(done), "--out", str(tmp_path / "none.json"), "--update"])
    with pytest.raises(SystemExit, match="give --quick and --full"):
        quick_vs_full.main(["--full", str(done), "--out", str(out)])


def test_update_keeps_the_larger_of_two_settled_sides_that_agree_and_a_new_verdict_otherwise():
    better = _module("quick_vs_full").better
    whole = {"verdict": "FAIL", "n": 400, "settled": True, "groups": ["advedge_cifar · cam", "transfer_cifar · cam"]}
    one_experiment = {"verdict": "FAIL", "n": 60, "settled": True, "groups": ["transfer_cifar · cam"]}
    assert better(one_experiment, whole) is whole
    turned = {**one_experiment, "verdict": "PASS"}
    assert better(turned, whole) is turned  # a settled new verdict (new code, new rule) replaces the old one
    assert better({**turned, "settled": False}, whole) is whole
    assert better({**one_experiment, "settled": False}, {**whole, "settled": False})["n"] == 60
    assert better({"verdict": "not run", "n": 0}, whole) is whole


def test_a_reproduction_given_twice_counts_its_cumulative_time_once():
    merged_timing = _module("quick_vs_full").merged_timing
    legacy = {"seconds": 1000.0, "invocations": 4}  # written before runs were tracked
    first = {"seconds": 300.0, "invocations": 2, "runs": {"r1": {"seconds": 300.0, "invocations": 2}}}
    once = merged_timing(legacy, first)
    assert (once["seconds"], once["invocations"]) == (1300.0, 6)
    resumed = {"seconds": 500.0, "invocations": 3, "runs": {"r1": {"seconds": 500.0, "invocations": 3}}}
    again = merged_timing(once, resumed)
    assert (again["seconds"], again["invocations"]) == (1500.0, 7)  # r1's 500 replaces its 300
    renamed = {"seconds": 600.0, "invocations": 4, "runs": {"r9": {"seconds": 600.0, "invocations": 4}}}
    # r1's folder, whose run file has gained a run_id since: the same reproduction
    assert merged_timing(again, renamed, folder="r1")["seconds"] == 1600.0  # 1000 untracked + r9's 600
    other = {"seconds": 50.0, "invocations": 1, "runs": {"r2": {"seconds": 50.0, "invocations": 1}}}
    both = merged_timing(again, other)
    assert (both["seconds"], both["invocations"]) == (1550.0, 8)
