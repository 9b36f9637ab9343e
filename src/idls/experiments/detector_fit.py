"""Fitting the detectors of an experiment once per model, before its units run (see :mod:`idls.experiments.detection`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from idls.attacks import create_attack
from idls.attacks.base import Attack
from idls.core.artifacts import load_artifact, save_artifact
from idls.core.digests import dataset_digest, json_digest
from idls.defenses.detectors import Detector, create_detector
from idls.errors import UserError
from idls.experiments.detection import FITTED_DETECTOR, DetectorSpec
from idls.experiments.execute import FITTED_DIR, Workspace
from idls.system import Classifier

#: ``kind`` of the saved adversarial fit images of supervised detectors
FIT_ADVERSARIAL_KIND = "detector-fit-adversarial"


def fit_detectors(workspace: Workspace, out: Path) -> list[DetectorSpec] | None:
    """Fit (or reuse the saved fit of) every detector on every model; the specs with their ``fitted`` files.

    Supervised detectors with the same fit attack share its adversarial images, made once and saved as
    ``OUT/fitted/fit-adversarial-DIGEST-mMODEL.safetensors`` (reused on resume).
    """
    specs = workspace.experiment.detectors
    if not specs:
        return specs
    resolved = []
    for spec in specs:
        if spec.path is not None:
            resolved.append(spec)
            continue
        fitted = {}
        for index in range(len(workspace.experiment.models)):
            path = Path(out) / FITTED_DIR / FITTED_DETECTOR.format(label=spec.label, model=index)
            if not path.is_file():
                fit_detector(workspace, index, spec, cache_dir=Path(out) / FITTED_DIR).save(path)
            fitted[index] = str(path.resolve())
        resolved.append(replace(spec, fitted=fitted))
    return resolved


def fit_detector(workspace: Workspace, model_index: int, spec: DetectorSpec, *,
                 cache_dir: Path | None = None) -> Detector:
    """Fit ``spec``'s detector for one model on the experiment's fit images.

    Unsupervised detectors see every fit image; supervised ones the correctly classified fit
    images and the successful adversarial images ``spec.fit_attack`` makes from them (kept in
    ``cache_dir`` when given, keyed by the attack and the fit images, so detectors share them).
    """
    from idls.data.datasets import select_correct

    classifier = workspace.model_classifier(model_index)
    images = workspace.fit_images(model_index)
    detector = create_detector(str(spec.name), **spec.options)
    benign, adversarial = images.images, None
    if detector.needs_adversarial:
        correct = select_correct(classifier, images, len(images))
        attack_spec = spec.fit_attack or {}
        extra = {}
        if attack_spec.get("interpreter"):
            extra["interpreter"] = workspace.interpreter(model_index, attack_spec["interpreter"])
        attack = create_attack(attack_spec["name"], **extra, **attack_spec.get("options", {}))
        cache = None
        if cache_dir is not None:
            key = json_digest({"attack": attack_spec, "images": dataset_digest(correct.images, correct.labels)})
            cache = cache_dir / f"fit-adversarial-{key[:16]}-m{model_index}.safetensors"
        if cache is not None and cache.is_file():
            adversarial = load_artifact(cache, kind=FIT_ADVERSARIAL_KIND).tensors["images"]
        else:
            adversarial = adversarial_fit_images(classifier, attack, correct.images, correct.labels,
                                                 batch_size=workspace.experiment.data.batch_size, label=spec.label)
            if cache is not None:
                save_artifact(cache, {"images": adversarial}, {"kind": FIT_ADVERSARIAL_KIND, "attack": attack_spec,
                                                               "model_index": model_index})
        benign = correct.images
    device = classifier.device
    return detector.fit(classifier, benign.to(device), None if adversarial is None else adversarial.to(device),
                        progress=True)


def adversarial_fit_images(classifier: Classifier, attack: Attack, images: Tensor, labels: Tensor, *,
                           batch_size: int, label: str) -> Tensor:
    """The successful adversarial images ``attack`` makes from ``images`` (``N x C x H x W``), in batches.

    Batches carry the images' positions as ``indices``, so seeded targets do not depend on the batch size.
    """
    from idls.progress import progress_bar

    kept = []
    device = classifier.device
    for start in progress_bar(range(0, images.shape[0], batch_size), desc=f"adversarial fit images for {label}",
                              unit="batch"):
        stop = min(start + batch_size, images.shape[0])
        result = attack.run(classifier, images[start:stop].to(device), labels[start:stop].to(device),
                            indices=torch.arange(start, stop))
        kept.append(result.x_adv[result.success].detach().cpu())
    adversarial = torch.cat(kept) if kept else images.new_zeros((0, *images.shape[1:]))
    if adversarial.shape[0] == 0:
        raise UserError(f"detector {label}: the fit attack {attack.name} succeeded on no fit image; "
                        "give it a larger budget or more steps")
    return adversarial


__all__ = ["adversarial_fit_images", "fit_detector", "fit_detectors"]
