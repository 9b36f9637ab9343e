"""Attack a data set with one attack and evaluate every interpreter on the result.

This is the shared path of ``idls attack`` and ``idls demo``: the attack runs
batch by batch and draws its own seeded targets from each image's data-set
position (so they do not depend on the batch size), and each batch becomes records (``idls.evaluate``) plus
tensors on disk (adversarial images and maps, safetensors).

:func:`evaluate_batch` turns one attacked batch into records and tensors; the
experiment engine (:mod:`idls.experiments`) calls it for each (cell, batch) unit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from idls import evaluate, metrics
from idls.attacks import Attack, AttackResult, create_attack
from idls.data import LabeledImages
from idls.errors import UserError
from idls.interpreters import create_interpreter
from idls.interpreters.base import Interpreter
from idls.system import Classifier


@dataclass
class Showcase:
    """The first few images of a run with, per interpreter, the adversarial image made for it and both maps.

    For a classifier-only attack every interpreter sees the same adversarial image; for a joint attack
    each interpreter has its own.
    """

    x: Tensor
    labels: Tensor
    adversarial_images: dict[str, Tensor] = field(default_factory=dict)
    adversarial_preds: dict[str, Tensor] = field(default_factory=dict)
    benign_maps: dict[str, Tensor] = field(default_factory=dict)
    adversarial_maps: dict[str, Tensor] = field(default_factory=dict)

    def add(self, name: str, x_adv: Tensor, preds: Tensor, benign: Tensor, adversarial: Tensor) -> None:
        self.adversarial_images[name] = x_adv.detach().cpu()
        self.adversarial_preds[name] = preds.detach().cpu()
        self.benign_maps[name] = benign.detach().cpu()
        self.adversarial_maps[name] = adversarial.detach().cpu()


@dataclass
class RunOutput:
    records: list[dict]
    showcase: Showcase | None
    seconds: float


def build_interpreters(
    classifier: Classifier, names: Sequence[str], options: Mapping[str, Mapping] | None = None
) -> dict[str, Interpreter]:
    """Instantiate interpreters by name, skipping none silently: CAM on a model without GAP head is an error."""
    options = options or {}
    return {name: create_interpreter(name, classifier, **dict(options.get(name, {}))) for name in names}


def attack_needs_interpreter(attack_name: str) -> bool:
    """Whether an attack is crafted against one interpreter (joint attacks) rather than the classifier alone."""
    from idls.attacks import ATTACKS
    from idls.attacks.base import attack_options

    return "interpreter" in attack_options(ATTACKS.get(attack_name))


@dataclass
class BatchEvaluation:
    """Records, tensors and maps of one attacked batch.

    Attributes:
        records: one per image and evaluated interpreter (``interpreter: 'none'`` when none is evaluated).
        tensors: what the batch's tensor file holds: ``x_adv`` (``B x C x H x W``), ``benign_map/<name>``,
            ``adversarial_map/<name>`` and, for joint attacks, ``target_map`` (``B x h x w`` each).
        maps: interpreter name -> its benign / adversarial maps.
    """

    records: list[dict]
    tensors: dict[str, Tensor]
    maps: dict[str, evaluate.MapPair]


def map_target_fields(adversarial: Tensor | None, target: Tensor | None, batch: int) -> list[dict]:
    """``map_l1_to_target`` / ``map_iou_to_target`` (IoU@20%) per image; ``None`` where there is no target map."""
    if adversarial is None or target is None:
        return [{"map_l1_to_target": None, "map_iou_to_target": None} for _ in range(batch)]
    target = target.to(adversarial.device, adversarial.dtype)
    l1 = metrics.map_l1(adversarial, target)
    iou = metrics.topk_iou(target, adversarial, 0.2)
    return [{"map_l1_to_target": float(l1[i]), "map_iou_to_target": float(iou[i])} for i in range(batch)]


def evaluate_batch(
    result: AttackResult,
    x: Tensor,
    labels: Tensor,
    ids: Sequence[str],
    interpreters: Mapping[str, Interpreter],
    *,
    attack_name: str,
    attacked: str | None,
    tensor_file: str,
    key_prefix: str = "",
    model_name: str = "",
    benign_maps: Callable[[str], Tensor] | None = None,
) -> BatchEvaluation:
    """Records and tensors of one attacked batch, evaluated with each of ``interpreters``.

    Every record compares an interpreter's map of the adversarial image with its own benign map.
    When ``attacked`` names the interpreter a joint attack was crafted against, the other
    interpreters' records measure transferability across interpreters (paper 001 Table 9), and
    the attacked interpreter's record also holds the distance to the attack's target map
    (``result.extras['target_map']``).

    Args:
        result: the attack's output for ``x`` (``B x C x H x W``), ``labels`` and ``ids`` (``B``).
        attacked: the attacked interpreter (joint attacks) or ``None`` (classifier-only attacks).
        tensor_file: path of the tensor file relative to the output folder (for ``adv_path``).
        key_prefix: prefix of the ``x_adv`` / ``target_map`` keys (several attacks in one file).
        benign_maps: ``name -> B x h x w`` benign maps (e.g. cached); default: computed here.
    """
    x_adv = result.x_adv.detach()
    base = evaluate.image_records(
        ids=ids, x=x, x_adv=x_adv, labels=labels, targets=result.target, preds=result.pred,
        success=result.success, confidence=result.confidence,
        seconds_per_image=result.seconds / max(x.shape[0], 1), iterations_to_success=result.iterations_to_success,
    )
    x_key = f"{key_prefix}x_adv"
    target_map = result.extras.get("target_map") if attacked is not None else None
    tensors: dict[str, Tensor] = {x_key: x_adv.cpu().contiguous()}
    if target_map is not None:
        tensors[f"{key_prefix}target_map"] = target_map.detach().cpu().contiguous()
    common = {"attack": attack_name, "model": model_name, "attacked_interpreter": attacked or "none"}
    records: list[dict] = []
    maps: dict[str, evaluate.MapPair] = {}
    for name, interpreter in interpreters.items():
        benign = benign_maps(name) if benign_maps is not None else None
        pair = evaluate.explain_pair(interpreter, x, x_adv, benign)
        maps[name] = pair
        own = attacked in (None, name)
        tensors[f"benign_map/{name}"] = pair.benign.cpu().contiguous()
        map_key = f"adversarial_map/{name}" if own else f"{key_prefix}adversarial_map/{name}"
        tensors[map_key] = pair.adversarial.cpu().contiguous()
        to_target = map_target_fields(pair.adversarial if name == attacked else None, target_map, x.shape[0])
        for i, (record, fields, distances) in enumerate(zip(base, evaluate.map_fields(pair), to_target)):
            records.append({**common, "interpreter": name, **record, **fields, **distances,
                            "adv_path": f"{tensor_file}#{x_key}:{i}"})
    if not interpreters:
        records.extend({**common, "interpreter": "none", **r, "adv_path": f"{tensor_file}#{x_key}:{i}"}
                       for i, r in enumerate(base))
    return BatchEvaluation(records=records, tensors=tensors, maps=maps)


def attack_and_evaluate(
    classifier: Classifier,
    interpreters: Mapping[str, Interpreter],
    attack_name: str,
    attack_options: Mapping,
    x_all: Tensor,
    labels_all: Tensor,
    ids: Sequence[str],
    *,
    mode: str = "targeted",
    batch_size: int = 64,
    seed: int = 0,
    out_dir: Path | None = None,
    showcase_size: int = 6,
    model_name: str = "",
    on_batch: Callable[[int, int], None] | None = None,
    evaluate_all_interpreters: bool = False,
    fit_data: LabeledImages | None = None,
) -> RunOutput:
    """Run ``attack_name`` over the data set and evaluate the interpreters on each adversarial batch.

    A classifier-only attack (PGD, C&W, StAdv) runs once per batch and every interpreter is evaluated
    on its output; a joint attack (ADV², AdvEdge) runs once per interpreter, against that interpreter,
    and is evaluated with it (with every interpreter when ``evaluate_all_interpreters``: transferability
    across interpreters).

    Args:
        x_all: ``N x C x H x W`` correctly classified images in [0, 1].
        labels_all: ``N`` true labels.
        ids: ``N`` image identifiers (file names).
        out_dir: where ``tensors/`` is written (adversarial images and maps); ``None`` keeps nothing.
        fit_data: images to fit an attack that needs fitting (a universal perturbation) before it is
            applied to ``x_all``; the fitted artifact is saved as ``out_dir/universal.safetensors``.
    """
    device = classifier.device
    if attack_needs_interpreter(attack_name):
        plans = [
            (name, create_attack(attack_name, interpreter=interp, mode=mode, seed=seed, **dict(attack_options)),
             dict(interpreters) if evaluate_all_interpreters else {name: interp})
            for name, interp in interpreters.items()
        ]
    else:
        plans = [(None, create_attack(attack_name, mode=mode, seed=seed, **dict(attack_options)), dict(interpreters))]
    for _, attack, _ in plans:
        fit_if_needed(attack, classifier, fit_data, out_dir)
    records: list[dict] = []
    k = min(showcase_size, x_all.shape[0], batch_size)  # the showcase comes from the first batch
    showcase = Showcase(x_all[:k].cpu(), labels_all[:k].cpu())
    started = time.perf_counter()
    n = x_all.shape[0]
    for batch_index, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(start + batch_size, n))
        x, labels = x_all[sl].to(device), labels_all[sl].to(device)
        positions = torch.arange(sl.start, sl.stop)  # seeded targets depend on the image, not its batch
        batch_file = f"tensors/{attack_name}/batch_{batch_index:05d}.safetensors"
        benign_cache: dict[str, Tensor] = {}

        def benign_maps(name: str, x: Tensor = x, cache: dict[str, Tensor] = benign_cache) -> Tensor:
            if name not in cache:
                cache[name] = interpreters[name].attribute(x).detach()
            return cache[name]

        tensors: dict[str, Tensor] = {}
        for attacked, attack, evaluated in plans:
            result = attack.run(classifier, x, labels, indices=positions)
            batch = evaluate_batch(
                result, x, labels, ids[sl], evaluated, attack_name=attack_name, attacked=attacked,
                tensor_file=batch_file, key_prefix="" if attacked is None else f"{attacked}/",
                model_name=model_name, benign_maps=benign_maps,
            )
            records.extend(batch.records)
            tensors.update(batch.tensors)
            if batch_index == 0:
                for name, pair in batch.maps.items():
                    if attacked in (None, name):
                        showcase.add(name, result.x_adv[:k], result.pred[:k], pair.benign[:k], pair.adversarial[:k])
        if out_dir is not None:
            path = Path(out_dir) / batch_file
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path))
        if on_batch is not None:
            on_batch(sl.stop, n)
    return RunOutput(records=records, showcase=showcase if showcase.benign_maps else None, seconds=time.perf_counter() - started)


UNIVERSAL_FILE = "universal.safetensors"


def fit_if_needed(attack: Attack, classifier: Classifier, fit_data: LabeledImages | None,
                  out_dir: Path | None) -> None:
    """Fit an attack that needs fitting (and has no loaded artifact) on ``fit_data``; save what it fitted."""
    if not attack.needs_fit or attack.fitted:
        return
    if fit_data is None:
        raise UserError(f"attack {attack.name!r} is fitted on a data set before it is applied: pass --fit-data FOLDER "
                        "(training images, not the evaluation images), or --perturbation FILE to reuse a fitted one")
    attack.fit(classifier, fit_data, progress=True)
    if out_dir is not None:
        attack.save_fitted(Path(out_dir) / UNIVERSAL_FILE)


def write_records(path: Path, records: Sequence[Mapping]) -> None:
    """Write records as JSON lines (one per image and interpreter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def write_json(path: Path, payload: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
