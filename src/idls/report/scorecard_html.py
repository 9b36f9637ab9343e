"""The scorecard as a report reads it at a glance: one line per claim, a compact table per claim behind it.

The summary table has one row per claim (verdict, how many compared groups pass, the paper's setting
beside ours for claims that fail). Each claim then gets a collapsible block: its rule and the paper's
numbers, and a table with one row per compared group (experiment / model / framework / interpreter)
whose columns are the numbers the claim compared, with the group's verdict.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from idls.report.html import table_html
from idls.report.scorecard_file import row_verdict

COLOURS = {"PASS": "#1a7f37", "FAIL": "#cf222e", "NOT RUN": "#9a6700"}


def _badge(word: str) -> str:
    colour = COLOURS.get(word.split(" (")[0], "inherit")  # 'PASS (partial run)' is still a PASS
    return f'<strong style="color:{colour}">{word}</strong>'


def summary_rows(rows: Sequence[Mapping]) -> list[dict]:
    """One plain row per claim: claim, result, groups passing, the settings compared."""
    out = []
    for row in rows:
        details = row.get("details") or []
        passing = sum(1 for d in details if d.get("pass"))
        out.append({"claim": row["claim"], "result": row_verdict(row),
                    "groups passing": f"{passing} / {len(details)}" if details else "–",
                    "setting": row.get("setting", "") if row["pass"] is False else ""})
    return out


def claim_table(row: Mapping) -> str:
    """The compared groups of one claim: group, its numbers (union of keys, in first-seen order), pass."""
    details = row.get("details") or []
    if not details:
        return "<p><em>no data for this claim in this store</em></p>"
    keys: dict[str, None] = {}
    for detail in details:
        keys.update(dict.fromkeys(k for k, v in (detail.get("values") or {}).items() if isinstance(v, (int, float))))
    table = [{"group": d.get("group", ""), **{k: (d.get("values") or {}).get(k, float("nan")) for k in keys},
              "n": d.get("n", ""), "pass": "PASS" if d.get("pass") else "FAIL"} for d in details]
    return table_html(table, ["group", *keys, "n", "pass"])


def claim_block(row: Mapping) -> str:
    """A ``<details>`` block: verdict and title as the summary line, rule, paper numbers and the table inside."""
    word = row_verdict(row)
    parts = [f"<p><b>Pass mark:</b> {html.escape(str(row.get('rule', '')))}</p>",
             f"<p><b>Paper:</b> {html.escape(str(row.get('paper_value', '')))}</p>"]
    if row.get("setting"):
        parts.append(f"<p><b>Setting:</b> {html.escape(str(row['setting']))}</p>")
    parts.append(claim_table(row))
    if row.get("measured"):
        parts.append(f"<p><small>{html.escape(str(row['measured']))}</small></p>")
    return (f"<details><summary>{_badge(word)} {html.escape(str(row['claim']))}</summary>"
            + "".join(parts) + "</details>")


def scorecard_html(rows: Sequence[Mapping]) -> list[str]:
    """HTML fragments: the summary table, then one collapsible block per claim."""
    return [table_html(summary_rows(rows)), *(claim_block(row) for row in rows)]


__all__ = ["claim_block", "claim_table", "scorecard_html", "summary_rows"]
