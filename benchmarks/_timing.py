"""Shared timing helpers for the benchmark scripts (not imported by the library)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def forward_backward_seconds(classifier, x: torch.Tensor, repeats: int = 3) -> float:
    """Seconds for one forward + backward pass of ``classifier`` (loss = CE w.r.t. the input)."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def step():
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(classifier(xr), labels)
        torch.autograd.grad(loss, xr)

    return best_of(step, repeats)


def machine() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "device": "cpu",
    }


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"wrote {path}")
    return path
