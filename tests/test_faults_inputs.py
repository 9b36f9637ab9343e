"""Model-output and input faults: every attack, interpreter and metric gives the right result or a clear error.

* float16 / bfloat16 / channels-last inputs: the result equals that of the same values as contiguous
  float32 (attacks and interpreters convert with ``Classifier.prepare``; metrics compute in float32);
* a classifier whose logits are NaN or Inf for some images: attacks refuse it (``UserError`` naming the
  rows), interpreters refuse to explain its prediction, and an explicit class is either explained as
  by the intact model or refused — never a silent map of a broken model;
* a classifier with half-precision weights is refused with the fix;
* metrics: a sample with NaN or Inf maps or images gets NaN, the other samples their usual value; a
  batch of one gives the row of the batch.

A batch of one for attacks and interpreters is covered by their contract tests (a sample's result does
not depend on its batch). Runs on the seeded random CIFAR ResNet-20 of the contract tests.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from idls import metrics
from idls.attacks import list_attacks
from idls.errors import UserError
from idls.interpreters import list_interpreters
from tests.test_attack_contracts import _build as build_attack
from tests.test_interpreter_contracts import build as build_interpreter

LAYOUTS = {
    "float16": lambda x: x.half(),
    "bfloat16": lambda x: x.bfloat16(),
    "channels-last": lambda x: x.contiguous(memory_format=torch.channels_last),
}
BROKEN_ROWS = [0, 2]
#: the error of a model with NaN logits (universal attacks find them among their fit images first)
LOGITS_ERROR = r"returned NaN or Inf logits for 2 of (3|12 fit) image\(s\) \(rows \[0, 2\]\); its weights are damaged"


@pytest.fixture(scope="module")
def model():
    from tests.model_helpers import seeded_random_resnet20

    return seeded_random_resnet20(0)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=generator), torch.randint(0, 10, (3,), generator=generator)


def broken(model, value: float, only_after: int = 0):
    """``model`` whose logits are multiplied by ``value`` (NaN or Inf) in rows ``BROKEN_ROWS`` of every batch,
    so the fault also reaches the gradients; from its ``only_after``-th call on (0: always)."""
    twin = copy.copy(model)
    head, calls = model._head, [0]

    def faulty(net, features):
        logits = head(net, features)
        calls[0] += 1
        if calls[0] <= only_after:
            return logits
        scale = torch.ones(logits.shape[0], 1, dtype=logits.dtype, device=logits.device)
        scale[[r for r in BROKEN_ROWS if r < logits.shape[0]]] = value
        return logits * scale

    twin._head = faulty
    return twin


_reference_attacks: dict[str, object] = {}


def reference_attack(name, model, batch):
    """The attack's result on the contiguous float32 batch (computed once per attack)."""
    if name not in _reference_attacks:
        _reference_attacks[name] = build_attack(name, model).run(model, *batch)
    return _reference_attacks[name]


# -- attacks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list_attacks())
def test_attacks_on_half_precision_or_channels_last_images_equal_float32(name, layout, model, batch):
    x, labels = batch
    converted = LAYOUTS[layout](x)
    expected_input = converted.float().contiguous()
    result = build_attack(name, model).run(model, converted, labels)
    reference = reference_attack(name, model, batch) if layout == "channels-last" else \
        build_attack(name, model).run(model, expected_input, labels)
    assert result.x_adv.dtype == torch.float32 and result.x_adv.is_contiguous()
    assert torch.equal(result.x_adv, reference.x_adv), f"{name} on {layout} images differs from float32"
    assert torch.equal(result.pred, reference.pred) and torch.equal(result.success, reference.success)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", list_attacks())
def test_attacks_refuse_a_classifier_whose_logits_are_not_numbers(name, value, model, batch):
    faulty = broken(model, value)
    with pytest.raises(UserError, match=LOGITS_ERROR):
        build_attack(name, faulty).run(faulty, *batch)


def test_an_attack_refuses_logits_that_break_only_on_the_adversarial_images(model, batch):
    faulty = broken(model, math.nan, only_after=1)  # the first call (the benign check) is intact
    with pytest.raises(UserError, match=LOGITS_ERROR):
        build_attack("random-sign", faulty).run(faulty, *batch)


def test_half_precision_weights_are_refused_with_the_fix(model, batch):
    half = copy.deepcopy(model).bfloat16()
    with pytest.raises(UserError, match=r"cifar_resnet20 has bfloat16 weights, but attacks and interpreters need "
                                        r"float32 or float64 ones .*call \.float\(\) on the classifier"):
        build_attack("pgd", half).run(half, batch[0].bfloat16(), batch[1])
    with pytest.raises(UserError, match="has bfloat16 weights"):
        build_interpreter("cam", half).attribute(batch[0])


