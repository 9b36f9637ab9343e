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
        (["attack", "--attack", "pgd", "--target", "patch"], "--target applies to the joint attacks"),
        (["attack", "--attack", "pgd", "--framework", "cw"], "use --attack cw"),
        (["attack", "--attack", "adv2", "--framework", "fgsm"], "unknown --framework 'fgsm'"),
        (["attack", "--attack", "adv2", "--target", "square"], "unknown --target 'square'"),
        (["attack", "--attack", "adv2", "--target", "/no/maps.safetensors"], "does not exist"),
        (["attack", "--attack", "adv2", "-o", "lam"], "not KEY=VALUE"),
        (["attack", "--attack", "adv2", "--mode", "untargeted", "-i", "cam", "--n", "2"], "targeted attack"),
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


def test_checkpoint_of_another_architecture_is_refused(capsys):
    from tests.conftest import RESNET32

    if not RESNET32.exists():
        pytest.skip("shared data absent")
    code = run_cli(["attack", "--model", "cifar_resnet20", "--weights", str(RESNET32), "--data", "x"])
    assert code == 2
    assert "does not fit model 'cifar_resnet20'" in capsys.readouterr().err


def test_attack_writes_records_summary_and_report(tmp_path, resnet20_path, cifar_lossless_dir):
    out = tmp_path / "run"
    code = run_cli([
        "attack", "--attack", "pgd", "--model", "cifar_resnet20", "--weights", str(resnet20_path),
        "--data", str(cifar_lossless_dir), "--n", "6", "-i", "cam", "-i", "grad", "--steps", "10", "--out", str(out),
    ])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 12  # 6 images x 2 interpreters
    required = {"image_id", "true_label", "target_label", "pred_label", "success", "confidence", "linf",
                "map_l1", "map_l2", "map_iou", "noise_rate", "seconds"}
    for record in records:
        assert required <= record.keys()
        assert record["linf"] <= 8 / 255 + 1e-6
        assert record["target_label"] != record["true_label"]
        assert record["success"] == (record["pred_label"] == record["target_label"])
    summary = json.loads((out / "summary.json").read_text())
    cam = summary["attacks"]["pgd"]["cam"]
    assert cam["n"] == 6 and 0 <= cam["attack_success_rate"] <= 1
    assert cam["attack_success_rate"] == pytest.approx(sum(r["success"] for r in records if r["interpreter"] == "cam") / 6)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    # the adversarial images on disk are the ones the records describe
    from safetensors.torch import load_file

    path, where = records[0]["adv_path"].split("#")
    key, row = where.split(":")
    x_adv = load_file(str(out / path))[key][int(row)]
    assert x_adv.shape == (3, 32, 32) and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1


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


@pytest.mark.parametrize("framework", ["pgd", "cw"])
def test_joint_attack_with_framework_and_per_image_target_file(framework, tmp_path, resnet20_path, cifar_lossless_dir):
    """--framework and --target FILE reach the attack: one target map per image, indexed by data-set position."""
    from safetensors.torch import save_file

    from idls.attacks.target_maps import patch_maps

    n = 4
    maps = tmp_path / "targets.safetensors"
    save_file({"maps": patch_maps(n, (8, 8), seed=3)}, str(maps))  # CAM on ResNet-20: 8 x 8 maps
    out = tmp_path / framework
    code = run_cli([
        "attack", "--attack", "adv2", "--framework", framework, "--target", str(maps), "--model", "cifar_resnet20",
        "--weights", str(resnet20_path), "--data", str(cifar_lossless_dir), "--n", str(n), "-i", "cam",
        "--batch-size", "3", "-o", "steps=6", "-o", "warm_start=4", "--out", str(out),
    ])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == n
    for record in records:
        assert record["framework"] == framework and record["target"] == str(maps)
        assert record["attack"] == "adv2" and record["interpreter"] == "cam"
        assert record["linf"] <= 8 / 255 + 1e-6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["framework"] == framework and summary["config"]["steps"] == 6


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
