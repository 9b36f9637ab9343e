"""Optimisation machinery shared by every attack (and MASK): one denormal guard, one best-iterate
tracker, one per-sample Adam and its descent loop. Depends on torch only."""

from idls.optim.adam import LoopResult, PerSampleAdam, adam_descent
from idls.optim.denormal import flush_denormal
from idls.optim.tracking import BestIterate, Perturbation, StepFn, StepOutcome

__all__ = ["BestIterate", "LoopResult", "PerSampleAdam", "Perturbation", "StepFn", "StepOutcome", "adam_descent",
           "flush_denormal"]
