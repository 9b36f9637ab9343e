"""``idls reproduce``: run the bundled experiments, then the scorecard and the report.

The bundled experiment files live in the repository's ``experiments/`` folder:

* on the pretrained CIFAR-10 ResNet-20 (when its checkpoint is found or given): ``adv2_cifar``,
  ``advedge_cifar``, ``targets_cifar``, ``transfer_cifar``, ``juap_cifar``, ``jap_cifar`` and the detection
  study ``squeezing_cifar``, ``detector_cifar``, ``ensemble_cifar`` and the training defences ``robust_cifar``;
* otherwise on the embedded default (no download): ``embedded``, ``embedded_targets``, ``juap_embedded``,
  ``detection_embedded`` and ``robust_embedded``.

Experiments that fit universal perturbations or detectors or fine-tune models (``data.fit_source``) fit on
``--fit-data`` when it is given.

Each experiment writes its own store ``OUT/<name>/`` (so a second run resumes each one);
``OUT/scorecard.json``, ``OUT/report.html`` and ``OUT/tables/`` cover all of them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idls.errors import UserError

CIFAR_EXPERIMENTS: tuple[str, ...] = ("adv2_cifar", "advedge_cifar", "targets_cifar", "transfer_cifar", "juap_cifar",
                                      "jap_cifar", "squeezing_cifar", "detector_cifar", "ensemble_cifar", "robust_cifar")
EMBEDDED_EXPERIMENTS: tuple[str, ...] = ("embedded", "embedded_targets", "juap_embedded", "detection_embedded",
                                         "robust_embedded")
#: the studies (:mod:`idls.reproduce.studies`) each system runs after its experiments
CIFAR_STUDIES: tuple[str, ...] = ("aid_cifar",)
EMBEDDED_STUDIES: tuple[str, ...] = ("aid_embedded",)
#: where the CIFAR files look for the checkpoint, relative to the shared-data folder
RESNET20_CHECKPOINT = "cifar10/models/resnet20-12fca82f.th"
RUN_FILE = "reproduce.json"
#: the experiment files' variable naming the CIFAR model's RTS masker (empty: RTS is left out)
RTS_VARIABLE = "IDLS_RTS_CIFAR_RESNET20"
DEFAULT_MODEL = "cifar_resnet20"  #: the model the bundled CIFAR experiment files name


@dataclass
class ReproduceSummary:
    """What ``idls reproduce`` ran and found."""

    system: str  #: the CIFAR model (default 'cifar_resnet20') or 'embedded_cnn'
    experiments: list[str]
    scorecard: list[dict]
    seconds: float
    report: Path | None = None
    seconds_per_experiment: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> int:
        return sum(1 for row in self.scorecard if row.get("pass") is True)

    @property
    def failed(self) -> int:
        return sum(1 for row in self.scorecard if row.get("pass") is False)


def read_run_file(path: Path) -> dict | None:
    """An earlier invocation's ``reproduce.json`` in the same folder, or ``None`` (none, or unreadable)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) else None


def merged_run_file(earlier: Mapping | None, now: dict) -> dict:
    """``now``'s run file with the time an earlier invocation into the same folder spent kept.

    A reproduction is resumed and extended (``--only``) across invocations; each one used to overwrite the
    file, so the wall time of the experiments it did not run was lost. Here ``seconds`` and
    ``seconds_per_experiment`` add up over every invocation of the same schedule (quick or full),
    ``experiments`` is every experiment any of them ran, and ``invocations`` counts them. An earlier file of
    the other schedule is replaced. ``run_id`` names the folder's reproduction (kept across its invocations),
    so a reader that collects several reproductions counts each one's cumulative times once.
    """
    if not earlier or earlier.get("quick") != now["quick"] or earlier.get("system") != now["system"]:
        return {**now, "invocations": 1, "run_id": uuid.uuid4().hex[:12]}
    timings = {name: float(seconds) for name, seconds in (earlier.get("seconds_per_experiment") or {}).items()}
    for name, seconds in now["seconds_per_experiment"].items():
        timings[name] = timings.get(name, 0.0) + seconds
    experiments = [*(earlier.get("experiments") or [])]
    experiments += [name for name in now["experiments"] if name not in experiments]
    return {**now, "experiments": experiments, "seconds": float(earlier.get("seconds") or 0.0) + now["seconds"],
            "seconds_per_experiment": timings, "invocations": int(earlier.get("invocations") or 1) + 1,
            "run_id": earlier.get("run_id") or uuid.uuid4().hex[:12]}


