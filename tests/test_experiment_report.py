"""Store reading, transfer matrices, paper tables (CSV / LaTeX) and the experiment report on synthetic stores."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from store_factory import attack_record as rec
from store_factory import model_transfer_record, write_store

from idls.analysis import interpreter_transfer_matrices, load_store, model_transfer_matrix
from idls.analysis.store_reader import TensorReader
from idls.errors import UserError
from idls.report.experiment_report import write_experiment_report
from idls.report.tables import paper_tables, pivot_table, print_summary_table, read_csv, to_latex, write_csv
from idls.reproduce import scorecard_for_run

IMAGES = ["a", "b", "c", "d"]


# ---------------------------------------------------------------------------------
# Store reading
# ---------------------------------------------------------------------------------
def test_only_complete_units_count_and_torn_lines_are_ignored(tmp_path):
    done = [rec(attack="pgd", image_id=i, cell="c1") for i in IMAGES]
    unfinished = [rec(attack="pgd", image_id=i, cell="c2") for i in IMAGES]
    write_store(tmp_path, done + unfinished, incomplete=[("c2", 0)], torn_tail=True, with_tensors=False)
    store = load_store(tmp_path)
    assert {r["cell"] for r in store.records} == {"c1"}
    assert len(store.records) == 4 and store.units == 1
    assert any("unreadable" in w for w in store.warnings)
    assert any("unfinished" in w for w in store.warnings)


def test_a_rerun_unit_is_not_counted_twice(tmp_path):
    first = [rec(attack="pgd", image_id=i, cell="c1", confidence=0.5) for i in IMAGES]
    write_store(tmp_path, first, with_tensors=False)
    with open(tmp_path / "records.jsonl", "a") as handle:  # the same unit's records written again (last wins)
        for r in first:
            handle.write(json.dumps({**r, "confidence": 0.9}) + "\n")
    records = load_store(tmp_path).records
    assert len(records) == 4
    assert all(r["confidence"] == 0.9 for r in records)


def test_records_that_differ_only_in_attacked_interpreter_are_all_kept(tmp_path):
    records = [rec(attack="adv2", attacked=a, interpreter=e, image_id=i, cell="one-cell")
               for a in ("cam", "grad") for e in ("cam", "grad") for i in IMAGES]
    write_store(tmp_path, records, with_tensors=False)
    assert len(load_store(tmp_path).records) == 16


def test_record_count_mismatch_with_done_marker_is_reported(tmp_path):
    write_store(tmp_path, [rec(attack="pgd", image_id=i) for i in IMAGES], with_tensors=False)
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    (tmp_path / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    store = load_store(tmp_path)
    assert len(store.records) == 3
    assert any("record count differs" in w for w in store.warnings)


def test_a_folder_of_stores_is_read_as_their_union(tmp_path):
    write_store(tmp_path / "one", [rec(attack="pgd", image_id=i, experiment="one") for i in IMAGES], with_tensors=False)
    write_store(tmp_path / "two", [rec(attack="adv2", image_id=i, experiment="two") for i in IMAGES], with_tensors=False)
    store = load_store(tmp_path)
    assert [p.name for p in store.parts] == ["one", "two"]
    assert len(store.records) == 8


def test_missing_or_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_store(tmp_path / "nope")
    with pytest.raises(UserError, match="no experiment store"):
        load_store(tmp_path)


def test_tensor_reader_returns_the_stored_maps_and_images(tmp_path):
    records = [rec(attack="pgd", interpreter=g, image_id=i) for g in ("cam", "grad") for i in IMAGES]
    write_store(tmp_path, records)
    store = load_store(tmp_path)
    record = next(r for r in store.records if r["interpreter"] == "grad" and r["image_id"] == "c")
    stored = load_file(str(tmp_path / record["adv_path"].split("#")[0]))
    reader = TensorReader()
    benign, adversarial = reader.maps(record)
    assert torch.equal(benign, stored["benign_map/grad"][2])
    assert torch.equal(adversarial, stored["adversarial_map/grad"][2])
    assert torch.equal(reader.adversarial_image(record), stored["x_adv"][2])
    assert reader.benign_image(record) is None  # the contract does not require benign images


# ---------------------------------------------------------------------------------
# Transfer matrices (hand computations)
# ---------------------------------------------------------------------------------
def test_interpreter_transfer_matrix_equals_hand_means():
    values = {("cam", "cam"): [0.9, 0.7], ("cam", "grad"): [0.1, 0.3], ("grad", "grad"): [0.6, 0.6], ("grad", "cam"): [0.2, 0.5]}
    records = [rec(attack="adv2", attacked=a, interpreter=e, image_id=f"i{k}", map_iou=v, map_l1=1 - v)
               for (a, e), vs in values.items() for k, v in enumerate(vs)]
    records += [rec(attack="pgd", interpreter=e, image_id=f"i{k}", map_iou=v) for e, vs in (("cam", [0.4, 0.2]), ("grad", [0.1, 0.1])) for k, v in enumerate(vs)]
    records += [rec(attack="adv2", attacked="cam", interpreter="cam", image_id="x", map_iou=0.0, model="other")]  # another scope
    (scoped,) = interpreter_transfer_matrices(records, "map_iou")
    m = scoped.matrix
    assert m.columns == ["grad", "cam"]  # the papers' interpreter order, not first appearance
    assert m.rows == ["grad", "cam", "pgd (no interpreter)"]
    assert m.get("cam", "cam") == pytest.approx(0.8)
    assert m.get("cam", "grad") == pytest.approx(0.2)
    assert m.get("grad", "cam") == pytest.approx(0.35)
    assert m.get("grad", "grad") == pytest.approx(0.6)
    assert m.get("pgd (no interpreter)", "cam") == pytest.approx(0.3)
    assert m.counts[0] == [2, 2]
    (l1,) = interpreter_transfer_matrices(records, "map_l1")
    assert l1.matrix.get("grad", "cam") == pytest.approx(0.65)


def test_model_transfer_matrix_counts_each_image_once_on_the_source_model():
    source = [rec(attack="pgd", interpreter=g, image_id=i, success=(i != "d")) for g in ("cam", "grad") for i in IMAGES]
    transfer = [model_transfer_record(r, "cifar_resnet32", r["image_id"] in ("a", "b")) for r in source if r["interpreter"] == "cam"]
    m = model_transfer_matrix(source, transfer)
    (row,) = m.rows
    assert m.get(row, "cifar_resnet20") == pytest.approx(0.75)  # white-box: 3 of 4 images (not 6 of 8 votes)
    assert m.get(row, "cifar_resnet32") == pytest.approx(0.5)
    assert m.counts[0] == [4, 4]
    assert model_transfer_matrix(source, []) is None


# ---------------------------------------------------------------------------------
# Tables: pivots, CSV round trip, LaTeX
# ---------------------------------------------------------------------------------
def test_pivot_table_has_papers_layout_and_hand_values():
    records = [rec(attack="pgd", interpreter="cam", image_id=i, success=i != "a") for i in IMAGES]
    records += [rec(attack="adv2", interpreter=g, image_id=i, success=True) for g in ("rts", "grad") for i in IMAGES]
    records += [rec(attack="adv2", attacked="rts", interpreter="grad", image_id=i, success=False) for i in IMAGES]  # transfer: not own
    table = pivot_table(records, "success", name="success", caption="")
    assert table.columns == ["framework", "model", "target", "attack", "grad", "cam", "rts"]
    pgd, adv2 = table.rows
    assert (pgd["attack"], adv2["attack"]) == ("pgd", "adv2")
    assert pgd["cam"] == pytest.approx(0.75) and math.isnan(pgd["grad"])
    assert adv2["grad"] == 1.0 and adv2["rts"] == 1.0 and math.isnan(adv2["cam"])


def test_varying_context_becomes_a_row_key():
    records = [rec(attack="pgd", image_id=i, experiment=e, success=e == "x") for e in ("x", "y") for i in IMAGES]
    table = pivot_table(records, "success", name="success", caption="")
    assert table.columns[0] == "experiment"
    assert {r["experiment"]: r["cam"] for r in table.rows} == {"x": 1.0, "y": 0.0}


def sample_records():
    records = [rec(attack=a, interpreter=g, image_id=i, map_l1=0.1 + 0.01 * k, map_iou=1 / 3, seconds=123.456)
               for a in ("pgd", "adv2") for g in ("grad", "cam") for k, i in enumerate(IMAGES)]
    records[0]["confidence"] = 0.123456789012345
    return records


def test_csv_round_trip_is_exact(tmp_path):
    for table in paper_tables(sample_records()):
        back = read_csv(write_csv(table, tmp_path / f"{table.name}.csv"), key_columns=table.key_columns)
        assert back.columns == table.columns
        assert len(back.rows) == len(table.rows)
        for original, read in zip(table.rows, back.rows, strict=True):
            for column in table.columns:
                a, b = original[column], read[column]
                assert (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b, (table.name, column, a, b)


def test_latex_is_booktabs_with_escaped_names_and_formatted_numbers():
    table = pivot_table(sample_records(), "seconds", name="time", caption="Seconds per image (100% of it)")
    tex = to_latex(table)
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
    assert r"\begin{tabular}{llllrr}" in tex
    assert r"cifar\_resnet20" in tex and r"100\% of it" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(table.rows) == 2
    assert all(line.endswith(r"\\") and line.count("&") == len(table.columns) - 1 for line in body)
    assert "123.5" in body[0]


def test_terminal_summary_lists_each_group():
    console = Console(record=True, width=200)
    print_summary_table(sample_records(), console=console)
    text = console.export_text()
    assert len(re.findall(r"cifar_resnet20", text)) == 4  # 2 attacks x 2 interpreters
    assert "0.333" in text


# ---------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_store(tmp_path_factory):
    """A store with PGD, ADV² (own + transfer), AdvEdge, patch targets and model transfer, plus its scorecard."""
    out = tmp_path_factory.mktemp("store")
    records = []
    for g in ("grad", "cam"):
        for i in IMAGES:
            records.append(rec(attack="pgd", interpreter=g, image_id=i))
            records.append(rec(attack="advedge", interpreter=g, image_id=i, map_l1=0.05, map_iou=0.8, noise_rate=0.02))
            records.append(rec(attack="adv2", interpreter=g, target="patch", image_id=i, map_l1=0.4, l1_to_target=0.1, iou_to_target=0.6))
            for e in ("grad", "cam"):
                records.append(rec(attack="adv2", attacked=g, interpreter=e, image_id=i,
                                   map_l1=0.05 if e == g else 0.25, map_iou=0.8 if e == g else 0.3))
    transfer = [model_transfer_record(r, "cifar_resnet32", True) for r in records if r["attack"] == "pgd" and r["interpreter"] == "cam"]
    write_store(out, records, transfer_records=transfer, config={"name": "synthetic-experiment", "images": 4})
    scorecard_for_run(out, show=False)
    return out


@pytest.fixture(scope="module")
def report_html(report_store):
    path = write_experiment_report(report_store, max_grids=2, grid_images=2)
    assert path == report_store / "report.html"
    return path.read_text()


def test_report_contains_the_papers_tables_and_sections(report_html):
    for heading in ("Reproduction scorecard", "Attack success and confidence", "Attribution-map similarity",
                    "Noise rate", "Time", "Transferability across interpreters", "Transferability across models",
                    "Random target maps", "Images and maps", "Configuration and environment"):
        assert f"<h2>{heading}" in report_html, heading
    assert "001 Obs. 1: ADV² as effective as PGD" in report_html
    assert "synthetic-experiment" in report_html  # the resolved configuration is shown
    assert "pgd (no interpreter)" in report_html
    assert report_html.count("data:image/png;base64,") >= 8  # bars, heat maps, grids
    assert "<script" not in report_html and "http" not in report_html.split("<body>")[1]  # self-contained


def test_report_writes_csv_and_latex_tables(report_store, report_html):
    names = {p.name for p in (report_store / "tables").iterdir()}
    for stem in ("success", "confidence", "map_l1", "map_iou", "noise_rate", "time", "summary", "gap", "model_transfer"):
        assert {f"{stem}.csv", f"{stem}.tex"} <= names, stem
    assert any(n.startswith("transfer_iou_") for n in names) and any(n.startswith("transfer_l1_") for n in names)
    success = read_csv(report_store / "tables" / "success.csv", key_columns=4)
    assert {r["attack"] for r in success.rows} == {"pgd", "adv2", "advedge"}


def test_report_without_scorecard_or_results(tmp_path):
    write_store(tmp_path / "s", [rec(attack="pgd", image_id=i) for i in IMAGES], with_tensors=False)
    html = write_experiment_report(tmp_path / "s", max_grids=0).read_text()
    assert "Reproduction scorecard" not in html and "<h2>Attack success" in html
    write_store(tmp_path / "empty", [rec(attack="pgd", image_id="a", cell="x")], incomplete=[("x", 0)], with_tensors=False)
    with pytest.raises(UserError, match="no completed unit"):
        write_experiment_report(tmp_path / "empty")
