"""Attack a data set with one attack and evaluate every interpreter on the result.

This is the shared path of ``idls attack`` and ``idls demo``: the attack runs
batch by batch and draws its own seeded targets from each image's data-set
position (so they do not depend on the batch size), and each batch becomes records (``idls.evaluate``) plus
tensors on disk (adversarial images and maps, safetensors).
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

from idls import evaluate
from idls.attacks import create_attack
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
    import inspect

    from idls.attacks import ATTACKS

    return "interpreter" in inspect.signature(ATTACKS.get(attack_name)).parameters


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
) -> RunOutput:
    """Run ``attack_name`` over the data set and evaluate the interpreters on each adversarial batch.

    A classifier-only attack (PGD, C&W, StAdv) runs once per batch and every interpreter is evaluated
    on its output; a joint attack (ADV², AdvEdge) runs once per interpreter, against that interpreter,
    and is evaluated with it.

    Args:
        x_all: ``N x C x H x W`` correctly classified images in [0, 1].
        labels_all: ``N`` true labels.
        ids: ``N`` image identifiers (file names).
        out_dir: where ``tensors/`` is written (adversarial images and maps); ``None`` keeps nothing.
    """
    device = classifier.device
    if attack_needs_interpreter(attack_name):
        plans = [
            (name, create_attack(attack_name, interpreter=interp, mode=mode, seed=seed, **dict(attack_options)), {name: interp})
            for name, interp in interpreters.items()
        ]
    else:
        plans = [(None, create_attack(attack_name, mode=mode, seed=seed, **dict(attack_options)), dict(interpreters))]
    records: list[dict] = []
    k = min(showcase_size, x_all.shape[0])
    showcase = Showcase(x_all[:k].cpu(), labels_all[:k].cpu())
    started = time.perf_counter()
    n = x_all.shape[0]
    for batch_index, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(start + batch_size, n))
        x, labels = x_all[sl].to(device), labels_all[sl].to(device)
        positions = torch.arange(sl.start, sl.stop)  # seeded targets depend on the image, not its batch
        batch_file = f"tensors/{attack_name}/batch_{batch_index:05d}.safetensors"
        tensors: dict[str, Tensor] = {}
        for attacked, attack, evaluated in plans:
            prefix = "" if attacked is None else f"{attacked}/"
            result = attack.run(classifier, x, labels, indices=positions)
            x_adv = result.x_adv.detach()
            base = evaluate.image_records(
                ids=ids[sl], x=x, x_adv=x_adv, labels=labels, targets=result.target, preds=result.pred,
                success=result.success, confidence=result.confidence,
                seconds_per_image=result.seconds / x.shape[0], iterations_to_success=result.iterations_to_success,
            )
            tensors[f"{prefix}x_adv"] = x_adv.cpu().contiguous()
            for name, interpreter in evaluated.items():
                pair = evaluate.explain_pair(interpreter, x, x_adv)
                tensors[f"benign_map/{name}"] = pair.benign.cpu().contiguous()
                tensors[f"adversarial_map/{name}"] = pair.adversarial.cpu().contiguous()
                if batch_index == 0:
                    showcase.add(name, x_adv[:k], result.pred[:k], pair.benign[:k], pair.adversarial[:k])
                for i, (record, fields) in enumerate(zip(base, evaluate.map_fields(pair))):
                    records.append({"attack": attack_name, "interpreter": name, "model": model_name, **record,
                                    **fields, "adv_path": f"{batch_file}#{prefix}x_adv:{i}"})
            if not evaluated:
                records.extend({"attack": attack_name, "interpreter": "none", "model": model_name, **r} for r in base)
        if out_dir is not None:
            path = Path(out_dir) / batch_file
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path))
        if on_batch is not None:
            on_batch(sl.stop, n)
    return RunOutput(records=records, showcase=showcase if showcase.benign_maps else None, seconds=time.perf_counter() - started)


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