def stores_progress(out: Path) -> dict[str, dict[str, int]]:
    """Per experiment store in ``out``: ``{"cells": planned, "complete_cells": done}`` (stores with a plan only),
    so a reader of ``reproduce.json`` can tell which experiments a partial reproduction has completed."""
    from idls.analysis.store_reader import store_progress

    progress = {}
    for folder in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        counts = store_progress(folder)
        if counts is not None:
            progress[folder.name] = counts
    return progress


def bundled_experiments_dir() -> Path:
    """The repository's ``experiments/`` folder (the checkout this package is installed from)."""
    import idls

    for parent in Path(idls.__file__).resolve().parents:
        candidate = parent / "experiments"
        if (candidate / "adv2_cifar.yaml").is_file():
            return candidate
    raise UserError("the bundled experiment files (experiments/*.yaml) were not found beside this installation; "
                    "run from a checkout of idls or pass --experiments DIR")


def plan_reproduction(
    experiments_dir: Path,
    *,
    weights: Path | None = None,
    shared: Path | None = None,
    rts: Path | None = None,
    data: str | None = None,
    model: str = DEFAULT_MODEL,
    fit_data: str | None = None,
) -> tuple[str, list[Path], dict[str, Any]]:
    """Which system and experiment files to run, and the overrides that point them at the given files.

    ``model`` is any registered CIFAR-10 model (32 px, 10 classes); the bundled CIFAR files name
    :data:`DEFAULT_MODEL`, whose entry the overrides rename (its shared checkpoint is found
    automatically; other models need ``weights``).

    Returns:
        ``(system, experiment files, overrides)``.
    """
    check_cifar_model(model)
    if model != DEFAULT_MODEL and weights is None:
        raise UserError(f"--model {model} needs its checkpoint: pass --weights FILE (only {DEFAULT_MODEL}'s is "
                        "found in the shared data automatically)")
    if fit_data is not None and data is not None and \
            Path(fit_data).expanduser().resolve() == Path(data).expanduser().resolve():
        raise UserError(f"--fit-data and --data are the same ({fit_data}); fit on training images and evaluate on "
                        "held-out ones")
    if fit_data is not None and not Path(fit_data).expanduser().is_dir():
        raise UserError(f"--fit-data {fit_data} is not a folder; give training images (a folder with labels.csv)")
    overrides: dict[str, Any] = {}
    if shared is not None:
        if not shared.is_dir():
            raise UserError(f"--shared {shared} is not a folder; give the folder holding cifar10/models and cifar10/images")
        overrides["variables.IDLS_SHARED_DATA"] = str(shared.resolve())
    if weights is not None:
        if not weights.is_file():
            raise UserError(f"--weights {weights} does not exist; give the {model} checkpoint file")
        overrides[f"models.{DEFAULT_MODEL}.weights"] = str(weights.resolve())
    if rts is not None:
        if not rts.is_file():
            raise UserError(f"--rts {rts} does not exist; train one with `idls train-rts --model {model} ...`")
        overrides[f"variables.{RTS_VARIABLE}"] = str(rts.resolve())
    if data is not None:
        overrides["data.source"] = data
    shared_dir = shared if shared is not None else (experiments_dir / "../../shared/data")
    cifar = weights is not None or (shared_dir / RESNET20_CHECKPOINT).is_file()
    if not cifar and shared is not None:
        raise UserError(f"--shared {shared} has no {RESNET20_CHECKPOINT}; give the shared-data folder that holds it, "
                        "or the checkpoint itself with --weights FILE")
    if not cifar and (rts is not None or data is not None):
        raise UserError("--rts and --data apply to the CIFAR experiments, which need the ResNet-20 checkpoint: "
                        "add --weights FILE or --shared DIR")
    if cifar and model != DEFAULT_MODEL:
        overrides[f"models.{DEFAULT_MODEL}.name"] = model  # after its weights: the entry is found by its old name
    names = CIFAR_EXPERIMENTS if cifar else EMBEDDED_EXPERIMENTS
    files = [experiments_dir / f"{name}.yaml" for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"bundled experiment file(s) missing: {', '.join(missing)}; pass --experiments DIR")
    return (model if cifar else EMBEDDED_SYSTEM), files, overrides


EMBEDDED_SYSTEM = "embedded_cnn"


def cifar_files(weights: Path | None, shared: Path | None, data: str | None, fit_data: str | None,
                experiments_dir: Path) -> tuple[str, str, str]:
    """The CIFAR system's ``(checkpoint, evaluation images, training images)``: the given ones, else the shared ones."""
    shared_dir = (shared if shared is not None else experiments_dir / "../../shared/data").resolve()
    checkpoint = str(weights.resolve()) if weights is not None else str(shared_dir / RESNET20_CHECKPOINT)
    return (checkpoint, data or str(shared_dir / "cifar10/images"),
            str(Path(fit_data).expanduser().resolve()) if fit_data else str(shared_dir / "cifar10/train"))


