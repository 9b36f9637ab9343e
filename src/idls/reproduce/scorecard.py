"""The reproduction scorecard: one line per claim with measured numbers, the paper's numbers, PASS / FAIL.

``scorecard.json`` is a list of objects with keys ``id``, ``claim``, ``paper``, ``measured``,
``paper_value``, ``rule``, ``pass`` (true / false / null = not run), ``n`` (records used) and
``details`` (one entry per compared group).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from idls.analysis.groups import label
from idls.analysis.store_reader import load_store
from idls.report.scorecard_file import NOT_RUN, SCORECARD_FILE, read_scorecard, verdict  # noqa: F401 (re-exported)
from idls.reproduce.catalog import CLAIMS
from idls.reproduce.claims import Check, Claim


def measured_text(checks: Sequence[Check]) -> str:
    """The checks' readings on one line, the label parts that all checks share written once in front."""
    if not checks:
        return NOT_RUN
    width = min(len(c.group) for c in checks)
    shared = [i for i in range(width) if len({c.group[i] for c in checks}) == 1] if len(checks) > 1 else []
    items = []
    for c in checks:
        own = label(p for i, p in enumerate(c.group) if i not in shared)
        items.append((f"{own}: " if own else "") + c.text + ("" if c.passed else " [fails]"))
    head = label(checks[0].group[i] for i in shared)
    return (f"{head} | " if head else "") + "; ".join(items)


def evaluate_claim(claim: Claim, records: Sequence[Mapping], studies: Sequence[Mapping] = ()) -> dict:
    """The scorecard line of one claim: PASS when every compared group passes, ``None`` when none was run.

    ``studies``: the store's study records, for claims whose ``source`` is ``'studies'``.
    """
    checks = claim.measure(studies if claim.source == "studies" else records)
    passed = all(c.passed for c in checks) if checks else None
    here = sorted({f"{r.get('model')} on {Path(str(r.get('data'))).name}" for r in records
                   if r.get("model") and r.get("data")})
    return {
        "id": claim.id,
        "claim": claim.title,
        "paper": claim.paper,
        "measured": measured_text(checks),
        "paper_value": claim.paper_value,
        "rule": claim.rule,
        "pass": passed,
        "n": sum(c.n for c in checks),
        "setting": claim.setting + (f"; here: {', '.join(here[:3])}" if here else ""),
        "details": [{"group": label(c.group), "text": c.text, "pass": c.passed, "n": c.n, "values": c.values} for c in checks],
    }


def evaluate_claims(records: Sequence[Mapping], claims: Sequence[Claim] = CLAIMS,
                    studies: Sequence[Mapping] = ()) -> list[dict]:
    """Evaluate every claim on store records (``kind: attack`` records of one or several experiments) and
    study records (``kind: study``)."""
    return [evaluate_claim(claim, records, studies) for claim in claims]


def json_safe(value):
    """``value`` with non-finite floats as ``None`` (JSON has no NaN), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_scorecard(rows: Sequence[Mapping], path: Path) -> Path:
    """Write the scorecard as JSON (non-finite numbers become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(list(rows)), indent=2, ensure_ascii=False))
    tmp.replace(path)
    return path


def print_scorecard(rows: Sequence[Mapping], console=None) -> None:
    """A rich table: claim, measured, paper, verdict."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="reproduction scorecard", show_lines=True)
    for column, style in (("claim", "bold"), ("measured", ""), ("paper", "dim"), ("result", "")):
        table.add_column(column, style=style, overflow="fold")
    colours = {"PASS": "green", "FAIL": "red"}
    for row in rows:
        word = verdict(row["pass"])
        table.add_row(escape(row["claim"]), escape(row["measured"]), escape(row["paper_value"]),
                      f"[{colours.get(word, 'yellow')}]{word}[/]")
    console = console or Console(width=max(Console().width, 140))
    console.print(table)


def scorecard_for_run(run_dir: Path, *, show: bool = True, console=None) -> list[dict]:
    """Evaluate the claims on the store in ``run_dir`` (or its experiment sub-folders), write
    ``run_dir/scorecard.json`` and print the table; returns the scorecard rows."""
    store = load_store(Path(run_dir))
    rows = evaluate_claims(store.records, studies=store.studies)
    write_scorecard(rows, Path(run_dir) / SCORECARD_FILE)
    if show:
        print_scorecard(rows, console)
    return rows
