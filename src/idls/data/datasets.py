"""Real images for ``--data``: the embedded test split, labels.csv folders, image folders, torchvision sets.

Every loader returns a :class:`LabeledImages` whose images are ``N x 3 x S x S``
float32 pixels in [0, 1] at the model's input size ``S`` (normalisation belongs to
the classifier). Resizing follows torchvision's conventions: at 224 px, resize the
shorter side to 256 and centre-crop 224 (the ImageNet evaluation transform);
images already ``S x S`` are left untouched; otherwise resize the shorter side to
``S`` and centre-crop.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from idls.errors import UserError

#: image file extensions accepted in folders (torchvision's IMG_EXTENSIONS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: number of images of the embedded test split when ``n`` is not given
EMBEDDED_TEST_SIZE = 1_000
_TORCHVISION_SETS = ("cifar10", "cifar100")
_HINT = "pass --data embedded, cifar10, or a folder holding labels.csv (file,label) or one sub-folder per class"


@dataclass
class LabeledImages:
    """A labelled batch of images.

    Attributes:
        images: ``N x 3 x S x S`` float32 in [0, 1].
        labels: ``N`` long.
        ids: ``N`` identifiers (file path relative to the folder, ``synthetic/<i>``, ``cifar10/<i>``).
        class_names: names indexed by label, when the source knows them.
        masks: ``N x S x S`` bool ground-truth object masks (embedded set only).
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    class_names: tuple[str, ...] | None = None
    masks: Tensor | None = field(default=None)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor | list[int]) -> "LabeledImages":
        """The images at ``index`` (a ``K`` long tensor or list), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledImages(
            images=self.images[index.to(self.images.device)],
            labels=self.labels[index.to(self.labels.device)],
            ids=[self.ids[i] for i in index.tolist()],
            class_names=self.class_names,
            masks=None if self.masks is None else self.masks[index.to(self.masks.device)],
        )


# ---------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------
def resize_side(input_size: int) -> int:
    """Shorter-side length to resize to before centre-cropping ``input_size``.

    256 for 224 px models (torchvision's ImageNet evaluation transform), else ``input_size``.
    """
    return 256 if input_size == 224 else input_size


def fit_to_input(image, input_size: int) -> Tensor:
    """A PIL image (any mode, any size) -> ``3 x S x S`` float32 in [0, 1]."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    if image.size != (input_size, input_size):
        image = TF.resize(image, resize_side(input_size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, [input_size, input_size])
    return TF.to_tensor(image)


def fit_batch_to_input(images: Tensor, input_size: int) -> Tensor:
    """Batched version for tensors ``N x 3 x H x W`` in [0, 1] (torchvision sets)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if tuple(images.shape[-2:]) == (input_size, input_size):
        return images
    images = TF.resize(images, resize_side(input_size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(images, [input_size, input_size]).clamp(0, 1)


def _read_image(path: Path, input_size: int, shown_as: str) -> Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return fit_to_input(image, input_size)
    except FileNotFoundError:
        raise UserError(f"image {shown_as!r} listed in the data does not exist; fix labels.csv or add the file") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise UserError(f"cannot read image {shown_as!r} ({type(exc).__name__}: {exc}); remove or replace it") from None


# ---------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------
def _entries_from_csv(root: Path, csv_path: Path) -> list[tuple[str, int]]:
    """``(relative file, label)`` rows of ``labels.csv`` (columns file,label; others ignored)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "file" not in columns or "label" not in columns:
            raise UserError(f"{csv_path} needs the columns 'file' and 'label' (found: {', '.join(columns) or 'none'})")
        entries = []
        for row_number, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                label = int(row["label"])
            except ValueError:
                raise UserError(f"{csv_path} line {row_number}: label {row['label']!r} is not an integer class index") from None
            if not row["file"]:
                raise UserError(f"{csv_path} line {row_number}: empty 'file' entry")
            entries.append((row["file"], label))
    return entries


def _entries_from_class_folders(root: Path) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """ImageFolder semantics: sorted sub-folder names are the classes, images found recursively."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    entries = []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    entries.append(((Path(folder) / file).relative_to(root).as_posix(), label))
    return entries, tuple(classes)


def _pick(count: int, n: int | None, seed: int) -> Tensor:
    """Indices of a seeded random subset of size ``n`` (all when ``n`` is None or >= count), sorted."""
    if n is None or n >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _load_folder(root: Path, input_size: int, n: int | None, seed: int) -> LabeledImages:
    csv_path = root / "labels.csv"
    class_names: tuple[str, ...] | None = None
    if csv_path.is_file():
        entries = _entries_from_csv(root, csv_path)
        where = str(csv_path)
    else:
        entries, class_names = _entries_from_class_folders(root)
        where = f"the class sub-folders of {root}"
        if not class_names:
            loose = [f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if loose:
                raise UserError(f"{root} holds images but no labels.csv and no class sub-folders; add labels.csv with columns file,label")
    if not entries:
        raise UserError(f"no images found in {where}; {_HINT}")
    chosen = [entries[i] for i in _pick(len(entries), n, seed).tolist()]
    images = torch.stack([_read_image(root / file, input_size, file) for file, _ in chosen])
    labels = torch.tensor([label for _, label in chosen], dtype=torch.long)
    return LabeledImages(images, labels, [file for file, _ in chosen], class_names)


def _load_embedded(input_size: int, n: int | None, *, train: bool = False) -> LabeledImages:
    from idls.data.synthetic import CLASS_NAMES, TEST_SEED, TRAIN_SEED, make_synthetic

    count = EMBEDDED_TEST_SIZE if n is None else n
    data = make_synthetic(count, TRAIN_SEED if train else TEST_SEED, size=input_size)
    split = "synthetic-train" if train else "synthetic"
    return LabeledImages(data.images, data.labels, [f"{split}/{i}" for i in range(count)], CLASS_NAMES, data.masks)


def _load_torchvision(name: str, input_size: int, n: int | None, seed: int) -> LabeledImages:
    import torchvision

    from idls.paths import cache_dir

    root = cache_dir() / "datasets"
    dataset_class = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        dataset = dataset_class(root=str(root), train=False, download=False)
    except RuntimeError:
        try:
            dataset = dataset_class(root=str(root), train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - no network, partial download, ...
            raise UserError(
                f"cannot download the {name} test set into {root} ({type(exc).__name__}); without internet pass a local "
                "folder with labels.csv instead, e.g. --data ../shared/data/cifar10/images"
            ) from None
    index = _pick(len(dataset.data), n, seed)
    pixels = torch.from_numpy(dataset.data[index.numpy()]).permute(0, 3, 1, 2).float() / 255
    labels = torch.as_tensor(dataset.targets, dtype=torch.long)[index]
    return LabeledImages(
        fit_batch_to_input(pixels, input_size), labels, [f"{name}/{i}" for i in index.tolist()], tuple(dataset.classes)
    )


def _check_labels(data: LabeledImages, num_classes: int | None, source: str) -> None:
    if data.labels.numel() == 0:
        return
    lo, hi = int(data.labels.min()), int(data.labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bad = int((data.labels < 0).nonzero()[0]) if lo < 0 else int((data.labels >= (num_classes or 0)).nonzero()[0])
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise UserError(
            f"label {int(data.labels[bad])} of {data.ids[bad]!r} in {source} is out of range for the model (classes {limit}); "
            "use data whose labels follow the model's class order"
        )


def load_images(
    source: str, *, input_size: int, n: int | None = None, seed: int = 0, num_classes: int | None = None
) -> LabeledImages:
    """Load labelled images for a model with square input ``input_size``.

    Args:
        source: ``"embedded"`` (the synthetic test split; its first ``n`` images),
            ``"embedded-train"`` (the synthetic training split, e.g. to fit a universal perturbation),
            a folder with ``labels.csv`` (columns ``file,label``, paths relative to
            the folder; other columns ignored) or the ``labels.csv`` file itself, a
            folder with one sub-folder per class (torchvision ``ImageFolder``), or a
            torchvision test set name (``cifar10``, ``cifar100``; downloaded into the
            cache where internet exists).
        input_size: the model's input side ``S``.
        n: how many images; for folders and torchvision sets a random subset drawn
            with ``seed`` (kept in source order). ``None``: all (embedded: 1000).
        seed: seed of that subset.
        num_classes: the model's class count, to reject out-of-range labels.

    Returns:
        :class:`LabeledImages` with images ``N x 3 x S x S`` in [0, 1].
    """
    if n is not None and n <= 0:
        raise UserError(f"the number of images must be positive, got {n}")
    if input_size < 1:
        raise UserError(f"input size must be positive, got {input_size}")
    name = source.strip()
    if name.lower() in ("embedded", "embedded-train"):
        data = _load_embedded(input_size, n, train=name.lower() == "embedded-train")
    elif name.lower() in _TORCHVISION_SETS and not Path(name).exists():
        data = _load_torchvision(name.lower(), input_size, n, seed)
    else:
        path = Path(name).expanduser()
        if path.is_file() and path.suffix.lower() == ".csv":
            if path.name != "labels.csv":
                raise UserError(f"{path}: pass the folder holding labels.csv (or a file named labels.csv)")
            path = path.parent
        if not path.exists():
            raise UserError(f"data source {source!r} does not exist; {_HINT}")
        if not path.is_dir():
            raise UserError(f"data source {source!r} is not a folder; {_HINT}")
        data = _load_folder(path, input_size, n, seed)
    _check_labels(data, num_classes, source)
    return data


def interleave_classes(data: LabeledImages) -> LabeledImages:
    """The images reordered round-robin over classes (the first of each class, then the second...).

    A class-sorted folder's first ``n`` images cover only a few classes; the first ``n`` of this
    order are as class-balanced as the data allows, and stay the same for every ``n``.
    """
    labels = data.labels.tolist()
    seen: dict[int, int] = {}
    rank = []
    for label in labels:
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    return data.subset(sorted(range(len(labels)), key=lambda i: (rank[i], labels[i])))


def select_correct(classifier, data: LabeledImages, n: int, batch_size: int = 256) -> LabeledImages:
    """The first ``n`` images that ``classifier`` classifies correctly (the papers' protocol).

    Returns fewer than ``n`` when fewer are correct; raises :class:`UserError` when none is.
    """
    if n <= 0:
        raise UserError(f"the number of images must be positive, got {n}")
    if tuple(data.images.shape[-2:]) != (classifier.input_size, classifier.input_size):
        raise UserError(
            f"images are {tuple(data.images.shape[-2:])} but model {classifier.info.name!r} expects "
            f"{classifier.input_size} x {classifier.input_size}; load them with input_size={classifier.input_size}"
        )
    _check_labels(data, classifier.num_classes, "the data")
    device = classifier.device
    predictions = classifier.predict(data.images.to(device), batch_size=batch_size).cpu()
    correct = (predictions == data.labels.cpu()).nonzero().squeeze(1)
    if correct.numel() == 0:
        raise UserError(
            f"model {classifier.info.name!r} classifies none of the {len(data)} images correctly; "
            "check that --data matches --model (same classes in the same order)"
        )
    return data.subset(correct[:n])
