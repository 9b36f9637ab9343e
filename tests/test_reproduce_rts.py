"""`idls reproduce` trains the CIFAR model's RTS masker itself (once, into OUT/rts_masker) instead of leaving RTS out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import idls.reproduce.rts_masker as rts_masker
import idls.reproduce.run as reproduce_run
from idls.reproduce.rts_masker import MaskerSchedule
from tests.conftest import run_cli
from tests.model_helpers import seeded_random_resnet20


def _folder(path, count: int, seed: int, classifier):
    """``count`` random 32 px PNGs labelled with ``classifier``'s predictions (so all count as correct)."""
    path.mkdir(parents=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = classifier.predict(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    rows = ["file,label"]
    for i in range(count):
        Image.fromarray(pixels[i]).save(path / f"img_{i:02d}.png")
        rows.append(f"img_{i:02d}.png,{int(labels[i])}")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def cifar_system(tmp_path, monkeypatch):
    """A random ResNet-20 checkpoint, test and training folders, and one stand-in CIFAR experiment using RTS."""
    weights, classifier = tmp_path / "resnet20.pt", seeded_random_resnet20(0)
    torch.save(classifier.net.state_dict(), weights)
    images, train = _folder(tmp_path / "images", 8, 0, classifier), _folder(tmp_path / "train", 12, 1, classifier)
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "adv2_cifar.yaml").write_text(yaml.safe_dump({
        "name": "adv2_cifar",
        "variables": {reproduce_run.RTS_VARIABLE: ""},
        "models": [{"name": "cifar_resnet20", "weights": str(weights),
                    "interpreter_options": {"rts": {"checkpoint": "${%s}" % reproduce_run.RTS_VARIABLE}}}],
        "data": {"source": str(images), "n": 2, "batch_size": 2},
        "interpreters": ["cam", "rts"],
        "attacks": [{"name": "pgd", "options": {"steps": 2}}],
        "mode": "targeted", "targets": ["benign"],
    }))
    monkeypatch.setattr(reproduce_run, "CIFAR_EXPERIMENTS", ("adv2_cifar",))
    monkeypatch.setattr(reproduce_run, "CIFAR_STUDIES", ())
    monkeypatch.setattr(rts_masker, "MASKER_SCHEDULES", {True: MaskerSchedule(fit_n=12, epochs=1, batch_size=6),
                                                        False: MaskerSchedule(fit_n=12, epochs=1, batch_size=6)})
    monkeypatch.delenv(reproduce_run.RTS_VARIABLE, raising=False)
    return {"weights": weights, "images": images, "train": train, "experiments": experiments}


def _reproduce(system, out, *extra):
    return run_cli(["reproduce", "--quick", "--experiments", str(system["experiments"]), "--weights",
                    str(system["weights"]), "--data", str(system["images"]), "--out", str(out), *extra])


def _interpreters(store) -> set[str]:
    records = [json.loads(line) for line in (store / "records.jsonl").read_text().splitlines()]
    return {r["interpreter"] for r in records if r.get("kind") == "attack" and r.get("interpreter")}


def test_reproduce_trains_the_masker_once_and_attacks_rts(cifar_system, tmp_path):
    out = tmp_path / "out"
    assert _reproduce(cifar_system, out, "--fit-data", str(cifar_system["train"])) == 0
    masker = out / rts_masker.MASKER_DIR / rts_masker.MASKER_FILE
    assert masker.is_file()
    sidecar = json.loads(masker.with_suffix(".json").read_text())
    assert sidecar["extra"]["fit_data"] == str(cifar_system["train"].resolve())
    assert _interpreters(out / "adv2_cifar") == {"cam", "rts"}
    stamp = masker.stat().st_mtime_ns
    assert _reproduce(cifar_system, out, "--fit-data", str(cifar_system["train"])) == 0  # resumed: not retrained
    assert masker.stat().st_mtime_ns == stamp


def test_without_training_images_rts_is_left_out_and_says_so(cifar_system, tmp_path, capsys):
    out = tmp_path / "out"
    # no --fit-data, and no shared cifar10/train beside this experiments folder
    assert _reproduce(cifar_system, out, "--shared", str(tmp_path)) == 0
    assert "RTS is left out: no training images" in capsys.readouterr().out
    assert not (out / rts_masker.MASKER_DIR).exists()
    assert _interpreters(out / "adv2_cifar") == {"cam"}


def test_a_degenerate_masker_is_named_with_its_area(tmp_path):
    """A masker that keeps nearly the whole image (too short a training) gets a warning saying so and what to do;
    a trained one (last decoder epoch near 40%) and one without a sidecar get none."""
    from idls.reproduce.rts_masker import DEGENERATE_AREA, degenerate_masker_warning

    def masker(name: str, areas: list[float]) -> Path:
        history = [{"phase": "selector", "epoch": 1, "total": 1.0}]
        history += [{"phase": "decoder", "epoch": i + 1, "area": area} for i, area in enumerate(areas)]
        (tmp_path / f"{name}.json").write_text(json.dumps({"history": history}))
        return tmp_path / f"{name}.safetensors"

    warning = degenerate_masker_warning(masker("short", [0.99, 0.97]))
    assert warning is not None and "keeps 97% of each image" in warning and "more images or epochs" in warning
    assert degenerate_masker_warning(masker("trained", [0.95, 0.52, 0.41])) is None
    assert degenerate_masker_warning(masker("edge", [DEGENERATE_AREA])) is None
    assert degenerate_masker_warning(tmp_path / "no_sidecar.safetensors") is None
