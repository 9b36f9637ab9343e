"""The report of an experiment store (``idls report DIR``): one self-contained HTML file plus tables.

Reads the complete units of the store (``idls.analysis.load_store``), writes the paper-shaped
tables as CSV and LaTeX under ``DIR/tables/`` and ``DIR/report.html`` with: the scorecard (when
``DIR/scorecard.json`` exists), success and confidence, map L1 / IoU with bar charts, noise rate,
time, interpreter-transfer heat maps, model transfer, the random-target (gap) study, figure grids
of images with their benign and adversarial maps (from the tensor files), and the resolved
configuration and environment of each experiment.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml

from idls.analysis.groups import (
    CONTEXT_KEYS,
    INTERPRETER_ORDER,
    NONE,
    group_records,
    label,
    ordered,
    own_records,
    summary,
    varying_keys,
)
from idls.analysis.store_reader import Store, TensorReader, load_store
from idls.errors import UserError
from idls.report.detection_tables import detection_tables
from idls.report.figures import bar_chart_png, heatmap_png, map_grid_png
from idls.report.html import Section, render_report, table_html
from idls.report.robustness_tables import robustness_tables
from idls.report.scorecard_file import SCORECARD_FILE, read_scorecard, verdict
from idls.report.scorecard_html import scorecard_html
from idls.report.study_tables import aid_tables
from idls.report.tables import Table, paper_tables, write_tables

REPORT_FILE = "report.html"
TABLES_DIR = "tables"
BAR_SCOPE_KEYS: tuple[str, ...] = (*CONTEXT_KEYS, "model", "framework")
GRID_SCOPE_KEYS: tuple[str, ...] = (*CONTEXT_KEYS, "model", "attack", "framework", "target")


def scope_title(keys: Sequence[str], values: Sequence, records: Sequence[Mapping]) -> str:
    """A figure title from a group key: context fields (experiment, data, epsilon, mode) only where they vary."""
    shown = set(varying_keys(records))
    return label(_short(v) for k, v in zip(keys, values, strict=True) if k not in CONTEXT_KEYS or k in shown)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_experiment_report(run_dir: Path, out_dir: Path | None = None, *, max_grids: int = 8, grid_images: int = 4) -> Path:
    """Write ``report.html`` and ``tables/*.csv|tex`` for the store in ``run_dir``; return the report's path.

    Args:
        run_dir: an ``idls run`` output folder, or a folder of them (``idls reproduce``).
        out_dir: where to write (default ``run_dir``).
        max_grids: at most this many image/map figure grids (one per model, attack, framework, target).
        grid_images: images per grid.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    store = load_store(run_dir)
    records = store.records
    if not records:
        raise UserError(f"{run_dir} holds no completed unit yet; let `idls run` finish at least one batch, then rerun `idls report`")
    tables = {t.name: t for t in [*paper_tables(records, store.model_transfer), *detection_tables(records),
                                  *robustness_tables(records), *aid_tables(store.studies)]}
    write_tables(list(tables.values()), out_dir / TABLES_DIR)
    scorecard = read_scorecard(run_dir / SCORECARD_FILE)
    sections = [overview_section(store)]
    if scorecard is not None:
        sections.append(scorecard_section(scorecard))
    sections += [
        _tables_section("Attack success and confidence", tables, ("success", "confidence"),
                        "Success = successes / attempts; confidence = target-class probability over successes "
                        "(paper 001 Table 3, paper 000 Tables I-II)."),
        _tables_section("Attribution-map similarity to the benign maps", tables, ("map_l1", "map_iou"),
                        "L1 = mean |m - m'| and IoU of the top-20% regions, at the interpreters' native resolution "
                        "(paper 001 Figs. 5-6, paper 000 Figs. 3-4).",
                        figures=bar_figures(records, "map_l1", "L1 to benign map") + bar_figures(records, "map_iou", "IoU@20% with benign map")),
        _tables_section("Noise rate", tables, ("noise_rate",), "Noise rate = 1 - SSIM(x, x*) (paper 000 Fig. 5).",
                        figures=bar_figures(records, "noise_rate", "noise rate (1 - SSIM)")),
        _tables_section("Time", tables, ("time",), "Attack seconds per image (paper 000 Table III); "
                        "iterations to first success in the summary table."),
    ]
    sections += transfer_sections(tables)
    if "detection" in tables:
        sections.append(_tables_section(
            "Detection", tables, ("detection", "detection_accuracy", "detection_auc", "evasion"),
            "Each detector was fitted on the fit images and its threshold set at its false-positive rate on benign "
            "images; 'benign FPR' is the rate it reached on the evaluated benign images (paper 001 Table 4, "
            "paper 000 Tables V-VI).", figures=[_detection_heatmap(tables["detection"])]))
    if "robust_accuracy" in tables or "interpretation_tau" in tables:
        sections.append(_tables_section(
            "Training defences", tables, ("robust_accuracy", "interpretation_tau"),
            "Each row is a model entry: the normal model and its fine-tunes (the training in the row label); "
            "paper 000 Table VII.", figures=robustness_figures(tables)))
    if "aid_adv2" in tables:
        sections.append(_tables_section(
            "AID: adversarial interpretation distillation", tables, ("aid_adv2", "aid_noise"),
            "An RTS masker and its AID fine-tune (paper 001 Appendix A2), attacked by ADV² and explained on noisy "
            "images."))
    gap = tables.get("gap")
    if gap is not None:
        sections.append(Section("Random target maps (prediction-interpretation gap)", text=gap.caption,
                                tables=[table_html(gap.rows, gap.columns)], figures=gap_figures(gap)))
    sections.append(_tables_section("All metrics", tables, ("summary",), tables["summary"].caption))
    sections += grid_sections(records, max_grids=max_grids, grid_images=grid_images)
    sections.append(configuration_section(store))
    meta = {"store": str(run_dir), "experiments": ", ".join(p.name for p in store.parts),
            "units": str(store.units), "records": str(len(records)), "tables": f"{TABLES_DIR}/ (CSV, LaTeX)"}
    return render_report(out_dir / REPORT_FILE, "idls experiment report", sections, meta)


# ---------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------
def overview_section(store: Store) -> Section:
    rows = [{"experiment": p.name, "folder": str(p.path), "units": p.units, "records": len(p.records),
             "model-transfer records": len(p.model_transfer)} for p in store.parts]
    tables = [table_html(rows)]
    if store.warnings:
        tables.append(table_html([{"warning": w} for w in store.warnings]))
    return Section("Run", text="Only complete units (listed in done.jsonl) are counted.", tables=tables)


def scorecard_section(rows: Sequence[Mapping]) -> Section:
    """The claims at a glance (:mod:`idls.report.scorecard_html`)."""
    counts = {word: sum(1 for r in rows if verdict(r["pass"]) == word) for word in ("PASS", "FAIL", "NOT RUN")}
    text = (f"Claims of the papers checked on this store: {counts['PASS']} pass, {counts['FAIL']} fail, "
            f"{counts['NOT RUN']} not run. Open a claim for its compared groups and numbers.")
    return Section("Reproduction scorecard", text=text, tables=scorecard_html(rows))


def _tables_section(title: str, tables: Mapping[str, Table], names: Sequence[str], text: str, figures: Sequence[bytes] = ()) -> Section:
    html_tables = [f"<p><em>{html.escape(tables[n].caption)}</em></p>" + table_html(tables[n].rows, tables[n].columns)
                   for n in names if n in tables]
    return Section(title, text=text, tables=html_tables, figures=list(figures))


def table_heatmap(table: Table, title: str) -> bytes:
    """Heat map of a matrix-shaped table (first column = row labels), colour scale fixed to [0, 1]."""
    corner, *columns = table.columns
    values = [[row[c] for c in columns] for row in table.rows]
    return heatmap_png(values, [str(r[corner]) for r in table.rows], columns, title=title, vmin=0, vmax=1)


def robustness_figures(tables: Mapping[str, Table]) -> list[bytes]:
    """Accuracy and Kendall's tau against epsilon, one line per model entry."""
    from idls.report.figures import line_chart_png

    figures = []
    for name, ylabel, keys in (("robust_accuracy", "accuracy under PGD", 1), ("interpretation_tau", "Kendall's tau", 2)):
        table = tables.get(name)
        if table is None:
            continue
        epsilons = table.columns[keys:]
        series = {" · ".join(str(row[c]) for c in table.columns[:keys]): [row[e] for e in epsilons] for row in table.rows}
        figures.append(line_chart_png(epsilons, series, xlabel="epsilon", ylabel=ylabel))
    return figures


def _detection_heatmap(table: Table) -> bytes:
    """Detection rates as a heat map: detectors x (benign FPR, attacks)."""
    matrix = Table(table.name, table.caption, [c for c in table.columns if c != "setting"], table.rows)
    return table_heatmap(matrix, "detection rate (first column: benign false-positive rate)")


def transfer_sections(tables: Mapping[str, Table]) -> list[Section]:
    """Interpreter transfer (IoU heat maps + IoU and L1 tables per scope) and model transfer."""
    sections = []
    iou_names = [n for n in tables if n.startswith("transfer_iou_")]
    if iou_names:
        figures, html_tables = [], []
        for name in iou_names:
            pair = (tables[name], tables[name.replace("transfer_iou_", "transfer_l1_", 1)])
            figures.append(table_heatmap(pair[0], f"IoU@20%: {pair[0].title}"))
            html_tables += [f"<p><em>{html.escape(t.caption)}</em></p>" + table_html(t.rows, t.columns) for t in pair]
        sections.append(Section(
            "Transferability across interpreters",
            text="Adversarial images crafted against the row's interpreter, explained by the column's interpreter and "
                 "compared with that interpreter's benign map (paper 001 Table 9, paper 000 Table IV). The diagonal is "
                 "the attack's own result; the last row is the classifier-only attack.",
            tables=html_tables, figures=figures))
    if "model_transfer" in tables:
        table = tables["model_transfer"]
        sections.append(Section("Transferability across models", text=table.caption,
                                tables=[table_html(table.rows, table.columns)], figures=[table_heatmap(table, "success rate")]))
    return sections


def configuration_section(store: Store) -> Section:
    blocks = []
    for part in store.parts:
        config = yaml.safe_dump(part.config, sort_keys=False) if part.config else "(no experiment.yaml)"
        environment = json.dumps(part.environment, indent=2) if part.environment else "(no environment.json)"
        blocks.append(f"<h3>{html.escape(part.name)}</h3><pre>{html.escape(config)}</pre><pre>{html.escape(environment)}</pre>")
    return Section("Configuration and environment", text="The resolved configuration and library versions of each experiment.",
                   tables=blocks)


# ---------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------
def bar_figures(records: Sequence[Mapping], value: str, ylabel: str) -> list[bytes]:
    """Per (context, model, framework): bars of ``value`` per interpreter (groups) and attack (series).

    Only attacks aimed at the benign map (and classifier-only attacks) are drawn.
    """
    own = [r for r in own_records(records) if r.get("target") in ("benign", NONE) and r.get("interpreter") != NONE]
    figures = []
    for key, group in group_records(own, BAR_SCOPE_KEYS).items():
        values: dict[str, dict[str, float]] = {}
        for (interpreter, attack), g in group_records(group, ("interpreter", "attack")).items():
            values.setdefault(str(interpreter), {})[str(attack)] = summary(g)[value]
        values = {k: values[k] for k in ordered(values, INTERPRETER_ORDER)}
        figures.append(bar_chart_png(values, ylabel, title=scope_title(BAR_SCOPE_KEYS, key, own)))
    return figures


def gap_figures(table: Table) -> list[bytes]:
    """Per (model, attack, framework, target): L1 of the adversarial map to the benign and to the target map."""
    scope_keys = [k for k in table.columns[: table.key_columns] if k != "interpreter"]
    figures = []
    for key, rows in group_records(table.rows, scope_keys).items():
        values = {str(r["interpreter"]): {"to benign map": r["map_l1"], "to target map": r["map_l1_to_target"]} for r in rows}
        figures.append(bar_chart_png(values, "L1 of the adversarial map", title=label(key)))
    return figures


def grid_sections(records: Sequence[Mapping], *, max_grids: int, grid_images: int) -> list[Section]:
    """Figure grids of the first images of each (context, model, attack, framework, target) with their maps."""
    reader = TensorReader()
    own = [r for r in own_records(records) if r.get("interpreter") != NONE and r.get("adv_path")]
    sections = []
    for key, group in list(group_records(own, GRID_SCOPE_KEYS).items())[:max_grids]:
        png, benign_stored = _grid_png(group, reader, grid_images)
        if png is None:
            continue
        text = "Columns: benign image, adversarial image, then per interpreter its benign and adversarial map."
        if not benign_stored:
            text += " The store keeps no benign images: the first column repeats the adversarial image (8/255 apart)."
        sections.append(Section(f"Images and maps: {scope_title(GRID_SCOPE_KEYS, key, own)}", text=text, figures=[png]))
    return sections


def _grid_png(group: Sequence[Mapping], reader: TensorReader, n_images: int) -> tuple[bytes | None, bool]:
    by_interpreter = group_records(group, ("interpreter",))
    names = ordered((k[0] for k in by_interpreter), INTERPRETER_ORDER)
    first_ids = list(dict.fromkeys(r["image_id"] for r in by_interpreter[(names[0],)]))
    common = [i for i in first_ids if all(any(r["image_id"] == i for r in by_interpreter[(n,)]) for n in names)][:n_images]
    if not common:
        return None, False
    images, benign_maps, adversarial_maps = {}, {}, {}
    for name in names:
        chosen = {r["image_id"]: r for r in by_interpreter[(name,)]}
        maps = [reader.maps(chosen[i]) for i in common]
        if any(m is None for m in maps):
            continue
        images[name] = torch.stack([reader.adversarial_image(chosen[i]) for i in common]).float()
        benign_maps[name] = torch.stack([m[0] for m in maps]).float()
        adversarial_maps[name] = torch.stack([m[1] for m in maps]).float()
    if not images:
        return None, False
    first = {r["image_id"]: r for r in by_interpreter[(next(iter(images)),)]}
    benign = [reader.benign_image(first[i]) for i in common]
    stored = all(b is not None for b in benign)
    x = torch.stack(benign).float() if stored else next(iter(images.values()))
    titles = [f"class {first[i]['true_label']}" + ("" if stored else " (x* shown)") for i in common]
    adv_titles = [f"pred {first[i]['pred_label']} (target {first[i]['target_label']})" for i in common]
    return map_grid_png(x, images, benign_maps, adversarial_maps, titles=titles, adv_titles=adv_titles), stored


__all__ = ["write_experiment_report"]
