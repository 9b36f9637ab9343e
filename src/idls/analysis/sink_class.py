"""Where a universal perturbation sends the images, and the fooling ratio that leaves within reach.

An untargeted universal perturbation is one pattern for every image. The patterns that SGD-UAP, UAP,
GAP and JUAP find usually push almost every image into one class, the *sink class*. The images whose
true class is the sink class cannot be fooled by such a pattern, so its fooling ratio cannot exceed
``1 - share of the images that belong to the sink class``: about ``1 - 1/K`` on ``K`` balanced classes
(5/6 on the embedded data, 0.9 on CIFAR-10). :func:`sink_class` reads that off an attack's records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: a class is a sink when at least this share of the adversarial images is predicted as it
SINK_SHARE = 0.5


@dataclass(frozen=True)
class SinkClass:
    """The class most adversarial images are predicted as, and what it implies.

    Attributes:
        label: the sink class (the most common prediction on the adversarial images).
        share: the fraction of the adversarial images predicted as ``label``.
        ceiling: ``1 -`` the fraction of the images whose true class is ``label``: the highest fooling
            ratio a pattern that sends every image to ``label`` can reach.
        n: the images counted.
    """

    label: int
    share: float
    ceiling: float
    n: int

    @property
    def is_sink(self) -> bool:
        """Whether most images go to ``label`` (:data:`SINK_SHARE`); else ``ceiling`` bounds nothing."""
        return self.share >= SINK_SHARE


def sink_class(records: Iterable[Mapping]) -> SinkClass | None:
    """The sink class of one attack's per-image records (``pred_label``, ``true_label``), or ``None`` if empty.

    Each image counts once (the first record of an ``image_id``; records repeat an image per interpreter).
    """
    images: dict[object, Mapping] = {}
    for record in records:
        images.setdefault((record.get("image_id"), record.get("seed")), record)
    if not images:
        return None
    predicted = Counter(int(r["pred_label"]) for r in images.values())
    label, count = predicted.most_common(1)[0]
    of_label = sum(int(r["true_label"]) == label for r in images.values())
    n = len(images)
    return SinkClass(label=label, share=count / n, ceiling=(n - of_label) / n, n=n)


__all__ = ["SINK_SHARE", "SinkClass", "sink_class"]
