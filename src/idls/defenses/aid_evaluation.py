"""AID evaluation shaped like paper 001 Table 10 and Figure 15 (docs/design.md §4a).

On evaluation images (correctly classified ones, as in the attack experiments):

(a) *ADV² against each interpreter*: the standard targeted ADV² (PGD framework, the defaults
    table's schedule) crafted against RTS and, separately, against RTS_A (each attack made
    against its own masker, with the same seeded targets), then the map L1 between the
    adversarial map (explaining the adversarial prediction) and the benign map (explaining
    the benign prediction) under that interpreter;
(b) *benign agreement*: map L1 between RTS's and RTS_A's benign maps;
(c) *noise sensitivity* (Figure 15): Gaussian and uniform noise at the two scales that make
    the classifier misclassify a share ``noise_rates`` (3% and 30%) of the evaluation images,
    found by bisection on the scale with one seeded noise draw; the map L1 between clean and
    noisy images, each map explaining its own prediction, for RTS and RTS_A.

L1 is :func:`idls.metrics.map_l1` (mean absolute difference per map cell, native size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from idls import metrics
from idls.attacks import create_attack
from idls.errors import UserError, check_images
from idls.interpreters.rts import RTSInterpreter, RTSMasker
from idls.system import Classifier

#: paper 001 Table 10 (ResNet on ImageNet): map L1 of ADV² against RTS and RTS_A, and between benign maps
PAPER_TABLE_10 = {"adv2_map_l1_rts": 0.01, "adv2_map_l1_rts_aid": 0.10, "benign_map_l1_rts_vs_rts_aid": 0.03}
NOISE_KINDS: tuple[str, ...] = ("gaussian", "uniform")
DEFAULT_NOISE_RATES: tuple[float, ...] = (0.03, 0.30)


def unit_noise(shape: torch.Size, kind: str, seed: int) -> Tensor:
    """Seeded noise of scale 1 on the CPU: standard normal, or uniform on [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator)
    if kind == "uniform":
        return torch.rand(shape, generator=generator) * 2 - 1
    raise UserError(f"unknown noise kind {kind!r}; choose one of: {', '.join(NOISE_KINDS)}")


def add_noise(x: Tensor, noise: Tensor, scale: float) -> Tensor:
    """``clamp(x + scale * noise, 0, 1)`` (``B x C x H x W``)."""
    return (x + scale * noise.to(x)).clamp(0, 1)


def misclassification(classifier: Classifier, x: Tensor, labels: Tensor, batch_size: int) -> float:
    """Share of ``x`` whose predicted class differs from ``labels``."""
    return float((classifier.predict(x, batch_size=batch_size) != labels).float().mean())


def noise_scale_for_rate(classifier: Classifier, x: Tensor, labels: Tensor, noise: Tensor, rate: float, *,
                         batch_size: int = 256, iterations: int = 24, high: float = 1.0) -> tuple[float, float]:
    """The smallest scale (by bisection on ``[0, high]``) at which ``x + scale * noise`` reaches a
    misclassification share of at least ``rate``; returns ``(scale, share reached)``.

    With one fixed noise draw the share is close to monotone in the scale; the bisection keeps
    the upper end's share >= ``rate``, so the share returned always reaches it.
    """
    if not 0 < rate < 1:
        raise UserError(f"noise misclassification rates must lie in (0, 1), got {rate}")
    top = misclassification(classifier, add_noise(x, noise, high), labels, batch_size)
    if top < rate:
        raise UserError(f"noise of scale {high} misclassifies only {top:.3f} of the images, below {rate}; "
                        "use fewer or other images")
    low, high_rate = 0.0, top
    for _ in range(iterations):
        middle = (low + high) / 2
        reached = misclassification(classifier, add_noise(x, noise, middle), labels, batch_size)
        if reached >= rate:
            high, high_rate = middle, reached
        else:
            low = middle
    return high, high_rate


def _maps(interpreter: RTSInterpreter, x: Tensor, batch_size: int) -> Tensor:
    """Maps of the predicted classes ``B x h x w``, ``batch_size`` images at a time."""
    return torch.cat([interpreter.attribute(chunk) for chunk in x.split(batch_size)])


def adv2_map_distances(classifier: Classifier, masker: RTSMasker, x: Tensor, labels: Tensor, *,
                       attack_options: dict[str, Any] | None = None, seed: int = 0,
                       batch_size: int = 50) -> dict[str, Tensor]:
    """ADV² against ``masker``'s RTS: per image ``success`` (``B`` bool) and ``map_l1`` (``B``) between the
    adversarial and the benign map, and the ``targets`` (seeded by image position, so the same for any masker)."""
    interpreter = RTSInterpreter(classifier, masker=masker)
    attack = create_attack("adv2", interpreter=interpreter, seed=seed, **(attack_options or {}))
    success, distance, targets = [], [], []
    for start in range(0, len(x), batch_size):
        xs, ys = x[start:start + batch_size], labels[start:start + batch_size]
        result = attack.run(classifier, xs, ys, indices=torch.arange(start, start + len(xs)))
        pair = metrics.map_l1(interpreter.attribute(xs), interpreter.attribute(result.x_adv))
        success.append(result.success.cpu())
        distance.append(pair.cpu())
        targets.append(result.target.cpu())
    return {"success": torch.cat(success), "map_l1": torch.cat(distance), "targets": torch.cat(targets)}


