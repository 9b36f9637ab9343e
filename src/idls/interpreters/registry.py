"""The interpreter registry: names -> interpreter classes (each module registers its class on import)."""

from __future__ import annotations

from idls.interpreters.base import Interpreter
from idls.registry import Registry
from idls.system import Classifier

INTERPRETERS: Registry[type[Interpreter]] = Registry("interpreter")


def create_interpreter(name: str, classifier: Classifier, **options) -> Interpreter:
    """Build interpreter ``name`` for ``classifier`` (options are the interpreter's keyword arguments)."""
    return INTERPRETERS.get(name)(classifier, **options)


def interpreter_for(spec: Interpreter | str, classifier: Classifier, **options) -> Interpreter:
    """The interpreter an attack was given (``spec``): built for ``classifier`` from a registry name,
    or checked to explain ``classifier`` when it is already an :class:`Interpreter`."""
    from idls.errors import UserError

    if isinstance(spec, str):
        return create_interpreter(spec, classifier, **options)
    if spec.classifier is not classifier:
        raise UserError("the interpreter explains a different classifier than the one attacked; "
                        "build it with create_interpreter(name, classifier)")
    return spec


def list_interpreters() -> list[str]:
    return INTERPRETERS.names()


def interpreters_in_order() -> list[str]:
    """Registered names in display order (each class's ``display_order``, then name)."""
    return sorted(INTERPRETERS.names(), key=lambda name: (INTERPRETERS.get(name).display_order, name))


def interpreter_class(name: str) -> type[Interpreter]:
    """The registered class of ``name`` (its class attributes declare its capabilities)."""
    return INTERPRETERS.get(name)
