"""Run one unit (cell, batch): attack the batch, evaluate the interpreters, predict with transfer models.

A :class:`Workspace` holds what units of one process share (classifiers, the selected images,
interpreters, benign maps), built on first use. Everything a unit computes depends only on the
unit and the experiment (seeded targets use the images' data-set positions; random weights use
``init_seed``), never on which process runs it or what ran before, so resumed and distributed
runs give the same records as an uninterrupted local one.
"""

from __future__ import annotations

import glob
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from idls import devices
from idls.data.datasets import (
    LabeledImages,
    interleave_classes,
    load_images,
    select_correct,
)
from idls.errors import UserError
from idls.experiments.cells import Cell, Unit
from idls.experiments.config import Experiment, ModelSpec
from idls.experiments.store import tensor_file
from idls.interpreters import create_interpreter
from idls.interpreters.base import Interpreter
from idls.system import Classifier

if TYPE_CHECKING:
    from idls.defenses.detectors import Detector
    from idls.experiments.detection import DetectorSpec


TRAINED_DIR = "trained"  #: where a store keeps the weights of its training defences (one file per model entry)
BENIGN_CACHE_SIZE = 64  #: benign map tensors a workspace keeps (a few batches x interpreters)
FITTED_DIR = "fitted"  #: where a store keeps the artifacts of its fitted attacks (one file per cell)


def resolve_device(name: str) -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'`` -> a device that exists here (errors name the ``device:`` key)."""
    return devices.resolve_device(name, option="device")


def build_classifier(spec: ModelSpec, device: torch.device) -> Classifier:
    """The model of ``spec`` in eval mode (behind its defence, if any); ``'random'`` weights come from
    ``init_seed`` (the same in every process); a trained model loads the weights its training wrote."""
    from idls.models import create_model

    if spec.trained is not None:
        classifier = create_model(spec.name, weights=spec.trained, device=device)
    elif spec.weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            classifier = create_model(spec.name, weights=None, device="cpu").to(device)
    else:
        classifier = create_model(spec.name, weights=spec.weights, device=device)
    if spec.defense is not None:
        from idls.defenses import defend, defense_from_spec

        classifier = defend(classifier, defense_from_spec(spec.defense))
    return classifier


@dataclass
class UnitOutput:
    """Records (``kind`` attack and model_transfer) and the tensors of one unit."""

    records: list[dict]
    tensors: dict[str, Tensor]


