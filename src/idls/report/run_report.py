"""The report of one attack run (``idls attack`` / ``idls demo``): tables + figure grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from idls.report.figures import attack_comparison_png, bar_chart_png, map_grid_png
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

    comparisons = comparison_sections(showcases, name_of)
    sections += comparisons
    for attack, showcase in showcases.items():
        if showcase is None or not showcase.benign_maps:
            continue
        if comparisons and attack != next(iter(showcases)):
            continue  # the side-by-side figures already show this attack's images and maps
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


def comparison_sections(showcases: Mapping[str, object], name_of) -> list[Section]:
    """Per interpreter, one figure with every attack's adversarial image and map side by side
    (only when at least two attacks were evaluated with that interpreter)."""
    present = {a: sc for a, sc in showcases.items() if sc is not None and sc.benign_maps}
    interpreters = list(dict.fromkeys(name for sc in present.values() for name in sc.benign_maps))
    sections = []
    for name in interpreters:
        attacks = [a for a, sc in present.items() if name in sc.benign_maps]
        if len(attacks) < 2:
            continue
        first = present[attacks[0]]
        png = attack_comparison_png(
            first.x,
            first.benign_maps[name],
            {a: (present[a].adversarial_images[name], present[a].adversarial_maps[name]) for a in attacks},
            titles=[name_of(int(c)) for c in first.labels],
            column_titles={a: [f"-> {name_of(int(c))}" for c in present[a].adversarial_preds[name]] for a in attacks},
        )
        sections.append(Section(
            f"Side by side: {name}",
            text=f"The {name} map of the benign image, then for each attack the adversarial image (its predicted "
            "class above) with its map. A successful joint attack changes the prediction while its map still "
            "looks like the benign one.",
            figures=[png],
        ))
    return sections
