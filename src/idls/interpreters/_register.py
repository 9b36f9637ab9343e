"""Registration of the built-in interpreters (each module registers itself on import)."""

from idls.interpreters import cam, grad, gradcam, integrated_gradients, mask, rts  # noqa: F401