class Workspace:
    """Per-process cache of models, selected images, interpreters and benign maps of one experiment."""

    def __init__(self, experiment: Experiment, device: str | torch.device | None = None) -> None:
        self.experiment = experiment
        self.device = resolve_device(str(device or experiment.device))
        self._classifiers: dict[str, Classifier] = {}
        self._images: dict[int, LabeledImages] = {}
        self._accuracy: dict[int, float] = {}
        self._interpreters: dict[tuple[int, str], Interpreter] = {}
        self._benign: OrderedDict[tuple, Tensor] = OrderedDict()
        self._detectors: dict[tuple[int, str], Detector] = {}  # by (model, label or saved file)
        #: the store folder: training defences write their weights under it (set by the run)
        self.artifact_dir: Path | None = None

    # -- models and data --------------------------------------------------------------
    def classifier(self, spec: ModelSpec) -> Classifier:
        if spec.key not in self._classifiers:
            if spec.training is not None and spec.trained is None:
                spec = replace(spec, trained=str(self.trained_weights(spec)))
            self._classifiers[spec.key] = build_classifier(spec, self.device)
        return self._classifiers[spec.key]

    def model_classifier(self, model_index: int) -> Classifier:
        return self.classifier(self.experiment.models[model_index])

    def trained_weights(self, spec: ModelSpec) -> Path:
        """The weights of a model entry with a training defence: trained once on ``data.fit_source`` into
        ``STORE/trained/`` (a killed training resumes from its per-epoch checkpoint), then reused."""
        from idls.core.digests import json_digest
        from idls.defenses.training import save_trained, train_classifier
        from idls.defenses.training.spec import training_from_spec

        if self.artifact_dir is None:
            raise UserError(f"model {spec.label} is trained before it is attacked; run the experiment with an "
                            "output folder (idls run FILE --out DIR)")
        data = self.experiment.data
        name = f"{spec.name}-{json_digest([spec.key, data.fit_source, data.fit_n, data.seed])[:12]}"
        path = Path(self.artifact_dir) / TRAINED_DIR / f"{name}.safetensors"
        if path.is_file():
            return path
        if data.fit_source is None:
            raise UserError(f"model {spec.label} has a training defence: set data.fit_source (training images, "
                            "never the evaluation ones)")
        objective, loop = training_from_spec(str(spec.training), seed=data.seed)
        classifier = build_classifier(replace(spec, training=None), self.device)
        images = load_images(data.fit_source, input_size=classifier.input_size, n=data.fit_n, seed=data.seed,
                             num_classes=classifier.num_classes)
        run = train_classifier(classifier, images.images, images.labels, objective, loop,
                               checkpoint=path.with_name(f"{name}.checkpoint.safetensors"))
        save_trained(classifier, path, run, {"base_weights": spec.weights, "training": spec.training,
                                             "fit_source": data.fit_source, "fit_n": data.fit_n})
        return path

    def resolved_models(self) -> list[ModelSpec]:
        """The experiment's model entries with the weights files of their training defences filled in
        (so other processes load them instead of training again)."""
        return [m if m.training is None or m.trained is not None else replace(m, trained=str(self.trained_weights(m)))
                for m in self.experiment.models]

    def images(self, model_index: int) -> LabeledImages:
        """The first ``data.n`` images (of a seeded shuffle of the pool) that the model classifies correctly."""
        if model_index not in self._images:
            data = self.experiment.data
            classifier = self.model_classifier(model_index)
            pool = load_images(data.source, input_size=classifier.input_size, n=data.pool, seed=data.seed,
                               num_classes=classifier.num_classes)
            if data.shuffle:
                pool = pool.subset(torch.randperm(len(pool), generator=torch.Generator().manual_seed(data.seed)))
            correct = select_correct(classifier, pool, len(pool))
            self._accuracy[model_index] = len(correct) / len(pool)
            if data.order == "classes-interleaved":
                correct = interleave_classes(correct)
            self._images[model_index] = correct.subset(list(range(min(data.n, len(correct)))))
        return self._images[model_index]

    def accuracy(self, model_index: int) -> float:
        """The model's accuracy on the whole image pool (the share it classifies correctly)."""
        self.images(model_index)
        return self._accuracy[model_index]

    def fit_images(self, model_index: int) -> LabeledImages:
        """The images fitted attacks are fitted on (``data.fit_source``; a seeded subset of ``fit_n``)."""
        data = self.experiment.data
        if data.fit_source is None:
            raise UserError("an attack of this experiment is fitted on a data set before it is applied: set "
                            "data.fit_source (training images), or give the attack a fitted perturbation=PATH")
        classifier = self.model_classifier(model_index)
        return load_images(data.fit_source, input_size=classifier.input_size, n=data.fit_n, seed=data.seed,
                           num_classes=classifier.num_classes)

    def fit_cell(self, cell: Cell, artifact_dir: Path) -> Cell:
        """A cell whose attack needs fitting, fitted once (here) and saved; the returned cell applies the saved
        artifact (``perturbation=PATH``), so every process and every resumed run uses the same one."""
        path = Path(artifact_dir) / FITTED_DIR / f"{cell.id}.safetensors"
        if not path.is_file():
            attack = self.attack(cell)
            attack.fit(self.model_classifier(cell.model_index), self.fit_images(cell.model_index), progress=True,
                       checkpoint=path.with_name(f"{cell.id}.checkpoint.safetensors"))  # a killed fit resumes
            attack.save_fitted(path)
        return replace(cell, options={**cell.options, "perturbation": str(path.resolve())})

    @staticmethod
    def forget_fit(cell: Cell, artifact_dir: Path) -> None:
        """Delete ``cell``'s fitted artifact, its metadata and a fit's checkpoint, so :meth:`fit_cell` fits afresh."""
        folder = Path(artifact_dir) / FITTED_DIR
        for path in folder.glob(f"{glob.escape(cell.id)}.*") if folder.is_dir() else ():
            path.unlink(missing_ok=True)

    # -- interpreters -----------------------------------------------------------------
    def usable_interpreters(self, model_index: int) -> tuple[list[str], list[str]]:
        """The listed interpreters that apply to the model, and a warning for each one left out."""
        from idls.interpreters import interpreter_class

        model = self.experiment.models[model_index]
        classifier = self.model_classifier(model_index)
        usable, warnings = [], []
        for name in self.experiment.interpreters:
            options = self.experiment.interpreter_options_for(model, name)
            reason = interpreter_class(name).unavailable_reason(classifier, options)
            if reason is not None:
                warnings.append(f"skipping {name} on {model.name}: {reason}")
            else:
                usable.append(name)
        return usable, warnings

    def interpreter(self, model_index: int, name: str) -> Interpreter:
        key = (model_index, name)
        if key not in self._interpreters:
            model = self.experiment.models[model_index]
            options = self.experiment.interpreter_options_for(model, name)
            try:
                self._interpreters[key] = create_interpreter(name, self.model_classifier(model_index), **options)
            except TypeError as exc:
                raise UserError(f"interpreter_options.{name}: {exc}; see the interpreter's options") from None
        return self._interpreters[key]

    def interpreters(self, model_index: int, names: Sequence[str]) -> dict[str, Interpreter]:
        return {name: self.interpreter(model_index, name) for name in names}

    def benign_maps(self, model_index: int, name: str, start: int, stop: int, x: Tensor) -> Tensor:
        """Maps ``B x h x w`` of the selected images ``start:stop`` (= ``x``), cached across cells."""
        return self.cached((model_index, name, start, stop),
                           lambda: self.interpreter(model_index, name).attribute(x).detach())

    def benign_reruns(self, model_index: int, name: str, start: int, stop: int, x: Tensor) -> Tensor:
        """A seeded interpreter's second-run maps ``B x h x w`` of the images ``start:stop``, cached across cells."""
        return self.cached(("rerun", model_index, name, start, stop),
                           lambda: self.interpreter(model_index, name).another_run().attribute(x).detach())

    def cached(self, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per ``key`` among the last :data:`BENIGN_CACHE_SIZE` keys (benign maps, benign scores)."""
        if key in self._benign:
            self._benign.move_to_end(key)
        else:
            self._benign[key] = compute()
            while len(self._benign) > BENIGN_CACHE_SIZE:
                self._benign.popitem(last=False)
        return self._benign[key]

    # -- detectors --------------------------------------------------------------------
    def detector(self, model_index: int, spec: DetectorSpec) -> Detector:
        """The fitted detector of a ``detectors:`` entry for a model (loaded once from its saved file)."""
        from idls.defenses.detectors import load_detector

        key = (model_index, spec.label)
        if key not in self._detectors:
            path = spec.file_for(model_index)
            if path is None:
                raise RuntimeError(f"detector {spec.label} was not fitted before the units ran (fit_detectors)")
            self._detectors[key] = load_detector(path, self.model_classifier(model_index))
        return self._detectors[key]

    def saved_detector(self, model_index: int, path: str) -> Detector:
        """A detector saved by ``idls detector fit`` (loaded once per model)."""
        from idls.defenses.detectors import load_detector

        key = (model_index, path)
        if key not in self._detectors:
            self._detectors[key] = load_detector(path, self.model_classifier(model_index))
        return self._detectors[key]

    # -- attacks ----------------------------------------------------------------------
    def attack(self, cell: Cell):
        """The attack object of a cell (joint attacks get their interpreter object)."""
        from idls.attacks import create_attack

        extra = {"interpreter": self.interpreter(cell.model_index, cell.attacked_interpreter)} if cell.joint else {}
        options = dict(cell.options)
        # an attack option naming a detector of the experiment or a saved one (adaptive attacks) gets the fitted detector
        named = options.get("detector")
        spec = next((d for d in self.experiment.detectors or [] if d.label == named), None)
        if spec is not None:
            options["detector"] = self.detector(cell.model_index, spec)
        elif isinstance(named, str) and named.endswith(".safetensors"):
            options["detector"] = self.saved_detector(cell.model_index, named)
        return create_attack(cell.attack, **extra, **options)


def run_unit(workspace: Workspace, unit: Unit) -> UnitOutput:
    """Attack one batch of one cell; records of every evaluated interpreter and transfer model, plus tensors."""
    from idls.attacks.base import flush_denormal
    from idls.runner import evaluate_batch

    cell = unit.cell
    classifier = workspace.model_classifier(cell.model_index)
    data = workspace.images(cell.model_index)
    device = classifier.device
    x = data.images[unit.start:unit.stop].to(device)
    labels = data.labels[unit.start:unit.stop].to(device)
    ids = data.ids[unit.start:unit.stop]
    positions = torch.arange(unit.start, unit.stop)
    interpreters = workspace.interpreters(cell.model_index, cell.evaluated)
    with flush_denormal():
        result = workspace.attack(cell).run(classifier, x, labels, indices=positions)
        batch = evaluate_batch(
            result, x, labels, ids, interpreters, attack_name=cell.attack,
            attacked=cell.attacked_interpreter if cell.joint else None,
            tensor_file=tensor_file(cell.id, unit.batch), model_name=cell.model,
            benign_maps=lambda name: workspace.benign_maps(cell.model_index, name, unit.start, unit.stop, x),
            benign_reruns=lambda name: workspace.benign_reruns(cell.model_index, name, unit.start, unit.stop, x),
        )
    keys = {**cell.record_keys(), "batch": unit.batch}
    records = [{"kind": "attack", **keys, **record, "model_accuracy": workspace.accuracy(cell.model_index)}
               for record in batch.records]
    if workspace.experiment.detectors:
        fields = detector_fields(workspace, cell.model_index, (unit.start, unit.stop), x, result.x_adv, result.success)
        by_id = {str(image_id): row for image_id, row in zip(ids, fields, strict=True)}
        for record in records:
            record.update(by_id[str(record["image_id"])])
    records += transfer_records(workspace, cell, keys, x, result.x_adv, labels, result.target, result.targeted, ids)
    return UnitOutput(records=records, tensors=batch.tensors)


def detector_fields(workspace: Workspace, model_index: int, key: tuple[int, int], x: Tensor, x_adv: Tensor,
                    success: Tensor) -> list[dict[str, Any]]:
    """Per image of a unit, the ``detector.LABEL.*`` fields of every detector of the experiment.

    ``score`` / ``flagged``: the adversarial image; ``benign_score`` / ``benign_flagged``: the benign
    one (cached per ``key`` = the unit's image range); ``evaded``: the attack succeeded and was not flagged;
    ``name`` / ``describe``: the detector's registry name and label with options (for tables and claims).
    """
    from idls.experiments.detection import FIELD_PREFIX

    rows: list[dict[str, Any]] = [{} for _ in range(x.shape[0])]
    for spec in workspace.experiment.detectors or []:
        detector = workspace.detector(model_index, spec)
        benign = workspace.cached(("detector-benign", model_index, spec.label, *key), lambda: detector.score(x))
        adversarial = detector.score(x_adv)
        threshold = float(detector.threshold)  # type: ignore[arg-type]
        prefix = f"{FIELD_PREFIX}{spec.label}."
        for i, row in enumerate(rows):
            flagged = bool(adversarial[i] > threshold)
            row.update({prefix + "score": float(adversarial[i]), prefix + "flagged": flagged,
                        prefix + "benign_score": float(benign[i]),
                        prefix + "benign_flagged": bool(benign[i] > threshold),
                        prefix + "evaded": bool(success[i]) and not flagged,
                        prefix + "name": detector.name, prefix + "describe": detector.describe()})
    return rows


def transfer_records(workspace: Workspace, cell: Cell, keys: dict, x: Tensor, x_adv: Tensor, labels: Tensor,
                     targets: Tensor, targeted: bool, ids: Sequence[str]) -> list[dict]:
    """``kind: model_transfer`` records: the adversarial images of the unit classified by each transfer model."""
    records = []
    for spec in workspace.experiment.transfer_models:
        receiver = workspace.classifier(spec)
        with torch.no_grad():
            pred = receiver.predict(x_adv.to(receiver.device)).to(labels.device)
            benign_pred = receiver.predict(x.to(receiver.device)).to(labels.device)
        success = pred == targets if targeted else pred != labels
        for i in range(len(ids)):
            records.append({
                "kind": "model_transfer", **keys, "source_model": cell.model, "source_weights": cell.weights,
                "model": spec.name, "weights": spec.weights, "interpreter": "none", "image_id": str(ids[i]),
                "true_label": int(labels[i]), "target_label": int(targets[i]), "pred_label": int(pred[i]),
                "benign_pred_label": int(benign_pred[i]), "success": bool(success[i]),
                "misclassified": bool(pred[i] != labels[i]),
            })
    return records


__all__ = ["UnitOutput", "Workspace", "build_classifier", "detector_fields", "resolve_device", "run_unit", "transfer_records"]
