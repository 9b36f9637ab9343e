"""`idls attack` with a fitted universal attack (--fit-data / --perturbation) and behind a defence (--defense).

Runs without ../shared: a seeded random CIFAR ResNet-20 saved as a checkpoint, and image folders whose labels are
that model's own predictions (so every image counts as correctly classified).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from idls.models import create_model
from tests.conftest import run_cli


def _folder(path, images, labels):
    path.mkdir(parents=True)
    rows = ["file,label"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(path / f"img_{i:03d}.png")
        rows.append(f"img_{i:03d}.png,{int(label)}")
    (path / "labels.csv").write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("seams")
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    weights = root / "random_resnet20.pt"
    torch.save(model.net.state_dict(), weights)
    generator = torch.Generator().manual_seed(1)
    quantised = (torch.rand(48, 3, 32, 32, generator=generator) * 255).round() / 255  # what the PNGs hold
    labels = model.predict(quantised)
    fit = _folder(root / "fit", quantised[:32], labels[:32])
    held_out = _folder(root / "test", quantised[32:], labels[32:])
    return {"weights": str(weights), "fit": str(fit), "test": str(held_out), "root": root}


def _base(system, out):
    return ["attack", "--model", "cifar_resnet20", "--weights", system["weights"], "--data", system["test"],
            "--n", "16", "-i", "cam", "--out", str(out)]


@pytest.mark.parametrize("attack, options", [
    ("sgd-uap", ["-o", "epochs=2", "-o", "batch_size=8"]),
    ("juap", ["-o", "epochs=1", "-o", "batch_size=8", "-o", "width=4"]),  # the contract command of paper 004
])
def test_fit_then_reuse_the_saved_perturbation(system, tmp_path, attack, options):
    fitted = tmp_path / "fitted"
    assert run_cli(_base(system, fitted) + ["--attack", attack, "--fit-data", system["fit"], "--fit-n", "32",
                                            *options]) == 0
    artifact = fitted / "universal.safetensors"
    meta = json.loads((fitted / "universal.safetensors.json").read_text())
    assert artifact.is_file() and meta["attack"] == attack and meta["fit_size"] == 32
    assert meta["options"]["batch_size"] == 8 and meta["model"] == "cifar_resnet20" and len(meta["weights_sha256"]) == 64
    summary = json.loads((fitted / "summary.json").read_text())["attacks"][attack]["cam"]
    assert "fooling_ratio" in summary and summary["n"] == 16 and summary["linf"] <= 10 / 255 + 1e-6
    assert not list((fitted / "fitted").glob("*.checkpoint.safetensors"))  # removed once the fit completed

    reused = tmp_path / "reused"
    assert run_cli(_base(system, reused) + ["--attack", attack, "--perturbation", str(artifact)]) == 0
    first = load_file(str(next((fitted / "tensors").rglob("*.safetensors"))))["x_adv"]
    second = load_file(str(next((reused / "tensors").rglob("*.safetensors"))))["x_adv"]
    assert torch.equal(first, second)  # the same perturbation, applied again from its file


def test_attack_behind_a_defence(system, tmp_path):
    out = tmp_path / "defended"
    assert run_cli(_base(system, out) + ["--attack", "pgd", "--steps", "3", "--defense", "bit-depth:bits=4"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and all(r["linf"] <= 8 / 255 + 1e-6 for r in records)


@pytest.mark.parametrize("extra, fragment", [
    (["--attack", "sgd-uap"], "pass --fit-data FOLDER"),
    (["--attack", "pgd", "--fit-data", "embedded-train"], "apply to universal attacks"),
    (["--attack", "sgd-uap", "--perturbation", "/no/such.safetensors"], "does not exist"),
    (["--attack", "pgd", "--defense", "bit-depth:bits=12"], "bits as an integer from 1 to 8"),
    (["--attack", "pgd", "--defense", "blur"], "unknown defence 'blur'"),
])
def test_seam_mistakes_are_one_line_errors(system, tmp_path, extra, fragment, capsys):
    assert run_cli(_base(system, tmp_path / "x") + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err


def test_fit_data_equal_to_the_evaluation_data_is_refused(system, tmp_path, capsys):
    args = _base(system, tmp_path / "x") + ["--attack", "sgd-uap", "--fit-data", system["test"]]
    assert run_cli(args) == 2
    assert "--fit-data and --data are the same" in capsys.readouterr().err


def test_evaluation_images_inside_the_fit_data_are_refused(system, tmp_path, capsys):
    """A fit folder holding some of the evaluation images (under other file names) is caught by content."""
    import shutil

    fit = tmp_path / "fit_with_test"
    shutil.copytree(system["fit"], fit)
    rows = (fit / "labels.csv").read_text().splitlines()
    test_rows = (Path(system["test"]) / "labels.csv").read_text().splitlines()[1:3]
    for i, row in enumerate(test_rows):
        name, label = row.split(",")
        shutil.copy(Path(system["test"]) / name, fit / f"copy_{i}.png")
        rows.append(f"copy_{i}.png,{label}")
    (fit / "labels.csv").write_text("\n".join(rows) + "\n")
    args = _base(system, tmp_path / "x") + ["--attack", "sgd-uap", "--fit-data", str(fit), "-o", "epochs=1"]
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert "overlap the fit data" in err and "\n" not in err


def test_asking_for_more_images_than_there_are_says_how_many_are_used(system, tmp_path, capsys):
    args = ["attack", "--model", "cifar_resnet20", "--weights", system["weights"], "--data", system["test"],
            "--n", "100000", "-i", "cam", "--attack", "pgd", "--steps", "1", "--out", str(tmp_path / "many")]
    assert run_cli(args) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "classifies only 16 of the images correctly (asked for data.n = 100000); attacking those 16" in err
