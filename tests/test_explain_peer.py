"""mlc.explain.grad_cam against a peer implementation: pytorch-grad-cam's GradCAM on the same layer.

pytorch-grad-cam (the ``grad-cam`` package) is a test-only dependency: skipped when absent,
required when the ``CI`` environment variable is set, so a regression in the maps cannot pass there.
"""
import os

import numpy as np
import pytest
import torch

from conftest import tiny_model
from mlc.explain import grad_cam
from mlc.models import list_models

if os.environ.get("CI"):
    import pytorch_grad_cam  # noqa: F401  (required in CI)
else:
    pytest.importorskip("pytorch_grad_cam")

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class HeadOnFeatures(torch.nn.Module):
    """The model's head as a module over backbone maps; ``features`` marks the layer both explain."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.features = torch.nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.features(features)).logits


def _unit(maps: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], as pytorch-grad-cam returns its maps (it scales twice, so its 1e-7 guard
    washes out even for maps as small as a tiny network's)."""
    maps = maps - maps.min()
    return maps / maps.max()


@pytest.mark.parametrize("name", list_models())
def test_grad_cam_equals_pytorch_grad_cam_on_the_same_layer(name, tiny_setup):
    torch.manual_seed(0)
    model = tiny_model(name, tiny_setup, image_size=160).eval()
    with torch.no_grad():
        for p in model.head_parameters():  # away from the initialisation: maps with structure
            p.add_(0.3 * torch.randn_like(p))
        features = model.forward_features(torch.randn(2, 3, 160, 160))  # (2, N, 5, 5)
    ours = grad_cam(model, features).numpy()
    peer_model = HeadOnFeatures(model)
    compared = 0
    with GradCAM(model=peer_model, target_layers=[peer_model.features]) as peer:
        for c in range(model.num_classes):
            theirs = peer(input_tensor=features.clone().requires_grad_(True), targets=[ClassifierOutputTarget(c)] * len(features))
            for b in range(len(features)):
                mine = ours[b, c]
                if mine.max() - mine.min() < 1e-9:  # empty map: theirs is empty too
                    assert np.abs(theirs[b]).max() < 1e-6
                    continue
                r = np.corrcoef(mine.ravel(), theirs[b].ravel())[0, 1]
                assert r > 0.9999, f"{name}, class {c}, image {b}: r = {r:.6f}"
                np.testing.assert_allclose(_unit(mine), theirs[b], atol=1e-4)
                compared += 1
    assert compared >= model.num_classes  # most maps have structure
