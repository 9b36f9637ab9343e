"""``idls demo``: the whole pipeline on the embedded default, no download needed.

1. the embedded CNN and its RTS masker (shipped with idls: :mod:`idls.pretrained`);
2. the interpreter validity table: does each map localise the object?
3. each demo attack against every interpreter, as one experiment (:func:`demo_experiment`) run by the
   engine behind every attack run of idls, into ``OUT/store`` (a second demo resumes it), then
   records, summary and report;
4. universal perturbations (:func:`universal_experiment`): fitted once on embedded training images,
   then applied to the unseen test images, into ``OUT/universal-store``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from idls.evaluate import group_summaries
from idls.report.cells import MISSING, format_cell, is_missing, missing_notes
from idls.report.run_report import write_run_report
from idls.runner import attack_needs_interpreter, build_interpreters, showcases_from_store, write_json, write_records
from idls.validity import interpreter_validity

DEMO_INTERPRETERS = ("grad", "ig", "cam", "gradcam", "rts", "mask")
#: the classifier-only baseline and the joint attacks, side by side
DEMO_ATTACKS = ("pgd", "adv2", "advedge", "advedge+")
#: interpreters the joint attacks run against (a joint attack on IG back-propagates through all of
#: its steps, ~10x ADV²-Grad; it stays available in `idls attack`)
JOINT_INTERPRETERS = ("grad", "cam", "gradcam", "rts", "mask")
STORE_DIR = "store"  #: the demo's experiment store inside its output folder (resumed by the next demo)
UNIVERSAL_STORE_DIR = "universal-store"  #: the universal section's store
#: the universal section: the pattern floor, a plain universal perturbation and JUAP against CAM
UNIVERSAL_ATTACKS = ("random-sign", "chessboard", "sgd-uap", "juap")
DEMO_THREADS = 1  #: torch threads of the demo (see :func:`run_demo`)
#: the embedded CNN shrugs off 10/255 patterns (random signs fool almost none), so the section uses 16/255
UNIVERSAL_EPSILON = 16 / 255
#: images per step of the universal fits: small, so that the few fit images still give enough steps to reach the
#: ball (at 64, the quick fit's 2 x 2 steps of epsilon / 10 left SGD-UAP's pattern at 0.4 epsilon, fooling nothing)
UNIVERSAL_FIT_BATCH = 16


def demo_settings(quick: bool, n: int | None) -> dict:
    """Sizes of the demo: validity images, attacked images, iteration counts (shortened joint schedules)."""
    if quick:
        return {
            "validity_images": 48, "attack_images": n or 4, "pgd_steps": 20, "mask_iterations": 60, "ig_steps": 16,
            "joint": {"default": {"warm_start": 10, "steps": 30},
                      "mask": {"warm_start": 10, "steps": 10, "mask_reset_every": 5}},
            "joint_images": {"mask": 2},
        }
    return {
        "validity_images": 100, "attack_images": n or 16, "pgd_steps": 40, "mask_iterations": 150, "ig_steps": 32,
        "joint": {"default": {"warm_start": 20, "steps": 60},
                  "mask": {"warm_start": 20, "steps": 30, "mask_reset_every": 10}},
        "joint_images": {"mask": 4},  # the bilevel MASK attack costs ~20x the others per image
    }


def demo_experiment(settings: dict, *, seed: int, device: str) -> dict:
    """The demo's attacks as one experiment (the engine behind every attack run of idls)."""
    joint = {"name": None, "options": {**settings["joint"]["default"],
                                       "by_interpreter": {"mask": settings["joint"]["mask"]}},
             "interpreters": list(JOINT_INTERPRETERS)}
    return {
        "name": "demo",
        "models": [{"name": "embedded_cnn", "weights": "pretrained"}],
        "data": {"source": "embedded", "n": settings["attack_images"], "batch_size": 64, "shuffle": False,
                 "seed": seed, "n_by_interpreter": dict(settings["joint_images"])},
        "interpreters": list(DEMO_INTERPRETERS),
        "interpreter_options": {"mask": {"iterations": settings["mask_iterations"]},
                                "ig": {"steps": settings["ig_steps"]}},
        "attacks": [{"name": attack, "options": {"steps": settings["pgd_steps"]}} if not attack_needs_interpreter(attack)
                    else {**joint, "name": attack} for attack in DEMO_ATTACKS],
        "mode": "targeted",
        "seeds": [seed],
        "device": str(device),
    }


