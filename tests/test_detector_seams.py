"""Detectors in experiments and on the command line: configuration errors, per-image fields, fitting once, reuse."""

from __future__ import annotations

import json

import pytest

from idls.analysis.store_reader import load_store
from idls.errors import UserError
from idls.evaluate import summarize
from idls.experiments import run_experiment
from idls.experiments.config import Experiment, experiment_from_mapping
from tests.conftest import run_cli
from tests.detector_helpers import register_brightness, register_differentiable, register_supervised

NAME = register_brightness()
SUPERVISED = register_supervised()
DIFFERENTIABLE = register_differentiable()

BASE = {
    "name": "guarded",
    "models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 0}],
    "data": {"source": "embedded", "n": 6, "pool": 200, "batch_size": 3, "fit_source": "embedded-train", "fit_n": 64},
    "interpreters": ["cam"],
    "attacks": [{"name": "pgd", "options": {"steps": 3}}],
    "mode": "untargeted",
}


def _attack_records(out):
    return [r for r in load_store(out).records if r["kind"] == "attack"]


@pytest.mark.parametrize("detectors, message", [
    ("fs", "must be a list"),
    ([{"name": NAME, "labels": "x"}], "unknown key 'labels'"),
    ([{"name": NAME}, {"name": NAME}], "used twice"),
    ([{"name": NAME, "label": "a b"}], "label"),
    ([{"name": NAME, "options": {"fpr": 2}}], "fpr"),
    ([{"name": NAME, "fit_attack": "pgd"}], "benign images only"),
    ([{"name": "no-such-detector"}], "unknown detector"),
    ([{"path": "missing.safetensors"}], "does not exist"),
])
def test_bad_detector_entries_are_one_line_errors(detectors, message):
    with pytest.raises(UserError, match=message):
        experiment_from_mapping({**BASE, "detectors": detectors})


def test_detectors_need_fit_images():
    data = {k: v for k, v in BASE["data"].items() if k not in ("fit_source", "fit_n")}
    with pytest.raises(UserError, match="data.fit_source"):
        experiment_from_mapping({**BASE, "data": data, "detectors": [NAME]})


def test_configuration_without_detectors_is_unchanged():
    """Stores written before detectors existed resume: the resolved configuration has no detectors key."""
    experiment = experiment_from_mapping(BASE)
    assert "detectors" not in experiment.to_dict()
    guarded = experiment_from_mapping({**BASE, "detectors": [NAME]})
    assert Experiment.from_dict(guarded.to_dict()).to_dict() == guarded.to_dict()


def test_records_carry_detector_fields_and_the_fit_is_saved_once(tmp_path):
    experiment = experiment_from_mapping({**BASE, "detectors": [NAME, {"name": NAME, "label": "loose",
                                                                       "options": {"fpr": 0.5}}]})
    run_experiment(experiment, tmp_path, progress=False)
    records = _attack_records(tmp_path)
    fitted = sorted(p.name for p in (tmp_path / "fitted").glob("*.safetensors"))
    assert fitted == sorted([f"detector-{NAME}-m0.safetensors", "detector-loose-m0.safetensors"])
    for record in records:
        for label in (NAME, "loose"):
            prefix = f"detector.{label}."
            assert record[prefix + "evaded"] == (record["success"] and not record[prefix + "flagged"])
    # a looser threshold (higher FPR) flags at least as many benign images: same scores, lower threshold
    assert sum(r["detector.loose.benign_flagged"] for r in records) >= sum(
        r[f"detector.{NAME}.benign_flagged"] for r in records)
    summary = summarize(records)
    assert summary[f"detector.{NAME}.flagged"] == pytest.approx(
        sum(r[f"detector.{NAME}.flagged"] for r in records) / len(records))
    assert 0.0 <= summary[f"detector.{NAME}.auc"] <= 1.0
    stamp = (tmp_path / "fitted" / f"detector-{NAME}-m0.safetensors").stat().st_mtime_ns
    again = run_experiment(experiment, tmp_path, progress=False)  # resumes: nothing refitted, nothing rerun
    assert again.units_run == 0
    assert (tmp_path / "fitted" / f"detector-{NAME}-m0.safetensors").stat().st_mtime_ns == stamp