# -- interpreters --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list_interpreters())
def test_maps_of_half_precision_or_channels_last_images_equal_float32(name, layout, model, batch):
    converted = LAYOUTS[layout](batch[0])
    maps = build_interpreter(name, model).attribute(converted)
    reference = build_interpreter(name, model).attribute(converted.float().contiguous())
    assert maps.dtype == torch.float32
    assert torch.equal(maps, reference), f"{name} on {layout} images differs from float32"


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", list_interpreters())
def test_interpreters_refuse_to_explain_a_prediction_that_is_not_a_number(name, value, model, batch):
    faulty = broken(model, value)
    with pytest.raises(UserError, match=LOGITS_ERROR):
        build_interpreter(name, faulty).attribute(batch[0])


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name", list_interpreters())
def test_a_given_class_of_a_broken_model_is_explained_correctly_or_refused(name, value, model, batch):
    """Maps that do not need the broken logits (CAM: feature maps and class weights) equal the intact model's;
    every other interpreter raises, naming the rows — none returns a map computed from NaN."""
    classes = torch.tensor([1, 2, 3])
    faulty = broken(model, value)
    try:
        maps = build_interpreter(name, faulty).attribute(batch[0], classes)
    except UserError as error:
        assert "NaN or Inf" in str(error) and "rows [0, 2]" in str(error)
        return
    torch.testing.assert_close(maps, build_interpreter(name, model).attribute(batch[0], classes), rtol=0, atol=0)


# -- metrics ---------------------------------------------------------------------------------------------------
def _maps_and_images():
    generator = torch.Generator().manual_seed(5)
    maps, other = torch.rand(3, 8, 8, generator=generator), torch.rand(3, 8, 8, generator=generator)
    x = torch.rand(3, 3, 32, 32, generator=generator)
    x_adv = (x + 0.02 * torch.randn(3, 3, 32, 32, generator=generator)).clamp(0, 1)
    return maps, other, x, x_adv


MAP_METRICS = {
    "map_l1": metrics.map_l1,
    "map_l2": metrics.map_l2,
    "topk_iou": metrics.topk_iou,
    "topk_iou@several": lambda a, b: metrics.topk_iou(a, b, k=[0.1, 0.3]),
    "kendall_tau": metrics.kendall_tau,
}
IMAGE_METRICS = {"linf_norm": metrics.linf_norm, "l2_norm": metrics.l2_norm, "noise_rate": metrics.noise_rate}


def _both(name):
    """(metric, takes images?) for a metric's name."""
    return (IMAGE_METRICS[name], True) if name in IMAGE_METRICS else (MAP_METRICS[name], False)


@pytest.mark.parametrize("layout", ["float16", "bfloat16", "channels-last"])
@pytest.mark.parametrize("name", [*MAP_METRICS, *IMAGE_METRICS])
def test_metrics_of_half_precision_or_channels_last_inputs_equal_float32(name, layout):
    maps, other, x, x_adv = _maps_and_images()
    metric, on_images = _both(name)
    a, b = (x, x_adv) if on_images else (maps, other)
    if layout == "channels-last":
        if not on_images:
            pytest.skip("maps have no channels")
        converted = (a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last))
    else:
        converted = (LAYOUTS[layout](a), LAYOUTS[layout](b))
    value = metric(*converted)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, metric(converted[0].float().contiguous(), converted[1].float().contiguous()),
                               rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", [*MAP_METRICS, *IMAGE_METRICS])
def test_a_sample_holding_nan_or_inf_gets_nan_and_the_others_their_value(name, value):
    maps, other, x, x_adv = _maps_and_images()
    metric, on_images = _both(name)
    a, b = (x, x_adv) if on_images else (maps, other)
    clean = metric(a, b)
    for which in (0, 1):  # the fault in either argument
        pair = [a.clone(), b.clone()]
        pair[which][1].view(-1)[7] = value
        faulty = metric(*pair)
        assert bool(torch.isnan(faulty[1]).all()), f"{name}: sample 1 holds {value} but got {faulty[1]}"
        torch.testing.assert_close(faulty[[0, 2]], clean[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("name", [*MAP_METRICS, *IMAGE_METRICS])
def test_metrics_of_a_batch_of_one_equal_its_row(name):
    maps, other, x, x_adv = _maps_and_images()
    metric, on_images = _both(name)
    a, b = (x, x_adv) if on_images else (maps, other)
    whole = metric(a, b)
    for row in range(3):
        torch.testing.assert_close(metric(a[row:row + 1], b[row:row + 1]), whole[row:row + 1], rtol=0, atol=1e-6)


def test_a_row_of_nan_logits_is_never_a_success():
    logits = torch.tensor([[0.0, 5.0], [math.nan, 1.0], [math.inf, 0.0], [5.0, 0.0]])
    assert metrics.success(logits, target=torch.tensor([1, 0, 0, 0])).tolist() == [True, False, False, True]
    assert metrics.success(logits, label=torch.tensor([0, 1, 1, 1])).tolist() == [True, False, False, True]
    assert torch.isnan(metrics.target_confidence(logits, torch.tensor([1, 0, 0, 0]))[1:3]).all()


def test_localisation_metrics_ignore_no_broken_map():
    maps = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    clean_iou, clean_hit = metrics.localization_iou(maps, masks), metrics.pointing_game(maps, masks)
    maps[0, 0, 0] = math.nan
    assert math.isnan(float(metrics.localization_iou(maps, masks)[0])) and not bool(metrics.pointing_game(maps, masks)[0])
    assert float(metrics.localization_iou(maps, masks)[1]) == float(clean_iou[1])
    assert bool(metrics.pointing_game(maps, masks)[1]) == bool(clean_hit[1])
    torch.testing.assert_close(metrics.localization_iou(maps.half(), masks)[1:], clean_iou[1:].float(), rtol=0, atol=0)
