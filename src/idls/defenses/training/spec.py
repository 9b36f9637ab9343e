"""One-line training specs for experiment files: ``'OBJECTIVE[:KEY=VALUE,...]'``.

Keys are the objective's options (``idls options OBJECTIVE``) or the loop's
(:class:`~idls.defenses.training.loop.TrainingOptions`: epochs, batch_size, lr, ...); the two sets
do not overlap, so each key goes where it is declared::

    objective, loop = training_from_spec("interpretation-robust:gamma=0.01,epochs=2")
"""

from __future__ import annotations

from idls.core.specs import parse_spec
from idls.defenses.training.loop import TrainingOptions
from idls.defenses.training.objectives import OBJECTIVES, TrainingObjective
from idls.errors import UserError


def training_from_spec(spec: str, **loop_defaults) -> tuple[TrainingObjective, TrainingOptions]:
    """The objective and loop options of ``spec`` (``loop_defaults`` under the spec's own loop keys)."""
    name, values = parse_spec(spec, "training")
    return training_from_options(name, values, **loop_defaults)


def training_from_options(name: str, values: dict, **loop_defaults) -> tuple[TrainingObjective, TrainingOptions]:
    """Objective ``name`` and the loop, each key of ``values`` going to whichever declares it."""
    spec = name if not values else f"{name}:{','.join(f'{k}={v}' for k, v in values.items())}"
    cls = OBJECTIVES.get(name)
    objective_keys = set(cls.Options.names())
    loop_keys = set(TrainingOptions.names())
    unknown = sorted(set(values) - objective_keys - loop_keys)
    if unknown:
        raise UserError(f"training {spec!r}: unknown option(s) {', '.join(unknown)}; {name} takes "
                        f"{', '.join(sorted(objective_keys)) or 'none'}, the loop takes {', '.join(sorted(loop_keys))}")
    objective = cls(**{k: v for k, v in values.items() if k in objective_keys})
    loop = TrainingOptions.from_user("training", {**loop_defaults,
                                                  **{k: v for k, v in values.items() if k in loop_keys}})
    return objective, loop


__all__ = ["training_from_options", "training_from_spec"]
