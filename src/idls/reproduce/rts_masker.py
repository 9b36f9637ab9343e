"""The RTS masker ``idls reproduce`` trains for itself when it is not given one.

RTS (real-time saliency) is an interpreter with trained weights: without a masker the CIFAR experiments
would leave RTS out. ``idls reproduce`` therefore trains one on the training images (``--fit-data``, by
default the shared ``cifar10/train``) before the experiments, into ``OUT/rts_masker/`` (resumable: the
training checkpoints every epoch), and both the experiments and the AID study use that one masker.
"""

from __future__ import annotations

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


#: full: RTS on 2,000 training images for 15 epochs (benchmarks/aid_cifar.py's recipe); quick: a short one
MASKER_SCHEDULES: dict[bool, MaskerSchedule] = {
    False: MaskerSchedule(fit_n=2000, epochs=15),
    True: MaskerSchedule(fit_n=256, epochs=3),
}


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


__all__ = ["MASKER_DIR", "MASKER_SCHEDULES", "MaskerSchedule", "ensure_masker"]