def universal_experiment(settings: dict, *, seed: int, device: str) -> dict:
    """The universal section as one experiment: fitted on the embedded training split, evaluated on test images."""
    quick = settings["attack_images"] <= 4
    epochs = 10 if quick else 5
    return {
        "name": "demo-universal",
        "models": [{"name": "embedded_cnn", "weights": "pretrained"}],
        "data": {"source": "embedded", "fit_source": "embedded-train", "fit_n": 128 if quick else 512,
                 "n": max(16, settings["attack_images"]), "batch_size": 64, "shuffle": False, "seed": seed},
        "interpreters": ["cam"],
        "attacks": list(UNIVERSAL_ATTACKS),
        "attack_options": {"sgd-uap": {"epochs": epochs, "batch_size": UNIVERSAL_FIT_BATCH},
                           "juap": {"epochs": epochs, "batch_size": UNIVERSAL_FIT_BATCH, "width": 16, "lr": 1e-3}},
        "mode": "untargeted",
        "epsilon": UNIVERSAL_EPSILON,
        "seeds": [seed],
        "device": str(device),
    }


def run_experiment_in(store: Path, config: dict) -> list[dict]:
    """Run (or resume) an experiment given as a mapping in ``store``; its attack records.

    A store left by a demo of other settings (``--quick`` vs full) is rebuilt: the demo owns that folder.
    """
    import shutil

    from idls.analysis.store_reader import load_store
    from idls.errors import UserError
    from idls.experiments import run_experiment
    from idls.experiments.config import experiment_from_mapping

    experiment = experiment_from_mapping(config, default_name=config["name"])
    try:
        run_experiment(experiment, store)
    except UserError as exc:
        if "different configuration" not in str(exc):
            raise
        shutil.rmtree(store)
        run_experiment(experiment, store)
    return [r for r in load_store(store).records if r.get("kind") == "attack"]


def run_attacks(out: Path, settings: dict, *, seed: int, device: str) -> list[dict]:
    """Run (or resume) the demo's experiment in ``out/store``; its attack records."""
    return run_experiment_in(out / STORE_DIR, demo_experiment(settings, seed=seed, device=device))


