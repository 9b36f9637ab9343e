"""Synthetic experiment stores written exactly as the store contract specifies (for report/scorecard tests).

``records.jsonl`` (one JSON object per line), ``done.jsonl`` (one marker per complete unit, written
after its records), ``tensors/<cell>/batch_<k>.safetensors`` (``x_adv``, ``benign_map/<g>``,
``adversarial_map/<g>``, one cell per attacked interpreter), ``experiment.yaml``,
``environment.json`` and ``plan.json`` (the grid: every cell written, plus ``planned`` cells not run).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

IMAGE_SIZE = 8
MAP_SIZE = 4


def attack_record(
    *,
    attack: str = "pgd",
    interpreter: str = "cam",
    attacked: str | None = None,
    framework: str | None = None,
    target: str | None = None,
    image_id: str = "img0",
    experiment: str = "exp",
    model: str = "cifar_resnet20",
    batch: int = 0,
    success: bool = True,
    confidence: float = 0.99,
    map_l1: float = 0.2,
    map_iou: float = 0.3,
    noise_rate: float = 0.05,
    seconds: float = 0.1,
    l1_to_target: float | None = None,
    iou_to_target: float | None = None,
    epsilon: float | None = 0.031,
    cell: str | None = None,
) -> dict:
    """One ``kind: attack`` record with every field of the contract (classifier-only unless ``attacked``)."""
    plain = attack in ("pgd", "cw", "stadv")
    attacked = attacked if attacked is not None else ("none" if plain else interpreter)
    framework = framework or (attack if plain else "pgd")
    target = target or ("none" if plain else "benign")
    cell = cell or f"{experiment}-{model}-{attack}-{framework}-{target}-{attacked}"
    return {
        "kind": "attack", "experiment": experiment, "cell": cell, "model": model, "weights": "pretrained",
        "data": "synthetic", "attack": attack, "framework": framework, "target": target, "mode": "targeted",
        "epsilon": epsilon, "seed": 0, "attacked_interpreter": attacked, "interpreter": interpreter, "batch": batch,
        "image_id": image_id, "true_label": 1, "target_label": 2, "pred_label": 2 if success else 1,
        "success": success, "confidence": confidence, "linf": 0.031, "l2": 0.5, "noise_rate": noise_rate,
        "seconds": seconds, "iterations_to_success": 10 if success else -1, "map_l1": map_l1, "map_l2": map_l1 * 1.2,
        "map_iou": map_iou, "map_iou@10": map_iou, "map_iou@20": map_iou, "map_iou@30": map_iou, "map_iou@50": map_iou,
        "kendall_tau": 0.5, "map_l1_to_target": l1_to_target, "map_iou_to_target": iou_to_target,
    }


def model_transfer_record(source: Mapping, receiving_model: str, success: bool) -> dict:
    """A ``kind: model_transfer`` record of ``source``'s adversarial image fed to ``receiving_model``."""
    keys = ("experiment", "cell", "weights", "data", "attack", "framework", "target", "mode", "epsilon", "seed",
            "attacked_interpreter", "interpreter", "batch", "image_id", "true_label", "target_label")
    return {"kind": "model_transfer", **{k: source[k] for k in keys}, "source_model": source["model"],
            "model": receiving_model, "pred_label": 2 if success else 1, "success": success}


def _unit(record: Mapping) -> tuple[str, int]:
    return record["cell"], record["batch"]


def write_store(
    out: Path,
    records: Sequence[dict],
    *,
    transfer_records: Sequence[dict] = (),
    incomplete: Iterable[tuple[str, int]] = (),
    torn_tail: bool = False,
    config: Mapping | None = None,
    with_tensors: bool = True,
    planned: Mapping[str, int] | None = None,
    with_plan: bool = True,
) -> Path:
    """Write a store to ``out``: units = (cell, batch); ``incomplete`` units get records but no done marker.

    ``plan.json`` lists each written cell with its batches, and ``planned`` cells (id -> batches) that
    have no records (not run yet); ``with_plan=False`` leaves it out (a store written before plans existed).

    Each record's ``adv_path`` points to its unit's tensor file; the tensors are seeded random images and maps.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    units: dict[tuple[str, int], list[dict]] = {}
    for r in [*records, *transfer_records]:
        units.setdefault(_unit(r), []).append(r)
    skipped = set(incomplete)
    generator = torch.Generator().manual_seed(0)
    with open(out / "records.jsonl", "w") as rec_file, open(out / "done.jsonl", "w") as done_file:
        for (cell, batch), unit in units.items():
            file = f"tensors/{cell}/batch_{batch:05d}.safetensors"
            image_ids = list(dict.fromkeys(r["image_id"] for r in unit))
            for r in unit:
                if r["kind"] == "attack":
                    r["adv_path"] = f"{file}#x_adv:{image_ids.index(r['image_id'])}"
                rec_file.write(json.dumps(r) + "\n")
            if with_tensors:
                _write_tensors(out / file, unit, len(image_ids), generator)
            if (cell, batch) not in skipped:
                done_file.write(json.dumps({"cell": cell, "batch": batch, "n_records": len(unit)}) + "\n")
        if torn_tail:
            rec_file.write('{"kind": "attack", "cell": "torn", "batch": 0, "image_')
    if with_plan:
        plan: dict[str, int] = {}
        for cell, batch in units:
            plan[cell] = max(plan.get(cell, 0), batch + 1)
        (out / "plan.json").write_text(json.dumps({"cells": {**plan, **dict(planned or {})}}))
    (out / "experiment.yaml").write_text(yaml.safe_dump(dict(config or {"name": "exp", "models": ["cifar_resnet20"]})))
    (out / "environment.json").write_text(json.dumps({"idls": "0.1.0", "torch": torch.__version__, "python": "3.11"}))
    return out


def _write_tensors(path: Path, unit: Sequence[Mapping], n: int, generator: torch.Generator) -> None:
    tensors = {"x_adv": torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}
    for r in unit:
        if r["kind"] != "attack":
            continue
        name = r["interpreter"]
        tensors.setdefault(f"benign_map/{name}", torch.rand(n, MAP_SIZE, MAP_SIZE, generator=generator))
        tensors.setdefault(f"adversarial_map/{name}", torch.rand(n, MAP_SIZE, MAP_SIZE, generator=generator))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
