"""Attack options, declared once per attack as a frozen dataclass (:class:`idls.core.options.Options`).

Each attack class names its options class (``Attack.Options``); the fields, their
defaults and their help texts are the single declaration that serves the Python
constructor (``create_attack("pgd", steps=50)``), the command line
(``-o steps=50``), experiment files (``attack_options: {pgd: {steps: 50}}``) and
the generated options reference (``idls options pgd``, docs/options.md).
Defaults that depend on other options (PGD's epsilon by norm) are resolved in
``check``, so the stored options are the ones the attack really uses.

A field is declared with :func:`option`::

    @dataclass(frozen=True, eq=False, kw_only=True)
    class PGDOptions(AttackOptions):
        steps: int = option(100, "maximum number of steps")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from idls.attacks.targets import TargetMode
from idls.core.options import Options, check_non_negative, check_positive, option


@dataclass(frozen=True, eq=False, kw_only=True)
class AttackOptions(Options):
    """Options every attack takes."""

    kind: ClassVar[str] = "attack"

    mode: TargetMode = option(TargetMode.TARGETED, "'targeted' (seeded random wrong classes), 'untargeted' "
                                                   "or 'least_likely'")
    seed: int = option(0, "seeds random targets and any randomness of the attack")
    progress: bool = option(False, "show a progress bar")

    def __post_init__(self) -> None:
        self._set("mode", TargetMode.parse(self.mode))
        super().__post_init__()


__all__ = ["AttackOptions", "check_non_negative", "check_positive", "option"]
