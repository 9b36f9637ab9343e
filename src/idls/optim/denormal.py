"""The one guard against subnormal floats in optimisation loops (docs/design.md §6)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _flushing_denormals() -> bool:
    """Whether this thread currently flushes subnormal floats to zero."""
    tiny = torch.tensor([1e-39])
    return bool((tiny * torch.tensor([1.0])).item() == 0.0)


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    """Flush subnormal floats to zero inside attack loops, then restore the previous setting.

    Once cross-entropy saturates, back-propagated values become subnormal and
    x86 CPUs slow down several-fold (docs/design.md §6). A no-op where unsupported.

    Caveat (measured with torch 2.14): the flag is per thread. It reaches the
    intra-op worker threads only if it was on when torch created them (they
    inherit it and then keep it), so with ``torch.get_num_threads() > 1`` call
    ``torch.set_flush_denormal(True)`` at program start for the full effect.
    """
    previous = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


__all__ = ["flush_denormal"]
