"""Built-in registry entries: CIFAR ResNets, torchvision ImageNet models, the embedded CNN."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from idls.errors import UserError
from idls.models.cifar_resnet import CifarResNet
from idls.models.embedded import EmbeddedCNN
from idls.models.registry import CIFAR10_CLASSES, MODELS, ModelEntry, weights_cache_dir
from idls.models.weights import download_verified, load_into, read_state_dict
from idls.system import Classifier, ModelInfo

# ------------------------------------------------------------------------------------
# CIFAR ResNets (public checkpoints of Y. Idelbayev's "Proper ResNet Implementation
# for CIFAR10/CIFAR100 in PyTorch", BSD-2-Clause). The 8 hex digits are the first 8
# of each file's SHA-256.
# ------------------------------------------------------------------------------------
_CIFAR_BASE = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
CIFAR_CHECKPOINTS: dict[int, str] = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
    110: "resnet110-1d1ed7c2.th",
}


def _resolve_file_or_pretrained(weights: str, name: str, pretrained: tuple[str, str] | None) -> Path:
    """Map a ``--weights`` value to a local file (downloading registered checkpoints)."""
    if weights == "pretrained":
        if pretrained is None:
            raise UserError(f"model {name!r} has no registered pretrained weights; pass --weights PATH")
        url, prefix = pretrained
        return download_verified(url, prefix, weights_cache_dir())
    return Path(weights).expanduser()


# ------------------------------------------------------------------------------------
# Feature pyramids (fine to coarse) of the normalised image: the encoder RTS decodes
# ------------------------------------------------------------------------------------
def _cifar_resnet_pyramid(net: nn.Module, z: Tensor) -> list[Tensor]:
    """CIFAR ResNet: layer1 (stride 1), layer2 (2), layer3 (4)."""
    h = net.relu(net.bn1(net.conv1(z)))
    l1 = net.layer1(h)
    l2 = net.layer2(l1)
    return [l1, l2, net.layer3(l2)]


def _embedded_cnn_pyramid(net: nn.Module, z: Tensor) -> list[Tensor]:
    """Embedded CNN: the output of every stage (taken before each max-pool, and the last)."""
    levels = []
    for layer in net.features:
        if isinstance(layer, nn.MaxPool2d):
            levels.append(z)
        z = layer(z)
    levels.append(z)
    return levels


def _torchvision_resnet_pyramid(net: nn.Module, z: Tensor) -> list[Tensor]:
    """torchvision ResNet: layer1 (stride 4) .. layer4 (stride 32)."""
    z = net.maxpool(net.relu(net.bn1(net.conv1(z))))
    levels = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        z = stage(z)
        levels.append(z)
    return levels


def _torchvision_densenet_pyramid(net: nn.Module, z: Tensor) -> list[Tensor]:
    """torchvision DenseNet: denseblock1 (stride 4), 2, 3 and the final features after ReLU (stride 32)."""
    levels = []
    for name, module in net.features.named_children():
        z = module(z)
        if name in ("denseblock1", "denseblock2", "denseblock3"):
            levels.append(z)
    levels.append(net.final_relu(z))
    return levels


def _build_cifar(depth: int, weights: str | None) -> Classifier:
    net = CifarResNet(depth)
    name = f"cifar_resnet{depth}"
    if weights is not None:
        file = CIFAR_CHECKPOINTS[depth]
        path = _resolve_file_or_pretrained(weights, name, (_CIFAR_BASE + file, file.split("-")[1].split(".")[0]))
        load_into(net, read_state_dict(path), source=str(path), model_name=name)
    info = ModelInfo(name=name, num_classes=10, input_size=32, class_names=CIFAR10_CLASSES, weights=weights)
    return Classifier(net, body=lambda n, z: n.features(z), head=lambda n, a: n.head(a), info=info, linear=lambda n: n.linear,
                      pyramid=_cifar_resnet_pyramid)


for _depth in CIFAR_CHECKPOINTS:
    MODELS.register(
        f"cifar_resnet{_depth}",
        ModelEntry(
            name=f"cifar_resnet{_depth}",
            family="cifar_resnet",
            build=partial(_build_cifar, _depth),
            description=f"CIFAR-10 ResNet-{_depth} (He et al., option-A shortcuts), 32 px, ImageNet normalisation",
            input_size=32,
            num_classes=10,
            weights_names=("pretrained",),
        ),
    )


# ------------------------------------------------------------------------------------
# torchvision ImageNet models
# ------------------------------------------------------------------------------------
def _resnet_body(net: nn.Module, z: Tensor) -> Tensor:
    z = net.maxpool(net.relu(net.bn1(net.conv1(z))))
    return net.layer4(net.layer3(net.layer2(net.layer1(z))))


def _resnet_head(net: nn.Module, a: Tensor) -> Tensor:
    return net.fc(a.mean(dim=(2, 3)))


def _densenet_body(net: nn.Module, z: Tensor) -> Tensor:
    return net.final_relu(net.features(z))


def _densenet_head(net: nn.Module, a: Tensor) -> Tensor:
    return net.classifier(a.mean(dim=(2, 3)))


def _vgg_body(net: nn.Module, z: Tensor) -> Tensor:
    return net.features(z)


def _vgg_head(net: nn.Module, a: Tensor) -> Tensor:
    return net.classifier(torch.flatten(net.avgpool(a), 1))


_TORCHVISION = {
    # name: (body, head, linear accessor or None, feature pyramid or None, description)
    "resnet18": (_resnet_body, _resnet_head, lambda n: n.fc, _torchvision_resnet_pyramid, "ResNet-18"),
    "resnet50": (_resnet_body, _resnet_head, lambda n: n.fc, _torchvision_resnet_pyramid, "ResNet-50"),
    "wide_resnet50_2": (_resnet_body, _resnet_head, lambda n: n.fc, _torchvision_resnet_pyramid, "Wide ResNet-50-2"),
    "densenet121": (_densenet_body, _densenet_head, lambda n: n.classifier, _torchvision_densenet_pyramid, "DenseNet-121"),
    "densenet169": (_densenet_body, _densenet_head, lambda n: n.classifier, _torchvision_densenet_pyramid, "DenseNet-169"),
    "vgg16": (_vgg_body, _vgg_head, None, None, "VGG-16 (no GAP head: Grad-CAM, not CAM)"),
}


def imagenet_class_names() -> tuple[str, ...]:
    """ImageNet-1k class names from torchvision's weights metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _build_torchvision(name: str, weights: str | None) -> Classifier:
    import torchvision

    body, head, linear, pyramid, _ = _TORCHVISION[name]
    net = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        path = Path(weights).expanduser()
        if path.suffix in {".pt", ".pth", ".th", ".safetensors"} or path.exists():
            load_into(net, read_state_dict(path), source=str(path), model_name=name)
        else:
            enum_name = "DEFAULT" if weights == "pretrained" else weights
            try:
                w = torchvision.models.get_model_weights(name)[enum_name]
            except KeyError:
                known = ", ".join(m for m in torchvision.models.get_model_weights(name).__members__)
                raise UserError(f"unknown weights {weights!r} for {name}; use one of: pretrained, {known}, or a file") from None
            try:
                state = w.get_state_dict(progress=True, check_hash=True)
            except Exception as exc:  # noqa: BLE001
                raise UserError(
                    f"cannot download {name} weights {w} ({type(exc).__name__}); without internet pass --weights PATH"
                ) from None
            load_into(net, state, source=str(w), model_name=name)
    if name.startswith("densenet"):
        net.add_module("final_relu", nn.ReLU())
    info = ModelInfo(
        name=name,
        num_classes=1000,
        input_size=224,
        class_names=imagenet_class_names(),
        gap_linear_head=linear is not None,
        weights=weights,
    )
    return Classifier(net, body=body, head=head, info=info, linear=linear, pyramid=pyramid)


