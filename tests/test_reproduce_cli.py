"""`idls run`, `idls report` and `idls reproduce` end to end on tiny random-weight grids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from idls.errors import UserError
from idls.reproduce.run import CIFAR_EXPERIMENTS, EMBEDDED_EXPERIMENTS, bundled_experiments_dir, plan_reproduction
from tests.conftest import run_cli

#: PGD and ADV² (benign and patch targets) against CAM on a random-weight embedded CNN, two batches
TINY = {
    "models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 0}],
    "data": {"source": "embedded", "n": 4, "pool": 200, "batch_size": 2},
    "interpreters": ["cam"],
    "attacks": [{"name": "pgd", "options": {"steps": 6}}, {"name": "adv2", "options": {"steps": 6, "warm_start": 4}}],
    "targets": ["benign", "patch"],
    "quick": {"data": {"n": 2}},
}



def write_experiment(path: Path, name: str, **changes) -> Path:
    path.write_text(yaml.safe_dump({"name": name, **TINY, **changes}))
    return path


def records_of(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / "records.jsonl").read_text().splitlines()]


def test_run_then_rerun_resumes_and_report_writes_tables(tmp_path, capsys):
    experiment = write_experiment(tmp_path / "tiny.yaml", "tiny")
    out = tmp_path / "store"
    assert run_cli(["run", str(experiment), "--out", str(out)]) == 0
    records = records_of(out)
    # 1 PGD cell + 2 ADV² cells (benign, patch), 4 images, one interpreter each
    assert {(r["attack"], r["target"]) for r in records} == {("pgd", "none"), ("adv2", "benign"), ("adv2", "patch")}
    assert len(records) == 12
    assert all(r["linf"] <= 8 / 255 + 1e-6 for r in records)
    assert (out / "report.html").is_file() and (out / "experiment.yaml").is_file()
    assert run_cli(["run", str(experiment), "--out", str(out)]) == 0
    assert "0 unit(s) run" in capsys.readouterr().out
    assert len(records_of(out)) == 12  # nothing duplicated
    assert run_cli(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.html").is_file()
    assert any((tmp_path / "again" / "tables").glob("*.csv"))


def test_quick_and_set_override_change_the_grid(tmp_path):
    experiment = write_experiment(tmp_path / "tiny.yaml", "tiny")
    out = tmp_path / "quick"
    assert run_cli(["run", str(experiment), "--out", str(out), "--quick", "--set", "targets=[benign]", "--no-report"]) == 0
    records = records_of(out)
    assert len(records) == 4  # 2 images (quick) x (PGD + ADV²-benign)
    assert not (out / "report.html").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "/no/such.yaml"], "does not exist"),
        (["report", "/no/such/dir"], "is not a folder"),
        (["reproduce", "--weights", "/no/ckpt.th"], "does not exist"),
        (["reproduce", "--shared", "/no/dir"], "is not a folder"),
    ],
)
def test_user_errors_are_one_line(args, fragment, capsys):
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err


def test_reproduction_plan_picks_cifar_only_with_a_checkpoint(tmp_path):
    directory = bundled_experiments_dir()
    lone = tmp_path / "checkout" / "experiments"  # a copy with no shared data beside it
    shutil.copytree(directory, lone)
    system, files, overrides = plan_reproduction(lone)
    assert system == "embedded_cnn" and [f.stem for f in files] == list(EMBEDDED_EXPERIMENTS)
    assert overrides == {}
    with pytest.raises(UserError, match="--shared .* has no"):  # asked for shared data that is not there
        plan_reproduction(directory, shared=tmp_path)
    with pytest.raises(UserError, match="--weights FILE or --shared DIR"):
        plan_reproduction(lone, data="cifar10")
    checkpoint = tmp_path / "ckpt.th"
    checkpoint.write_bytes(b"")
    system, files, overrides = plan_reproduction(directory, weights=checkpoint, data="cifar10")
    assert system == "cifar_resnet20" and [f.stem for f in files] == list(CIFAR_EXPERIMENTS)
    assert overrides["models.cifar_resnet20.weights"] == str(checkpoint.resolve())
    assert overrides["data.source"] == "cifar10"
    with pytest.raises(UserError, match="--rts"):
        plan_reproduction(directory, weights=checkpoint, rts=tmp_path / "missing.safetensors")


def write_stand_in_experiments(experiments: Path) -> Path:
    """Tiny stand-ins for the five embedded experiment files (random weights, few images and steps)."""
    experiments.mkdir(parents=True, exist_ok=True)
    write_experiment(experiments / "embedded.yaml", "embedded")
    write_experiment(experiments / "embedded_targets.yaml", "embedded_targets", attacks=["adv2"],
                     attack_options={"adv2": {"steps": 4, "warm_start": 2}}, targets=["patch"])
    write_experiment(experiments / "juap_embedded.yaml", "juap_embedded", mode="untargeted",
                     data={**TINY["data"], "fit_source": "embedded-train", "fit_n": 16},
                     attacks=[{"name": "sgd-uap", "options": {"epochs": 1}},
                              {"name": "juap", "options": {"epochs": 1, "width": 4}}])
    write_experiment(experiments / "detection_embedded.yaml", "detection_embedded",
                     data={**TINY["data"], "fit_source": "embedded-train", "fit_n": 16}, targets=["benign"],
                     detectors=[{"name": "feature-squeezing", "label": "fs-bits2",
                                 "options": {"squeezers": ["bit-depth:bits=2"]}}])
    write_experiment(experiments / "robust_embedded.yaml", "robust_embedded", mode="untargeted", interpreters=["cam"],
                     data={**TINY["data"], "fit_source": "embedded-train", "fit_n": 16},
                     models=[{"name": "embedded_cnn", "weights": "pretrained"},
                             {"name": "embedded_cnn", "weights": "pretrained",
                              "training": "interpretation-robust:epochs=1,steps=1,batch_size=16"}],
                     attacks=[{"name": "pgd", "options": {"steps": 2, "epsilon": 0.03}},
                              {"name": "interpretation-pgd", "options": {"steps": 2, "epsilon": 0.03}}])
    return experiments


def test_reproduce_writes_scorecard_and_report(tmp_path, monkeypatch):
    """The whole pipeline on stand-in experiment files: stores per experiment, scorecard.json, report."""
    import idls.reproduce.run as reproduce_run

    monkeypatch.setattr(reproduce_run, "EMBEDDED_STUDIES", ())  # the AID study has its own (slow) test
    experiments = write_stand_in_experiments(tmp_path / "experiments")
    out = tmp_path / "reproduce"
    code = run_cli(["reproduce", "--quick", "--experiments", str(experiments), "--out", str(out)])
    assert code == 0
    assert (out / "embedded" / "records.jsonl").is_file() and (out / "embedded_targets" / "records.jsonl").is_file()
    scorecard = json.loads((out / "scorecard.json").read_text())
    assert scorecard and all({"claim", "paper", "measured", "paper_value", "pass"} <= row.keys() for row in scorecard)
    by_id = {row["id"]: row for row in scorecard}
    assert by_id["001-obs1"]["pass"] is not None  # PGD and ADV² ran on the same images
    assert by_id["001-obs7"]["pass"] is None  # no transfer records: "not run", never PASS
    assert by_id["004-fr"]["pass"] is not None and by_id["004-maps"]["pass"] is not None  # JUAP vs SGD-UAP
    assert by_id["004-jap"]["pass"] is None
    assert by_id["001-obs3"]["pass"] is not None  # PGD and ADV² under feature squeezing
    assert by_id["000-detector"]["pass"] is None
    assert by_id["000-robust"]["pass"] is not None  # normal and interpretation-robust model under both attacks
    assert (out / "robust_embedded" / "trained").is_dir()
    html = (out / "report.html").read_text()
    assert "scorecard" in html.lower()
    run = json.loads((out / "reproduce.json").read_text())
    assert run["system"] == "embedded_cnn" and run["claims"] == len(scorecard) and run["invocations"] == 1
    assert set(run["stores"]) == {"embedded", "embedded_targets", "juap_embedded", "detection_embedded", "robust_embedded"}
    assert all(store["complete_cells"] == store["cells"] > 0 for store in run["stores"].values())
    assert all(row["settled"] is (row["pass"] is not None) for row in scorecard)  # a whole run settles what it measured
    # some cells of one experiment: the others are left, and no verdict is settled unless it fails on complete cells
    partial = tmp_path / "partial"
    assert run_cli(["reproduce", "--quick", "--experiments", str(experiments), "--out", str(partial),
                    "--only", "embedded", "--cells", "attack=pgd"]) == 0
    stores = json.loads((partial / "reproduce.json").read_text())["stores"]
    assert stores["embedded"]["complete_cells"] == 1 < stores["embedded"]["cells"]
    assert {r["attack"] for r in records_of(partial / "embedded")} == {"pgd"}
    rows = json.loads((partial / "scorecard.json").read_text())
    assert not any(row["settled"] for row in rows if row["pass"] is not False)


def test_reproduction_runs_on_any_registered_cifar_model(tmp_path):
    """--model renames the bundled CIFAR files' model; every experiment then resolves to it and its checkpoint."""
    from idls.experiments.config import load_experiment

    directory = bundled_experiments_dir()
    shared = tmp_path / "shared"  # a stand-in shared-data folder: the files only need to exist here
    for name in ("models/resnet20-12fca82f.th", "models/resnet32-d509ac18.th", "images/labels.csv",
                 "train/labels.csv"):
        (shared / "cifar10" / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / "cifar10" / name).write_text("")
    checkpoint = tmp_path / "resnet32.th"
    checkpoint.write_bytes(b"")
    system, files, overrides = plan_reproduction(directory, weights=checkpoint, model="cifar_resnet32", shared=shared)
    assert system == "cifar_resnet32"
    for path in files:
        experiment = load_experiment(path, overrides)
        assert {m.name for m in experiment.models} == {"cifar_resnet32"}, path.stem  # every entry (robust_cifar: 3)
        assert {m.weights for m in experiment.models} == {str(checkpoint.resolve())}
    with pytest.raises(UserError, match="--model cifar_resnet32 needs its checkpoint: pass --weights FILE"):
        plan_reproduction(directory, model="cifar_resnet32")
    with pytest.raises(UserError, match="runs on CIFAR-10 models: cifar_resnet110, cifar_resnet20"):
        plan_reproduction(directory, weights=checkpoint, model="resnet50")
    with pytest.raises(UserError, match="unknown model 'resnet21'"):
        plan_reproduction(directory, weights=checkpoint, model="resnet21")
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="--fit-data and --data are the same"):
        plan_reproduction(directory, weights=checkpoint, data=str(tmp_path / "images"),
                          fit_data=str(tmp_path / "images"))
    with pytest.raises(UserError, match="--fit-data /no/train is not a folder"):
        plan_reproduction(directory, weights=checkpoint, fit_data="/no/train")


