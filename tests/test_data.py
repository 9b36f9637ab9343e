"""Data: the embedded synthetic set and the loaders behind ``--data``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from idls.data import CLASS_NAMES, IMAGE_SIZE, LabeledImages, load_images, make_synthetic, select_correct
from idls.errors import UserError


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(480, seed=3)  # two whole chunks: exactly balanced


# ---------------------------------------------------------------------------------
# Synthetic set
# ---------------------------------------------------------------------------------
def test_synthetic_shapes_types_and_range(synthetic):
    n, s = 480, IMAGE_SIZE
    assert synthetic.images.shape == (n, 3, s, s) and synthetic.images.dtype == torch.float32
    assert synthetic.labels.shape == (n,) and synthetic.labels.dtype == torch.long
    assert synthetic.masks.shape == (n, s, s) and synthetic.masks.dtype == torch.bool
    assert synthetic.class_names == CLASS_NAMES and 5 <= len(CLASS_NAMES) <= 8
    assert float(synthetic.images.min()) >= 0.0 and float(synthetic.images.max()) <= 1.0
    assert int(synthetic.labels.min()) >= 0 and int(synthetic.labels.max()) < len(CLASS_NAMES)


def test_synthetic_is_deterministic_and_seed_dependent(synthetic):
    again = make_synthetic(480, seed=3)
    assert torch.equal(again.images, synthetic.images)
    assert torch.equal(again.labels, synthetic.labels) and torch.equal(again.masks, synthetic.masks)
    prefix = make_synthetic(250, seed=3)  # the first images do not depend on how many are drawn
    assert torch.equal(prefix.images, synthetic.images[:250]) and torch.equal(prefix.masks, synthetic.masks[:250])
    assert torch.equal(prefix.labels, synthetic.labels[:250])
    other = make_synthetic(250, seed=4)
    assert (other.images - prefix.images).abs().mean() > 0.1
    assert not torch.equal(other.labels, prefix.labels)


def test_synthetic_classes_are_balanced(synthetic):
    counts = torch.bincount(synthetic.labels, minlength=len(CLASS_NAMES))
    assert counts.tolist() == [480 // len(CLASS_NAMES)] * len(CLASS_NAMES)
    odd = torch.bincount(make_synthetic(500, seed=8).labels, minlength=len(CLASS_NAMES))
    assert int(odd.sum()) == 500 and int(odd.min()) >= 80 and int(odd.max()) <= 100


def test_synthetic_masks_are_whole_objects_inside_the_image(synthetic):
    masks = synthetic.masks
    area = masks.float().mean(dim=(1, 2))
    assert float(area.min()) > 0.02 and float(area.max()) < 0.4
    border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
    assert not bool(border.any()), "objects must lie entirely inside the image"


def test_synthetic_masks_mark_the_visible_object(synthetic):
    """Inside the (eroded) mask the hue is nearly uniform (the texture is grey-level: the colour minus its
    grey level barely varies) and the colour differs from the surrounding ring."""
    m = synthetic.masks[:, None].float()
    inner = -F.max_pool2d(-m, 5, 1, 2)  # erosion by 2 px
    ring = F.max_pool2d(m, 7, 1, 3) - F.max_pool2d(m, 3, 1, 1)  # a band just outside the object
    keep = inner.sum((1, 2, 3)) > 10
    x = synthetic.images[keep]
    inner, ring = inner[keep], ring[keep]

    def spread(values: torch.Tensor) -> torch.Tensor:
        mean = (values * inner).sum((2, 3)) / inner.sum((2, 3))
        return (((values - mean[..., None, None]) ** 2 * inner).sum((2, 3)) / inner.sum((2, 3))).sqrt().max(1).values

    assert float(spread(x - x.mean(1, keepdim=True)).median()) < 0.04  # hue
    assert float(spread(x).median()) > 0.05  # but a textured surface, not a flat one
    inner_mean = (x * inner).sum((2, 3)) / inner.sum((2, 3))
    ring_mean = (x * ring).sum((2, 3)) / ring.sum((2, 3))
    contrast = (inner_mean - ring_mean).norm(dim=1)
    assert float((contrast > 0.2).float().mean()) > 0.9


def test_synthetic_surfaces_have_edges_like_photos(synthetic):
    """The grey image has edges throughout, object included, as a photo has: AdvEdge+'s Sobel weights pass
    its threshold on a large share of every image's pixels (flat surfaces left it almost none)."""
    from idls.attacks.edge import DEFAULT_THRESHOLD, sobel_edges

    edges = sobel_edges(synthetic.images) > DEFAULT_THRESHOLD
    share = edges.flatten(1).float().mean(1)
    masks = synthetic.masks[:, None]
    on_object = (edges & masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    assert float(share.mean()) > 0.35 and float(share.quantile(0.05)) > 0.15
    assert float(on_object.mean()) > 0.3 and float(on_object.quantile(0.05)) > 0.1


def _compactness(masks: torch.Tensor) -> torch.Tensor:
    """area / (largest distance from the centroid)^2 of ``N x S x S`` masks, in pixels."""
    n, s, _ = masks.shape
    ys, xs = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    m = masks.float()
    area = m.sum((1, 2))
    cy, cx = (m * ys).sum((1, 2)) / area, (m * xs).sum((1, 2)) / area
    dist2 = (ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2
    return area / ((dist2 * m).amax((1, 2)).sqrt() + 0.5) ** 2


def test_synthetic_silhouettes_match_their_class(synthetic):
    """Geometric oracle: rotation/scale-invariant compactness and holes of the ideal shapes."""
    ideal = {  # area / circumradius^2 of the ideal shapes (circumradius 0.9 for the disc, 0.95 for the ring)
        "disc": math.pi,
        "square": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "ring": math.pi * (1 - (0.5 / 0.95) ** 2),
        "star": 5 * 0.45 * math.sin(math.pi / 5),
    }
    compact = _compactness(synthetic.masks)
    for name, value in ideal.items():
        measured = float(compact[synthetic.labels == CLASS_NAMES.index(name)].median())
        assert measured == pytest.approx(value, rel=0.15), name
    # The centroid of a ring is a hole; every other class covers its centroid.
    m = synthetic.masks
    s = m.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    area = m.float().sum((1, 2))
    cy = ((m * ys).sum((1, 2)) / area).long()
    cx = ((m * xs).sum((1, 2)) / area).long()
    at_centre = m[torch.arange(len(m)), cy, cx]
    is_ring = synthetic.labels == CLASS_NAMES.index("ring")
    assert not bool(at_centre[is_ring].any()) and bool(at_centre[~is_ring].all())


def _fit_softmax_regression(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    model = torch.nn.Linear(features.shape[1], classes)
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(model((features - mean) / std), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return lambda f: model((f - mean) / std)


def test_colour_does_not_identify_the_class(synthetic):
    """A classifier on colour statistics (object, background, whole image) stays near chance."""

    def colour_features(data):
        m = data.masks[:, None].float()
        obj = (data.images * m).sum((2, 3)) / m.sum((2, 3))
        bg = (data.images * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
        return torch.cat([obj, bg, data.images.mean((2, 3)), data.images.std((2, 3))], dim=1)

    predict = _fit_softmax_regression(colour_features(synthetic), synthetic.labels, len(CLASS_NAMES))
    held_out = make_synthetic(480, seed=11)
    with torch.no_grad():
        accuracy = float((predict(colour_features(held_out)).argmax(1) == held_out.labels).float().mean())
    assert accuracy < 0.3, f"colour statistics predict the class with accuracy {accuracy:.2f}"


def test_synthetic_renders_at_other_sizes():
    data = make_synthetic(12, seed=0, size=32)
    assert data.images.shape == (12, 3, 32, 32) and data.masks.shape == (12, 32, 32)
    assert bool(data.masks.flatten(1).any(1).all())


# ---------------------------------------------------------------------------------
# load_images
# ---------------------------------------------------------------------------------
def _read_labels_csv(folder: Path) -> list[tuple[str, int]]:
    with open(folder / "labels.csv", newline="") as handle:
        return [(row["file"], int(row["label"])) for row in csv.DictReader(handle)]


def test_load_labels_csv_lossless_cifar(cifar_lossless_dir):
    data = load_images(str(cifar_lossless_dir), input_size=32, num_classes=10)
    rows = _read_labels_csv(cifar_lossless_dir)
    assert data.images.shape == (len(rows), 3, 32, 32) and data.images.dtype == torch.float32
    assert data.ids == [file for file, _ in rows]
    assert data.labels.tolist() == [label for _, label in rows]
    first = np.asarray(Image.open(cifar_lossless_dir / rows[0][0]).convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(data.images[0], torch.from_numpy(first).permute(2, 0, 1))  # 32 px: untouched


def test_pretrained_resnet20_classifies_loaded_lossless_images(resnet20, cifar_lossless_dir):
    data = load_images(str(cifar_lossless_dir), input_size=resnet20.input_size, num_classes=resnet20.num_classes)
    correct = int((resnet20.predict(data.images) == data.labels).sum())
    assert correct >= 18, f"only {correct}/20 correct: loading or normalisation is off"


def test_select_correct_keeps_the_first_correct_images(resnet20, cifar_jpeg_dir):
    data = load_images(str(cifar_jpeg_dir), input_size=32, n=40, seed=1, num_classes=10)
    predictions = resnet20.predict(data.images)
    expected = [data.ids[i] for i in (predictions == data.labels).nonzero().squeeze(1).tolist()][:15]
    chosen = select_correct(resnet20, data, 15)
    assert chosen.ids == expected
    assert torch.equal(resnet20.predict(chosen.images), chosen.labels)
    wrong = LabeledImages(data.images, (predictions + 1) % 10, data.ids)
    with pytest.raises(UserError, match="none of the"):
        select_correct(resnet20, wrong, 5)
    with pytest.raises(UserError, match="expects 32 x 32"):
        select_correct(resnet20, LabeledImages(torch.rand(2, 3, 64, 64), torch.zeros(2, dtype=torch.long), ["a", "b"]), 1)


def test_subset_n_is_seeded_and_in_source_order(cifar_jpeg_dir):
    a = load_images(str(cifar_jpeg_dir), input_size=32, n=15, seed=5)
    b = load_images(str(cifar_jpeg_dir), input_size=32, n=15, seed=5)
    c = load_images(str(cifar_jpeg_dir), input_size=32, n=15, seed=6)
    assert a.ids == b.ids and a.ids != c.ids and len(a) == 15
    order = [file for file, _ in _read_labels_csv(cifar_jpeg_dir)]
    positions = [order.index(i) for i in a.ids]
    assert positions == sorted(positions)
    assert len(set(a.labels.tolist())) > 3  # a random subset, not the first (single-class) rows


def test_imagenet_samples_resize_and_centre_crop_to_224(imagenet_samples_dir):
    from torchvision.models import ResNet50_Weights

    data = load_images(str(imagenet_samples_dir), input_size=224, n=6, seed=0, num_classes=1000)
    assert data.images.shape == (6, 3, 224, 224)
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    # Oracle: torchvision's own ImageNet evaluation preset (resize 256, centre crop 224, normalise).
    preset = ResNet50_Weights.IMAGENET1K_V1.transforms()
    mean = torch.tensor(preset.mean).view(3, 1, 1)
    std = torch.tensor(preset.std).view(3, 1, 1)
    for image, file in zip(data.images, data.ids, strict=True):
        expected = preset(Image.open(imagenet_samples_dir / file).convert("RGB")) * std + mean
        assert (image - expected).abs().mean() < 2 / 255, file


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("zebra", "apple"):  # classes are the *sorted* folder names: apple=0, zebra=1
        for i in range(2):
            pixels[f"{cls}/{i}.png"] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels["apple/nested/deep.png"] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for rel, array in pixels.items():
        _write_png(tmp_path / rel, array)
    (tmp_path / "apple" / "notes.txt").write_text("not an image")
    data = load_images(str(tmp_path), input_size=16)
    assert data.class_names == ("apple", "zebra")
    assert data.ids == ["apple/0.png", "apple/1.png", "apple/nested/deep.png", "zebra/0.png", "zebra/1.png"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    for image, rel in zip(data.images, data.ids, strict=True):
        assert torch.equal(image, torch.from_numpy(pixels[rel]).permute(2, 0, 1).float() / 255)


def test_labels_csv_with_extra_columns_subfolders_and_resizing(tmp_path):
    _write_png(tmp_path / "imgs" / "a.png", np.full((40, 60, 3), (255, 0, 0), dtype=np.uint8))
    grey = Image.fromarray(np.full((50, 30), 128, dtype=np.uint8))  # grey-scale, portrait
    grey.save(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("file,label,class_name\nimgs/a.png,3,cat\nb.png,1,car\n")
    data = load_images(str(tmp_path / "labels.csv"), input_size=20)  # the csv itself is accepted too
    assert data.images.shape == (2, 3, 20, 20) and data.labels.tolist() == [3, 1]
    assert data.ids == ["imgs/a.png", "b.png"] and data.class_names is None
    assert torch.allclose(data.images[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 20, 20))
    assert torch.allclose(data.images[1], torch.full((3, 20, 20), 128 / 255), atol=1e-6)


def test_embedded_source_is_the_fixed_test_split():
    from idls.data.synthetic import TEST_SEED, TRAIN_SEED

    data = load_images("embedded", input_size=IMAGE_SIZE, n=30)
    reference = make_synthetic(30, TEST_SEED)
    assert torch.equal(data.images, reference.images) and torch.equal(data.masks, reference.masks)
    assert data.ids[:2] == ["synthetic/0", "synthetic/1"] and data.class_names == CLASS_NAMES
    assert TEST_SEED != TRAIN_SEED
    assert not torch.equal(make_synthetic(30, TRAIN_SEED).images, data.images)


# ---------------------------------------------------------------------------------
# User errors
# ---------------------------------------------------------------------------------
def test_missing_and_empty_sources_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_images(str(tmp_path / "nowhere"), input_size=32)
    with pytest.raises(UserError, match="no images"):
        load_images(str(tmp_path), input_size=32)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_images(str(tmp_path), input_size=32)
    with pytest.raises(UserError, match="positive"):
        load_images("embedded", input_size=64, n=0)


def test_loose_images_without_labels_raise(tmp_path):
    _write_png(tmp_path / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="labels.csv"):
        load_images(str(tmp_path), input_size=8)


@pytest.mark.parametrize(
    "csv_text, pattern",
    [
        ("path,target\nx.png,1\n", "columns 'file' and 'label'"),
        ("file,label\nx.png,cat\n", "not an integer"),
        ("file,label\nmissing.png,1\n", "missing.png"),
        ("file,label\nbroken.png,1\n", "cannot read image 'broken.png'"),
        ("file,label\nx.png,12\n", "out of range"),
        ("file,label\nx.png,-1\n", "out of range"),
        ("file,label\n", "no images"),
    ],
)
def test_bad_labels_csv_raises_user_error(tmp_path, csv_text, pattern):
    _write_png(tmp_path / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(UserError, match=pattern):
        load_images(str(tmp_path), input_size=8, num_classes=10)


def test_torchvision_set_without_internet_raises_user_error(monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found or corrupted.") if not download else OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(UserError, match="cannot download the cifar10 test set"):
        load_images("cifar10", input_size=32)


def test_interleave_classes_is_round_robin_and_stable():
    from idls.data import LabeledImages, interleave_classes

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    data = LabeledImages(torch.arange(9.0).view(9, 1, 1, 1).expand(9, 3, 1, 1), labels, [f"i{k}" for k in range(9)])
    ordered = interleave_classes(data)
    assert ordered.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 2]
    assert ordered.ids[:3] == ["i0", "i3", "i5"]  # the first of each class, in source order
    assert sorted(ordered.ids) == sorted(data.ids)
