"""Checkpoints of a fit (a universal perturbation, a generator, an RTS masker), so a killed fit resumes
where it stopped.

A fit is a loop over epochs whose whole state is a set of named tensors (the
perturbation or a generator's weights, the optimiser's moments) plus a few
JSON-serialisable counters. After every epoch the attack calls
:meth:`FitCheckpoint.save`; at the start of a fit it calls :meth:`FitCheckpoint.load`,
which returns the last saved state when the checkpoint belongs to the same fit
(same attack, options, model weights and fit data, recorded as one ``key``) and
``None`` otherwise. Files are written atomically (safetensors + JSON sidecar),
so a kill during a save leaves the previous checkpoint intact. Example::

    checkpoint = FitCheckpoint("out/fitted/cell.checkpoint.safetensors", key="3f2a...")
    state = checkpoint.load()                 # None on a fresh start
    ...
    checkpoint.save(epoch=4, tensors={"delta": delta}, counters={"fooling": 0.71})
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from idls.core.artifacts import load_artifact, save_artifact, sidecar_path
from idls.errors import UserError

#: default ``kind`` of a checkpoint artifact
CHECKPOINT_KIND = "universal-fit-checkpoint"


@dataclass
class FitState:
    """The state of a fit after ``epochs_done`` epochs.

    Attributes:
        epochs_done: completed epochs.
        tensors: name -> tensor (CPU), e.g. ``delta`` or ``generator.<param>``.
        counters: JSON-serialisable extras (running statistics, optimiser step counts).
    """

    epochs_done: int
    tensors: dict[str, Tensor]
    counters: dict[str, Any] = field(default_factory=dict)


class FitCheckpoint:
    """Where a fit saves its state after each epoch (``path`` ``None``: saving and loading do nothing).

    Args:
        path: the ``.safetensors`` checkpoint file.
        key: identifies the fit (digest of attack, options, model and data); a checkpoint with
            another key is ignored with a warning and overwritten.
        kind: the artifact ``kind`` (what is being fitted); a file of another kind is ignored.
    """

    def __init__(self, path: str | Path | None, key: str, kind: str = CHECKPOINT_KIND) -> None:
        self.path = None if path is None else Path(path).expanduser()
        self.key = key
        self.kind = kind

    def load(self) -> FitState | None:
        """The saved state of this fit, or ``None`` (no file, or a checkpoint of another fit)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            artifact = load_artifact(self.path, kind=self.kind)
        except UserError as exc:
            warnings.warn(f"ignoring an unreadable fit checkpoint ({exc}); fitting from the start",
                          UserWarning, stacklevel=2)
            return None
        if artifact.metadata.get("key") != self.key:
            warnings.warn(f"{self.path} is the checkpoint of another fit (other options, model or data); "
                          "fitting from the start", UserWarning, stacklevel=2)
            return None
        return FitState(epochs_done=int(artifact.metadata["epochs_done"]), tensors=dict(artifact.tensors),
                        counters=dict(artifact.metadata.get("counters", {})))

    def save(self, epochs_done: int, tensors: Mapping[str, Tensor], counters: Mapping[str, Any] | None = None) -> None:
        """Save the state after ``epochs_done`` epochs (a no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        save_artifact(self.path, cpu, {"kind": self.kind, "key": self.key, "epochs_done": int(epochs_done),
                                       "counters": dict(counters or {})})

    def remove(self) -> None:
        """Delete the checkpoint once the fit is complete."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            sidecar_path(self.path).unlink(missing_ok=True)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> dict[str, Tensor]:
    """An optimiser's per-parameter state as flat named tensors (``optim.<param index>.<field>``)."""
    out: dict[str, Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{prefix}{index}.{name}"] = torch.as_tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], prefix: str = "optim.") -> None:
    """Restore what :func:`optimizer_tensors` saved into ``optimizer`` (hyper-parameters stay as built)."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


__all__ = ["CHECKPOINT_KIND", "FitCheckpoint", "FitState", "load_optimizer_tensors", "optimizer_tensors"]
