"""Data: the embedded synthetic set and loaders for real image folders, CSV lists and torchvision sets.

::

    from idls.data import load_images, select_correct
    data = load_images("../shared/data/cifar10/lossless", input_size=32, num_classes=10)
    data = select_correct(classifier, data, n=10)   # the papers' protocol
"""

from idls.data.datasets import LabeledImages, fit_to_input, interleave_classes, load_images, select_correct
from idls.data.synthetic import CLASS_NAMES, IMAGE_SIZE, SyntheticSet, make_synthetic

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SIZE",
    "LabeledImages",
    "SyntheticSet",
    "fit_to_input",
    "interleave_classes",
    "load_images",
    "make_synthetic",
    "select_correct",
]
