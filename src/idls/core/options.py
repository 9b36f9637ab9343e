"""Options declared once, as a frozen dataclass per configurable object (attacks, detectors).

The fields, their defaults and their help texts are the single declaration that
serves the Python constructor, the command line (``-o KEY=VALUE``), experiment
files and the generated options reference. Validation happens once, in
``__post_init__`` (which calls :meth:`Options.check`, extended by subclasses);
defaults that depend on other options are resolved there too, so the stored
options are the ones really used.

A field is declared with :func:`option`::

    @dataclass(frozen=True, eq=False, kw_only=True)
    class SqueezingOptions(Options):
        kind: ClassVar[str] = "detector"
        fpr: float = option(0.05, "false-positive rate on benign images the threshold is set at")
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from idls.errors import UserError

_MISSING = dataclasses.MISSING
#: the concrete options class :meth:`Options.from_user` returns (``typing.Self`` needs Python 3.11)
_O = TypeVar("_O", bound="Options")



def option(default: Any = _MISSING, help: str = "", *, factory: Any = _MISSING,
           setting: str | None = None) -> Any:
    """A dataclass field with a help text (``default`` or ``factory``; neither: required).

    ``setting`` names the field of a settings table the option overrides (joint attacks:
    :class:`~idls.attacks.defaults.JointDefaults`), when it is one.
    """
    metadata = {"help": help, "setting": setting}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _plain(value: Any) -> Any:
    """Enums as their values (what JSON, YAML and the command line show)."""
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True, eq=False, kw_only=True)
class Options:
    """Base of every options dataclass: type checks, user-input parsing and description."""

    #: what the options configure, in error messages ("attack", "detector")
    kind: ClassVar[str] = "object"
    #: option names that are checked by the owner for a name, not by type (e.g. an interpreter object)
    untyped: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
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
    def from_user(cls: type[_O], owner: str, values: dict[str, Any]) -> _O:
        """Options from keyword values (Python, ``-o``, YAML): unknown or missing names are one-line errors."""
        known = cls.names()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"bad option for {cls.kind} {owner!r}: unexpected {', '.join(unknown)}; "
                            f"it takes: {', '.join(sorted(known))} (see `idls options {owner}`)")
        missing = [f.name for f in fields(cls)
                   if f.default is _MISSING and f.default_factory is _MISSING and f.name not in values]
        if missing:
            raise UserError(f"{cls.kind} {owner!r} needs the option(s) {', '.join(missing)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def _check_types(self) -> None:
        """Values of fields with a plain default (int, float, bool, str) must have that kind."""
        for f in fields(self):
            if f.name in self.untyped or f.default is _MISSING or f.default is None:
                continue
            value = getattr(self, f.name)
            if value is None and "None" in str(f.type):
                continue
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
                shown = repr(_plain(f.default))
            elif f.default_factory is not _MISSING:
                shown = repr(f.default_factory())
            else:
                shown = "required"
            rows.append((f.name, shown, f.metadata.get("help", "")))
        return rows

    @classmethod
    def markdown_table(cls) -> list[str]:
        """:meth:`describe` as the lines of a Markdown table (docs/options.md, the docs site)."""
        lines = ["| option | default | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | `{shown}` | {text.replace('|', '/')} |" for name, shown, text in cls.describe()]
        return lines

    @classmethod
    def setting_names(cls) -> dict[str, str]:
        """``{option name: settings field}`` of the options that override a settings table."""
        return {f.name: f.metadata["setting"] for f in fields(cls) if f.metadata.get("setting")}

    def settings(self) -> dict[str, Any]:
        """``{settings field: value}`` of those options (``None``: keep the table's value)."""
        return {setting: getattr(self, name) for name, setting in self.setting_names().items()}

    def as_dict(self) -> dict[str, Any]:
        """The options as plain values (enums as their values)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


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


__all__ = ["Options", "check_non_negative", "check_positive", "option"]