def run_demo(out: Path, *, quick: bool = False, n: int | None = None, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Run the demo and write ``results.jsonl``, ``summary.json`` and ``report.html`` into ``out``.

    Single-threaded (:data:`DEMO_THREADS`), like the embedded trainings (:mod:`idls.threads`): its batches are
    a few 64 px images, too small to gain from more threads, and on a machine whose cores are busy with
    other work, OpenMP threads that wait for each other made the quick demo several times slower.
    """
    from idls.threads import torch_threads

    with torch_threads(DEMO_THREADS):
        return _run_demo(out, quick=quick, n=n, device=device, seed=seed)


def _run_demo(out: Path, *, quick: bool, n: int | None, device: torch.device | str, seed: int) -> dict:
    from idls.data.datasets import load_images, select_correct
    from idls.embedded import embedded_metrics
    from idls.models import create_model

    console = Console(width=max(Console().width, 110))  # full column names even in a narrow pipe
    started = time.perf_counter()
    settings = demo_settings(quick, n)
    console.rule("idls demo" + (" (quick)" if quick else ""))
    console.print("[1/4] embedded classifier and its RTS masker (shipped with idls)")
    classifier = create_model("embedded_cnn", weights="pretrained", device=device)
    accuracy = float(embedded_metrics()["test_accuracy"])
    console.print(f"      embedded test accuracy: {accuracy:.3f}")
    options = {"mask": {"iterations": settings["mask_iterations"]}, "ig": {"steps": settings["ig_steps"]}}
    interpreters = build_interpreters(classifier, list(DEMO_INTERPRETERS), options)
    data = load_images("embedded", input_size=classifier.input_size, seed=seed)

    console.print(f"[2/4] interpreter validity on {settings['validity_images']} test images")
    nv = settings["validity_images"]
    validity = interpreter_validity(interpreters, data.images[:nv].to(device), data.masks[:nv].to(device), seed=seed)
    _print_validity(console, validity)

    chosen = select_correct(classifier, data, settings["attack_images"])  # the images the experiment attacks
    fewer = f" (--n {n}: only {len(chosen)} are correct)" if len(chosen) < settings["attack_images"] else ""
    console.print(f"[3/4] attacks on {len(chosen)} correctly classified images{fewer}")
    attacks_started = time.perf_counter()
    records = run_attacks(out, settings, seed=seed, device=str(device))
    showcases = showcases_from_store(out / STORE_DIR, records, chosen.images, chosen.labels)
    console.print(f"      {', '.join(DEMO_ATTACKS)}: {time.perf_counter() - attacks_started:.1f} s")
    per_attack = group_summaries(records)

    console.print(f"[4/4] universal perturbations at {UNIVERSAL_EPSILON * 255:.0f}/255: fitted once on embedded "
                  "training images, applied to unseen test images")
    universal_records = run_experiment_in(out / UNIVERSAL_STORE_DIR,
                                          universal_experiment(settings, seed=seed, device=str(device)))
    universal = group_summaries(universal_records)
    add_sink_classes(universal, universal_records, classifier.info.class_name)
    _print_universal(console, universal)
    seconds = time.perf_counter() - started
    summary = {
        "model": "embedded_cnn",
        "embedded_accuracy": accuracy,
        "interpreters": validity,
        "attacks": per_attack,
        "universal": universal,
        "settings": settings,
        "seconds": seconds,
        "quick": quick,
    }
    write_records(out / "results.jsonl", records + universal_records)
    write_json(out / "summary.json", summary)
    write_run_report(
        out,
        title="idls demo: embedded system",
        per_attack={**per_attack, **universal},
        showcases=showcases,
        class_names=classifier.info.class_names,
        validity=validity,
        intro=f"Embedded CNN (test accuracy {accuracy:.3f}) on the procedurally generated data set; "
        f"targeted attacks at epsilon 8/255: PGD fools the classifier only; ADV², AdvEdge and AdvEdge+ "
        f"also keep each interpreter's map close to its benign map (shortened demo schedules: "
        f"{settings['joint']['default']['steps']} joint steps; MASK {settings['joint']['mask']['steps']} on the first "
        f"{settings['joint_images']['mask']} images; "
        f"IG is attacked by PGD only). Universal perturbations ({', '.join(UNIVERSAL_ATTACKS)}) are fitted once on "
        f"embedded training images and applied at {UNIVERSAL_EPSILON * 255:.0f}/255 to unseen images; their "
        f"success is the fooling ratio. {_sink_sentence(universal)}Total time {seconds:.0f} s.",
    )
    _print_attacks(console, per_attack)
    console.print(f"done in {seconds:.0f} s; report: {out / 'report.html'}")
    return summary


def _print_validity(console: Console, validity: dict) -> None:
    table = Table(title="interpreter validity (top-20% IoU with the object, pointing game)")
    for col in ("interpreter", "IoU", "random IoU", "pointing", "random pointing"):
        table.add_column(col, justify="right")
    keys = ("localization_iou", "random_iou", "pointing_game", "random_pointing")
    for name, v in validity.items():
        table.add_row(name, *(format_cell(v.get(k)) for k in keys))
    table.caption = "\n".join(missing_notes(validity.values(), keys)) or None
    console.print(table)


def add_sink_classes(universal: dict, records: list[dict], class_name: Callable[[int], str] = str) -> None:
    """Add to each universal attack's summaries where its pattern sends the images (:mod:`idls.analysis.sink_class`).

    Keys: ``sink_class`` (name), ``sink_share`` (of the adversarial images), ``fooling_ceiling``.
    """
    from idls.analysis.sink_class import sink_class

    for attack, by_interpreter in universal.items():
        sink = sink_class(r for r in records if r.get("attack") == attack)
        if sink is None:
            continue
        for summary in by_interpreter.values():
            summary.update(sink_class=class_name(sink.label), sink_share=sink.share,
                           fooling_ceiling=sink.ceiling if sink.is_sink else math.nan)


def _universal_row(by_interpreter: dict) -> dict:
    """The summary a universal attack is shown by: its CAM row (the section's interpreter), else its first."""
    return by_interpreter.get("cam", next(iter(by_interpreter.values())))


def _sink_sentence(universal: dict) -> str:
    """One sentence on where the fitted patterns send the images, and the fooling ratio that leaves ("" if none)."""
    parts = []
    for attack, by_int in universal.items():
        row = _universal_row(by_int)
        if not is_missing(row.get("fooling_ceiling")):
            parts.append(f"{attack} sends {row['sink_share']:.0%} of the images to '{row['sink_class']}' "
                         f"(fooling ratio {row['fooling_ratio']:.2f} of at most {row['fooling_ceiling']:.2f})")
    if not parts:
        return ""
    return ("A universal pattern cannot fool the images of the class it sends the others to: " + "; ".join(parts)
            + ". ")


def _print_universal(console: Console, universal: dict) -> None:
    """Fooling ratio, where the pattern sends the images, and CAM map distances per universal attack."""
    table = Table(title="universal perturbations (one pattern for every image; CAM maps vs benign)")
    keys = ("fooling_ratio", "fooling_ceiling", "map_l1", "map_iou", "noise_rate")
    for col in ("attack", "fooling ratio", "ceiling", "sent to", "map L1", "IoU@20%", "noise rate"):
        table.add_column(col, justify="right")
    rows = []
    for attack, by_int in universal.items():
        row = _universal_row(by_int)
        rows.append(row)
        sent = f"{row['sink_class']} {format_cell(row['sink_share'], 2)}" if "sink_class" in row else MISSING
        table.add_row(attack, *(format_cell(row.get(k)) for k in keys[:2]), sent,
                      *(format_cell(row.get(k)) for k in keys[2:]))
    labels = {"fooling_ratio": "fooling ratio", "fooling_ceiling": "ceiling", "map_l1": "map L1", "map_iou": "IoU@20%"}
    table.caption = "\n".join([*missing_notes(rows, keys, labels),
                               "sent to: the class most perturbed images are predicted as, and their share; where it is "
                               "most of them, the images of that class cannot be fooled by the pattern, so the "
                               "fooling ratio cannot pass 'ceiling' (1 - their share)"])
    console.print(table)


def _print_attacks(console: Console, per_attack: dict) -> None:
    """One block per interpreter: its rows for PGD and each joint attack, side by side."""
    table = Table(title="attacks side by side (targeted, 8/255; map distances to the benign map)")
    keys = ("attack_success_rate", "confidence", "map_l1", "map_iou", "noise_rate", "seconds")
    for col in ("interpreter", "attack", "success", "confidence", "map L1", "IoU@20%", "noise rate", "s/image"):
        table.add_column(col, justify="right")
    interpreters = list(dict.fromkeys(name for by_int in per_attack.values() for name in by_int))
    for name in interpreters:
        rows = [(attack, by_int[name]) for attack, by_int in per_attack.items() if name in by_int]
        for i, (attack, s) in enumerate(rows):
            table.add_row(name if i == 0 else "", attack, *(format_cell(s.get(k)) for k in keys),
                          end_section=i == len(rows) - 1)
    summaries = [s for by_int in per_attack.values() for s in by_int.values()]
    table.caption = "\n".join(missing_notes(summaries, keys)) or None
    console.print(table)
