"""Attack options are declared once (an ``Options`` dataclass) and serve Python, -o KEY=VALUE, YAML and the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from idls.attacks import ATTACKS, create_attack, list_attacks
from idls.attacks.reference import markdown
from idls.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_options_page_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "options.md").read_text() == markdown(), \
        "docs/options.md is stale: run `python -m idls.attacks.reference > docs/options.md`"


@pytest.mark.parametrize("name", list_attacks())
def test_every_option_is_documented_and_mirrored_on_the_attack(name):
    rows = ATTACKS.get(name).Options.describe()
    assert rows and all(help_text for _, _, help_text in rows), f"{name}: an option without a help text"
    extra = {"interpreter": "cam"} if "interpreter" in ATTACKS.get(name).Options.names() else {}
    attack = create_attack(name, **extra)
    for option, _, _ in rows:
        assert getattr(attack, option) is getattr(attack.options, option)


def test_command_line_and_yaml_values_reach_the_same_options():
    from idls.cli import _key_values

    yaml_like = {"lam": 10, "label_smoothing": [0.9, 0.99], "framework": "mifgsm"}
    cli = _key_values(["lam=10", "label_smoothing=[0.9, 0.99]", "framework=mifgsm"])
    a = create_attack("adv2", interpreter="cam", **cli)
    b = create_attack("adv2", interpreter="cam", **yaml_like)
    assert a.options.as_dict() == b.options.as_dict()
    assert a.options.label_smoothing == (0.9, 0.99) and a.overrides["lam"] == 10


def test_dependent_defaults_are_resolved_once_in_the_options():
    assert create_attack("pgd", norm="l2").options.epsilon == 0.5
    assert create_attack("pgd", norm="l2", epsilon=2.0).step_size == pytest.approx(0.2)
    assert create_attack("mifgsm", steps=4).step_size == pytest.approx(8 / 255 / 4)
    assert create_attack("adv2", interpreter="cam", framework="stadv").epsilon is None


@pytest.mark.parametrize("name, values, message", [
    ("pgd", {"steps": "many"}, "option steps must be an integer, got 'many'"),
    ("pgd", {"random_start": 1}, "option random_start must be true or false"),
    ("pgd", {"stepz": 3}, "bad option for attack 'pgd': unexpected stepz"),
    ("cw", {"lr": 0}, "lr must be > 0"),
    ("stadv", {"loss": "hinge"}, "unknown StAdv loss 'hinge'"),
    ("adv2", {}, "attack 'adv2' needs the option\\(s\\) interpreter"),
    ("adv2", {"interpreter": "cam", "mask_reset_every": 0}, "mask_reset_every must be >= 1"),
    ("advedge", {"interpreter": "cam", "edge_stage": "sometimes"}, "unknown edge_stage 'sometimes'"),
    ("advedge+", {"interpreter": "cam", "threshold": -1}, "threshold must be >= 0"),
])
def test_bad_values_are_one_line_user_errors(name, values, message):
    with pytest.raises(UserError, match=message):
        create_attack(name, **values)


def test_options_are_frozen():
    attack = create_attack("pgd")
    with pytest.raises(AttributeError):
        attack.options.steps = 3
