"""docs/benchmarks.md is generated from benchmarks/results/*.json and must never drift from them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PATH = ROOT / "benchmarks" / "write_docs.py"
_SPEC = importlib.util.spec_from_file_location("write_docs", _PATH)
write_docs = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = write_docs
_SPEC.loader.exec_module(write_docs)

RESULTS = ROOT / "benchmarks" / "results"
COMMITTED = ROOT / "docs" / "benchmarks.md"


def test_committed_page_equals_script_output(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    assert write_docs.main(["--results", str(RESULTS), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8"), (
        "docs/benchmarks.md is out of date; run: python benchmarks/write_docs.py")


def test_check_mode_flags_a_stale_page(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    assert write_docs.main(["--results", str(RESULTS), "--out", str(out)]) == 0
    assert write_docs.main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    assert write_docs.main(["--results", str(RESULTS), "--out", str(out), "--check"]) == 1


def test_known_rows_are_formatted_from_the_json() -> None:
    page = write_docs.render(RESULTS)
    quality = json.loads((RESULTS / "joint_quality.json").read_text())["cells"]["pgd|adv2|cam|benign"]
    summary = quality["summary"]
    row = (f"| cam | adv2 | {quality['n']} | {summary['attack_success_rate']:.2f} | {summary['map_l1']:.3f} | "
           f"{summary['map_iou@20']:.3f} |")
    assert row in page
    cost = json.loads((RESULTS / "joint_cost.json").read_text())["cifar"]["rows"]["adv2-grad"]
    assert f"| adv2-grad | pgd | grad | {cost['ratio']:.2f} |" in page
    interpreters = json.loads((RESULTS / "interpreters.json").read_text())["imagenet"]["interpreters"]["mask"]
    assert f"| mask | {interpreters['seconds_per_image']:.1f} | {interpreters['forward_backward_equivalents']:.2f} |" in page


def test_rendering_is_deterministic_and_machine_independent() -> None:
    page = write_docs.render(RESULTS)
    assert page == write_docs.render(RESULTS)
    assert "/work/" not in page and str(ROOT) not in page


def test_imagenet_cost_rows_convert_seconds_to_passes_and_sit_beside_table_iii() -> None:
    """Passes / image = seconds per image over one forward + backward per image; Table III by framework, model,
    attack and interpreter (none for plain attacks or rows the paper did not time)."""
    config = {"model": "densenet169", "batch": 8}
    row = {"attack": "advedge+", "interpreter": "rts", "framework": "pgd", "seconds_per_image": 30.0,
           "denominator_ms": {"classifier": 2000.0}, "ratio": 1.0, "default_iterations": {"warm_start": 1, "main": 2}}
    assert write_docs.passes_per_image(config, row) == 30.0 / (2.0 / 8)
    assert write_docs.paper_seconds(config, row) == 16.73
    assert write_docs.paper_seconds(config, {**row, "framework": "cw", "attack": "adv2", "interpreter": "grad"}) == 173.70
    assert write_docs.paper_seconds(config, {**row, "interpreter": "gradcam"}) is None
    assert write_docs.paper_seconds(config, {**row, "attack": "pgd", "interpreter": None}) is None
    lines = write_docs.imagenet_cost_section({"imagenet_densenet": {**config, "rows": {"advedge+-rts": row}}})
    assert "| densenet169 | advedge+-rts | PGD | rts | 1.00 | 1 + 2 | 120 | 30.0 | 16.7 |" in lines