def test_cli_fits_a_detector_and_the_attack_uses_the_file(tmp_path):
    path = tmp_path / "b.safetensors"
    assert run_cli(["detector", "fit", NAME, "--fit-data", "embedded-train", "--fit-n", "40", "-o", "fpr=0.1",
                    "--weights", "random", "--out", str(path)]) == 0
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["detector"] == NAME and meta["options"]["fpr"] == 0.1 and meta["model"] == "embedded_cnn"
    out = tmp_path / "attack"
    assert run_cli(["attack", "--attack", "pgd", "--n", "3", "-i", "cam", "-o", "steps=2", "--detector", str(path),
                    "--weights", "random", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "detector.b.flagged" in summary["attacks"]["pgd"]["cam"]


def test_cli_errors_for_detectors(tmp_path, capsys):
    assert run_cli(["attack", "--attack", "pgd", "--n", "2", "--detector", NAME, "--out", str(tmp_path / "a")]) == 2
    assert "--fit-data" in capsys.readouterr().err
    assert run_cli(["detector", "fit", NAME, "--fit-data", "embedded-train", "--out", str(tmp_path / "d.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert run_cli(["attack", "--attack", "pgd", "--n", "2", "--detector", str(tmp_path / "none.safetensors"),
                    "--out", str(tmp_path / "b")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_supervised_detectors_share_their_adversarial_fit_images(tmp_path, monkeypatch):
    """Two supervised detectors with the same fit attack: the attack runs once; its images are saved and reused."""
    import idls.experiments.detector_fit as detector_fit

    calls = []
    real = detector_fit.adversarial_fit_images
    monkeypatch.setattr(detector_fit, "adversarial_fit_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    # a random-weight model is almost constant: a large budget makes sure some fit images flip
    fit_attack = {"name": "pgd", "options": {"steps": 20, "mode": "untargeted", "epsilon": 0.5}}
    config = {**BASE, "detectors": [{"name": SUPERVISED, "label": "s1", "fit_attack": fit_attack},
                                    {"name": SUPERVISED, "label": "s2", "fit_attack": fit_attack,
                                     "options": {"fpr": 0.2}}]}
    run_experiment(experiment_from_mapping(config), tmp_path, progress=False)
    assert len(calls) == 1
    assert len(list((tmp_path / "fitted").glob("fit-adversarial-*.safetensors"))) == 1
    records = _attack_records(tmp_path)
    assert records[0]["detector.s1.name"] == SUPERVISED


def test_supervised_detector_without_fit_attack_is_refused():
    with pytest.raises(UserError, match="supervised"):
        experiment_from_mapping({**BASE, "detectors": [SUPERVISED]})


def test_detection_tables_count_each_image_once_and_the_report_shows_them(tmp_path):
    from idls.report.detection_tables import detection_tables
    from idls.report.experiment_report import write_experiment_report

    config = {**BASE, "interpreters": ["cam", "gradcam"], "evaluate_all_interpreters": True,
              "detectors": [{"name": NAME, "options": {"fpr": 0.3}}]}
    run_experiment(experiment_from_mapping(config), tmp_path, progress=False)
    records = _attack_records(tmp_path)
    tables = {t.name: t for t in detection_tables(records)}
    assert set(tables) == {"detection", "detection_accuracy", "detection_auc", "evasion"}
    row = tables["detection"].rows[0]
    per_image = {r["image_id"]: r[f"detector.{NAME}.flagged"] for r in records}
    assert len(records) == 2 * len(per_image)  # two evaluated interpreters per image
    assert row["pgd"] == pytest.approx(sum(per_image.values()) / len(per_image))
    accuracy = tables["detection_accuracy"].rows[0]["pgd"]
    assert accuracy == pytest.approx((row["pgd"] + 1 - row["benign FPR"]) / 2)
    write_experiment_report(tmp_path)
    assert "Detection" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "tables" / "detection.csv").is_file()


def test_cli_refuses_a_supervised_detector_without_its_fit_attack(tmp_path, capsys):
    assert run_cli(["detector", "fit", SUPERVISED, "--fit-data", "embedded-train", "--weights", "random",
                    "--out", str(tmp_path / "s.safetensors")]) == 2
    assert "--fit-attack" in capsys.readouterr().err
    assert not (tmp_path / "s.safetensors").exists()


def test_cli_fits_a_supervised_detector_with_its_fit_attack(tmp_path):
    path = tmp_path / "s.safetensors"
    assert run_cli(["detector", "fit", SUPERVISED, "--fit-data", "embedded-train", "--fit-n", "48", "--weights",
                    "random", "--fit-attack", "pgd", "--fit-attack-option", "epsilon=0.5", "--fit-attack-option",
                    "steps=20", "--fit-attack-option", "mode=untargeted", "--out", str(path)]) == 0
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["fit"]["n_adversarial"] > 0 and meta["fit"]["n_calibration"] > 0


def test_version_flag_prints_the_package_version(capsys):
    from idls import __version__

    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"idls {__version__}"


def test_an_attack_naming_an_unknown_detector_is_refused():
    config = {**BASE, "detectors": [NAME],
              "attacks": [{"name": "ensemble-adv2", "options": {"detector": "no-such-label"}}]}
    with pytest.raises(UserError, match="not a label of detectors"):
        experiment_from_mapping(config)


def test_an_attack_naming_a_detector_of_the_experiment_gets_it_fitted(tmp_path):
    """The workspace hands the fitted detector object to the attack option that names its label."""
    from idls.experiments.cells import expand_cells
    from idls.experiments.detector_fit import fit_detectors
    from idls.experiments.execute import Workspace

    config = {**BASE, "interpreters": ["cam"], "detectors": [{"name": DIFFERENTIABLE, "label": "bright"}],
              "attacks": [{"name": "ensemble-adv2", "options": {"detector": "bright", "steps": 2}}], "mode": "targeted"}
    experiment = experiment_from_mapping(config)
    workspace = Workspace(experiment)
    workspace.experiment = type(experiment)(**{**experiment.__dict__, "detectors": fit_detectors(workspace, tmp_path)})
    [cell] = expand_cells(workspace.experiment)
    assert cell.variant == "vs bright"  # recorded with every result: the claims pair the attack with this detector
    attack = workspace.attack(cell)
    assert attack.detector is workspace.detector(0, workspace.experiment.detectors[0])
    assert attack.detector.fitted
