"""Thread-count control for the embedded trainings.

Float reductions depend on how work is split across threads, so a training run is
bit-reproducible only at a fixed thread count. The embedded CNN and its RTS are
small (64 px, batch 64): intra-op parallelism gains little there and, on a busy
2-core machine, two spinning OpenMP threads made training 3x slower than one.
Both embedded trainings therefore run single-threaded, so the cached artifacts are
the same on every machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
