"""Per-batch evaluation and the pieces the commands share around the one orchestrator.

Every attack run of idls (``idls attack``, ``idls run``, ``idls reproduce``, ``idls demo``) goes
through the experiment engine (:mod:`idls.experiments`); for each (cell, batch) unit it calls
:func:`evaluate_batch`, which turns one attacked batch into records (``idls.evaluate``) and
tensors (adversarial images and maps, safetensors). :func:`showcases_from_store` reads the first
images of a store back for the reports' side-by-side figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from idls import evaluate, metrics
from idls.attacks import AttackResult
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
    benign_reruns: Callable[[str], Tensor] | None = None,
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
        benign_reruns: ``name -> B x h x w`` benign maps of a second run of a seeded interpreter
            (:attr:`~idls.interpreters.Interpreter.seeded`, e.g. cached); default: computed here. Their
            agreement with ``benign_maps`` goes into the records (``benign_rerun_iou``, ``benign_rerun_l1``).
    """
    x_adv = result.x_adv.detach()
    base = evaluate.image_records(
        ids=ids, x=x, x_adv=x_adv, labels=labels, targets=result.target, preds=result.pred,
        success=result.success, confidence=result.confidence,
        seconds_per_image=result.seconds / max(x.shape[0], 1), iterations_to_success=result.iterations_to_success,
        cpu_seconds_per_image=None if result.cpu_seconds is None else result.cpu_seconds / max(x.shape[0], 1),
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
        rerun = [{}] * x.shape[0]
        if interpreter.seeded:
            second = benign_reruns(name) if benign_reruns is not None else interpreter.another_run().attribute(x)
            rerun = evaluate.rerun_fields(pair.benign, second.detach())
        for i, (record, fields, distances, agreement) in enumerate(zip(base, evaluate.map_fields(pair), to_target,
                                                                      rerun, strict=True)):
            records.append({**common, "interpreter": name, **record, **fields, **distances, **agreement,
                            "adv_path": f"{tensor_file}#{x_key}:{i}"})
    if not interpreters:
        records.extend({**common, "interpreter": "none", **r, "adv_path": f"{tensor_file}#{x_key}:{i}"}
                       for i, r in enumerate(base))
    return BatchEvaluation(records=records, tensors=tensors, maps=maps)


UNIVERSAL_FILE = "universal.safetensors"


def showcases_from_store(out: Path, records: Sequence[Mapping], x: Tensor, labels: Tensor, k: int = 6) -> dict[str, Showcase]:
    """Per attack, the first ``k`` images of a store with each interpreter's own adversarial image and maps.

    Reads the tensors the records point to (``adv_path``); ``x`` / ``labels`` are the store's first
    selected images (``>= k``) in data-set order, so the showcase lines up with them.
    """
    from safetensors import safe_open

    order = {}
    showcases: dict[str, Showcase] = {}
    rows: dict[tuple[str, str], list[Mapping]] = {}
    for record in records:
        if record.get("kind", "attack") != "attack" or record["attacked_interpreter"] not in ("none", record["interpreter"]):
            continue
        order.setdefault(record["image_id"], len(order))
        rows.setdefault((record["attack"], record["interpreter"]), []).append(record)
    first = [image for image, position in sorted(order.items(), key=lambda item: item[1])][:k]
    k = min(k, len(first), x.shape[0])
    for (attack, name), group in rows.items():
        by_image = {r["image_id"]: r for r in group}
        shown = [image for image in first[:k] if image in by_image]  # fewer where it was attacked on fewer images
        if not shown:
            continue
        images, preds, benign, adversarial = [], [], [], []
        for image in shown:
            record = by_image[image]
            file, where = record["adv_path"].split("#")
            key, row = where.rsplit(":", 1)
            with safe_open(str(Path(out) / file), framework="pt") as handle:  # an own record's maps are unprefixed
                images.append(handle.get_tensor(key)[int(row)])
                benign.append(handle.get_tensor(f"benign_map/{name}")[int(row)])
                adversarial.append(handle.get_tensor(f"adversarial_map/{name}")[int(row)])
            preds.append(int(record["pred_label"]))
        showcase = showcases.setdefault(attack, Showcase(x[:k].cpu(), labels[:k].cpu()))
        showcase.add(name, torch.stack(images), torch.tensor(preds), torch.stack(benign), torch.stack(adversarial))
    return showcases


def write_records(path: Path, records: Sequence[Mapping]) -> None:
    """Write records as JSON lines (one per image and interpreter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite number as ``None``, tuples as lists and other scalars (tensor or
    numpy numbers) as floats: what strict JSON readers accept (``NaN`` is not JSON; browsers reject it)."""
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    number = float(value)
    return number if math.isfinite(number) else None


def write_json(path: Path, payload: Mapping) -> None:
    """Write ``payload`` as strict JSON (an empty value, e.g. the confidence of an attack without a success, is
    ``null``; the tables show it as "-" with the reason, see :mod:`idls.report.cells`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(strict_json(payload), indent=2, allow_nan=False))
    tmp.replace(path)
