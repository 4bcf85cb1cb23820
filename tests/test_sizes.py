"""Image sizes other than 224 px in every path a model takes after training: the app's input, its
predictions and maps (shared backbones), and the saved model (tiny backbone at two sizes; the
training paths at two sizes are in test_train_paths.py, the diagnostics' scale pair in
test_diagnostics.py)."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_model
from mlc.models import load_model


@pytest.mark.parametrize("image_size", [64, 96])
def test_app_serves_models_at_their_own_size(tmp_path, tiny_setup, image_size):
    from mlc import serving

    torch.manual_seed(0)
    for name in ("baseline", "gcam"):
        tiny_model(name, tiny_setup, image_size=image_size).eval().save(tmp_path / name)
    model_set = serving.ModelSet.load(tmp_path)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8))
    table = serving.predict_probabilities(model_set, image)
    _, maps = serving.class_maps(model_set, image, None)
    cells = image_size // 32
    for name in ("baseline", "gcam"):
        model = load_model(tmp_path / name)
        assert model.image_size == image_size
        x = serving.model_input(image, model)
        assert x.shape[-2:] == (image_size, image_size)
        with torch.no_grad():
            expected = torch.sigmoid(model(x))[0].numpy()
        assert table[name].loc[model.classes].to_numpy() == pytest.approx(expected, abs=1e-5)
    assert all(m.map.shape == (cells, cells) for m in maps)
