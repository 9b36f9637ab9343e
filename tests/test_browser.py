"""The HTML reports as a reader's browser shows them: headless Chromium (the system package, driven by Playwright).

Each report must load every figure, log no console error or uncaught exception, fetch nothing beyond
its own file (reports are self-contained), show the tables it promises, and stay readable on a
375 px phone: no sideways page scroll; wide tables scroll inside their own box, figures shrink to fit.
Skipped with a clear reason where Chromium or Playwright is missing (``make test`` installs both).
"""

from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")

from idls.report.html import Section, render_report, table_html  # noqa: E402
from idls.report.scorecard_file import row_verdict  # noqa: E402
from tests.browser_helpers import PHONE, chromium_executable, launch_browser, open_report  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.test_reproduce_cli import write_stand_in_experiments  # noqa: E402

SCORECARD_HEAD = ["claim", "result", "groups passing", "setting"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium_executable()  # skip before starting Playwright's driver when there is no browser
    with sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        yield chromium
        chromium.close()


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wide_rows(columns: int) -> list[dict]:
    return [{f"column {c}": 0.123456 * c for c in range(columns)} for _ in range(3)]


def test_template_keeps_wide_content_inside_a_phone_screen(tmp_path, browser):
    """A figure, tables, a collapsed block and a config dump each far wider than a phone: the page fits it."""
    wide = table_html(_wide_rows(30))
    details = f"<details><summary><strong>PASS</strong> a claim</summary><p>numbers</p>{wide}</details>"
    config = "<pre>" + "key: " + "x" * 400 + "</pre>"
    section = Section("Wide things", text="y" * 300, tables=[wide, details, config], figures=[_png(1600, 200)])
    path = render_report(tmp_path / "report.html", "A report", [section], {"store": "/" + "long-folder-name" * 30})
    desktop = open_report(browser, path)
    desktop.assert_clean()
    assert [t["head"][:2] for t in desktop.sections["Wide things"]["tables"]] == [["column 0", "column 1"]] * 2
    assert desktop.sections["Wide things"]["details"] == [{"summary": "PASS a claim", "open": False, "tables": 1}]
    phone = open_report(browser, path, phone=True)
    phone.assert_fits_phone()
    assert phone.images[0]["natural"] == 1600 and phone.images[0]["shown"] <= PHONE["width"]


def test_the_checks_catch_a_broken_page(tmp_path, browser):
    """The checks themselves: a missing figure, a script error, outside requests, a table that widens the page."""
    (tmp_path / "report.html").write_text(
        "<!doctype html><html><head><meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='stylesheet' href='https://example.invalid/style.css'></head><body><h2>S</h2>"
        "<img src='missing.png' alt='missing'><script>console.error('boom'); notDefined();</script>"
        + table_html(_wide_rows(30)) + "</body></html>")
    page = open_report(browser, tmp_path / "report.html", phone=True)
    assert "https://example.invalid/style.css" in page.refused_requests
    assert any(url.endswith("/missing.png") for url in page.refused_requests)  # a file beside the report: refused
    assert "boom" in page.console_errors and any("notDefined" in e for e in page.page_errors)
    with pytest.raises(AssertionError, match="images that did not load"):
        page.assert_clean()
    with pytest.raises(AssertionError, match="wider than the phone's screen: \\['<table>"):
        page.assert_fits_phone()


# -- a reproduce run's report: the first stand-in experiment of tests/test_reproduce_cli.py, quick ---------------
@pytest.fixture(scope="module")
def reproduce_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    experiments = write_stand_in_experiments(root / "experiments")
    out = root / "out"
    assert run_cli(["reproduce", "--quick", "--experiments", str(experiments), "--only", "embedded",
                    "--out", str(out)]) == 0
    return out


def _assert_scorecard_shown(page, scorecard: list[dict]) -> None:
    """The summary table (one row per claim), then one collapsed block per claim with its verdict and table."""
    section = page.sections["Reproduction scorecard"]
    summary = section["tables"][0]
    assert summary["head"] == SCORECARD_HEAD and summary["rows"] == len(scorecard) and not summary["inDetails"]
    assert len(section["details"]) == len(scorecard)
    for block, row in zip(section["details"], scorecard, strict=True):
        assert block["summary"] == f"{row_verdict(row)} {row['claim']}" and not block["open"]
        assert block["tables"] == (1 if row.get("details") else 0), row["claim"]


def test_reproduce_report_in_the_browser(browser, reproduce_report):
    scorecard = json.loads((reproduce_report / "scorecard.json").read_text())
    assert any(row.get("details") for row in scorecard)  # at least one claim was measured on the stand-in
    page = open_report(browser, reproduce_report / "report.html")
    page.assert_clean()
    _assert_scorecard_shown(page, scorecard)
    for title in ("Run", "Attack success and confidence", "Attribution-map similarity to the benign maps", "All metrics"):
        assert page.sections[title]["tables"], title
    grids = [title for title in page.sections if title.startswith("Images and maps")]
    assert grids and sum(img["alt"].startswith("Images and maps") for img in page.images) == len(grids)
    open_report(browser, reproduce_report / "report.html", phone=True).assert_fits_phone()


@pytest.mark.slow
def test_full_stand_in_reproduce_report_in_the_browser(tmp_path, browser):
    """All five stand-in experiments: universal, detection and training-defence sections too."""
    experiments = write_stand_in_experiments(tmp_path / "experiments")
    out = tmp_path / "out"
    assert run_cli(["reproduce", "--quick", "--experiments", str(experiments), "--out", str(out)]) == 0
    page = open_report(browser, out / "report.html")
    page.assert_clean()
    _assert_scorecard_shown(page, json.loads((out / "scorecard.json").read_text()))
    for title in ("Detection", "Training defences"):
        assert page.sections[title]["tables"], title
    open_report(browser, out / "report.html", phone=True).assert_fits_phone()


@pytest.mark.slow
def test_demo_report_in_the_browser(tmp_path, browser):
    """`idls demo --quick`: the validity table, one summary row per attack and interpreter, every figure."""
    out = tmp_path / "demo"
    assert run_cli(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    page = open_report(browser, out / "report.html")
    page.assert_clean()
    validity = page.sections["Interpreter validity (localisation of the ground-truth object)"]["tables"]
    assert validity[0]["head"][0] == "interpreter" and validity[0]["rows"] == len(summary["interpreters"])
    results = page.sections["Attack results per attack and interpreter"]["tables"]
    expected = sum(len(by_interpreter) for group in ("attacks", "universal") for by_interpreter in summary[group].values())
    assert results[0]["head"][:2] == ["attack", "interpreter"] and results[0]["rows"] == expected
    assert sum(title.startswith("Side by side") for title in page.sections) >= 1
    open_report(browser, out / "report.html", phone=True).assert_fits_phone()
