"""The `idls` command end to end: listing, one-line user errors, attack outputs, explain."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli


def test_list_names_every_registry(capsys):
    assert run_cli(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar_resnet20", "resnet50", "embedded_cnn", "grad", "cam", "rts", "mask", "pgd"):
        assert name in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["attack", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["attack", "--model", "cifar_resnet20", "--weights", "/does/not/exist.th", "--data", "x"], "does not exist"),
        (["attack", "--model", "cifar_resnet20", "--weights", "random", "--data", "/no/such/dir"], "/no/such/dir"),
        (["attack", "--model", "cifar_resnet20"], "needs --weights"),
        (["attack", "--attack", "nope", "--model", "cifar_resnet20", "--weights", "random", "--data", "x"], None),
        (["attack", "--device", "cuda:7", "--model", "cifar_resnet20", "--weights", "random"], None),
        (["attack", "--attack", "pgd", "--target", "patch"], "--target applies to the attacks that steer the map"),
        (["attack", "--attack", "pgd", "--framework", "cw"], "use --attack cw"),
        (["attack", "--attack", "adv2", "--framework", "fgsm"], "unknown --framework 'fgsm'"),
        (["attack", "--attack", "adv2", "--target", "square"], "unknown --target 'square'"),
        (["attack", "--attack", "adv2", "--target", "/no/maps.safetensors"], "does not exist"),
        (["attack", "--attack", "adv2", "-o", "lam"], "not KEY=VALUE"),
        (["attack", "--attack", "adv2", "--mode", "untargeted", "-i", "cam", "--n", "2"], "the joint attacks are targeted"),
        # bad attack options fail before the model is loaded (here: before "needs --weights")
        (["attack", "--attack", "adv2", "-o", "mask_region_weight=-1", "--model", "cifar_resnet20"],
         "mask_region_weight must be >= 0"),
        (["attack", "--attack", "pgd", "-o", "bogus=1", "--model", "cifar_resnet20"], "bogus"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(args, fragment, capsys):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    if fragment:
        assert fragment in err


def test_checkpoint_of_another_architecture_is_refused(capsys, tmp_path):
    from tests.conftest import CIFAR_LOSSLESS, RESNET32

    if not RESNET32.exists():
        pytest.skip("shared data absent")
    code = run_cli(["attack", "--model", "cifar_resnet20", "--weights", str(RESNET32), "--data", str(CIFAR_LOSSLESS),
                    "--out", str(tmp_path / "run")])
    assert code == 2
    assert "does not fit model 'cifar_resnet20'" in capsys.readouterr().err


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _adversarial_images(out, records) -> torch.Tensor:
    """The images each record's ``adv_path`` (``file#key:row``) points to."""
    from safetensors.torch import load_file

    files: dict = {}
    rows = []
    for record in records:
        path, where = record["adv_path"].split("#")
        key, row = where.split(":")
        if path not in files:
            files[path] = load_file(str(out / path))
        rows.append(files[path][key][int(row)])
    return torch.stack(rows)


def _clean_images(data_dir, records) -> tuple[torch.Tensor, dict[str, int], list[str]]:
    """The records' clean images read from the data folder, the labels.csv labels and the file order."""
    import csv

    import numpy as np
    from PIL import Image

    rows = list(csv.DictReader((data_dir / "labels.csv").read_text().splitlines()))
    labels = {r["file"]: int(r["label"]) for r in rows}
    images = [np.asarray(Image.open(data_dir / r["image_id"]).convert("RGB")) for r in records]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, labels, [r["file"] for r in rows]


def test_attack_writes_records_summary_and_report(tmp_path, resnet20_path, cifar_lossless_dir):
    """Every record is checked against an independent recomputation from the files it points to."""
    from idls.interpreters import create_interpreter
    from idls.models import create_model

    out = tmp_path / "run"
    code = run_cli([
        "attack", "--attack", "pgd", "--model", "cifar_resnet20", "--weights", str(resnet20_path),
        "--data", str(cifar_lossless_dir), "--n", "6", "-i", "cam", "-i", "grad", "--steps", "10", "--out", str(out),
    ])
    assert code == 0
    records = _records(out)
    assert len(records) == 12  # 6 images x 2 interpreters
    required = {"image_id", "true_label", "target_label", "pred_label", "success", "confidence", "linf",
                "map_l1", "map_l2", "map_iou", "noise_rate", "seconds"}
    assert all(required <= record.keys() for record in records)
    model = create_model("cifar_resnet20", weights=str(resnet20_path))
    x_adv = _adversarial_images(out, records)
    x, labels, _ = _clean_images(cifar_lossless_dir, records)
    predicted = model.predict(x_adv)  # the oracle: the real model on the saved adversarial images
    linf = (x_adv - x).flatten(1).abs().amax(1)
    for i, record in enumerate(records):
        assert record["true_label"] == labels[record["image_id"]]
        assert record["target_label"] != record["true_label"]
        assert record["pred_label"] == int(predicted[i])
        assert record["success"] == (int(predicted[i]) == record["target_label"])
        assert record["linf"] == pytest.approx(float(linf[i]), abs=1e-6)
        assert 0 < float(linf[i]) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # map distances: each interpreter's map of the saved adversarial image vs its map of the clean image
    for name in ("cam", "grad"):
        rows = [i for i, r in enumerate(records) if r["interpreter"] == name]
        assert len(rows) == 6
        interpreter = create_interpreter(name, model)
        distance = (interpreter.attribute(x_adv[rows]) - interpreter.attribute(x[rows])).abs().flatten(1).mean(1)
        torch.testing.assert_close(torch.tensor([records[i]["map_l1"] for i in rows]), distance, rtol=0, atol=1e-5)
    # the summary's rate is the oracle's, and 10 PGD steps at 8/255 fool a CIFAR ResNet-20 on (nearly) every image
    summary = json.loads((out / "summary.json").read_text())
    cam = summary["attacks"]["pgd"]["cam"]
    cam_rows = [i for i, r in enumerate(records) if r["interpreter"] == "cam"]
    oracle_rate = sum(int(predicted[i]) == records[i]["target_label"] for i in cam_rows) / 6
    assert cam["n"] == 6 and cam["attack_success_rate"] == pytest.approx(oracle_rate)
    assert oracle_rate >= 5 / 6
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html


