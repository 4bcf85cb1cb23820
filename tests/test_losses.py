"""G-CAM attention consistency and the BCE variants."""
import torch

from conftest import tiny_model
from mlc.losses import GCAMLoss, attention_consistency_loss, multilabel_bce


def test_consistency_zero_for_a_flip_equivariant_pair_positive_otherwise():
    maps = torch.randn(2, 4, 5, 6)
    assert attention_consistency_loss(maps, maps.flip(-1), "flip") == 0
    assert attention_consistency_loss(maps, maps, "flip") > 0
    expected = ((maps.flip(-1) - maps) ** 2).mean()
    torch.testing.assert_close(attention_consistency_loss(maps, maps, "flip"), expected)


def test_scale_consistency_resizes_to_the_transformed_maps():
    maps = torch.ones(1, 2, 7, 7) * 3
    assert attention_consistency_loss(maps, torch.ones(1, 2, 6, 6) * 3, "scale") < 1e-12
    torch.testing.assert_close(attention_consistency_loss(maps, torch.ones(1, 2, 6, 6), "scale"), torch.tensor(4.0))


def test_gcam_loss_combines_bce_and_consistency_with_gradients_to_backbone(tiny_setup):
    torch.manual_seed(0)
    model = tiny_model("gcam", tiny_setup)
    images = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, -1, 0, 0]], dtype=torch.float32)
    features = model.forward_features(images)
    flipped = model.forward_features(images.flip(-1))
    scaled = model.forward_features(torch.nn.functional.interpolate(images, size=(48, 48)))
    loss_fn = GCAMLoss(weight=0.4)
    loss, logits, parts = loss_fn(model, features, targets, flipped, scaled)
    assert parts["consistency"] > 0
    torch.testing.assert_close(loss.detach(), 0.6 * parts["bce"] + 0.4 * parts["consistency"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, model.forward_head(features).logits)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_gcam_loss_zero_consistency_for_mirrored_features(tiny_setup):
    model = tiny_model("gcam", tiny_setup)
    features = torch.randn(2, 32, 3, 3)
    loss, _, parts = GCAMLoss()(model, features, torch.zeros(2, 5), flipped_features=features.flip(-1))
    assert parts["consistency"] < 1e-10


def test_bce_difficult_handling():
    logits = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[-1.0, 0.0]])
    as_pos = multilabel_bce(logits, targets, difficult_as_positive=True)
    torch.testing.assert_close(as_pos, torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[1.0, 0.0]])))
    ignored = multilabel_bce(logits, targets, difficult_as_positive=False)
    torch.testing.assert_close(ignored, torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(-1.0), torch.tensor(0.0)))


def test_gcam_consistency_is_the_sum_of_flip_and_scale_as_in_the_paper(tiny_setup):
    """G-CAM eq. 5: L = (1 - lambda) BCE + lambda (L_flip + L_scale); "mean" keeps the old average."""
    from mlc.explain import class_activation_maps

    torch.manual_seed(0)
    model = tiny_model("gcam", tiny_setup)
    features, flipped, scaled = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(2, 32, 3, 3)
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.float32)
    weights = model.classifier()[0]
    cams = class_activation_maps(features, weights)
    l_flip = ((cams.flip(-1) - class_activation_maps(flipped, weights)) ** 2).mean()
    resized = torch.nn.functional.interpolate(cams, size=(3, 3), mode="bilinear", align_corners=False)
    l_scale = ((resized - class_activation_maps(scaled, weights)) ** 2).mean()
    bce = multilabel_bce(model.forward_head(features).logits, targets)
    loss, _, _ = GCAMLoss(weight=0.4)(model, features, targets, flipped, scaled)
    torch.testing.assert_close(loss, 0.6 * bce + 0.4 * (l_flip + l_scale))
    mean, _, _ = GCAMLoss(weight=0.4, reduction="mean")(model, features, targets, flipped, scaled)
    torch.testing.assert_close(mean, 0.6 * bce + 0.4 * (l_flip + l_scale) / 2)
    # the variant's own training loss is the paper's form by default
    own, _ = model.training_loss({"image": features, "flipped": flipped, "scaled": scaled}, targets)
    torch.testing.assert_close(own, loss)


def test_gcam_second_scale_is_a_ratio_of_the_input_size(tiny_setup):
    model = tiny_model("gcam", tiny_setup)
    assert model.training_views() == ("image", "flipped", "scaled")
    assert model.view_images(torch.zeros(1, 3, 224, 224), "scaled").shape[-1] == 192
    assert model.view_images(torch.zeros(1, 3, 448, 448), "scaled").shape[-1] == 384
    absolute = tiny_model("gcam", tiny_setup, scale_size=192)
    assert absolute.view_images(torch.zeros(1, 3, 448, 448), "scaled").shape[-1] == 192
    legacy = tiny_model("gcam", tiny_setup, scales=[224, 192])  # checkpoints saved before the ratio
    assert legacy.view_images(torch.zeros(1, 3, 448, 448), "scaled").shape[-1] == 192
    assert tiny_model("mlgcn", tiny_setup).training_views() == ("image",)


def test_gcam_loss_still_reads_the_raw_signed_cam(tiny_setup):
    """The shipped checkpoints were trained on signed CAMs: showing ReLU'd maps must not change L_A."""
    torch.manual_seed(0)
    model = tiny_model("gcam", tiny_setup).eval()
    features, flipped = torch.randn(2, 32, 3, 3), torch.randn(2, 32, 3, 3)
    with torch.no_grad():
        _, _, parts = GCAMLoss()(model, features, torch.zeros(2, 5), flipped_features=flipped)
        weights = model.classifier()[0]
        raw = torch.einsum("ck,bkhw->bchw", weights, features)  # written out: no mlc.explain in the way
        raw_flipped = torch.einsum("ck,bkhw->bchw", weights, flipped)
    assert (raw < 0).any()  # the CAMs have negative cells, so a ReLU would matter
    torch.testing.assert_close(parts["consistency"], ((raw.flip(-1) - raw_flipped) ** 2).mean())
    relu = ((raw.clamp(min=0).flip(-1) - raw_flipped.clamp(min=0)) ** 2).mean()
    assert abs(float(parts["consistency"]) - float(relu)) > 1e-3
