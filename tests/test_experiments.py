"""Experiment engine: YAML loading, grid expansion, the append-only store, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from idls import metrics
from idls.errors import UserError
from idls.experiments import (
    ExperimentStore,
    ModelSpec,
    expand_cells,
    expand_units,
    experiment_from_mapping,
    load_experiment,
    parse_overrides,
    read_records,
    run_experiment,
)
from idls.experiments.execute import build_classifier
from idls.experiments.store import DONE_FILE, RECORDS_FILE, read_complete_lines
from tests.store_compare import canonical, without_timing

ROOT = Path(__file__).resolve().parents[1]

#: a small grid on a random-weight embedded CNN: 1 PGD cell + 2 targets x 2 interpreters of ADV², 2 batches each
TINY = {
    "name": "tiny",
    "models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 0}],
    "transfer_models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 1}],
    "data": {"source": "embedded", "n": 6, "pool": 200, "batch_size": 3},
    "interpreters": ["cam", "gradcam"],
    "attacks": [{"name": "pgd", "options": {"steps": 8}}, {"name": "adv2", "options": {"steps": 8, "warm_start": 4}}],
    "targets": ["benign", "patch"],
    "evaluate_all_interpreters": True,
    "seeds": [0],
}
ATTACK_FIELDS = {
    "kind", "experiment", "cell", "model", "weights", "data", "attack", "framework", "target", "mode", "epsilon",
    "seed", "attacked_interpreter", "variant", "interpreter", "batch", "image_id", "true_label", "target_label",
    "pred_label",
    "success", "confidence", "linf", "l2", "noise_rate", "seconds", "cpu_seconds", "iterations_to_success", "map_l1", "map_l2",
    "map_iou", "map_iou@10", "map_iou@20", "map_iou@30", "map_iou@50", "kendall_tau", "adv_path",
    "map_l1_to_target", "map_iou_to_target",
}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------
def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(UserError, match=r"unknown key 'interpreter'; did you mean 'interpreters'"):
        experiment_from_mapping({**TINY, "interpreter": ["cam"]})
    with pytest.raises(UserError, match=r"unknown key data\.'size'"):
        experiment_from_mapping({**TINY, "data": {"source": "embedded", "size": 3}})
    with pytest.raises(UserError, match=r"attacks\[1\]\.options\.seed: set by the experiment grid.*seeds"):
        experiment_from_mapping({**TINY, "attacks": ["pgd", {"name": "adv2", "options": {"seed": 3}}]})
    with pytest.raises(UserError, match="unknown attack 'pgdd'"):
        experiment_from_mapping({**TINY, "attacks": ["pgdd"]})
    with pytest.raises(UserError, match=r"models\[0\]\.weights: model 'cifar_resnet20' needs weights"):
        experiment_from_mapping({**TINY, "models": ["cifar_resnet20"]})


def test_variables_follow_override_environment_file_default_precedence(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = {**TINY, "variables": {"DATA_DIR": "a"}, "data": {"source": "${DATA_DIR}"}}
    path = write_yaml(tmp_path / "exp.yaml", config)
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert load_experiment(path).data.source == str(tmp_path / "a")  # relative to the YAML file
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "b"))
    assert load_experiment(path).data.source == str(tmp_path / "b")
    assert load_experiment(path, {"variables.DATA_DIR": str(tmp_path / "a")}).data.source == str(tmp_path / "a")
    monkeypatch.delenv("DATA_DIR")
    unset = write_yaml(tmp_path / "unset.yaml", {**TINY, "data": {"source": "${NOT_SET_ANYWHERE_X}"}})
    with pytest.raises(UserError, match=r"\$\{NOT_SET_ANYWHERE_X\} is not set.*--set variables.NOT_SET_ANYWHERE_X"):
        load_experiment(unset)
    inline = write_yaml(tmp_path / "inline.yaml", {**TINY, "data": {"source": "${NOT_SET_ANYWHERE_X:-embedded}"}})
    assert load_experiment(inline).data.source == "embedded"


def test_missing_files_are_reported_with_the_key(tmp_path):
    (tmp_path / "w").mkdir()
    weights = tmp_path / "w" / "model.pt"
    torch.save({}, weights)
    config = {**TINY, "models": [{"name": "embedded_cnn", "weights": "w/model.pt"}]}
    assert load_experiment(write_yaml(tmp_path / "ok.yaml", config)).models[0].weights == str(weights)
    config["models"][0]["weights"] = "w/missing.pt"
    with pytest.raises(UserError, match=r"models\[0\]\.weights: .*missing\.pt does not exist"):
        load_experiment(write_yaml(tmp_path / "bad.yaml", config))
    with pytest.raises(UserError, match=r"targets\[0\]: .*nope\.safetensors does not exist"):
        load_experiment(write_yaml(tmp_path / "t.yaml", {**TINY, "targets": ["nope.safetensors"]}))


def test_quick_section_merges_and_overrides_win(tmp_path):
    config = {**TINY, "quick": {"data": {"n": 2}, "attacks": {"adv2": {"options": {"steps": 1}}}}}
    path = write_yaml(tmp_path / "exp.yaml", config)
    full, quick = load_experiment(path), load_experiment(path, quick=True)
    assert (full.data.n, quick.data.n) == (6, 2)
    assert quick.data.source == "embedded" and quick.data.batch_size == 3  # merged, not replaced
    assert quick.quick and not full.quick
    overridden = load_experiment(path, parse_overrides(["data.n=4", "models.embedded_cnn.init_seed=7",
                                                        "interpreters=[cam]"]), quick=True)
    assert overridden.data.n == 4 and overridden.models[0].init_seed == 7 and overridden.interpreters == ["cam"]
    cells = {c.attack: c for c in expand_cells(quick)}
    assert cells["adv2"].options["steps"] == 1 and cells["adv2"].options["warm_start"] == 4
    with pytest.raises(UserError, match="no entry named 'resnet'"):
        load_experiment(path, {"models.resnet.weights": "random"})
    no_section = write_yaml(tmp_path / "plain.yaml", {**TINY, "data": {"source": "embedded", "n": 50},
                                                      "attacks": [{"name": "pgd", "options": {"steps": 100}}, "adv2"]})
    built_in = load_experiment(no_section, quick=True)  # the built-in quick settings: fewer images and steps
    assert built_in.data.n == 8 and all(c.options["steps"] == 20 for c in expand_cells(built_in))
    small = write_yaml(tmp_path / "small.yaml", {**TINY, "data": {"source": "embedded", "n": 5}})
    assert load_experiment(small, quick=True).data.n == 5  # never more images than the full run


def test_grid_expansion_counts_ids_and_options():
    config = {**TINY, "interpreters": ["cam", "gradcam", "grad"], "seeds": [0, 1], "epsilon": 0.02,
              "evaluate_all_interpreters": False,
              "data": {"source": "embedded", "n": 6, "batch_size": 4, "n_by_interpreter": {"grad": 2}},
              "attack_options": {"*": {"steps": 3}, "adv2": {"by_interpreter": {"grad": {"steps": 9}}}}}
    experiment = experiment_from_mapping(config)
    cells = expand_cells(experiment)
    plain = [c for c in cells if c.attack == "pgd"]
    joint = [c for c in cells if c.attack == "adv2"]
    # plain attacks: one cell per seed, evaluated with every interpreter; joint: targets x interpreters x seeds
    assert len(plain) == 2 and len(joint) == 2 * 3 * 2
    assert all(c.evaluated == ("cam", "gradcam", "grad") and c.target == "none" for c in plain)
    assert all(c.evaluated == (c.attacked_interpreter,) for c in joint)
    assert len({c.id for c in cells}) == len(cells)
    assert [c.id for c in expand_cells(experiment_from_mapping(config))] == [c.id for c in cells]  # stable
    # precedence: '*' (3) < the attack entry's options (8) < by_interpreter (9)
    assert all(c.epsilon == 0.02 and c.options["steps"] == (9 if c.attacked_interpreter == "grad" else 8)
               for c in joint)
    assert all(c.options["steps"] == 8 and c.options["warm_start"] == 4
               for c in joint if c.attacked_interpreter != "grad")
    assert {c.n_images for c in joint if c.attacked_interpreter == "grad"} == {2}
    units = expand_units(cells, experiment.data.batch_size)
    assert len(units) == sum(c.n_batches(4) for c in cells) == 2 * 2 + 8 * 2 + 4 * 1
    assert [u.batch for u in units] == sorted(u.batch for u in units)  # batch-major order
    everything = expand_cells(experiment_from_mapping({**config, "evaluate_all_interpreters": True}))
    assert all(c.evaluated[0] == c.attacked_interpreter and len(c.evaluated) == 3 for c in everything if c.joint)
    with pytest.raises(UserError, match="two entries give the same cell"):
        expand_cells(experiment_from_mapping({**TINY, "attacks": ["pgd", "pgd"]}))
    with pytest.raises(UserError, match=r"attack embedded_cnn / pgd: bad option"):
        expand_cells(experiment_from_mapping({**TINY, "attacks": [{"name": "pgd", "options": {"warm_start": 3}}]}))


def test_resolved_configuration_round_trips():
    experiment = experiment_from_mapping(TINY)
    again = type(experiment).from_dict(yaml.safe_load(yaml.safe_dump(experiment.to_dict())))
    assert again == experiment


@pytest.mark.parametrize("name", ["adv2_cifar", "advedge_cifar", "targets_cifar", "transfer_cifar", "squeezing_cifar",
                                  "detector_cifar", "ensemble_cifar"])
def test_bundled_cifar_experiments_load(name, resnet20_path):
    shared = {"variables.IDLS_SHARED_DATA": str(resnet20_path.parents[2])}
    for quick in (False, True):
        experiment = load_experiment(ROOT / "experiments" / f"{name}.yaml", shared, quick=quick)
        cells = expand_cells(experiment)
        assert cells and experiment.models[0].weights == str(resnet20_path)
        assert experiment.quick == quick and (experiment.data.n <= 16) == quick


@pytest.mark.parametrize("name", ["embedded", "embedded_targets", "detection_embedded"])
def test_bundled_embedded_experiments_load(name):
    for quick in (False, True):
        assert expand_cells(load_experiment(ROOT / "experiments" / f"{name}.yaml", quick=quick))


def test_missing_ray_is_a_user_error(monkeypatch):
    from idls.experiments.backends import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'idls\[ray\]'"):
        import_ray()


# ---------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------
def _records(cell: str, batch: int, n: int) -> list[dict]:
    return [{"kind": "attack", "cell": cell, "batch": batch, "image_id": f"{batch}/{i}", "value": i} for i in range(n)]


def test_torn_lines_and_unfinished_units_are_dropped_on_open(tmp_path):
    config = {"name": "store-test"}
    with ExperimentStore.open(tmp_path, config) as store:
        store.commit("a", 0, _records("a", 0, 2), {"x_adv": torch.zeros(2, 3)})
        store.commit("a", 1, _records("a", 1, 3))
    # a killed run: records of unit (a, 2) written but no done line, then a torn record and a torn done line
    with open(tmp_path / RECORDS_FILE, "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in _records("a", 2, 2))
        handle.write('{"kind": "attack", "cell": "a", "ba')
    with open(tmp_path / DONE_FILE, "a") as handle:
        handle.write('{"cell": "a", "batch": 2, "n_rec')
    assert len(read_records(tmp_path)) == 5  # read-only view already ignores both
    with ExperimentStore.open(tmp_path, config) as store:
        assert store.recovery.dropped_records == 2
        assert store.done_units == {("a", 0), ("a", 1)}
        assert (tmp_path / RECORDS_FILE).read_bytes().endswith(b"\n")
        assert (tmp_path / DONE_FILE).read_bytes().endswith(b"\n")
        assert len(read_complete_lines(tmp_path / RECORDS_FILE)) == 5
        store.commit("a", 2, _records("a", 2, 2))
        with pytest.raises(RuntimeError, match="already in the store"):
            store.commit("a", 2, _records("a", 2, 2))
    records = read_records(tmp_path)
    assert sorted((r["batch"], r["value"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert torch.equal(load_file(str(tmp_path / "tensors/a/batch_00000.safetensors"))["x_adv"], torch.zeros(2, 3))


def test_a_done_line_with_the_wrong_record_count_reopens_the_unit(tmp_path):
    with ExperimentStore.open(tmp_path, {"name": "s"}) as store:
        store.commit("a", 0, _records("a", 0, 2))
    with open(tmp_path / RECORDS_FILE, "a") as handle:  # a stray extra record of a finished unit
        handle.write(json.dumps(_records("a", 0, 3)[2]) + "\n")
    with ExperimentStore.open(tmp_path, {"name": "s"}) as store:
        assert store.done_units == set() and store.recovery.reopened_units == 1
    assert read_records(tmp_path) == []


def test_store_refuses_another_configuration_and_a_second_writer(tmp_path):
    with ExperimentStore.open(tmp_path, {"name": "s", "data": {"n": 4}}):
        with pytest.raises(UserError, match=rf"another idls run is writing .* \(pid {os.getpid()}\); wait for it"):
            ExperimentStore.open(tmp_path, {"name": "s", "data": {"n": 4}})  # a second open file description
    with pytest.raises(UserError, match=r"different configuration \(data\.n changed\)"):
        ExperimentStore.open(tmp_path, {"name": "s", "data": {"n": 5}})
    ExperimentStore.open(tmp_path, {"name": "s", "data": {"n": 4}, "device": "cuda"}).close()  # device may change
    environment = json.loads((tmp_path / "environment.json").read_text())
    expected = {"idls", "torch", "torchvision", "python", "git_revision", "platform", "started", "command"}
    assert expected <= set(environment)


def test_a_second_process_is_refused_and_a_killed_writer_does_not_block(tmp_path):
    """The lock is held by a live process (the refusal names its pid) and released by the OS when it dies."""
    code = ("import sys, time\n"
            "from idls.experiments.store import ExperimentStore\n"
            f"store = ExperimentStore.open({str(tmp_path)!r}, {{'name': 's'}})\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked", process.stderr.read()[-2000:]
        with pytest.raises(UserError) as refused:
            ExperimentStore.open(tmp_path, {"name": "s"})
        assert str(refused.value) == (f"another idls run is writing {tmp_path} (pid {process.pid}); "
                                      "wait for it or choose another --out")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
    with ExperimentStore.open(tmp_path, {"name": "s"}):  # the stale lock file (dead pid inside) does not block
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


# ---------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("tiny") / "tiny.yaml", TINY)


@pytest.fixture(scope="module")
def clean_run(tiny_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    summary = run_experiment(tiny_yaml, out, progress=False)
    return out, summary


def test_run_writes_the_schema_and_records_match_the_tensors(clean_run):
    out, summary = clean_run
    assert (summary.cells, summary.units, summary.units_run) == (5, 10, 10)
    records = read_records(out)
    attack = [r for r in records if r["kind"] == "attack"]
    transfer = [r for r in records if r["kind"] == "model_transfer"]
    # PGD: 6 images x 2 interpreters; ADV²: 4 cells x 6 images x 2 evaluated interpreters; transfer: 5 cells x 6
    assert len(attack) == 12 + 48 and len(transfer) == 30
    canonical(records)
    stored = yaml.safe_load((out / "experiment.yaml").read_text())
    assert stored["data"]["n"] == 6 and stored["quick"] is False
    source = build_classifier(ModelSpec("embedded_cnn", "random", init_seed=0), torch.device("cpu"))
    receiver = build_classifier(ModelSpec("embedded_cnn", "random", init_seed=1), torch.device("cpu"))
    for record in attack:
        assert ATTACK_FIELDS <= set(record)
        file, where = record["adv_path"].split("#")
        key, index = where.split(":")
        tensors = load_file(str(out / file))
        x_adv = tensors[key][int(index)][None]
        assert int(source.predict(x_adv)) == record["pred_label"]
        assert record["linf"] <= 8 / 255 + 1e-6
        benign = tensors[f"benign_map/{record['interpreter']}"][int(index)][None]
        adversarial = tensors[f"adversarial_map/{record['interpreter']}"][int(index)][None]
        assert record["map_l1"] == pytest.approx(float(metrics.map_l1(benign, adversarial)), abs=1e-6)
        if record["attack"] == "pgd":
            assert record["attacked_interpreter"] == "none" and record["map_l1_to_target"] is None
        elif record["interpreter"] == record["attacked_interpreter"]:
            target = tensors["target_map"][int(index)][None]
            assert record["map_l1_to_target"] == pytest.approx(float(metrics.map_l1(adversarial, target)), abs=1e-6)
            if record["target"] == "benign":
                assert record["map_l1_to_target"] == pytest.approx(record["map_l1"], abs=1e-5)
        else:  # transfer across interpreters: no target map of this interpreter
            assert record["map_l1_to_target"] is None
    by_image = {(r["cell"], r["image_id"]): r for r in attack}
    for record in transfer:
        assert record["source_model"] == "embedded_cnn" and record["model"] == "embedded_cnn"
        source_record = by_image[(record["cell"], record["image_id"])]
        file, where = source_record["adv_path"].split("#")
        key, index = where.split(":")
        x_adv = load_file(str(out / file))[key][int(index)][None]
        assert int(receiver.predict(x_adv)) == record["pred_label"]
        assert record["success"] == (record["pred_label"] == record["target_label"])


def test_rerun_skips_finished_units(clean_run, tiny_yaml):
    out, _ = clean_run
    before = (out / RECORDS_FILE).read_bytes()
    summary = run_experiment(tiny_yaml, out, progress=False)
    assert (summary.units_run, summary.units_skipped, summary.records_written) == (0, 10, 0)
    assert (out / RECORDS_FILE).read_bytes() == before


def test_resume_after_sigkill_gives_the_records_of_a_clean_run(clean_run, tiny_yaml, tmp_path):
    out = tmp_path / "killed"
    code = ("import torch; torch.set_num_threads(1); torch.set_flush_denormal(True)\n"
            "from idls.experiments import run_experiment\n"
            f"run_experiment({str(tiny_yaml)!r}, {str(out)!r}, progress=False)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    done = out / DONE_FILE
    deadline = time.monotonic() + 120
    try:
        while not (done.exists() and done.read_bytes().count(b"\n") >= 1):
            if process.poll() is not None:
                pytest.fail(f"the run ended before its first unit: {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no unit finished within 120 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    finished = len(read_complete_lines(done, repair=False))
    assert 1 <= finished < 10, "the kill must land mid-run"
    summary = run_experiment(tiny_yaml, out, progress=False)
    assert summary.units_skipped == finished and summary.units_run == 10 - finished
    resumed, clean = canonical(read_records(out)), canonical(read_records(clean_run[0]))
    assert resumed.keys() == clean.keys()
    assert resumed == clean
    for unit in ("embedded_cnn.pgd", "embedded_cnn.adv2"):  # same adversarial images on disk
        for file in sorted(clean_run[0].glob(f"tensors/{unit}*/batch_*.safetensors")):
            a, b = load_file(str(file)), load_file(str(out / file.relative_to(clean_run[0])))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluating_every_interpreter_adds_transfer_records_and_changes_no_own_record(tmp_path):
    """A joint attack evaluated with every interpreter (paper 001 Table 9) keeps its own records unchanged."""
    base = {**TINY, "attacks": [{"name": "adv2", "options": {"steps": 3, "warm_start": 2}}], "targets": ["benign"],
            "transfer_models": [], "data": {**TINY["data"], "n": 2, "batch_size": 2}}
    runs = {}
    for every in (False, True):
        out = tmp_path / f"every-{every}"
        run_experiment(experiment_from_mapping({**base, "evaluate_all_interpreters": every}), out, progress=False)
        runs[every] = [r for r in read_records(out) if r["kind"] == "attack"]
    own, every = runs[False], runs[True]
    assert {(r["attacked_interpreter"], r["interpreter"]) for r in own} == {("cam", "cam"), ("gradcam", "gradcam")}
    assert {(r["attacked_interpreter"], r["interpreter"]) for r in every} == {
        (a, b) for a in ("cam", "gradcam") for b in ("cam", "gradcam")}
    same = {(r["attacked_interpreter"], r["image_id"]): r for r in own}
    for record in every:  # the attacked interpreter's records do not change
        if record["attacked_interpreter"] == record["interpreter"]:
            mine = same[(record["attacked_interpreter"], record["image_id"])]
            assert {k: v for k, v in without_timing(record).items() if k not in ("cell", "adv_path")} == \
                {k: v for k, v in without_timing(mine).items() if k not in ("cell", "adv_path")}


def test_real_models_other_class_targets_and_model_transfer(tmp_path, resnet20_path, cifar_lossless_dir):
    shared = resnet20_path.parents[2]
    config = {
        "name": "real",
        "models": [{"name": "cifar_resnet20", "weights": str(resnet20_path)}],
        "transfer_models": [{"name": "cifar_resnet32",
                             "weights": str(shared / "cifar10" / "models" / "resnet32-d509ac18.th")}],
        "data": {"source": str(cifar_lossless_dir), "n": 8, "batch_size": 8},
        "interpreters": ["cam"],
        "attacks": [{"name": "adv2", "options": {"steps": 20}}],
        "targets": ["other-class"],
    }
    out = tmp_path / "out"
    summary = run_experiment(write_yaml(tmp_path / "real.yaml", config), out, progress=False)
    records = read_records(out)
    attack = [r for r in records if r["kind"] == "attack"]
    transfer = [r for r in records if r["kind"] == "model_transfer"]
    assert summary.units == 1 and len(attack) == len(transfer) == 8
    assert all(r["target"] == "other-class" and r["map_l1_to_target"] is not None for r in attack)
    assert sum(r["success"] for r in attack) >= 6  # ADV² fools the real ResNet-20
    # the other class's map is far from the image's own benign map: the attack moved towards it
    assert sum(r["map_l1_to_target"] < r["map_l1"] for r in attack) >= 6
    assert all(r["model"] == "cifar_resnet32" and r["source_model"] == "cifar_resnet20" for r in transfer)


def test_data_order_and_fit_source_are_validated_and_stay_out_of_old_identities(tmp_path):
    plain = experiment_from_mapping(TINY)
    assert "order" not in plain.to_dict()["data"] and "defense" not in plain.to_dict()["models"][0]
    ordered = experiment_from_mapping({**TINY, "data": {**TINY["data"], "order": "classes-interleaved"}})
    assert ordered.data.order == "classes-interleaved" and ordered.to_dict()["data"]["order"] == "classes-interleaved"
    with pytest.raises(UserError, match="data.order: unknown order 'random'"):
        experiment_from_mapping({**TINY, "data": {**TINY["data"], "order": "random"}})
    with pytest.raises(UserError, match="data.fit_source is data.source"):
        experiment_from_mapping({**TINY, "data": {**TINY["data"], "fit_source": "embedded"}})
    with pytest.raises(UserError, match="models\\[0\\].defense: unknown defence 'blur'"):
        experiment_from_mapping({**TINY, "models": [{**TINY["models"][0], "defense": "blur"}]})
