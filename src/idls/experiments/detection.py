"""Detectors in experiments: the ``detectors:`` section, fitting each detector once, per-image detector fields.

An experiment may list detectors guarding the attacked system::

    data: {source: cifar10-test-folder, fit_source: cifar10-train-folder, fit_n: 2000}
    detectors:
      - feature-squeezing                              # a registered detector with default options
      - {name: feature-squeezing, label: fs-bits1, options: {squeezers: ["bit-depth:bits=1"]}}
      - {name: lid, fit_attack: {name: pgd, options: {epsilon: 0.03137}}}   # supervised: adversarial fit images
      - {path: runs/fs.safetensors, label: fs-saved}   # a detector fitted earlier (idls detector fit)

Each detector is fitted once per model, in the main process, on the images of ``data.fit_source``
(supervised ones also on the successful adversarial images ``fit_attack`` makes from the correctly
classified fit images) and saved as ``OUT/fitted/detector-LABEL-mMODEL.safetensors``, which
resumed and distributed runs load. Every attack record then carries, per detector label ``L``,
``detector.L.score`` / ``.flagged`` (the adversarial image), ``.benign_score`` /
``.benign_flagged`` (the benign image) and ``.evaded`` (the attack succeeded and was not flagged);
summaries average them (detection rate, false-positive rate, evasion rate) and add ``.auc``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idls.errors import UserError

DETECTOR_KEYS: tuple[str, ...] = ("name", "label", "options", "path", "fit_attack")
FIT_ATTACK_KEYS: tuple[str, ...] = ("name", "options", "interpreter")
#: prefix of the detector fields of a record: ``detector.LABEL.FIELD``
FIELD_PREFIX = "detector."
#: file name of a detector fitted by a run, in the store's fitted/ folder
FITTED_DETECTOR = "detector-{label}-m{model}.safetensors"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")


@dataclass
class DetectorSpec:
    """One entry of ``detectors:``.

    Attributes:
        label: names the detector in records and tables (default: its name, or the file's stem).
        name: a registered detector (``idls list``), or ``None`` with ``path``.
        options: the detector's options.
        path: a detector saved by ``idls detector fit`` / ``Detector.save`` (used as is, not refitted).
        fit_attack: supervised detectors: ``{name, options, interpreter}`` of the attack that makes the
            adversarial fit images.
        fitted: model index -> saved file, filled in when the run fitted it (not part of the configuration).
    """

    label: str
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    fit_attack: dict[str, Any] | None = None
    fitted: dict[int, str] | None = None

    def file_for(self, model_index: int) -> str | None:
        """The saved detector to load for a model, if any."""
        if self.path is not None:
            return self.path
        return (self.fitted or {}).get(model_index)


def parse_detectors(value: Any, base_dir: Path) -> list[DetectorSpec] | None:
    """The ``detectors:`` section -> validated specs (``None`` when absent or empty)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise UserError("detectors: must be a list, e.g. detectors: [feature-squeezing]")
    specs = [_parse_one(entry, f"detectors[{i}]", base_dir) for i, entry in enumerate(value)]
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"detectors: label {duplicates[0]!r} is used twice; give each entry its own label:")
    return specs


def _parse_one(entry: Any, where: str, base_dir: Path) -> DetectorSpec:
    from idls.defenses.detectors import DETECTORS, create_detector

    if isinstance(entry, str):
        entry = {"path": entry} if entry.endswith(".safetensors") else {"name": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: must be a detector name or a mapping with name:, options:, label:")
    unknown = sorted(set(entry) - set(DETECTOR_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; a detector entry takes {', '.join(DETECTOR_KEYS)}")
    name, path = entry.get("name"), entry.get("path")
    if (name is None) == (path is None):
        raise UserError(f"{where}: give either name: (a registered detector) or path: (a saved detector)")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise UserError(f"{where}.options: must be a mapping of option: value")
    fit_attack = entry.get("fit_attack")
    if path is not None:
        resolved = Path(str(path)).expanduser()
        resolved = resolved if resolved.is_absolute() else (base_dir / resolved)
        if not resolved.is_file():
            raise UserError(f"{where}.path: {resolved} does not exist; fit one with `idls detector fit`")
        path = str(resolved.resolve())
        label = entry.get("label") or resolved.stem
    else:
        cls = DETECTORS.get(str(name))
        try:
            create_detector(str(name), **options)
        except UserError as exc:
            raise UserError(f"{where}.options: {exc}") from None
        label = entry.get("label") or str(name)
        if cls.needs_adversarial:
            fit_attack = _fit_attack(fit_attack, f"{where}.fit_attack", str(name))
        elif fit_attack is not None:
            raise UserError(f"{where}.fit_attack: detector {name!r} is fitted on benign images only; remove it")
    if not isinstance(label, str) or not _LABEL.match(label):
        raise UserError(f"{where}.label: {label!r} must be letters, digits, '-', '_' or '+' (it names record fields)")
    return DetectorSpec(label=label, name=None if name is None else str(name), options=dict(options), path=path,
                        fit_attack=fit_attack)


def _fit_attack(value: Any, where: str, detector: str) -> dict[str, Any]:
    from idls.attacks import ATTACKS
    from idls.interpreters import INTERPRETERS

    if value is None:
        raise UserError(f"{where}: detector {detector!r} is supervised; name the attack that makes its adversarial "
                        "fit images, e.g. fit_attack: {name: pgd}")
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise UserError(f"{where}: must be an attack name or {{name:, options:, interpreter:}}")
    unknown = sorted(set(value) - set(FIT_ATTACK_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; it takes {', '.join(FIT_ATTACK_KEYS)}")
    from idls.runner import attack_needs_interpreter

    ATTACKS.get(str(value.get("name")))
    interpreter = value.get("interpreter")
    if interpreter is not None:
        INTERPRETERS.get(str(interpreter))
    if attack_needs_interpreter(str(value["name"])) and interpreter is None:
        raise UserError(f"{where}.interpreter: {value['name']} attacks an interpreter too; name it, e.g. interpreter: cam")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise UserError(f"{where}.options: must be a mapping of option: value")
    return {"name": str(value["name"]), "options": dict(options), "interpreter": interpreter}


__all__ = ["DETECTOR_KEYS", "FIELD_PREFIX", "FITTED_DETECTOR", "DetectorSpec", "parse_detectors"]
