"""Does ``idls reproduce --quick`` reach the full run's verdict on every claim? Side by side, with wall times.

Reads two finished (or partly finished) reproductions, each an ``idls reproduce --out DIR`` folder with its
``scorecard.json`` and ``reproduce.json``, and writes ``results/quick_vs_full.json``: per claim both verdicts
(PASS / FAIL / not run), the images behind them and the rows that fail; per experiment both wall times.
``benchmarks/write_docs.py`` renders it in docs/benchmarks.md ("Quick vs full reproduction").

    python benchmarks/quick_vs_full.py --quick runs/reproduce-quick --full runs/reproduce-full

Standard library only; nothing is recomputed: the verdicts are the scorecards' own.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VERDICTS = {True: "PASS", False: "FAIL", None: "not run"}


def read_reproduction(folder: Path) -> tuple[list[dict], dict]:
    """(scorecard rows, run file) of an ``idls reproduce`` output folder; a clear exit when it is not one."""
    scorecard, run = folder / "scorecard.json", folder / "reproduce.json"
    if not scorecard.is_file():
        raise SystemExit(f"{folder}: no scorecard.json; pass the --out folder of an `idls reproduce` run")
    rows = json.loads(scorecard.read_text())
    return rows, (json.loads(run.read_text()) if run.is_file() else {})


def side(row: Mapping | None) -> dict:
    """One run's view of a claim: verdict, images, and the rows (groups) that fail."""
    if row is None:
        return {"verdict": VERDICTS[None], "n": 0, "failing": []}
    details = row.get("details") or []
    return {"verdict": VERDICTS[row.get("pass")], "n": int(row.get("n") or 0),
            "failing": [detail.get("group", "?") for detail in details if detail.get("pass") is False]}


def compare(quick: Sequence[Mapping], full: Sequence[Mapping]) -> list[dict]:
    """A row per claim (the quick scorecard's order, then claims only the full one has)."""
    quick_by_id, by_id = {row["id"]: row for row in quick}, {row["id"]: row for row in full}
    order = [*quick_by_id, *(claim for claim in by_id if claim not in quick_by_id)]
    rows = []
    for claim in order:
        a, b = side(quick_by_id.get(claim)), side(by_id.get(claim))
        measured_both = "not run" not in (a["verdict"], b["verdict"])
        title = (quick_by_id.get(claim) or by_id.get(claim) or {}).get("claim", "")
        rows.append({"id": claim, "claim": title, "quick": a, "full": b,
                     "agree": (a["verdict"] == b["verdict"]) if measured_both else None})
    return rows


def attack_seconds(folder: Path) -> dict[str, float]:
    """Per experiment store in ``folder``: the attack time its records hold (seconds per attacked image, each
    image of a cell counted once however many interpreters explain it). Unlike ``reproduce.json``'s wall
    time it survives a killed invocation, but it leaves out maps, evaluation and fitting."""
    totals = {}
    for records in sorted(folder.glob("*/records.jsonl")):
        seen: dict[tuple, float] = {}
        for line in records.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a torn last line of a killed run
                continue
            if isinstance(record.get("seconds"), (int, float)):
                seen[(record.get("cell"), record.get("batch"), record.get("image_id"))] = record["seconds"]
        if seen:
            totals[records.parent.name] = sum(seen.values())
    return totals


def timing(run: Mapping, folder: Path) -> dict:
    return {"seconds": run.get("seconds"), "invocations": run.get("invocations", 1 if run else None),
            "seconds_per_experiment": dict(run.get("seconds_per_experiment") or {}),
            "attack_seconds_per_experiment": attack_seconds(folder)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", type=Path, required=True, help="output folder of `idls reproduce --quick`")
    parser.add_argument("--full", type=Path, required=True, help="output folder of `idls reproduce`")
    parser.add_argument("--out", type=Path, default=RESULTS / "quick_vs_full.json")
    parser.add_argument("--note", action="append", default=[],
                        help="a remark on the runs kept with the result (repeat), e.g. which full experiments are partial")
    args = parser.parse_args(argv)
    quick_rows, quick_run = read_reproduction(args.quick)
    full_rows, full_run = read_reproduction(args.full)
    if quick_run.get("quick") is False or full_run.get("quick") is True:
        raise SystemExit("--quick must be a quick reproduction and --full a full one (see their reproduce.json)")
    claims = compare(quick_rows, full_rows)
    for row in claims:
        agree = {True: "same", False: "DIFFERENT", None: "-"}[row["agree"]]
        print(f"{row['id']:20s} quick {row['quick']['verdict']:8s} full {row['full']['verdict']:8s} {agree}")
    measured = [row for row in claims if row["agree"] is not None]
    print(f"{sum(row['agree'] for row in measured)} of {len(measured)} claims measured by both agree; "
          f"{len(claims) - len(measured)} not run by one of them")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "written": time.strftime("%Y-%m-%d"), "system": full_run.get("system") or quick_run.get("system"),
        "quick": timing(quick_run, args.quick), "full": timing(full_run, args.full), "notes": args.note,
        "claims": claims}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
