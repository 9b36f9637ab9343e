"""The embedded small CNN: global-average-pool + linear head so CAM applies.

At the embedded data set's 64 x 64 input its last feature map is 64 x 8 x 8.
The widths are deliberately narrow: the net trains to over 90% test accuracy on
the synthetic set in well under a minute on two CPU cores (see :mod:`idls.embedded`).
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class EmbeddedCNN(nn.Module):
    """Four conv stages (three 2x poolings) + GAP + linear."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _conv_bn_relu(cin, w)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def head(self, a: Tensor) -> Tensor:
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
