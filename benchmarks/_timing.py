"""Shared timing helpers for the benchmark scripts (not imported by the library)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: the shared real data beside the checkout (``IDLS_SHARED_DATA`` overrides), as in tests/conftest.py
SHARED_DATA = Path(os.environ.get("IDLS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: benchmark settings: key -> (model name, input side, batch size)
CONFIGS: dict[str, tuple[str, int, int]] = {
    "cifar": ("cifar_resnet20", 32, 64),
    "imagenet": ("resnet50", 224, 8),
    "imagenet_densenet": ("densenet169", 224, 8),  # paper 000 Table III's second ImageNet model
}


def seconds(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Time of one call of ``fn`` (seconds) on ``clock`` (default: wall time)."""
    start = clock()
    fn()
    return clock() - start


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU time of this process over one call of ``fn`` (seconds).

    On a shared machine the wall time also counts the time other processes hold the
    core; with one compute thread the process time is the work itself.
    """
    return seconds(fn, time.process_time)


def wall_seconds_on(device: torch.device | str) -> Callable[[Callable[[], object]], float]:
    """A timer like :func:`cpu_seconds` for work on ``device``: wall seconds of one call of ``fn``, waiting for
    the device's queued kernels before and after (CUDA runs them asynchronously; CPU time would miss them)."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timer(fn: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    return timer


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


def forward_backward_step(classifier, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward pass of ``classifier`` on ``x`` (loss = CE, gradient w.r.t. the input)."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def step() -> None:
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(classifier(xr), labels)
        torch.autograd.grad(loss, xr)

    return step


def forward_backward_seconds(classifier, x: torch.Tensor, repeats: int = 3) -> float:
    """Seconds for one forward + backward pass of ``classifier`` (loss = CE w.r.t. the input)."""
    return best_of(forward_backward_step(classifier, x), repeats)


def build_interpreter(name: str, classifier, **options):
    """An interpreter of ``classifier`` for timing: RTS gets an *untrained* masker (cost does not
    depend on its weights), the others come from the registry with ``options``."""
    from idls.interpreters import create_interpreter
    from idls.interpreters.rts import RTSInterpreter, RTSMasker

    if name == "rts":
        torch.manual_seed(0)
        return RTSInterpreter(classifier, masker=RTSMasker(classifier, **options))
    return create_interpreter(name, classifier, **options)


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


def shared_checkpoint(model: str) -> Path | None:
    """The shared data's checkpoint of a CIFAR ResNet (``cifar_resnet32`` -> ``cifar10/models/resnet32-*.th``), if any."""
    found = sorted((SHARED_DATA / "cifar10" / "models").glob(f"{model.removeprefix('cifar_')}-*.th"))
    return found[0] if found else None
