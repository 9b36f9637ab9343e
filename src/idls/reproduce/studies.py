"""Studies: measurements of ``idls reproduce`` that are not attacks on a grid of images.

A study trains what it needs (cached in its folder, each training resumable) and measures one table,
written as one ``kind: study`` record into its own store folder ``OUT/<name>/`` (so a finished study is
not run again, and the scorecard's study claims read it). Registered:

* ``aid_cifar`` / ``aid_embedded``: AID (paper 001 Appendix A2, Table 10 / Figure 15): an RTS masker
  trained on the fit images, its AID fine-tune, and :func:`idls.defenses.aid_evaluation.evaluate_aid`
  on correctly classified evaluation images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idls.errors import UserError

STUDY_CELL_BATCH = 0


@dataclass(frozen=True)
class StudyContext:
    """Where and on what a study runs.

    Attributes:
        out: the study's own folder (its store and cached artifacts).
        model: registry name of the classifier; ``weights`` its checkpoint (``None``: registered default).
        data: evaluation images; ``fit_data``: training images (never the evaluation ones).
        quick: the study's short schedule.
        rts: a trained RTS masker of the model to start from (``None``: the study trains its own,
            with :data:`~idls.reproduce.rts_masker.MASKER_SCHEDULES`, in its folder).
    """

    out: Path
    model: str
    weights: str | None
    data: str
    fit_data: str
    quick: bool
    progress: bool = True
    rts: Path | None = None


@dataclass(frozen=True)
class Study:
    """A named measurement: ``measure(context) -> fields`` of its one record (plain JSON values)."""

    name: str
    description: str
    measure: Callable[[StudyContext], dict[str, Any]]


@dataclass(frozen=True)
class AIDSchedule:
    """How much an AID study fine-tunes and evaluates (full and quick); the RTS it starts from is trained
    with :data:`~idls.reproduce.rts_masker.MASKER_SCHEDULES`."""

    aid_n: int
    aid_epochs: int
    eval_n: int


#: full: benchmarks/aid_cifar.py's settings (AID on 1,024 training images, evaluated on 100)
AID_SCHEDULES: dict[bool, AIDSchedule] = {
    False: AIDSchedule(aid_n=1024, aid_epochs=2, eval_n=100),
    True: AIDSchedule(aid_n=128, aid_epochs=1, eval_n=16),
}


def measure_aid(context: StudyContext) -> dict[str, Any]:
    """Fine-tune RTS into RTS_A (cached in the study folder) and evaluate both like paper 001 Table 10."""
    from idls.data.datasets import load_images, select_correct
    from idls.defenses.aid import aid_metadata, aid_options, train_aid
    from idls.defenses.aid_evaluation import evaluate_aid
    from idls.interpreters.rts_training import load_rts, save_rts
    from idls.models import create_model
    from idls.reproduce.rts_masker import MASKER_SCHEDULES, ensure_masker

    schedule = AID_SCHEDULES[context.quick]
    classifier = create_model(context.model, weights=context.weights)
    rts_path = context.rts or ensure_masker(context.out, classifier, context.fit_data, quick=context.quick,
                                            progress=context.progress)
    rts = load_rts(classifier, rts_path)
    fit = load_images(context.fit_data, input_size=classifier.input_size, n=schedule.aid_n, seed=0,
                      num_classes=classifier.num_classes)
    aid_path = context.out / "rts_aid.safetensors"
    options = aid_options(epochs=schedule.aid_epochs)
    if aid_path.is_file():
        aid = load_rts(classifier, aid_path)
    else:
        aid = train_aid(classifier, rts, fit.images, fit.labels, options,
                        progress=context.progress,
                        checkpoint=context.out / "rts_aid.checkpoint.safetensors")
        save_rts(aid, aid_path, extra=aid_metadata(options))
    evaluation = load_images(context.data, input_size=classifier.input_size, num_classes=classifier.num_classes)
    correct = select_correct(classifier, evaluation, schedule.eval_n)
    result = evaluate_aid(classifier, rts, aid, correct.images, correct.labels)
    return {"model": context.model, "data": context.data, "fit_data": context.fit_data,
            "schedule": schedule.__dict__, "masker_schedule": MASKER_SCHEDULES[context.quick].__dict__,
            "aid_options": options.as_dict(), **result}


STUDIES: dict[str, Study] = {
    "aid_cifar": Study("aid_cifar", "AID for RTS on the CIFAR model (paper 001 Table 10 / Figure 15)", measure_aid),
    "aid_embedded": Study("aid_embedded", "AID for RTS on the embedded CNN (paper 001 Table 10 / Figure 15)",
                          measure_aid),
}


def run_study(study: Study, context: StudyContext) -> dict[str, Any]:
    """Run ``study`` into ``context.out`` unless its record is already there; returns the record."""
    from idls.experiments.store import ExperimentStore

    config = {"study": study.name, "model": context.model, "weights": context.weights, "data": context.data,
              "fit_data": context.fit_data, "quick": context.quick}
    store = ExperimentStore.open(context.out, config, {"study": study.name})
    try:
        if store.is_done(study.name, STUDY_CELL_BATCH):
            return next(r for r in store.records() if r.get("study") == study.name)
        fields = study.measure(context)
        record = {"kind": "study", "study": study.name, "experiment": study.name, "cell": study.name,
                  "batch": STUDY_CELL_BATCH, "description": study.description, **fields}
        store.commit(study.name, STUDY_CELL_BATCH, [record])
        return record
    finally:
        store.close()


def study(name: str) -> Study:
    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}")
    return STUDIES[name]


__all__ = ["AID_SCHEDULES", "STUDIES", "Study", "StudyContext", "run_study", "study"]
