"""The Ray backend on a local Ray instance gives the records of the local backend."""

from __future__ import annotations

import pytest
import yaml

from idls.experiments import read_records, run_experiment
from tests.store_compare import canonical

ray = pytest.importorskip("ray")

CONFIG = {
    "name": "ray-vs-local",
    "models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 0}],
    "transfer_models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 1}],
    "data": {"source": "embedded", "n": 4, "pool": 100, "batch_size": 2},
    "interpreters": ["cam", "gradcam"],
    "attacks": [{"name": "pgd", "options": {"steps": 5}}, {"name": "adv2", "options": {"steps": 5, "warm_start": 3}}],
    "targets": ["patch"],
    "evaluate_all_interpreters": True,
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_matches_local_backend(tmp_path, local_ray):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    local = run_experiment(path, tmp_path / "local", progress=False)
    distributed = run_experiment(path, tmp_path / "ray", backend="ray", progress=False)
    assert distributed.units == local.units == 6 and distributed.units_run == 6
    a, b = canonical(read_records(tmp_path / "local")), canonical(read_records(tmp_path / "ray"))
    assert len(a) == 4 * 2 + 2 * 4 * 2 + 3 * 4  # PGD, ADV² (2 cells x 2 interpreters), model transfer
    assert a == b
    again = run_experiment(path, tmp_path / "ray", backend="ray", progress=False)  # resumes: nothing left
    assert again.units_run == 0 and len(read_records(tmp_path / "ray")) == len(a)
