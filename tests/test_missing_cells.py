"""Empty table cells: every table shows "-" and says why, never ``nan``; summary.json stays strict JSON."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from idls.evaluate import MISSING_REASONS, summarize
from idls.report.cells import MISSING, format_cell, missing_notes
from idls.report.html import table_html
from idls.runner import write_json


def _record(success: bool, confidence: float) -> dict:
    return {"success": success, "confidence": confidence, "linf": 8 / 255, "l2": 0.5, "noise_rate": 0.01,
            "seconds": 0.2, "map_l1": 0.1, "map_l2": 0.2, "map_iou": 0.5, "kendall_tau": 0.3,
            "iterations_to_success": 3 if success else -1}


@pytest.fixture
def per_attack() -> dict:
    """One attack that never succeeded (its confidence and iterations are NaN) beside one that did."""
    failed = summarize([_record(False, 0.4), _record(False, 0.3)])
    assert math.isnan(failed["confidence"]) and math.isnan(failed["iterations_to_success"])
    return {"pgd": {"mask": summarize([_record(True, 0.9)])}, "advedge+": {"mask": failed}}


def _printed(print_table, *args) -> str:
    buffer = io.StringIO()
    print_table(Console(file=buffer, width=200), *args)
    return buffer.getvalue()


def test_format_cell_and_notes():
    assert format_cell(float("nan")) == MISSING and format_cell(None) == MISSING
    assert format_cell(0.25) == "0.250" and format_cell(3) == "3" and format_cell(True) == "yes"
    rows = [{"confidence": float("nan"), "map_l1": 0.1}, {"confidence": 0.9, "map_l1": float("nan")}]
    notes = missing_notes(rows, ["confidence", "map_l1"], {"map_l1": "map L1"})
    assert notes == [f"- in confidence: {MISSING_REASONS['confidence']}", "- in map L1: no value"]
    assert missing_notes([{"confidence": 0.5}], ["confidence"]) == []


def test_demo_attack_table_says_why_a_cell_is_empty(per_attack):
    from idls.demo import _print_attacks

    text = _printed(_print_attacks, per_attack)
    assert "nan" not in text.lower()
    row = next(line for line in text.splitlines() if "advedge+" in line)
    assert f" {MISSING} " in row and "0.000" in row  # success 0, confidence empty
    assert "no successful image" in text


def test_cli_summary_says_why_a_cell_is_empty(per_attack, capsys):
    from idls.cli import _print_summary

    _print_summary(per_attack)
    text = capsys.readouterr().out
    assert "nan" not in text.lower() and "no successful image" in text


def test_html_table_says_why_a_cell_is_empty(per_attack):
    from idls.report.run_report import SUMMARY_COLUMNS, summary_rows

    page = table_html(summary_rows(per_attack), SUMMARY_COLUMNS)
    assert "nan" not in page.lower()
    assert f"<td>{MISSING}</td>" in page and "no successful image" in page


def test_summary_json_is_strict_and_reads_back_as_empty_cells(per_attack, tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"attacks": per_attack, "settings": {"sizes": (1, 2)}})

    def reject(constant: str):
        raise AssertionError(f"{constant} in summary.json")

    summary = json.loads(path.read_text(), parse_constant=reject)
    failed = summary["attacks"]["advedge+"]["mask"]
    assert failed["confidence"] is None and failed["attack_success_rate"] == 0.0
    assert summary["settings"]["sizes"] == [1, 2]
    assert missing_notes([failed], ["confidence"]) == [f"- in confidence: {MISSING_REASONS['confidence']}"]
