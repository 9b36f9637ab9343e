"""The library on an accelerator: attacks, interpreters, metrics, the fault checks and an experiment run on the
device that ``IDLS_TEST_DEVICE`` names, against the CPU.

Skipped unless ``IDLS_TEST_DEVICE`` is set (``benchmarks/gpu_check.sh`` sets it to ``cuda``; ``cpu`` runs the
same checks here, as its smoke test does). What must hold on any device: every attack's images lie in its
threat set and its random targets equal the CPU's (they are drawn on the CPU by design); every interpreter's
maps match the CPU's (up to the device's arithmetic: TF32 convolutions on recent GPUs), MASK's up to its
optimisation; metrics equal the CPU's; half-precision inputs give the float32 result and a model whose
logits are NaN is refused; an experiment run writes the same records (keys and targets) as on the CPU.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from idls import metrics
from idls.attacks import list_attacks
from idls.errors import UserError
from idls.interpreters import list_interpreters
from tests.test_attack_contracts import _build as build_attack
from tests.test_faults_inputs import LOGITS_ERROR, broken
from tests.test_interpreter_contracts import build as build_interpreter

DEVICE = os.environ.get("IDLS_TEST_DEVICE")
pytestmark = pytest.mark.skipif(not DEVICE, reason="runs on the device IDLS_TEST_DEVICE names (benchmarks/"
                                                   "gpu_check.sh sets it to cuda)")


@pytest.fixture(scope="module")
def device() -> torch.device:
    from idls.devices import resolve_device

    return resolve_device(str(DEVICE), option="IDLS_TEST_DEVICE")


@pytest.fixture(scope="module")
def models(device):
    """The contract tests' seeded random CIFAR ResNet-20: (on the CPU, on the device)."""
    from tests.model_helpers import seeded_random_resnet20

    cpu = seeded_random_resnet20(0)
    return cpu, copy.deepcopy(cpu).to(device)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=generator), torch.randint(0, 10, (3,), generator=generator)


@pytest.mark.parametrize("name", list_attacks())
def test_attacks_run_on_the_device_inside_their_threat_set(name, models, batch, device):
    cpu_model, model = models
    x, labels = batch[0].to(device), batch[1].to(device)
    attack = build_attack(name, model)
    result = attack.run(model, x, labels)
    assert result.x_adv.device.type == device.type and torch.isfinite(result.x_adv).all()
    assert bool(attack.threat().contains(x, result.x_adv).all())
    assert torch.equal(result.pred, model.predict(result.x_adv))
    on_cpu = build_attack(name, cpu_model).run(cpu_model, *batch)
    assert torch.equal(result.target.cpu(), on_cpu.target), "random targets must not depend on the device"


@pytest.mark.parametrize("name", list_interpreters())
def test_maps_on_the_device_match_the_cpu(name, models, batch, device):
    cpu_model, model = models
    maps = build_interpreter(name, model).attribute(batch[0].to(device))
    reference = build_interpreter(name, cpu_model).attribute(batch[0])
    assert maps.device.type == device.type and maps.shape == reference.shape
    assert torch.isfinite(maps).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1
    if name == "mask":  # an optimisation: its path may part from the CPU's on rounding
        return
    correlation = torch.corrcoef(torch.stack([maps.cpu().flatten(), reference.flatten()]))[0, 1]
    assert float(correlation) > 0.99, f"{name}: maps on {device} correlate {float(correlation):.4f} with the CPU's"


def test_metrics_on_the_device_equal_the_cpu(device):
    generator = torch.Generator().manual_seed(2)
    a, b = torch.rand(4, 8, 8, generator=generator), torch.rand(4, 8, 8, generator=generator)
    x = torch.rand(4, 3, 32, 32, generator=generator)
    x_adv = (x + 0.03 * torch.rand(4, 3, 32, 32, generator=generator)).clamp(0, 1)
    for metric, inputs in ((metrics.map_l1, (a, b)), (metrics.topk_iou, (a, b)), (metrics.kendall_tau, (a, b)),
                           (metrics.linf_norm, (x, x_adv)), (metrics.noise_rate, (x, x_adv))):
        on_device = metric(*(t.to(device) for t in inputs))
        assert on_device.device.type == device.type
        torch.testing.assert_close(on_device.cpu(), metric(*inputs), rtol=1e-5, atol=1e-5)


def test_fault_checks_hold_on_the_device(models, batch, device):
    _, model = models
    x, labels = batch[0].to(device), batch[1].to(device)
    half = build_attack("pgd", model).run(model, x.half(), labels)
    assert torch.equal(half.x_adv, build_attack("pgd", model).run(model, x.half().float(), labels).x_adv)
    with pytest.raises(UserError, match=LOGITS_ERROR):
        faulty = broken(model, math.nan)
        build_attack("pgd", faulty).run(faulty, x, labels)


def test_an_experiment_runs_on_the_device_with_the_records_of_the_cpu(tmp_path, device):
    from idls.experiments import read_records, run_experiment
    from tests.fault_helpers import write_fault_experiment
    from tests.test_faults_disk import QUICK

    path = write_fault_experiment(tmp_path, QUICK)
    run_experiment(path, tmp_path / "cpu", progress=False)
    run_experiment(path, tmp_path / "device", overrides={"device": str(device)}, progress=False)
    key = ("cell", "image_id", "interpreter", "target_label", "true_label")
    on_cpu = sorted(tuple(r[k] for k in key) for r in read_records(tmp_path / "cpu"))
    assert sorted(tuple(r[k] for k in key) for r in read_records(tmp_path / "device")) == on_cpu
