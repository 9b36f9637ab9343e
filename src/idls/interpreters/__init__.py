"""Interpreters: ``create_interpreter(name, classifier, **options)``.

Names: grad, ig, cam, gradcam, rts, mask (see ``idls list``). Each interpreter
class declares its own capabilities (its joint-attack family, whether its
in-graph map is exact, which classifiers it applies to); see
:class:`~idls.interpreters.base.Interpreter`.
"""

from __future__ import annotations

# Importing the modules registers the built-in interpreters.
from idls.interpreters import cam, grad, gradcam, integrated_gradients, mask, rts  # noqa: F401
from idls.interpreters.base import Interpreter, JointOutput, minmax_normalize
from idls.interpreters.registry import (
    INTERPRETERS,
    create_interpreter,
    interpreter_class,
    interpreter_for,
    interpreters_in_order,
    list_interpreters,
)

__all__ = [
    "INTERPRETERS",
    "Interpreter",
    "JointOutput",
    "interpreter_for",
    "create_interpreter",
    "interpreter_class",
    "interpreters_in_order",
    "list_interpreters",
    "minmax_normalize",
]
