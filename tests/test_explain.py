"""CAM, Grad-CAM, flip consistency and overlays."""
import numpy as np
import torch

from conftest import tiny_model
from mlc.explain import (
    class_activation_maps, empty_maps, explanation_maps, explanations, flip_consistency, grad_cam, normalize_map, overlay,
    positive_evidence,
)


def test_cam_of_gap_linear_model_averages_to_its_logit(tiny_setup):
    torch.manual_seed(0)
    model = tiny_model("baseline", tiny_setup, pooling="avg").eval()
    images = torch.randn(3, 3, 96, 96)
    out = model.explain(images)
    weight, bias = model.classifier()
    torch.testing.assert_close(out.cams.mean(dim=(2, 3)) + bias, out.logits)
    torch.testing.assert_close(out.cams, class_activation_maps(out.features, weight))


def test_mlgcn_cam_averages_to_its_logit(tiny_setup):
    model = tiny_model("mlgcn", tiny_setup, pooling="avg").eval()
    out = model.explain(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out.cams.mean(dim=(2, 3)) + model.bias, out.logits)


def test_grad_cam_of_linear_head_is_relu_of_cam_scaled():
    # For a GAP + linear head, alpha_ck = W[c, k] / (h w): Grad-CAM = ReLU(CAM) / (h w).
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward_head(self, f):
            from mlc.models.base import ModelOutput

            return ModelOutput(logits=self.fc(f.mean(dim=(2, 3))))

    torch.manual_seed(0)
    head, features = Head(), torch.randn(2, 4, 3, 5)
    expected = torch.relu(class_activation_maps(features, head.fc.weight)) / 15
    torch.testing.assert_close(grad_cam(head, features), expected)


def test_explanation_kinds_per_variant(tiny_setup):
    images = torch.randn(1, 3, 64, 64)
    kinds = {}
    for name in ["baseline", "ggnn", "ssgrl", "mlgcn", "gcam"]:
        logits, maps, kind = explanation_maps(tiny_model(name, tiny_setup).eval(), images)
        assert logits.shape == (1, 5) and maps.shape == (1, 5, 2, 2)
        kinds[name] = kind
    assert kinds == {"baseline": "CAM", "ggnn": "Grad-CAM", "ssgrl": "attention", "mlgcn": "CAM", "gcam": "CAM"}


def test_flip_consistency_is_perfect_for_a_flip_invariant_model(tiny_setup):
    model = tiny_model("baseline", tiny_setup).eval()
    model.backbone = torch.nn.Identity()  # features = the image itself: exactly flip-equivariant
    model.fc = torch.nn.Linear(3, 5)
    fc = flip_consistency(model, torch.randn(2, 3, 4, 6))
    assert fc.kind == "CAM"
    torch.testing.assert_close(fc.maps, fc.flipped_back)
    torch.testing.assert_close(fc.score, torch.ones(2, 5))
    assert fc.squared_error.abs().max() < 1e-10


def test_flip_consistency_of_a_random_cnn_is_imperfect(tiny_setup):
    torch.manual_seed(0)
    fc = flip_consistency(tiny_model("mlgcn", tiny_setup).eval(), torch.randn(1, 3, 128, 128))
    assert fc.squared_error.min() > 0 and (fc.score < 1 - 1e-6).all()


def test_overlay_shape_dtype_and_constant_map():
    image = np.full((40, 60, 3), 100, np.uint8)
    out = overlay(image, np.random.rand(5, 7))
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert not np.isnan(normalize_map(np.ones((3, 3)))).any()
    np.testing.assert_array_equal(normalize_map(np.ones((3, 3))), 0)


def test_maps_from_precomputed_features_equal_maps_from_images(tiny_setup):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    for name in ["baseline", "ggnn", "ssgrl", "gcam"]:
        model = tiny_model(name, tiny_setup).eval()
        with torch.no_grad():
            features, flipped = model.forward_features(images), model.forward_features(images.flip(-1))
        logits_a, maps_a, kind_a = explanation_maps(model, images)
        logits_b, maps_b, kind_b = explanation_maps(model, features=features)
        assert kind_a == kind_b
        torch.testing.assert_close(logits_a, logits_b)
        torch.testing.assert_close(maps_a, maps_b)
        fa, fb = flip_consistency(model, images), flip_consistency(model, features=features, flipped_features=flipped)
        torch.testing.assert_close(fa.flipped_back, fb.flipped_back)
        torch.testing.assert_close(fa.score, fb.score)


def test_shown_cam_is_the_positive_evidence_and_the_raw_cam_keeps_its_sign(tiny_setup):
    """A CAM shown or scored is ReLU(CAM); the raw one (the loss's) stays signed and averages to the logit."""
    torch.manual_seed(0)
    model = tiny_model("mlgcn", tiny_setup, pooling="avg").eval()
    images = torch.randn(3, 3, 96, 96)
    logits, shown, kind = explanation_maps(model, images)
    _, raw, raw_kind = explanation_maps(model, images, raw=True)
    assert kind == raw_kind == "CAM"
    assert (raw < 0).any() and shown.min() >= 0
    torch.testing.assert_close(shown, positive_evidence(raw))
    torch.testing.assert_close(shown, torch.relu(model.explain(images).cams))
    torch.testing.assert_close(raw.mean(dim=(2, 3)) + model.bias, logits)


def test_a_map_without_positive_cell_is_empty():
    maps = torch.tensor([[[[-1.0, -0.5]], [[-1.0, 0.2]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    assert empty_maps(maps).tolist() == [[True, False, True]]
    assert empty_maps(positive_evidence(maps)).tolist() == [[True, False, True]]


def test_consistency_measures_read_the_raw_maps_of_the_loss(tiny_setup):
    from mlc.losses import attention_consistency_loss

    torch.manual_seed(0)
    model = tiny_model("gcam", tiny_setup).eval()
    images = torch.randn(2, 3, 64, 64)
    fc = flip_consistency(model, images)
    with torch.no_grad():
        raw = model.explain(images).cams
        raw_mirror = model.explain(images.flip(-1)).cams
    torch.testing.assert_close(fc.maps, raw)
    torch.testing.assert_close(fc.squared_error.mean(), attention_consistency_loss(raw, raw_mirror, "flip"))


def test_explanations_give_own_maps_and_grad_cam_for_every_variant(tiny_setup):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    for name in ["baseline", "ggnn", "ssgrl", "mlgcn", "gcam"]:
        model = tiny_model(name, tiny_setup).eval()
        both = explanations(model, images)
        assert set(both) == {"own", "grad-cam"} and both["grad-cam"].kind == "Grad-CAM"
        with torch.no_grad():
            features = model.forward_features(images)
        torch.testing.assert_close(both["grad-cam"].maps, grad_cam(model, features))
        _, own, kind = explanation_maps(model, features=features)
        assert both["own"].kind == kind
        torch.testing.assert_close(both["own"].maps, own)
        if kind == "Grad-CAM":  # ggnn: not computed twice
            assert both["own"] is both["grad-cam"]
