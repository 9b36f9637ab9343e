"""Where units run: in this process (``local``) or on the workers of a Ray cluster (``ray``).

Either way the caller's ``commit`` (the store) runs in this process, one unit at a time, so the
store has a single writer. Ray is optional (``pip install 'idls[ray]'``) and imported only here.
The Ray backend starts one actor per GPU (``device: cuda``) or per CPU slot of the cluster; each
actor keeps its own :class:`~idls.experiments.execute.Workspace` (models, images, interpreters)
and runs one unit at a time with one torch thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import torch

from idls.errors import UserError
from idls.experiments.cells import Unit
from idls.experiments.config import Experiment
from idls.experiments.execute import UnitOutput, Workspace, run_unit

BACKENDS: tuple[str, ...] = ("local", "ray")
Commit = Callable[[Unit, UnitOutput], None]
#: environment variables forwarded to Ray workers (the cache of trained models, shared data)
FORWARDED_ENVIRONMENT_PREFIX = "IDLS_"


def run_local(workspace: Workspace, units: Sequence[Unit], commit: Commit) -> None:
    """Run the units in order in this process."""
    for unit in units:
        commit(unit, run_unit(workspace, unit))


class UnitWorker:
    """A Ray actor body: a workspace of its own and ``run(unit) -> UnitOutput``."""

    def __init__(self, experiment: Experiment, device: str, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.workspace = Workspace(experiment, device)

    def run(self, unit: Unit) -> UnitOutput:
        return run_unit(self.workspace, unit)


def import_ray():
    """The ``ray`` module, or a one-line :class:`UserError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("the Ray backend needs ray: pip install 'idls[ray]' (or use --backend local)") from None
    return ray


def run_ray(experiment: Experiment, units: Sequence[Unit], commit: Commit, *, address: str | None = None,
            max_workers: int | None = None) -> None:
    """Run the units on a Ray cluster (the one already connected, ``address``, or a new local instance)."""
    if not units:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        _run_on_cluster(ray, experiment, units, commit, max_workers)
    finally:
        if started_here:
            ray.shutdown()


def _run_on_cluster(ray, experiment: Experiment, units: Sequence[Unit], commit: Commit,
                    max_workers: int | None) -> None:
    """One actor per GPU (``device: cuda``) or CPU slot, at most one per unit; commit outputs as they come."""
    resources = ray.cluster_resources()
    use_gpu = experiment.device.startswith("cuda")
    slots = int(resources.get("GPU", 0)) if use_gpu else int(resources.get("CPU", 1))
    if slots < 1:
        raise UserError("device: cuda but the Ray cluster has no GPU; use device: cpu or add GPU workers")
    count = max(1, min(slots, len(units), max_workers or slots))
    environment = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENVIRONMENT_PREFIX)}
    actor = ray.remote(UnitWorker).options(
        num_cpus=1, num_gpus=1 if use_gpu else 0, runtime_env={"env_vars": environment} if environment else None,
    )
    workers = [actor.remote(experiment, "cuda" if use_gpu else "cpu") for _ in range(count)]
    try:
        for unit, output in _unordered(ray, workers, units):
            commit(unit, output)
    finally:
        for worker in workers:
            ray.kill(worker)


def _unordered(ray, workers: list, units: Sequence[Unit]) -> Iterator[tuple[Unit, UnitOutput]]:
    """Keep every worker busy with one unit; yield (unit, output) as they finish."""
    queue = list(reversed(units))
    running: dict = {}
    for worker in workers:
        if queue:
            unit = queue.pop()
            running[worker.run.remote(unit)] = (worker, unit)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        worker, unit = running.pop(ready[0])
        try:
            output = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise
        if queue:
            following = queue.pop()
            running[worker.run.remote(following)] = (worker, following)
        yield unit, output


def run_units(backend: str, experiment: Experiment, workspace: Workspace, units: Sequence[Unit], commit: Commit,
              *, ray_address: str | None = None) -> None:
    """Dispatch to :func:`run_local` or :func:`run_ray`."""
    if backend == "local":
        run_local(workspace, units, commit)
    elif backend == "ray":
        run_ray(experiment, units, commit, address=ray_address)
    else:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "UnitWorker", "import_ray", "run_local", "run_ray", "run_units"]