def test_run_file_keeps_the_time_of_earlier_invocations():
    """A reproduction resumed or extended with --only adds its wall time to the earlier invocations' instead of
    overwriting it; a file of the other schedule (quick vs full) is replaced, never summed with it."""
    from idls.reproduce.run import merged_run_file

    def invocation(experiments: dict[str, float], quick: bool = False) -> dict:
        return {"system": "cifar_resnet20", "quick": quick, "experiments": list(experiments),
                "seconds": sum(experiments.values()) + 1.0, "seconds_per_experiment": dict(experiments)}

    first = merged_run_file(None, invocation({"adv2_cifar": 100.0}))
    second = merged_run_file(first, invocation({"adv2_cifar": 50.0, "jap_cifar": 20.0}))
    assert second["seconds_per_experiment"] == {"adv2_cifar": 150.0, "jap_cifar": 20.0}
    assert second["experiments"] == ["adv2_cifar", "jap_cifar"]
    assert second["seconds"] == 101.0 + 71.0 and second["invocations"] == 2
    assert len(first["run_id"]) == 12 and second["run_id"] == first["run_id"]  # one reproduction
    quick = merged_run_file(second, invocation({"jap_cifar": 5.0}, quick=True))
    assert quick["seconds_per_experiment"] == {"jap_cifar": 5.0} and quick["invocations"] == 1
    assert quick["run_id"] != first["run_id"]