for _name, (_b, _h, _l, _p, _desc) in _TORCHVISION.items():
    MODELS.register(
        _name,
        ModelEntry(
            name=_name,
            family="torchvision",
            build=partial(_build_torchvision, _name),
            description=f"torchvision {_desc}, ImageNet, 224 px",
            input_size=224,
            num_classes=1000,
            weights_names=("pretrained", "IMAGENET1K_V1"),
        ),
    )


# ------------------------------------------------------------------------------------
# Embedded CNN on the embedded synthetic data set
# ------------------------------------------------------------------------------------
def _build_embedded(weights: str | None) -> Classifier:
    from idls.data.synthetic import CLASS_NAMES, IMAGE_SIZE

    net = EmbeddedCNN(num_classes=len(CLASS_NAMES))
    if weights is not None:
        if weights == "pretrained":
            from idls.embedded import trained_embedded_state_dict

            state = trained_embedded_state_dict()
            source = "embedded (shipped or cached training)"
        else:
            state = read_state_dict(weights)
            source = weights
        load_into(net, state, source=source, model_name="embedded_cnn")
    info = ModelInfo(
        name="embedded_cnn",
        num_classes=len(CLASS_NAMES),
        input_size=IMAGE_SIZE,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=tuple(CLASS_NAMES),
        weights=weights,
        embedded=True,
    )
    return Classifier(net, body=lambda n, z: n.features(z), head=lambda n, a: n.head(a), info=info, linear=lambda n: n.fc,
                      pyramid=_embedded_cnn_pyramid)


MODELS.register(
    "embedded_cnn",
    ModelEntry(
        name="embedded_cnn",
        family="embedded",
        build=_build_embedded,
        description="small CNN (GAP + linear head) for the embedded synthetic data set; 'pretrained' trains once and caches",
        input_size=64,
        num_classes=6,
        weights_names=("pretrained",),
    ),
)