def study_contexts(system: str, out: Path, *, quick: bool, weights: Path | None, shared: Path | None,
                   data: str | None, fit_data: str | None, experiments_dir: Path, progress: bool,
                   rts: Path | None = None):
    """``(name, StudyContext)`` of each study of ``system``, on the same files (and RTS masker) as its experiments."""
    from idls.reproduce.studies import StudyContext

    if system == EMBEDDED_SYSTEM:
        return [(name, StudyContext(out / name, EMBEDDED_SYSTEM, "pretrained", "embedded",
                                    fit_data or "embedded-train", quick, progress)) for name in EMBEDDED_STUDIES]
    checkpoint, images, train = cifar_files(weights, shared, data, fit_data, experiments_dir)
    return [(name, StudyContext(out / name, system, checkpoint, images, train, quick, progress, rts))
            for name in CIFAR_STUDIES]


def uses_rts_masker(path: Path) -> bool:
    """Whether an experiment file attacks or explains with the CIFAR RTS masker (it names its variable)."""
    return RTS_VARIABLE in Path(path).read_text(encoding="utf-8")


def prepare_rts_masker(out: Path, system: str, *, quick: bool, weights: Path | None, shared: Path | None,
                       data: str | None, fit_data: str | None, experiments_dir: Path, progress: bool,
                       console) -> Path | None:
    """Train (or reuse) the CIFAR model's RTS masker in ``out``; ``None`` where there are no training images."""
    from idls.models import create_model
    from idls.reproduce.rts_masker import MASKER_DIR, degenerate_masker_warning, ensure_masker

    checkpoint, _, train = cifar_files(weights, shared, data, fit_data, experiments_dir)
    if not Path(train).is_dir():
        console.print(f"RTS is left out: no training images at {train} to train its masker on; pass --fit-data DIR "
                      "or a trained masker with --rts FILE")
        return None
    console.print(f"RTS masker: {out / MASKER_DIR} (trained on {train} the first time)")
    path = ensure_masker(out, create_model(system, weights=checkpoint), train, quick=quick, progress=progress)
    warning = degenerate_masker_warning(path)
    if warning is not None:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    return path


