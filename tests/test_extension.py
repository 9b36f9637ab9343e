"""Adding an interpreter is one class plus its registration: joint attacks, experiments and reports pick it up.

The interpreter below ("gradient x input", Shrikumar et al. 2016) is written here as a user would write it
in their own file; nothing else in idls is edited for it.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import Tensor

from idls.analysis.groups import family
from idls.attacks import create_attack
from idls.interpreters import INTERPRETERS, create_interpreter, interpreter_class, interpreters_in_order
from idls.interpreters.grad import GradientInterpreter, channel_max_pool, input_gradient, normalize_magnitudes
from idls.models import create_model

NAME = "grad-x-input"


class GradientTimesInput(GradientInterpreter):
    """``|x * d logit_c / d x|``, channel max, min-max (a user's new interpreter)."""

    name: ClassVar[str] = NAME
    family = "grad"  # joint attacks use the Grad rows of the defaults table
    taxonomy = "back-propagation"
    display_order = 15

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        grad = input_gradient(self.model_for(create_graph), x, target, loss="logit", create_graph=create_graph)
        return normalize_magnitudes(channel_max_pool((grad * x).abs(), 1))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(INTERPRETERS._entries, NAME, GradientTimesInput)
    return NAME


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("cifar_resnet20").eval()


def test_listed_in_display_order_with_its_taxonomy(registered):
    order = interpreters_in_order()
    assert order.index("grad") < order.index(NAME) < order.index("ig")
    assert family(NAME) == "back-propagation" and interpreter_class(NAME) is GradientTimesInput


def test_joint_attacks_run_against_it_with_its_declared_family(registered, model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 2])
    interpreter = create_interpreter(NAME, model)
    for attack in ("adv2", "advedge"):
        result = create_attack(attack, interpreter=interpreter, steps=4, warm_start=2).run(model, x, labels)
        assert result.extras["adv_map"].shape == (2, 32, 32)
        assert float((result.x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    # its surrogate twin is used for the in-graph map; the user's object is untouched
    assert interpreter.surrogate is None and interpreter.for_joint_attack().surrogate is not None


def test_experiments_and_the_cli_pick_it_up(registered, model):
    from idls.cli import _default_interpreters
    from idls.experiments.config import experiment_from_mapping

    assert NAME in _default_interpreters(model, None)
    experiment = experiment_from_mapping({"models": [{"name": "cifar_resnet20", "weights": "random"}],
                                       "attacks": ["adv2"], "data": {"source": "embedded", "n": 2}})
    assert NAME in experiment.interpreters
