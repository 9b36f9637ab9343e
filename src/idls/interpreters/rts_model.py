"""The RTS masking model: class selector + decoder on the classifier's own feature pyramid.

See :mod:`idls.interpreters.rts` for the method; training lives in
:mod:`idls.interpreters.rts_training`. The encoder pyramid comes from the
classifier (:meth:`idls.system.Classifier.feature_pyramid`), which each model
registration declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from idls.errors import UserError
from idls.system import Classifier

OUTPUT_STRIDE = 4  # docs/design.md §1: RTS maps are input/4
MASK_EPS = 1e-8

# ----------------------------------------------------------------------------------
# Masking model
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RTSConfig:
    """Shape of the trainable part; saved in the checkpoint sidecar.

    ``channels``/``strides`` describe the encoder pyramid (fine to coarse).
    """

    num_classes: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    width: int
    out_stride: int = OUTPUT_STRIDE

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RTSConfig:
        return cls(
            num_classes=int(data["num_classes"]),
            channels=tuple(int(c) for c in data["channels"]),
            strides=tuple(int(s) for s in data["strides"]),
            width=int(data["width"]),
            out_stride=int(data.get("out_stride", OUTPUT_STRIDE)),
        )


class ClassSelector(nn.Module):
    """Gates the deepest features by how much each location looks like class ``c``.

    ``score[b, i, j] = <deep[b, :, i, j], E[c_b]> - confidence[c_b]`` and
    ``gated = deep * sigmoid(score)``. ``E`` is ``num_classes x C_deep``.
    """

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(num_classes, channels) * (0.1 / channels**0.5))
        self.confidence = nn.Parameter(torch.zeros(num_classes))

    def all_scores(self, deep: Tensor) -> Tensor:
        """``B x C x h x w`` -> scores for every class ``B x N x h x w``."""
        return torch.einsum("bchw,nc->bnhw", deep, self.embedding) - self.confidence[None, :, None, None]

    def scores(self, deep: Tensor, cls: Tensor) -> Tensor:
        """``B x C x h x w``, ``B`` classes -> ``B x h x w`` scores of the selected classes."""
        return torch.einsum("bchw,bc->bhw", deep, self.embedding[cls]) - self.confidence[cls][:, None, None]

    def forward(self, deep: Tensor, cls: Tensor) -> Tensor:
        """Gated features ``B x C x h x w``."""
        return deep * torch.sigmoid(self.scores(deep, cls))[:, None]


def _conv_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.ReLU())


class MaskDecoder(nn.Module):
    """U-Net decoder: gated deepest features + encoder skips -> two channels ``a, b`` at ``out_stride``."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], width: int, out_stride: int) -> None:
        super().__init__()
        deep_stride = strides[-1]
        if deep_stride < out_stride or any(s & (s - 1) for s in strides):
            raise UserError(f"RTS needs encoder strides that are powers of two reaching {out_stride}; got {list(strides)}")
        self.out_stride = out_stride
        self.path_strides = [deep_stride >> k for k in range(deep_stride.bit_length()) if deep_stride >> k >= out_stride]
        self.entry = _conv_relu(channels[-1], width)
        # skips: fold levels finer than the output stride with PixelUnshuffle, merge at max(stride, out_stride)
        self.skips = nn.ModuleList()
        self.skip_merge_stride: list[int] = []
        for c, s in zip(channels[:-1], strides[:-1], strict=True):
            fold = max(1, out_stride // s)
            unshuffle: nn.Module = nn.PixelUnshuffle(fold) if fold > 1 else nn.Identity()
            self.skips.append(nn.Sequential(unshuffle, _conv_relu(c * fold * fold, width, kernel=1)))
            self.skip_merge_stride.append(max(s, out_stride))
        self.merges = nn.ModuleDict()
        for t in self.path_strides:
            n_skips = self.skip_merge_stride.count(t)
            self.merges[str(t)] = _conv_relu(width * (1 + n_skips), width)
        self.upsamplers = nn.ModuleList(
            nn.Sequential(_conv_relu(width, 4 * width), nn.PixelShuffle(2)) for _ in self.path_strides[1:]
        )
        self.out = nn.Conv2d(width, 2, 1)

    def forward(self, gated_deep: Tensor, levels: Sequence[Tensor]) -> Tensor:
        """Gated deepest ``B x C_deep x h x w`` + pyramid levels -> ``B x 2 x H/out x W/out``."""
        skip_maps = [skip(level) for skip, level in zip(self.skips, levels[:-1], strict=True)]
        y = self.entry(gated_deep)
        for step, t in enumerate(self.path_strides):
            if step:
                y = self.upsamplers[step - 1](y)
            merged = [m for m, s in zip(skip_maps, self.skip_merge_stride, strict=True) if s == t]
            y = self.merges[str(t)](torch.cat([y, *merged], 1))
        return self.out(y)


def ab_to_mask(ab: Tensor) -> Tensor:
    """Two channels ``B x 2 x h x w`` -> mask ``|a| / (|a| + |b|)`` of shape ``B x h x w``."""
    a, b = ab[:, 0].abs(), ab[:, 1].abs()
    return a / (a + b + MASK_EPS)


class RTSHead(nn.Module):
    """The trainable part of RTS: class selector + decoder (what a checkpoint holds)."""

    def __init__(self, config: RTSConfig) -> None:
        super().__init__()
        self.config = config
        self.selector = ClassSelector(config.num_classes, config.channels[-1])
        self.decoder = MaskDecoder(config.channels, config.strides, config.width, config.out_stride)

    def forward(self, levels: Sequence[Tensor], cls: Tensor) -> Tensor:
        """Pyramid levels + classes ``B`` -> masks ``B x h x w`` in [0, 1]."""
        return ab_to_mask(self.decoder(self.selector(levels[-1], cls), levels))


class RTSOutput(NamedTuple):
    """Masks ``B x H/4 x W/4`` in [0, 1] and the encoder's (= classifier's) logits ``B x N``."""

    mask: Tensor
    logits: Tensor


def model_family(name: str) -> str:
    """The base registry name of a (possibly smooth-surrogate) classifier name."""
    return name.removesuffix("+smooth")


def default_width(deep_channels: int) -> int:
    """Decoder width: a quarter of the deepest encoder width, within [16, 64]."""
    return max(16, min(64, deep_channels // 4))


class RTSMasker(nn.Module):
    """Frozen classifier encoder + trainable :class:`RTSHead`.

    Args:
        classifier: the explained classifier; its features are the encoder.
        head: a trained head; a fresh one (random weights) when ``None``.
        width: decoder width for a fresh head (default :func:`default_width`).
    """

    def __init__(self, classifier: Classifier, head: RTSHead | None = None, width: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        classifier.feature_pyramid_check()
        if head is None:
            head = RTSHead(self._probe_config(width))
        reference = next(classifier.parameters())
        self.head = head.to(device=reference.device, dtype=reference.dtype)
        self.history: list[dict] = []

    def _probe_config(self, width: int | None) -> RTSConfig:
        """Channels and strides of the pyramid, measured on one blank image."""
        size = self.classifier.input_size
        reference = next(self.classifier.parameters())
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size, device=reference.device, dtype=reference.dtype)
            levels = self.pyramid(probe)
        channels = tuple(int(f.shape[1]) for f in levels)
        return RTSConfig(
            num_classes=self.classifier.num_classes,
            channels=channels,
            strides=tuple(size // int(f.shape[-1]) for f in levels),
            width=width or default_width(channels[-1]),
        )

    @property
    def config(self) -> RTSConfig:
        return self.head.config

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Encoder feature pyramid of pixels ``x`` (``B x 3 x H x W`` in [0, 1]), fine to coarse."""
        return self.classifier.feature_pyramid(x)

    def masks_from_pyramid(self, levels: Sequence[Tensor], cls: Tensor) -> Tensor:
        """Masks ``B x H/4 x W/4`` for precomputed pyramid levels."""
        return self.head(levels, cls)

    def forward(self, x: Tensor, cls: Tensor | None = None) -> RTSOutput:
        """Masks for classes ``cls`` (``B`` long; default: the predicted class) and the
        encoder logits, in one encoder pass."""
        levels = self.pyramid(x)
        logits = self.classifier.logits_from_features(levels[-1])
        if cls is None:
            cls = logits.detach().argmax(1)
        return RTSOutput(self.head(levels, cls), logits)
