"""Interpreter registry: ``create_interpreter(name, classifier, **options)``.

Names: grad, ig, cam, gradcam, rts, mask (see ``idls list``).
"""

from __future__ import annotations

from collections.abc import Callable

from idls.interpreters.base import Interpreter, minmax_normalize
from idls.registry import Registry
from idls.system import Classifier

INTERPRETERS: Registry[Callable[..., Interpreter]] = Registry("interpreter")


def create_interpreter(name: str, classifier: Classifier, **options) -> Interpreter:
    """Build interpreter ``name`` for ``classifier`` (options are the interpreter's keyword arguments)."""
    return INTERPRETERS.get(name)(classifier, **options)


def list_interpreters() -> list[str]:
    return INTERPRETERS.names()


from idls.interpreters import _register  # noqa: E402,F401

__all__ = ["INTERPRETERS", "Interpreter", "create_interpreter", "list_interpreters", "minmax_normalize"]
