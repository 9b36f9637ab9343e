"""Running some cells of a grid (``--cells``): selectors, the same cells and store as the whole run, resume."""

from __future__ import annotations

import pytest

from idls.analysis.store_reader import load_store_part, store_progress
from idls.errors import UserError
from idls.experiments import expand_cells, experiment_from_mapping, read_records, run_experiment
from idls.experiments.selection import CellSelector, select_cells
from tests.conftest import run_cli
from tests.store_compare import canonical
from tests.test_experiments import TINY, write_yaml


@pytest.mark.parametrize("text, fragment", [
    ("framework", "is not KEY=PATTERN"),
    ("interpreter=", "is not KEY=PATTERN"),
    ("colour=red", "unknown key 'colour'"),
    ("target=patch,,attack=adv2", "is not KEY=PATTERN"),
])
def test_malformed_selectors_are_refused_in_one_line(text, fragment):
    with pytest.raises(UserError, match=fragment) as error:
        CellSelector.parse(text)
    assert "\n" not in str(error.value)


def test_selectors_and_within_one_and_or_across_several():
    cells = expand_cells(experiment_from_mapping(TINY))  # pgd + adv2 x {benign, patch} x {cam, gradcam}
    pick = lambda *texts: [(c.attack, c.target, c.attacked_interpreter) for c in select_cells(cells, texts)]  # noqa: E731
    assert pick("target=patch,interpreter=cam") == [("adv2", "patch", "cam")]
    assert pick("target=patch,interpreter=cam", "attack=pgd") == [("pgd", "none", "none"), ("adv2", "patch", "cam")]
    assert pick("interpreter=grad*") == [("adv2", "benign", "gradcam"), ("adv2", "patch", "gradcam")]
    assert len(select_cells(cells, [])) == len(cells)
    with pytest.raises(UserError, match="matches no cell.*target=benign.none.patch"):
        select_cells(cells, ["target=other-class"])


def test_selected_cells_are_the_whole_runs_cells_and_the_rest_resumes_into_the_same_store(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    out = tmp_path / "selected"
    first = run_experiment(config, out, progress=False, cells=["target=patch"])
    assert (first.cells, first.cells_selected, first.units, first.units_run, first.units_skipped) == (5, 2, 10, 4, 0)
    part, _ = load_store_part(out)
    assert part.complete is False and len(part.plan) == 5
    assert store_progress(out) == {"cells": 5, "complete_cells": 2}
    assert part.complete_cells == {r["cell"] for r in part.records} and all("patch" in c for c in part.complete_cells)
    selected_records = canonical(read_records(out))
    reference = canonical(read_records(tmp_path / "whole"))
    assert selected_records == {key: reference[key] for key in selected_records}  # the very cells of the whole run
    rest = run_experiment(config, out, progress=False)
    assert (rest.units_run, rest.units_skipped, rest.cells_selected) == (whole.units - 4, 4, None)
    assert load_store_part(out)[0].complete is True and store_progress(out) == {"cells": 5, "complete_cells": 5}
    assert canonical(read_records(out)) == reference


def test_the_cli_names_a_selector_that_matches_nothing(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    assert run_cli(["run", str(config), "--out", str(tmp_path / "out"), "--cells", "attack=cw"]) != 0
    error = capsys.readouterr().err.strip()
    assert "--cells 'attack=cw' matches no cell" in error and "attack=adv2|pgd" in error and "\n" not in error
    assert not (tmp_path / "out" / "records.jsonl").exists()  # refused before the store was touched


def test_redo_discards_the_selected_cells_and_runs_them_again_to_the_same_records(tmp_path):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    whole = run_experiment(config, out, progress=False)
    reference = canonical(read_records(out))
    again = run_experiment(config, out, progress=False, cells=["target=patch"], redo=True)
    assert (again.units_discarded, again.units_run, again.units_skipped) == (4, 4, whole.units - 4)
    records = read_records(out)
    assert len(records) == whole.records_total  # nothing duplicated
    assert canonical(records) == reference  # the same seeded draws give the same records
    assert store_progress(out) == {"cells": 5, "complete_cells": 5}


def test_a_redo_killed_between_its_writes_leaves_a_store_that_resumes(tmp_path, monkeypatch):
    import idls.experiments.store as store_module

    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "out"
    run_experiment(config, out, progress=False)
    reference = canonical(read_records(out))
    patch_records = sum(1 for r in read_records(out) if ".patch." in r["cell"])
    replace = store_module._replace

    def killed_at_the_records(path, payload):
        if path.name == store_module.RECORDS_FILE:
            raise KeyboardInterrupt  # the done lines are rewritten, the records not yet
        replace(path, payload)

    monkeypatch.setattr(store_module, "_replace", killed_at_the_records)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, progress=False, cells=["target=patch"], redo=True)
    monkeypatch.setattr(store_module, "_replace", replace)
    assert store_progress(out) == {"cells": 5, "complete_cells": 3}  # the patch cells are no longer done
    resumed = run_experiment(config, out, progress=False)
    assert patch_records and resumed.recovered_records_dropped == patch_records  # dropped on opening, as after a kill
    assert resumed.units_run == 4
    assert canonical(read_records(out)) == reference


def test_redo_fits_the_selected_universal_attack_afresh_and_keeps_the_others(tmp_path):
    config = write_yaml(tmp_path / "fit.yaml", {
        **TINY, "interpreters": ["cam"], "targets": ["benign"], "mode": "untargeted",
        "data": {**TINY["data"], "fit_source": "embedded-train", "fit_n": 16},
        "attacks": [{"name": "pgd", "options": {"steps": 4}}, {"name": "random-sign"}],
    })
    out = tmp_path / "out"
    run_experiment(config, out, progress=False)
    fitted = sorted((out / "fitted").iterdir())
    assert fitted and all("random-sign" in p.name for p in fitted)
    first = {p.name: p.stat().st_mtime_ns for p in fitted}
    reference = canonical(read_records(out))
    again = run_experiment(config, out, progress=False, cells=["attack=random-sign"], redo=True)
    assert again.units_discarded == again.units_run == 2
    refitted = {p.name: p.stat().st_mtime_ns for p in (out / "fitted").iterdir()}
    assert refitted.keys() == first.keys() and all(refitted[k] != first[k] for k in first)  # written anew
    assert canonical(read_records(out)) == reference


def test_redo_without_cells_is_refused_before_the_store_is_touched(tmp_path, capsys):
    config = write_yaml(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(UserError, match="--redo re-runs the cells --cells selects"):
        run_experiment(config, tmp_path / "api", progress=False, redo=True)
    assert run_cli(["run", str(config), "--out", str(tmp_path / "out"), "--redo"]) != 0
    error = capsys.readouterr().err.strip()
    assert "add --cells KEY=PATTERN" in error and "\n" not in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "api").exists()
