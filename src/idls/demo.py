"""``idls demo``: the whole pipeline on the embedded default, no download needed.

1. the embedded CNN (trained on first use, then cached) and its RTS;
2. the interpreter validity table: does each map localise the object?
3. each demo attack against every interpreter, with records, summary and report.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from idls.evaluate import group_summaries
from idls.report.run_report import write_run_report
from idls.runner import attack_and_evaluate, build_interpreters, write_json, write_records
from idls.validity import interpreter_validity

DEMO_INTERPRETERS = ("grad", "ig", "cam", "gradcam", "rts", "mask")
DEMO_ATTACKS = ("pgd",)


def demo_settings(quick: bool, n: int | None) -> dict:
    """Sizes of the demo: images for the validity table, images attacked, attack and MASK steps."""
    if quick:
        return {"validity_images": 48, "attack_images": n or 8, "pgd_steps": 20, "mask_iterations": 60, "ig_steps": 16}
    return {"validity_images": 200, "attack_images": n or 48, "pgd_steps": 40, "mask_iterations": 300, "ig_steps": 32}


def run_demo(out: Path, *, quick: bool = False, n: int | None = None, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Run the demo and write ``results.jsonl``, ``summary.json`` and ``report.html`` into ``out``."""
    from idls.data.datasets import load_images, select_correct
    from idls.embedded import embedded_metrics
    from idls.models import create_model

    console = Console()
    started = time.perf_counter()
    settings = demo_settings(quick, n)
    console.rule("idls demo" + (" (quick)" if quick else ""))
    console.print("[1/3] embedded classifier and RTS (trained once, then cached)")
    classifier = create_model("embedded_cnn", weights="pretrained", device=device)
    accuracy = float(embedded_metrics()["test_accuracy"])
    console.print(f"      embedded test accuracy: {accuracy:.3f}")
    options = {"mask": {"iterations": settings["mask_iterations"]}, "ig": {"steps": settings["ig_steps"]}}
    interpreters = build_interpreters(classifier, list(DEMO_INTERPRETERS), options)
    data = load_images("embedded", input_size=classifier.input_size, seed=seed)

    console.print(f"[2/3] interpreter validity on {settings['validity_images']} test images")
    nv = settings["validity_images"]
    validity = interpreter_validity(interpreters, data.images[:nv].to(device), data.masks[:nv].to(device), seed=seed)
    _print_validity(console, validity)

    console.print(f"[3/3] attacks on {settings['attack_images']} correctly classified images")
    chosen = select_correct(classifier, data, settings["attack_images"])
    records: list[dict] = []
    showcases = {}
    for attack in DEMO_ATTACKS:
        run = attack_and_evaluate(
            classifier, interpreters, attack, {"steps": settings["pgd_steps"], "progress": False},
            chosen.images, chosen.labels, chosen.ids, seed=seed, out_dir=out, model_name="embedded_cnn",
        )
        records += run.records
        showcases[attack] = run.showcase
        console.print(f"      {attack}: {run.seconds:.1f} s")
    per_attack = group_summaries(records)
    seconds = time.perf_counter() - started
    summary = {
        "model": "embedded_cnn",
        "embedded_accuracy": accuracy,
        "interpreters": validity,
        "attacks": per_attack,
        "settings": settings,
        "seconds": seconds,
        "quick": quick,
    }
    write_records(out / "results.jsonl", records)
    write_json(out / "summary.json", summary)
    write_run_report(
        out,
        title="idls demo: embedded system",
        per_attack=per_attack,
        showcases=showcases,
        class_names=classifier.info.class_names,
        validity=validity,
        intro=f"Embedded CNN (test accuracy {accuracy:.3f}) on the procedurally generated data set; "
        f"targeted attacks at epsilon 8/255. Total time {seconds:.0f} s.",
    )
    _print_attacks(console, per_attack)
    console.print(f"done in {seconds:.0f} s; report: {out / 'report.html'}")
    return summary


def _print_validity(console: Console, validity: dict) -> None:
    table = Table(title="interpreter validity (top-20% IoU with the object, pointing game)")
    for col in ("interpreter", "IoU", "random IoU", "pointing", "random pointing"):
        table.add_column(col, justify="right")
    for name, v in validity.items():
        table.add_row(name, f"{v['localization_iou']:.3f}", f"{v['random_iou']:.3f}", f"{v['pointing_game']:.3f}", f"{v['random_pointing']:.3f}")
    console.print(table)


def _print_attacks(console: Console, per_attack: dict) -> None:
    table = Table(title="attacks (targeted, 8/255)")
    for col in ("attack", "interpreter", "success", "confidence", "map L1", "IoU@20%", "noise rate", "s/image"):
        table.add_column(col, justify="right")
    for attack, by_int in per_attack.items():
        for name, s in by_int.items():
            table.add_row(attack, name, *(f"{s[k]:.3f}" for k in ("attack_success_rate", "confidence", "map_l1", "map_iou", "noise_rate", "seconds")))
    console.print(table)
