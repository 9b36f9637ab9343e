"""The RTS masker ``idls reproduce`` trains for itself when it is not given one.

RTS (real-time saliency) is an interpreter with trained weights: without a masker the CIFAR experiments
would leave RTS out. ``idls reproduce`` therefore trains one on the training images (``--fit-data``, by
default the shared ``cifar10/train``) before the experiments, into ``OUT/rts_masker/`` (resumable: the
training checkpoints every epoch), and both the experiments and the AID study use that one masker.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

MASKER_DIR = "rts_masker"  #: the masker's folder inside the reproduce output
MASKER_FILE = "rts.safetensors"


@dataclass(frozen=True)
class MaskerSchedule:
    """How the masker is trained: ``fit_n`` training images (seed 0), ``epochs`` decoder epochs."""

    fit_n: int
    epochs: int
    lr: float = 2e-3
    batch_size: int = 32


#: full: RTS on 2,000 training images for 15 epochs (benchmarks/aid_cifar.py's recipe); quick: 4 epochs at a
#: higher rate. Shorter ones stay degenerate: a mask over almost the whole image, whose maps an attack cannot move,
#: so every RTS row of a quick run would disagree with the full run (docs/notes/measured.md).
MASKER_SCHEDULES: dict[bool, MaskerSchedule] = {
    False: MaskerSchedule(fit_n=2000, epochs=15),
    True: MaskerSchedule(fit_n=2000, epochs=4, lr=5e-3),
}
#: a trained masker whose last epoch kept more than this share of the image explains nothing (see above)
DEGENERATE_AREA = 0.85


def ensure_masker(out: Path, classifier, fit_data: str, *, quick: bool, progress: bool = True) -> Path:
    """The masker file in ``out / MASKER_DIR``, trained on ``fit_data`` first if it is not there yet.

    Args:
        out: the reproduce output folder.
        classifier: the :class:`~idls.system.Classifier` the masker explains.
        fit_data: training images (a folder with labels.csv, or a dataset name); never the evaluation images.
        quick: the short schedule of :data:`MASKER_SCHEDULES`.

    Returns:
        the path of the saved masker (``.safetensors`` with its JSON sidecar).
    """
    from idls.data.datasets import load_images
    from idls.interpreters.rts_training import save_rts, train_rts

    folder = Path(out) / MASKER_DIR
    path = folder / MASKER_FILE
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    schedule = MASKER_SCHEDULES[quick]
    fit = load_images(fit_data, input_size=classifier.input_size, n=schedule.fit_n, seed=0,
                      num_classes=classifier.num_classes)
    masker = train_rts(classifier, fit.images, fit.labels, epochs=schedule.epochs, lr=schedule.lr,
                       batch_size=schedule.batch_size, augment=True, progress=progress,
                       checkpoint=folder / "rts.checkpoint.safetensors")
    return save_rts(masker, path, extra={"reproduce_schedule": asdict(schedule), "fit_data": fit_data})


def masker_area(path: Path) -> float | None:
    """The mean mask area of the saved masker's last decoder epoch (from its sidecar), or ``None``."""
    from idls.interpreters.rts_training import sidecar_path

    try:
        history = json.loads(sidecar_path(path).read_text()).get("history", [])
    except (OSError, ValueError):
        return None
    areas = [record["area"] for record in history if record.get("phase") == "decoder" and "area" in record]
    return float(areas[-1]) if areas else None


def degenerate_masker_warning(path: Path) -> str | None:
    """A one-line warning when the masker at ``path`` keeps nearly the whole image (its maps cannot move)."""
    area = masker_area(path)
    if area is None or area <= DEGENERATE_AREA:
        return None
    return (f"the RTS masker {path} keeps {area:.0%} of each image on average (a trained one keeps about 40%): "
            "RTS maps will hardly move under any attack; delete its folder and train it on more images or epochs")


__all__ = ["DEGENERATE_AREA", "MASKER_DIR", "MASKER_SCHEDULES", "MaskerSchedule", "degenerate_masker_warning",
           "ensure_masker", "masker_area"]
