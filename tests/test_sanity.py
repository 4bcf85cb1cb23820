"""Sanity checks (Adebayo et al. 2018) on tiny models whose answers are known."""
import math

import numpy as np
import pytest
import torch

from conftest import VARIANTS, tiny_model
from mlc.sanity import RankAgreement, randomized_parameters, sanity_checks, spearman


def test_spearman_by_hand():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties take average ranks: [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> r = 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([0.0, 1, 1, 2]), np.array([1.0, 2, 3, 4])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman(np.zeros(4), np.arange(4.0)))  # an empty map has no ranks
    agreement = RankAgreement.of([0.2, -0.6, float("nan"), 0.1])
    assert (agreement.median, agreement.median_abs, agreement.pairs, agreement.undefined) == (0.1, 0.2, 3, 1)


@pytest.mark.parametrize("name", VARIANTS)
def test_randomization_redraws_the_declared_part_and_restores_it(name, tiny_setup):
    torch.manual_seed(0)
    model = tiny_model(name, tiny_setup)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with randomized_parameters(model, seed=1) as names:
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert names and set(names) >= changed and changed  # only the declared part changes
        assert not any(n.startswith("backbone.") for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    if name in ("mlgcn", "gcam"):  # the GCN output, which makes the classifiers
        assert names == ["gc2.weight"]


def _linear_cam_model(tiny_setup, weights: torch.Tensor, random_part: str):
    """Baseline over the raw image (features = pixels), classifier ``weights`` (5, 3); the sanity
    check re-draws ``random_part`` ("fc.weight" or "fc.bias") only."""
    model = tiny_model("baseline", tiny_setup).eval()
    model.backbone = torch.nn.Identity()
    model.fc = torch.nn.Linear(3, 5)
    with torch.no_grad():
        model.fc.weight.copy_(weights)
    model.randomization_parameters = lambda: [(random_part, getattr(model.fc, random_part.split(".")[1]))]
    return model


def test_a_map_blind_to_the_randomised_part_fails_and_one_that_reads_it_passes(tiny_setup):
    torch.manual_seed(0)
    images = torch.randn(4, 3, 6, 6)
    labels = np.array([[1, 0, 0, 0, 0]] * 4)
    pairs = [(i, 0) for i in range(4)]
    weights = torch.tensor([[1.0, 0.5, 0.2]] * 5)
    # the bias shifts the logits but not the CAM: rho = 1 for every pair, the map ignores that part
    blind = sanity_checks(_linear_cam_model(tiny_setup, weights, "fc.bias"), images, labels, pairs, explainers=("own",))
    own = blind.explainers["own"]
    assert own.model_randomization.median == pytest.approx(1.0) and own.depends_on_model is False
    assert blind.randomized == ["fc.bias"]
    # every class has the same classifier: a present and an absent class get the same map, rho = 1
    assert own.class_discrimination.median == pytest.approx(1.0) and own.class_discrimination.pairs == 4
    # re-drawing W changes the CAM itself
    reads = sanity_checks(_linear_cam_model(tiny_setup, weights, "fc.weight"), images, labels, pairs, seed=2)
    assert reads.explainers["own"].model_randomization.median_abs < 0.9
    assert set(reads.explainers) == {"own", "grad-cam"}


def test_class_discrimination_of_opposite_classifiers(tiny_setup):
    """W[absent] = -W[present]: the two CAMs are x and -x, their evidence ReLU(x) and ReLU(-x),
    whose Spearman is computed here from x directly (and is negative: where one is high the other is 0)."""
    torch.manual_seed(0)
    weights = torch.tensor([[1.0, 0.5, 0.2], [-1.0, -0.5, -0.2], [-1.0, -0.5, -0.2], [-1.0, -0.5, -0.2], [-1.0, -0.5, -0.2]])
    model = _linear_cam_model(tiny_setup, weights, "fc.bias")
    images = torch.randn(2, 3, 6, 6)
    result = sanity_checks(model, images, np.array([[1, 0, 0, 0, 0]] * 2), [(0, 0), (1, 0)], explainers=("own",))
    x = torch.einsum("k,bkhw->bhw", weights[0], images).numpy()
    expected = np.median([spearman(np.maximum(x[b], 0), np.maximum(-x[b], 0)) for b in range(2)])
    assert result.explainers["own"].class_discrimination.median == pytest.approx(expected)
    assert expected < 0
