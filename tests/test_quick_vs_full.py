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


def _reproduction(folder: Path, quick: bool, verdicts: dict, seconds: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "adv2_cifar").mkdir()
    records = [{"cell": "c1", "batch": 0, "image_id": image, "interpreter": interpreter, "seconds": 2.0}
               for image in ("a", "b") for interpreter in ("cam", "grad")]  # one attack per image, two maps
    (folder / "adv2_cifar" / "records.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{torn")
    rows = [{"id": claim, "claim": f"claim {claim}", "pass": verdict, "n": 0 if verdict is None else 8,
             "details": [] if verdict is None else [{"group": "grad", "pass": verdict}, {"group": "cam", "pass": True}]}
            for claim, verdict in verdicts.items()]
    (folder / "scorecard.json").write_text(json.dumps(rows))
    (folder / "reproduce.json").write_text(json.dumps({"system": "cifar_resnet20", "quick": quick,
                                                       "seconds": sum(seconds.values()) + 2,
                                                       "seconds_per_experiment": seconds, "invocations": 2}))
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
    assert c["quick"]["failing"] == [] and c["full"]["failing"] == ["grad"]
    page = "\n".join(write_docs.quick_vs_full_section(out.parent))
    assert "2 of the 3 claims both runs measured agree; claims only one of them measured: 1 " in page
    assert "| c | PASS (8) | FAIL (8) | **no** | - | grad |" in page and "- full targets_cifar: 25 of 100 images" in page
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
