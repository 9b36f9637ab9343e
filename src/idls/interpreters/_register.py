"""Registration of the built-in interpreters (each module registers itself on import)."""

import importlib

for _module in ("grad", "integrated_gradients", "cam", "gradcam", "rts", "mask"):
    try:
        importlib.import_module(f"idls.interpreters.{_module}")
    except ModuleNotFoundError as exc:  # a module not written yet must not break the others
        if exc.name != f"idls.interpreters.{_module}":
            raise