def _mean(values: Tensor, where: Tensor | None = None) -> float | None:
    chosen = values if where is None else values[where]
    return float(chosen.mean()) if chosen.numel() else None


def evaluate_aid(
    classifier: Classifier,
    rts_masker: RTSMasker,
    aid_masker: RTSMasker,
    images: Tensor,
    labels: Tensor,
    *,
    attack_options: dict[str, Any] | None = None,
    noise_rates: Sequence[float] = DEFAULT_NOISE_RATES,
    noise_kinds: Sequence[str] = NOISE_KINDS,
    seed: int = 0,
    batch_size: int = 50,
) -> dict[str, Any]:
    """Paper 001 Table 10 / Figure 15 for a normal RTS masker and an AID one (plain JSON numbers).

    Args:
        images: ``N x 3 x H x W`` evaluation images in [0, 1] (correctly classified ones, as the
            attack experiments use).
        labels: ``N`` true classes.
        attack_options: options of the evaluation ADV² (default: the standard targeted attack).
        noise_rates: misclassification shares that fix the noise scales.
        seed: the attack's targets and the noise draws.

    Returns:
        ``{'images', 'adv2': {'rts', 'rts_aid', 'both_succeeded', 'ratio'}, 'benign_map_l1',
        'noise': [...], 'paper', 'settings'}``; map L1 means are over all images and over the
        images the attack fooled (``success_only``); ``ratio`` = RTS_A's mean L1 / RTS's on the images
        both attacks fooled.
    """
    check_images(images)
    labels = torch.as_tensor(labels).long().to(images.device)
    if labels.shape != (len(images),) or len(images) == 0:
        raise UserError(f"evaluate_aid needs one label per image and at least one image; got {len(images)} images "
                        f"and labels {tuple(labels.shape)}")
    maskers = {"rts": rts_masker, "rts_aid": aid_masker}
    interpreters = {name: RTSInterpreter(classifier, masker=m) for name, m in maskers.items()}
    with torch.no_grad():
        benign = {name: _maps(i, images, batch_size) for name, i in interpreters.items()}

    attacks = {name: adv2_map_distances(classifier, m, images, labels, attack_options=attack_options, seed=seed,
                                        batch_size=batch_size) for name, m in maskers.items()}
    both = attacks["rts"]["success"] & attacks["rts_aid"]["success"]
    adv2: dict[str, Any] = {
        name: {"success_rate": float(a["success"].float().mean()), "map_l1": _mean(a["map_l1"]),
               "map_l1_success_only": _mean(a["map_l1"], a["success"]),
               "map_l1_both_succeeded": _mean(a["map_l1"], both)}
        for name, a in attacks.items()
    }
    adv2["both_succeeded"] = int(both.sum())
    base_l1, aid_l1 = adv2["rts"]["map_l1_both_succeeded"], adv2["rts_aid"]["map_l1_both_succeeded"]
    adv2["ratio"] = aid_l1 / base_l1 if base_l1 and aid_l1 is not None else None

    noise_rows = []
    for index, kind in enumerate(noise_kinds):
        noise = unit_noise(images.shape, kind, seed + index)
        for rate in noise_rates:
            scale, reached = noise_scale_for_rate(classifier, images, labels, noise, rate, batch_size=batch_size)
            noisy = add_noise(images, noise, scale)
            flipped = (classifier.predict(noisy, batch_size=batch_size) != labels).cpu()
            row: dict[str, Any] = {"kind": kind, "target_rate": rate, "scale": scale, "misclassification": reached}
            for name, interpreter in interpreters.items():
                with torch.no_grad():
                    l1 = metrics.map_l1(benign[name], _maps(interpreter, noisy, batch_size)).cpu()
                row[name] = {"map_l1": _mean(l1), "map_l1_misclassified": _mean(l1, flipped)}
            noise_rows.append(row)

    return {
        "images": len(images),
        "adv2": adv2,
        "benign_map_l1": float(metrics.map_l1(benign["rts"], benign["rts_aid"]).mean()),
        "benign_map_area": {name: float(m.mean()) for name, m in benign.items()},
        "noise": noise_rows,
        "paper": dict(PAPER_TABLE_10),
        "settings": {"attack": "adv2", "attack_options": dict(attack_options or {}), "seed": seed,
                     "noise_rates": list(noise_rates), "noise_kinds": list(noise_kinds)},
    }


__all__ = ["DEFAULT_NOISE_RATES", "NOISE_KINDS", "PAPER_TABLE_10", "add_noise", "adv2_map_distances",
           "evaluate_aid", "misclassification", "noise_scale_for_rate", "unit_noise"]
