"""The report of one attack run (``idls attack`` / ``idls demo``): tables + figure grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from idls.report.figures import bar_chart_png, map_grid_png
from idls.report.html import Section, render_report, table_html

SUMMARY_COLUMNS = (
    "attack",
    "interpreter",
    "n",
    "attack_success_rate",
    "confidence",
    "linf",
    "noise_rate",
    "map_l1",
    "map_l2",
    "map_iou",
    "kendall_tau",
    "seconds",
)


def summary_rows(per_attack: Mapping[str, Mapping[str, Mapping]]) -> list[dict]:
    """Flatten ``{attack: {interpreter: summary}}`` into table rows."""
    return [{"attack": a, "interpreter": i, **s} for a, by_int in per_attack.items() for i, s in by_int.items()]


def validity_rows(validity: Mapping[str, Mapping[str, float]]) -> list[dict]:
    return [{"interpreter": name, **values} for name, values in validity.items()]


def write_run_report(
    out_dir: Path,
    *,
    title: str,
    per_attack: Mapping[str, Mapping[str, Mapping]],
    showcases: Mapping[str, object],
    class_names: Sequence[str] = (),
    validity: Mapping[str, Mapping[str, float]] | None = None,
    intro: str = "",
    meta: Mapping[str, str] | None = None,
) -> Path:
    """Write ``out_dir/report.html``.

    Args:
        per_attack: ``{attack: {interpreter: summary}}`` as in ``summary.json``.
        showcases: attack -> :class:`idls.runner.Showcase` (first images with their maps).
        validity: interpreter validity table (demo only).
    """
    sections: list[Section] = []
    if intro:
        sections.append(Section("About this run", text=intro))
    if validity:
        bars = {n: {"interpreter": v["localization_iou"], "random map": v["random_iou"]} for n, v in validity.items()}
        sections.append(
            Section(
                "Interpreter validity (localisation of the ground-truth object)",
                text="IoU of the top-20% map region with the object mask, and pointing-game accuracy; "
                "a uniformly random map is the floor.",
                tables=[table_html(validity_rows(validity))],
                figures=[bar_chart_png(bars, "localisation IoU")],
            )
        )
    sections.append(
        Section(
            "Attack results per attack and interpreter",
            text="Success rate over attempts; confidence = probability of the target class over successes; "
            "map distances between the benign and adversarial maps (native resolution); "
            "noise rate = 1 - SSIM(x, x*).",
            tables=[table_html(summary_rows(per_attack), SUMMARY_COLUMNS)],
        )
    )

    def name_of(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else str(c)

    for attack, showcase in showcases.items():
        if showcase is None or not showcase.benign_maps:
            continue
        first = next(iter(showcase.adversarial_preds))
        png = map_grid_png(
            showcase.x,
            showcase.adversarial_images,
            showcase.benign_maps,
            showcase.adversarial_maps,
            titles=[name_of(int(c)) for c in showcase.labels],
            adv_titles=[name_of(int(c)) for c in showcase.adversarial_preds[first]],
        )
        sections.append(
            Section(f"Images and maps: {attack}", text="Benign image, adversarial image, then each interpreter's benign and adversarial map.", figures=[png])
        )
    return render_report(Path(out_dir) / "report.html", title, sections, meta)