def test_explain_writes_maps_and_overlays(tmp_path, resnet20_path, cifar_lossless_dir):
    out = tmp_path / "explain"
    code = run_cli([
        "explain", "--model", "cifar_resnet20", "--weights", str(resnet20_path), "--data", str(cifar_lossless_dir),
        "--n", "3", "-i", "cam", "-i", "gradcam", "--out", str(out),
    ])
    assert code == 0
    from safetensors.torch import load_file

    maps = load_file(str(out / "maps.safetensors"))
    assert maps["map/cam"].shape == (3, 8, 8)
    assert len(list(out.glob("*.png"))) == 6


def test_joint_attack_with_framework_and_per_image_target_file(tmp_path, resnet20_path, cifar_lossless_dir):
    """--framework and --target FILE reach the attack: one target map per image, indexed by data-set position
    (4 images in batches of 3), checked by recomputing each record's distance from the saved images."""
    from safetensors.torch import save_file

    from idls.attacks.target_maps import patch_maps
    from idls.interpreters import create_interpreter
    from idls.models import create_model

    n = 4
    target_maps = patch_maps(n, (8, 8), seed=3)  # CAM on ResNet-20: 8 x 8 maps
    assert all(not torch.equal(target_maps[i], target_maps[j]) for i in range(n) for j in range(i))
    maps = tmp_path / "targets.safetensors"
    save_file({"maps": target_maps}, str(maps))
    model = create_model("cifar_resnet20", weights=str(resnet20_path))
    cam = create_interpreter("cam", model)
    adversarial = {}
    for framework in ("pgd", "cw"):
        out = tmp_path / framework
        code = run_cli([
            "attack", "--attack", "adv2", "--framework", framework, "--target", str(maps), "--model",
            "cifar_resnet20", "--weights", str(resnet20_path), "--data", str(cifar_lossless_dir), "--n", str(n),
            "-i", "cam", "--batch-size", "3", "-o", "steps=6", "-o", "warm_start=4", "--out", str(out),
        ])
        assert code == 0
        records = _records(out)
        assert len(records) == n
        x_adv = _adversarial_images(out, records)
        x, _, order = _clean_images(cifar_lossless_dir, records)
        positions = [order.index(r["image_id"]) for r in records]
        assert sorted(positions) == list(range(n))
        assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        # the distance to the target map is the distance to *this image's* map in the file
        seen = cam.attribute(x_adv)
        own = (seen - target_maps[positions]).abs().flatten(1).mean(1)
        torch.testing.assert_close(torch.tensor([r["map_l1_to_target"] for r in records]), own, rtol=0, atol=1e-5)
        shifted = (seen - target_maps[[(p + 1) % n for p in positions]]).abs().flatten(1).mean(1)
        assert float((shifted - own).abs().max()) > 1e-3
        for i, record in enumerate(records):
            assert record["pred_label"] == int(model.predict(x_adv[i : i + 1])[0])
        adversarial[framework] = x_adv
    # the framework changed the attack: sign steps (PGD) and Adam on C&W's loss give other images
    assert float((adversarial["pgd"] - adversarial["cw"]).abs().max()) > 1e-3


def test_target_file_with_too_few_maps_is_a_user_error(tmp_path, resnet20_path, cifar_lossless_dir, capsys):
    from safetensors.torch import save_file

    maps = tmp_path / "two.safetensors"
    save_file({"maps": torch.rand(2, 8, 8)}, str(maps))
    code = run_cli([
        "attack", "--attack", "adv2", "--target", str(maps), "--model", "cifar_resnet20", "--weights",
        str(resnet20_path), "--data", str(cifar_lossless_dir), "--n", "4", "-i", "cam", "-o", "steps=1",
        "-o", "warm_start=1", "--out", str(tmp_path / "run"),
    ])
    assert code == 2
    assert "holds 2 maps" in capsys.readouterr().err


def test_help_names_the_ray_extra(capsys, monkeypatch):
    """Rich markup must not swallow the extra's brackets: users copy this install command."""
    monkeypatch.setenv("COLUMNS", "200")
    for command in ("reproduce", "attack", "run"):
        assert run_cli([command, "--help"]) == 0
        assert "idls[ray]" in capsys.readouterr().out, command
