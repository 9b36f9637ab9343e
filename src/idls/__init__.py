"""idls: attack and defend interpretable deep learning systems.

An interpretable deep learning system (IDLS) is a classifier plus the
interpreter that explains its decisions. ``idls`` provides batched,
differentiable interpreters, joint attacks on both, the papers' metrics and
the experiment machinery around them.
"""

__version__ = "0.1.0"
