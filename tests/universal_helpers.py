"""Shared pieces of the universal-attack tests: tiny classifiers, synthetic data, fooling ratios."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from idls.attacks.universal import UniversalPerturbation
from idls.data import LabeledImages, make_synthetic
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.models.embedded import EmbeddedCNN
from idls.system import Classifier, ModelInfo


def tiny_classifier(name: str = "tiny_cnn", seed: int = 0, classes: int = 6, input_size: int = 32) -> Classifier:
    """A small GAP + linear CNN (random weights, seeded) in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EmbeddedCNN(classes, widths=(8, 16, 32))
    info = ModelInfo(name=name, num_classes=classes, input_size=input_size)
    return Classifier(net, body=lambda n, z: n.features(z), head=lambda n, a: n.head(a), info=info,
                      linear=lambda n: n.fc).eval()


def synthetic(n: int, seed: int, prefix: str) -> LabeledImages:
    """``n`` embedded synthetic images (32 px) with ids ``prefix/i``."""
    data = make_synthetic(n, seed, size=32)
    return LabeledImages(data.images, data.labels, [f"{prefix}/{i}" for i in range(n)])


def colour_task(n: int, seed: int, prefix: str) -> LabeledImages:
    """Synthetic images labelled by their dominant colour channel (3 classes): a tiny CNN learns it fast."""
    data = synthetic(n, seed, prefix)
    return LabeledImages(data.images, data.images.mean(dim=(2, 3)).argmax(1), data.ids)


def trained_colour_model(epochs: int = 4) -> Classifier:
    """A tiny CNN (with a linear head, so CAM works) trained on :func:`colour_task`; checked to have learned it."""
    train = colour_task(1200, TRAIN_SEED + 1, "train")
    classifier = tiny_classifier("colour_cnn", classes=3)
    optimiser = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    classifier.train()
    for _ in range(epochs):
        for index in torch.randperm(len(train), generator=generator).split(64):
            loss = F.cross_entropy(classifier(train.images[index]), train.labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    classifier.eval()
    test = colour_task(256, TEST_SEED, "test")
    assert float((classifier.predict(test.images) == test.labels).float().mean()) > 0.8  # it learned the task
    return classifier


def fooling_ratio(classifier: Classifier, clean: torch.Tensor, perturbed: torch.Tensor) -> float:
    return float((classifier.predict(clean) != classifier.predict(perturbed)).float().mean())


def random_patterns(perturbation: UniversalPerturbation, count: int = 3) -> list[torch.Tensor]:
    """Random patterns on the budget's boundary: random signs (L_inf) or random directions (L2)."""
    patterns = []
    for seed in range(count):
        noise = torch.randn(perturbation.delta.shape, generator=torch.Generator().manual_seed(seed))
        patterns.append(noise.sign() * perturbation.epsilon if perturbation.norm == "linf"
                        else noise / noise.norm() * perturbation.epsilon)
    return patterns


def noise_fooling(classifier: Classifier, perturbation: UniversalPerturbation, images: torch.Tensor) -> float:
    """The best fooling ratio of :func:`random_patterns` at the perturbation's budget."""
    return max(fooling_ratio(classifier, images, (images + p).clamp(0, 1)) for p in random_patterns(perturbation))


def record_progress(module, monkeypatch) -> list[dict]:
    """Wrap ``module.progress_bar`` so its bars record every ``set_postfix``; the list fills as the fit runs."""
    postfixes: list[dict] = []
    make_bar = module.progress_bar

    def recording_bar(*args, **kwargs):
        bar = make_bar(*args, **kwargs)
        set_postfix = bar.set_postfix

        def record(ordered_dict=None, refresh=True, **values):
            postfixes.append(dict(values))
            return set_postfix(ordered_dict, refresh, **values)

        bar.set_postfix = record
        return bar

    monkeypatch.setattr(module, "progress_bar", recording_bar)
    return postfixes


def shared_cifar_split(resnet20_path, fit_n: int = 256):
    """``fit_n`` shared CIFAR-10 training images and the shared test images (skips when either is absent)."""
    import pytest

    from idls.data import load_images

    cifar = resnet20_path.parents[1]  # ../shared/data/cifar10
    train_dir, test_dir = cifar / "train", cifar / "images"
    if not train_dir.exists() or not test_dir.exists():
        pytest.skip(f"shared CIFAR-10 images not found under {cifar}")
    return load_images(str(train_dir), input_size=32, n=fit_n, seed=0), load_images(str(test_dir), input_size=32)
