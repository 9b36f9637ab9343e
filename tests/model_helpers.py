"""Seeded random models shared by the contract, device and fault tests."""

from __future__ import annotations

import torch


def seeded_random_resnet20(seed: int):
    """A CIFAR ResNet-20 with random weights from ``seed`` and non-trivial BatchNorm statistics (so the network
    is not near-identity), in eval mode; the global random state is left untouched."""
    from idls.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = create_model("cifar_resnet20")
        with torch.no_grad():
            for module in classifier.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    return classifier.eval()
