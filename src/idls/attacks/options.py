"""Attack options, declared once per attack as a frozen dataclass.

Each attack class names its options class (``Attack.Options``); the fields, their
defaults and their help texts are the single declaration that serves the Python
constructor (``create_attack("pgd", steps=50)``), the command line
(``-o steps=50``), experiment files (``attack_options: {pgd: {steps: 50}}``) and
the generated options reference (``idls options pgd``, docs/options.md).
Validation happens once, in the options class (``__post_init__`` calls
:meth:`AttackOptions.check`, which subclasses extend); defaults that depend on
other options (PGD's epsilon by norm) are resolved there too, so the stored
options are the ones the attack really uses.

A field is declared with :func:`option`::

    @dataclass(frozen=True, eq=False, kw_only=True)
    class PGDOptions(AttackOptions):
        steps: int = option(100, "maximum number of steps")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from idls.attacks.targets import TargetMode
from idls.errors import UserError

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, factory: Any = _MISSING,  # noqa: A002
           setting: str | None = None) -> Any:
    """A dataclass field with a help text (``default`` or ``factory``; neither: required).

    ``setting`` names the field of a settings table the option overrides (joint attacks:
    :class:`~idls.attacks.defaults.JointDefaults`), when it is one.
    """
    metadata = {"help": help, "setting": setting}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True, eq=False, kw_only=True)
class AttackOptions:
    """Options every attack takes."""

    #: option names that are checked by the attack for a name, not by type (e.g. an interpreter object)
    untyped: ClassVar[tuple[str, ...]] = ()

    mode: TargetMode = option(TargetMode.TARGETED, "'targeted' (seeded random wrong classes), 'untargeted' "
                                                   "or 'least_likely'")
    seed: int = option(0, "seeds random targets and any randomness of the attack")
    progress: bool = option(False, "show a progress bar")

    def __post_init__(self) -> None:
        self._set("mode", TargetMode.parse(self.mode))
        self._check_types()
        self.check()

    # -- for subclasses ---------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`UserError` for values that cannot work; resolve dependent defaults with :meth:`_set`."""

    def _set(self, name: str, value: Any) -> None:
        """Set a field during ``__post_init__`` (the dataclass is frozen afterwards)."""
        object.__setattr__(self, name, value)

    # -- construction from user input -----------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of option ``name``."""
        field = next(f for f in fields(cls) if f.name == name)
        return field.default_factory() if field.default_factory is not _MISSING else field.default

    @classmethod
    def from_user(cls, attack: str, values: dict[str, Any]) -> AttackOptions:
        """Options from keyword values (Python, ``-o``, YAML): unknown or missing names are one-line errors."""
        known = cls.names()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"bad option for attack {attack!r}: unexpected {', '.join(unknown)}; "
                            f"it takes: {', '.join(sorted(known))} (see `idls options {attack}`)")
        missing = [f.name for f in fields(cls)
                   if f.default is _MISSING and f.default_factory is _MISSING and f.name not in values]
        if missing:
            raise UserError(f"attack {attack!r} needs the option(s) {', '.join(missing)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def _check_types(self) -> None:
        """Values of fields with a plain default (int, float, bool, str) must have that kind."""
        for f in fields(self):
            if f.name in self.untyped or f.default is _MISSING or f.default is None:
                continue
            value = getattr(self, f.name)
            expected = type(f.default)
            if expected is bool:
                ok = isinstance(value, bool)
            elif expected is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif expected is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok:
                    self._set(f.name, float(value))
            elif expected is str:
                ok = isinstance(value, str)
            else:
                continue
            if not ok:
                kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[expected]
                raise UserError(f"option {f.name} must be {kind}, got {value!r}")

    # -- description -----------------------------------------------------------------------
    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(name, default, help)`` of every option, in declaration order."""
        rows = []
        for f in fields(cls):
            if f.default is not _MISSING:
                default = f.default.value if isinstance(f.default, TargetMode) else f.default
                shown = "required" if default is _MISSING else repr(default)
            elif f.default_factory is not _MISSING:
                shown = repr(f.default_factory())
            else:
                shown = "required"
            rows.append((f.name, shown, f.metadata.get("help", "")))
        return rows

    @classmethod
    def setting_names(cls) -> dict[str, str]:
        """``{option name: settings field}`` of the options that override a settings table."""
        return {f.name: f.metadata["setting"] for f in fields(cls) if f.metadata.get("setting")}

    def settings(self) -> dict[str, Any]:
        """``{settings field: value}`` of those options (``None``: keep the table's value)."""
        return {setting: getattr(self, name) for name, setting in self.setting_names().items()}

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values (mode as its string)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["mode"] = self.mode.value
        return out


def check_positive(**values: float) -> None:
    """Raise :class:`UserError` for a non-positive option."""
    for name, value in values.items():
        if not value > 0:
            raise UserError(f"{name} must be > 0, got {value}")


def check_non_negative(**values: float) -> None:
    """Raise :class:`UserError` for a negative option."""
    for name, value in values.items():
        if not value >= 0:
            raise UserError(f"{name} must be >= 0, got {value}")


__all__ = ["AttackOptions", "check_non_negative", "check_positive", "option"]
