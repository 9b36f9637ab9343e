"""The reproduction scorecard: one line per claim with measured numbers, the paper's numbers, PASS / FAIL.

``scorecard.json`` is a list of objects with keys ``id``, ``claim``, ``paper``, ``measured``,
``paper_value``, ``rule``, ``pass`` (true / false / null = not run), ``n`` (records used),
``details`` (one entry per compared group) and ``settled`` (see :func:`is_settled`).

A reproduction may be partial: some experiments not run, or only some cells of one (``--cells``). A
verdict is *settled* when running the rest cannot change it: every store of the reproduction is complete,
or the claim already fails on cells that are complete (a claim passes only when every compared group
passes, and a complete cell's records are the whole run's records for it, so more groups cannot turn it;
claims whose checks choose among the cells present, such as the epsilon nearest 8/255, wait for the whole run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from idls.analysis.groups import label
from idls.analysis.store_reader import Store, load_store
from idls.report.scorecard_file import NOT_RUN, SCORECARD_FILE, read_scorecard, row_verdict, verdict  # noqa: F401 (re-exported)
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
        word = row_verdict(row)
        table.add_row(escape(row["claim"]), escape(row["measured"]), escape(row["paper_value"]),
                      f"[{colours.get(word.split(' (')[0], 'yellow')}]{word}[/]")
    console = console or Console(width=max(Console().width, 140))
    console.print(table)


def incomplete_stores(store: Store, expected: Sequence[str] = ()) -> list[str]:
    """What keeps ``store`` from being a whole run: ``'NAME (k of n cells)'`` per incomplete store, ``'NAME
    (not run)'`` per ``expected`` store folder that is missing, ``'NAME (completeness unknown)'`` per store
    without a plan (written before stores kept one)."""
    present = {part.path.name: part for part in store.parts}
    missing = []
    for name, part in present.items():
        if part.complete is None:
            missing.append(f"{name} (completeness unknown)")
        elif not part.complete:
            missing.append(f"{name} ({len(part.complete_cells)} of {len(part.plan or {})} cells)")
    return missing + [f"{name} (not run)" for name in expected if name not in present]


def records_of_complete_cells(store: Store) -> list[dict]:
    """The attack records whose cell is complete in its store (stores without a plan contribute none)."""
    records = []
    for part in store.parts:
        complete = part.complete_cells
        records += [r for r in part.records if r.get("cell") in complete]
    return records


def is_settled(claim: Claim, row: Mapping, complete_records: Sequence[Mapping], whole: bool) -> bool:
    """Whether running the rest of a partial reproduction cannot change ``row``'s verdict.

    ``whole``: every store is complete (and every expected one present). A study claim reads a study's single
    record, written when the study has finished. Otherwise only a FAIL can be settled: when a group fails on
    complete cells alone, for claims whose failing groups stay failing as cells arrive
    (:attr:`~idls.reproduce.claims.Claim.settles_on_failure`)."""
    if row["pass"] is None:
        return False
    if whole or claim.source == "studies":
        return True
    return row["pass"] is False and claim.settles_on_failure and \
        any(not check.passed for check in claim.measure(complete_records))


def scorecard_for_run(run_dir: Path, *, show: bool = True, console=None, expected: Sequence[str] = ()) -> list[dict]:
    """Evaluate the claims on the store in ``run_dir`` (or its experiment sub-folders), write
    ``run_dir/scorecard.json`` and print the table; returns the scorecard rows.

    ``expected``: the store folders a whole run has (``idls reproduce``: the system's experiments and
    studies); a missing one leaves passing verdicts unsettled."""
    store = load_store(Path(run_dir))
    rows = evaluate_claims(store.records, studies=store.studies)
    incomplete = incomplete_stores(store, expected)
    complete_records = records_of_complete_cells(store) if incomplete else store.records
    for claim, row in zip(CLAIMS, rows, strict=True):
        row["settled"] = is_settled(claim, row, complete_records, whole=not incomplete)
    write_scorecard(rows, Path(run_dir) / SCORECARD_FILE)
    if show:
        print_scorecard(rows, console)
        if incomplete:
            from rich.console import Console

            (console or Console()).print("partial run, so verdicts marked '(partial run)' may still change: "
                                         + ", ".join(incomplete), highlight=False)
    return rows
