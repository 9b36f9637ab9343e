"""The example notebook runs from top to bottom (examples/attack_cifar_adv2.ipynb).

It runs on the embedded fallback with tiny settings, inserted as a cell after the notebook's
``parameters`` cell (as papermill would), in a fresh Jupyter kernel of this Python. The kernel inherits
the test session's environment (its ``IDLS_CACHE_DIR``); the embedded CNN's weights ship with idls, so
nothing is trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import idls

nbformat = pytest.importorskip("nbformat", reason="the test extra's nbformat is not installed")
nbclient = pytest.importorskip("nbclient", reason="the test extra's nbclient is not installed")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "attack_cifar_adv2.ipynb"
INTERPRETERS = ["cam", "grad"]
TINY = f"""USE_CIFAR = False
N_IMAGES = 2
INTERPRETERS = {INTERPRETERS!r}
PGD_STEPS = 10
ADV2_OPTIONS = {{"warm_start": 5, "steps": 10}}
"""


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))


def test_notebook_is_stored_without_outputs_and_has_a_parameters_cell():
    nb = _read()
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert code[0] is nb.cells[_parameters_index(nb)]  # the settings come first, before any import


def _start_kernel(client) -> None:
    """Start the client's kernel; skip (with the reason) where no Jupyter kernel can start.

    The kernel imports the same ``idls`` as this process (a relative ``PYTHONPATH=src`` would not
    survive the kernel's working directory, examples/).
    """
    package_root = str(Path(idls.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")  # one thread per process, as the rest of the suite (tests/conftest.py)
    try:
        client.km = client.create_kernel_manager()
        client.start_new_kernel(env=env)
        client.start_new_kernel_client()
    except Exception as exc:  # noqa: BLE001 - any failure to start is an environment problem, not the notebook's
        pytest.skip(f"a Jupyter kernel cannot start here ({type(exc).__name__}: {exc})")


def test_notebook_runs_on_the_embedded_model():
    nb = _read()
    nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(TINY))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    _start_kernel(client)
    client.execute()  # a failing cell raises CellExecutionError with the cell's traceback

    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "embedded_cnn: 2 images (3, 64, 64)" in text
    table = [line.split() for line in text.splitlines() if line.split()[:1] in ([name] for name in INTERPRETERS)]
    assert sorted((row[0], row[1]) for row in table) == sorted(
        (name, attack) for name in INTERPRETERS for attack in ("pgd", "adv2"))
    for row in table:  # success rate, map L1, IoU: numbers in their ranges (no nan)
        success, l1, iou = map(float, row[2:5])
        assert 0 <= success <= 1 and 0 <= l1 <= 1 and 0 <= iou <= 1, row
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == len(INTERPRETERS)  # one benign | PGD | ADV² figure per interpreter
