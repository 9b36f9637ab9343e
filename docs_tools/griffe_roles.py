"""A griffe extension for the API reference: Sphinx roles in docstrings become Markdown code.

The docstrings use Sphinx cross-reference roles (``:class:`~idls.system.Classifier```), which the
Markdown renderer of mkdocstrings would print verbatim. This shows them as code, as Sphinx would
(``~`` keeps only the last component): ``Classifier``. Loaded by mkdocs.yml
(``mkdocstrings`` -> ``extensions``); it changes nothing but the rendered text.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`(?P<short>~?)(?P<target>[^`]+)`")


def plain_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of the name Sphinx would show."""
    return _ROLE.sub(lambda m: f"`{m['target'].rsplit('.', 1)[-1] if m['short'] else m['target']}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every loaded object's docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102 - griffe's hook
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