def declares_fit_source(path: Path) -> bool:
    """Whether an experiment file fits perturbations on a training set (its ``data`` sets ``fit_source``)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(config.get("data"), dict) and "fit_source" in config["data"]


def check_cifar_model(model: str) -> None:
    """Refuse a model the CIFAR experiments cannot run (not registered, or not 32 px with 10 classes)."""
    from idls.models import MODELS

    cifar = [name for name in MODELS.names() if MODELS.get(name).input_size == 32 and MODELS.get(name).num_classes == 10]
    entry = MODELS.get(model)  # unknown names: one line with the list of models
    if model not in cifar:
        raise UserError(f"--model {model} is a {entry.input_size} px, {entry.num_classes}-class model; the reproduction "
                        f"runs on CIFAR-10 models: {', '.join(cifar)}")


def reproduce(
    out: Path,
    *,
    quick: bool = False,
    weights: Path | None = None,
    shared: Path | None = None,
    rts: Path | None = None,
    data: str | None = None,
    backend: str = "local",
    experiments_dir: Path | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    model: str = DEFAULT_MODEL,
    fit_data: str | None = None,
    cells: Sequence[str] | None = None,
    redo: bool = False,
) -> ReproduceSummary:
    """Run (or resume) the bundled experiments into ``out/<name>/``; write the scorecard and the report.

    Args:
        out: output folder.
        quick: the experiment files' ``quick:`` settings (fewer images and iterations).
        weights: cifar_resnet20 checkpoint (default: the shared-data one, if present).
        shared: the shared-data folder (``cifar10/models``, ``cifar10/images``).
        rts: a trained RTS masker of the CIFAR model (without it, and without the environment variable
            ``IDLS_RTS_CIFAR_RESNET20``, one is trained on the training images into ``out/rts_masker/``
            and used by every experiment and study; RTS is left out only where there are no training images).
        data: CIFAR-10 images (a folder with labels.csv, or 'cifar10'), default: the shared ones.
        backend: ``'local'`` or ``'ray'``.
        experiments_dir: where the experiment files are (default: the repository's ``experiments/``).
        only: run just these experiment names (the scorecard still covers every store in ``out``).
        model: the CIFAR-10 model to reproduce on (default cifar_resnet20).
        fit_data: training images for the experiments that fit perturbations (those whose file sets
            ``data.fit_source``); refused when it is the evaluation folder.
        cells: run only the cells matching these selectors (``KEY=PATTERN,...``, see
            :mod:`~idls.experiments.selection`) of the ``only`` experiments, e.g. the groups a claim fails on
            first; the stores stay those of the whole experiments, so a later call without it runs the rest.
        redo: discard the ``cells``' finished units first and run them again (needs ``cells``).
    """
    from rich.console import Console

    from idls.experiments import run_experiment
    from idls.report.experiment_report import write_experiment_report
    from idls.reproduce.scorecard import scorecard_for_run

    console = Console()
    started = time.perf_counter()
    directory = experiments_dir if experiments_dir is not None else bundled_experiments_dir()
    system, files, overrides = plan_reproduction(Path(directory), weights=weights, shared=shared, rts=rts,
                                               data=data, model=model, fit_data=fit_data)
    studies = CIFAR_STUDIES if system != EMBEDDED_SYSTEM else EMBEDDED_STUDIES
    every_store = [*(f.stem for f in files), *studies]
    if only:
        unknown = sorted(set(only) - {f.stem for f in files} - set(studies))
        if unknown:
            raise UserError(f"--only {', '.join(unknown)}: not among this system's experiments and studies "
                            f"({', '.join([*(f.stem for f in files), *studies])})")
        files = [f for f in files if f.stem in only]
    if cells and (not only or not files or len(files) < len(only)):
        raise UserError("--cells needs --only: it selects cells of the experiments --only names (not of studies); "
                        "add --only EXPERIMENT, e.g. --only advedge_cifar --cells framework=cw,interpreter=cam")
    if redo and not cells:
        raise UserError("--redo re-runs the cells --cells selects; add --only EXPERIMENT --cells KEY=PATTERN "
                        "(to re-run every cell, choose a new --out)")
    out = Path(out)
    console.rule(f"idls reproduce on {system}" + (" (quick)" if quick else ""))
    studies_run = [name for name in (CIFAR_STUDIES if system != EMBEDDED_SYSTEM else ()) if not only or name in only]
    if system != EMBEDDED_SYSTEM and rts is None and not os.environ.get(RTS_VARIABLE) and \
            (studies_run or any(uses_rts_masker(path) for path in files)):
        rts = prepare_rts_masker(out, system, quick=quick, weights=weights, shared=shared, data=data,
                                 fit_data=fit_data, experiments_dir=Path(directory), progress=progress,
                                 console=console)
        if rts is not None:
            overrides[f"variables.{RTS_VARIABLE}"] = str(rts.resolve())
    timings: dict[str, float] = {}
    for index, path in enumerate(files, 1):
        console.print(f"[{index}/{len(files)}] {path.stem}")
        experiment_started = time.perf_counter()
        file_overrides = dict(overrides)
        if fit_data is not None and declares_fit_source(path):
            file_overrides["data.fit_source"] = str(Path(fit_data).expanduser().resolve())
        run_experiment(path, out / path.stem, backend=backend, quick=quick, overrides=file_overrides, progress=progress,
                       cells=cells, redo=redo)
        timings[path.stem] = time.perf_counter() - experiment_started
    for name, context in study_contexts(system, out, quick=quick, weights=weights, shared=shared, data=data,
                                        fit_data=fit_data, experiments_dir=Path(directory), progress=progress,
                                        rts=rts):
        if only and name not in only:
            continue
        from idls.reproduce.studies import run_study, study

        console.print(f"[study] {name}")
        started_study = time.perf_counter()
        run_study(study(name), context)
        timings[name] = time.perf_counter() - started_study
    scorecard = scorecard_for_run(out, console=console, expected=every_store)
    report = write_experiment_report(out)
    summary = ReproduceSummary(system=system, experiments=[f.stem for f in files], scorecard=scorecard,
                               seconds=time.perf_counter() - started, report=report,
                               seconds_per_experiment=timings)
    run_file = merged_run_file(read_run_file(out / RUN_FILE), {
        "system": system, "quick": quick, "backend": backend, "experiments": summary.experiments,
        "fit_data": None if fit_data is None else str(Path(fit_data).resolve()),
        "seconds": summary.seconds, "seconds_per_experiment": timings,
        "passed": summary.passed, "failed": summary.failed, "claims": len(scorecard),
        "stores": stores_progress(out),
    })
    (out / RUN_FILE).write_text(json.dumps(run_file, indent=2))
    console.print(f"{summary.passed} PASS, {summary.failed} FAIL, "
                  f"{len(scorecard) - summary.passed - summary.failed} not run; {summary.seconds:.0f} s; report: {report}")
    return summary


__all__ = [
    "CIFAR_EXPERIMENTS",
    "CIFAR_STUDIES",
    "EMBEDDED_EXPERIMENTS",
    "EMBEDDED_STUDIES",
    "ReproduceSummary",
    "bundled_experiments_dir",
    "plan_reproduction",
    "reproduce",
]
