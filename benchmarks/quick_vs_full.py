"""Does ``idls reproduce --quick`` reach the full run's verdict on every claim? Side by side, with wall times.

Reads ``idls reproduce --out DIR`` folders (``scorecard.json``, ``reproduce.json``) and writes
``results/quick_vs_full.json``: per claim both verdicts (PASS / FAIL / not run), whether each is *settled*,
the images behind them, the groups compared and those that fail; per experiment both wall times.
``benchmarks/write_docs.py`` renders it in docs/benchmarks.md ("Quick vs full reproduction").

    python benchmarks/quick_vs_full.py --quick runs/reproduce-quick --full runs/reproduce-full
    python benchmarks/quick_vs_full.py --full runs/more-of-the-full-run --update

A side's verdict is settled when finishing its run cannot change it: the scorecard says so (a FAIL on
complete cells, or a whole reproduction), or every experiment the claim's groups name is complete in that
run (``reproduce.json``'s ``stores``). Verdicts are compared only where both sides are settled.

The full reproduction takes days of one CPU core, more than one working session on a machine that does not
keep its files between sessions; ``--update`` therefore adds a run's settled verdicts to the file already
written and keeps each earlier side that the new run does not settle, with the date it was measured.

Standard library only; nothing is recomputed: the verdicts are the scorecards' own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
VERDICTS = {True: "PASS", False: "FAIL", None: "not run"}
SIDES = ("quick", "full")


def read_reproduction(folder: Path) -> tuple[list[dict], dict]:
    """(scorecard rows, run file) of an ``idls reproduce`` output folder; a clear exit when it is not one."""
    scorecard, run = folder / "scorecard.json", folder / "reproduce.json"
    if not scorecard.is_file():
        raise SystemExit(f"{folder}: no scorecard.json; pass the --out folder of an `idls reproduce` run")
    rows = json.loads(scorecard.read_text())
    return rows, (json.loads(run.read_text()) if run.is_file() else {})


def experiments_named(groups: Iterable[str], names: Iterable[str]) -> set[str]:
    """The experiment names among the ``' · '``-separated parts of group labels."""
    known = set(names)
    return {part for group in groups for part in group.split(" · ") if part in known}


def side(row: Mapping | None, run: Mapping, experiments: Iterable[str] = (), measured: str = "") -> dict:
    """One run's view of a claim: verdict, images, groups compared and failing, and whether it is settled.

    ``experiments``: the experiments the claim reads (from either run's groups); when ``run`` records every
    one of them as complete (``stores``), the verdict is settled even where the scorecard could not tell."""
    if row is None or row.get("pass") is None:
        return {"verdict": VERDICTS[None], "n": 0, "failing": [], "groups": [], "settled": False, "measured": measured}
    details = row.get("details") or []
    stores = run.get("stores") or {}
    named = list(experiments)
    whole = bool(named) and all(name in stores and stores[name]["complete_cells"] == stores[name]["cells"]
                                for name in named)
    return {"verdict": VERDICTS[row.get("pass")], "n": int(row.get("n") or 0),
            "failing": [detail.get("group", "?") for detail in details if detail.get("pass") is False],
            "groups": [detail.get("group", "?") for detail in details],
            "settled": bool(row.get("settled") or whole), "measured": measured}


def agreement(quick: Mapping, full: Mapping) -> bool | None:
    """Same verdict, where both sides are settled; ``None`` otherwise."""
    if not (quick.get("settled") and full.get("settled")):
        return None
    return quick["verdict"] == full["verdict"]


def compare(runs: Mapping[str, tuple[Sequence[Mapping], Mapping]], measured: str,
            experiment_names: Iterable[str], known_groups: Mapping[str, Iterable[str]] | None = None) -> list[dict]:
    """A row per claim (the first run's scorecard order, then claims only the other has): ``runs`` maps a side
    (quick / full) to its (scorecard rows, run file); sides without a run are 'not run'. ``known_groups``:
    claim -> groups an earlier comparison saw, so the experiments a claim reads include those of runs not
    given now."""
    by_side = {name: {row["id"]: row for row in rows} for name, (rows, _) in runs.items()}
    order = list(dict.fromkeys(claim for rows in by_side.values() for claim in rows))
    names = list(experiment_names)
    rows = []
    for claim in order:
        details = [d.get("group", "") for side_rows in by_side.values() for d in (side_rows.get(claim) or {}).get("details") or []]
        details += list((known_groups or {}).get(claim, ()))
        reads = experiments_named(details, names)
        title = next((side_rows[claim].get("claim", "") for side_rows in by_side.values() if claim in side_rows), "")
        sides = {name: side(by_side[name].get(claim), runs[name][1], reads, measured) if name in runs else side(None, {})
                 for name in SIDES}
        rows.append({"id": claim, "claim": title, **sides, "agree": agreement(sides["quick"], sides["full"])})
    return rows


def better(new: Mapping, old: Mapping) -> Mapping:
    """The side to keep: the new one when it is settled or the old one is not, else the old one; of two settled
    sides with the same verdict, the one that measured more (a run of one experiment does not replace a whole
    run's groups with its own few)."""
    if new["verdict"] == VERDICTS[None]:
        return old
    if not old.get("settled"):
        return new
    if not new.get("settled"):
        return old
    return old if new["verdict"] == old["verdict"] and new.get("n", 0) < old.get("n", 0) else new


def update(earlier: Sequence[Mapping], now: Sequence[Mapping], given: Iterable[str]) -> list[dict]:
    """``earlier``'s claims with each side of ``now`` (for the ``given`` sides) that :func:`better` prefers."""
    now_by_id = {row["id"]: row for row in now}
    earlier_ids = {row["id"] for row in earlier}
    rows = []
    for row in [*earlier, *(row for row in now if row["id"] not in earlier_ids)]:
        merged = dict(row)
        for name in given:
            fresh = now_by_id.get(row["id"], {}).get(name)
            if fresh is not None:
                merged[name] = better(fresh, row.get(name) or side(None, {}))
        merged["agree"] = agreement(merged["quick"], merged["full"])
        rows.append(merged)
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


def run_key(run: Mapping, folder: Path) -> str:
    """Which reproduction a run file belongs to: its ``run_id``, else a digest of the folder's path (older files)."""
    return str(run.get("run_id") or folder_key(folder))


def folder_key(folder: Path) -> str:
    """The key of a run file without ``run_id``: a digest of its folder's path."""
    return "folder-" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]


def timing(run: Mapping, folder: Path) -> dict:
    seconds, invocations = run.get("seconds"), run.get("invocations", 1 if run else None)
    return {"seconds": seconds, "invocations": invocations,
            "seconds_per_experiment": dict(run.get("seconds_per_experiment") or {}),
            "attack_seconds_per_experiment": attack_seconds(folder), "stores": dict(run.get("stores") or {}),
            "runs": {run_key(run, folder): {"seconds": seconds or 0.0, "invocations": invocations or 0}}}


def merged_timing(old: Mapping, new: Mapping, folder: str | None = None) -> dict:
    """Per experiment, the newer run's times where it has them, else the earlier ones. Totals add up over
    reproductions; a reproduction given again (its run file is cumulative) replaces its earlier numbers.
    ``folder``: :func:`folder_key` of the new run's folder, under which it was counted before its run file
    had a ``run_id``."""
    merged = {}
    for key in ("seconds_per_experiment", "attack_seconds_per_experiment", "stores", "runs"):
        merged[key] = {**(old.get(key) or {}), **(new.get(key) or {})}
    if folder is not None and folder not in (new.get("runs") or {}):
        # the folder's run file has gained a run_id since it was counted by its folder: the same reproduction
        merged["runs"].pop(folder, None)
    for total in ("seconds", "invocations"):
        known = sum(entry[total] for entry in (old.get("runs") or {}).values())
        untracked = (old.get(total) or 0) - known  # results written before runs were tracked
        merged[total] = untracked + sum(entry[total] for entry in merged["runs"].values())
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", type=Path, help="output folder of `idls reproduce --quick`")
    parser.add_argument("--full", type=Path, help="output folder of `idls reproduce` (whole or partial)")
    parser.add_argument("--out", type=Path, default=RESULTS / "quick_vs_full.json")
    parser.add_argument("--update", action="store_true",
                        help="add to --out: keep its earlier sides where the given runs do not settle a verdict")
    parser.add_argument("--verdicts-only", action="store_true",
                        help="with --update: take the given runs' verdicts but keep the earlier times (a run of part "
                             "of a schedule, made to re-score some claims, is not the schedule's cost)")
    parser.add_argument("--replace-times", action="store_true",
                        help="with --update: the given runs' times replace the earlier ones of their side instead of "
                             "adding to them (a new whole reproduction of that side, not more of the same one)")
    parser.add_argument("--note", action="append", default=[],
                        help="a remark on the runs kept with the result (repeat), e.g. which full experiments are partial")
    args = parser.parse_args(argv)
    given = {name: folder for name, folder in (("quick", args.quick), ("full", args.full)) if folder is not None}
    if not given or (not args.update and len(given) < 2):
        raise SystemExit("give --quick and --full, or --update with one or both of them")
    if args.verdicts_only and not args.update:
        raise SystemExit("--verdicts-only keeps the times of an earlier result: add --update")
    if args.replace_times and (args.verdicts_only or not args.update):
        raise SystemExit("--replace-times replaces the times of an earlier result: add --update, not --verdicts-only")
    runs = {name: read_reproduction(folder) for name, folder in given.items()}
    if runs.get("quick", ([], {}))[1].get("quick") is False or runs.get("full", ([], {}))[1].get("quick") is True:
        raise SystemExit("--quick must be a quick reproduction and --full a full one (see their reproduce.json)")
    today = time.strftime("%Y-%m-%d")
    earlier = {}
    if args.update:
        if not args.out.is_file():
            raise SystemExit(f"--update adds to {args.out}, which does not exist; run once with --quick and --full")
        earlier = json.loads(args.out.read_text())
    known_groups = {row["id"]: [group for name in SIDES for key in ("groups", "failing")
                                for group in (row.get(name) or {}).get(key) or []] for row in earlier.get("claims", [])}
    claims = compare(runs, today, (path.stem for path in EXPERIMENTS.glob("*.yaml")), known_groups)
    times = {name: timing(runs[name][1], folder) for name, folder in given.items()}
    system = next((run.get("system") for _, run in runs.values() if run.get("system")), None)
    notes = list(args.note)
    if args.update:
        claims = update(earlier.get("claims", []), claims, given)
        merged_times = {}
        for name in SIDES:
            if name not in times or args.verdicts_only:
                merged_times[name] = earlier.get(name, {})
            elif args.replace_times:
                merged_times[name] = times[name]
            else:
                merged_times[name] = merged_timing(earlier.get(name) or {}, times[name], folder_key(given[name]))
        times = merged_times
        notes = [*earlier.get("notes", []), *(f"{today}: {note}" for note in notes)]
        system = earlier.get("system") or system
    for row in claims:
        agree = {True: "same", False: "DIFFERENT", None: "-"}[row["agree"]]
        marks = {name: row[name]["verdict"] + ("?" if row[name]["verdict"] != VERDICTS[None] and not row[name].get("settled")
                                              else "") for name in SIDES}
        print(f"{row['id']:20s} quick {marks['quick']:9s} full {marks['full']:9s} {agree}")
    settled = [row for row in claims if row["agree"] is not None]
    print(f"{sum(row['agree'] for row in settled)} of {len(settled)} claims settled in both runs agree; "
          f"{len(claims) - len(settled)} not settled in one of them ('?': could still change)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"written": today, "system": system, **times, "notes": notes, "claims": claims},
                                   indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
