"""One-line specs of configurable objects: ``'NAME'`` or ``'NAME:KEY=VALUE,...'`` (defences, feature extractors).

::

    parse_spec("bit-depth:bits=4", "defence")                       # ('bit-depth', {'bits': 4})
    parse_spec("non-local-means:search=11,patch=3,strength=4", "defence")
"""

from __future__ import annotations

from typing import Any

from idls.errors import UserError


def parse_spec(spec: str, what: str) -> tuple[str, dict[str, Any]]:
    """``'NAME'`` or ``'NAME:KEY=VALUE,...'`` (values read as YAML) -> ``(name, options)``.

    ``what`` names the kind of object in error messages (e.g. ``'defence'``).
    """
    import yaml

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in (part.strip() for part in rest.split(",") if part.strip()):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} option {item!r} is not KEY=VALUE; write e.g. {name.strip() or 'NAME'}:key=value")
        try:
            options[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"{what} option {item!r}: cannot read the value {text!r}") from None
    return name.strip(), options


__all__ = ["parse_spec"]
