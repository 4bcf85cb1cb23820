"""What each method sees: the identity-graph ablation, diagnose() over a split, disagreement, boxes."""
import numpy as np
import pytest
import torch

from conftest import VARIANTS, tiny_model
from fixtures import VOCObject, make_coco, make_voc
from mlc.data import build_dataset
from mlc.data.coco import COCODataset
from mlc.diagnostics import diagnose, disagreement
from mlc.explain import flip_consistency


@pytest.mark.parametrize("name", VARIANTS)
def test_identity_graph_leaves_the_baseline_and_changes_the_graph_methods(name, tiny_setup):
    torch.manual_seed(0)
    model = tiny_model(name, tiny_setup).eval()
    with torch.no_grad():
        for p in model.head_parameters():  # away from the initialisation, where some heads ignore the graph
            p.add_(0.3 * torch.randn_like(p))
        features = model.forward_features(torch.randn(4, 3, 64, 64))
        real = model.forward_head(features).logits
        with model.identity_graph() as same:
            assert same is model
            ablated = model.forward_head(features).logits
        again = model.forward_head(features).logits
    torch.testing.assert_close(again, real)  # restored on exit
    if name == "baseline":
        assert not model.has_label_graph
        torch.testing.assert_close(ablated, real)
    else:
        assert model.has_label_graph and model.no_graph_description
        assert (ablated - real).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["mlgcn", "gcam"])
def test_mlgcn_with_identity_adjacency_applies_the_gcn_to_each_embedding_alone(name, tiny_setup):
    model = tiny_model(name, tiny_setup).eval()
    one = torch.ones(1, 1)
    with torch.no_grad(), model.identity_graph():
        weights, _ = model.classifier()
        for c in range(model.num_classes):
            e = model.label_embeddings[c:c + 1]
            alone = model.gc2(model.act(model.gc1(e, one)), one)
            torch.testing.assert_close(weights[c:c + 1], alone)
        assert torch.equal(model.adjacency, torch.eye(model.num_classes))
    assert not torch.equal(model.adjacency, torch.eye(model.num_classes))


def test_identity_graph_restores_the_graph_after_an_error(tiny_setup):
    model = tiny_model("ggnn", tiny_setup)
    before = model.ggnn.a_in.clone()
    with pytest.raises(RuntimeError), model.identity_graph():
        assert model.ggnn.a_in.abs().sum() == 0
        raise RuntimeError("boom")
    assert torch.equal(model.ggnn.a_in, before)


def test_voc_and_coco_boxes(tmp_path):
    root = make_voc(tmp_path / "voc", annotations={"val": {"a": [VOCObject("cat", box=(11, 21, 40, 50)),
                                                                 VOCObject("person", True, (1, 1, 64, 64))]}})
    voc = build_dataset("voc2007", root, "val")
    assert voc.has_boxes
    ann = voc.boxes(0)
    assert ann.size == (64, 64)
    (cat,) = ann.of_class(voc.classes.index("cat"))
    assert (cat.x0, cat.y0, cat.x1, cat.y1) == (10, 20, 40, 50)  # 1-based inclusive -> [x0, x1)
    assert len(ann.of_class(voc.classes.index("person"))) == 1  # difficult objects keep their boxes
    coco = COCODataset(*(lambda r: (r / "annotations" / "instances_train2017.json", r / "train2017"))(
        make_coco(tmp_path / "coco", labels=[[7, 3], []])))
    boxes = coco.boxes(0)
    assert boxes.size == (64, 64) and {b.class_index for b in boxes.boxes} == {coco.classes.index("dog"), coco.classes.index("car")}
    assert coco.boxes(1).boxes == ()
    assert not build_dataset("csv", *_csv(tmp_path)).has_boxes


def _csv(tmp_path):
    from fixtures import make_csv

    return make_csv(tmp_path / "csv"), "train"


@pytest.fixture
def voc_val(tmp_path):
    classes = ["cat", "dog", "person", "car", "bus"]
    ann = {"val": {f"v{i}": [classes[i % 5], classes[(i + 2) % 5]] for i in range(6)}}
    return build_dataset("voc2007", make_voc(tmp_path / "voc", annotations=ann), "val")


def test_diagnose_reports_every_part_with_baselines(voc_val, tiny_setup):
    torch.manual_seed(0)
    setup = {**tiny_setup, "classes": voc_val.classes}
    setup["label_stats"] = None
    from mlc.stats import label_statistics

    rng = np.random.default_rng(0)
    setup["label_stats"] = label_statistics((rng.random((40, len(voc_val.classes))) < 0.3).astype(np.int8), voc_val.classes)
    setup["embeddings"] = rng.normal(size=(len(voc_val.classes), 8)).astype(np.float32)
    for name in ("baseline", "ssgrl"):
        model = tiny_model(name, setup, image_size=64).eval()
        d = diagnose(model, voc_val, batch_size=4, seed=3)
        assert d["map"] == ("CAM" if name == "baseline" else "attention") and d["input_size"] == 64
        loc = d["localization"]
        pairs = int((voc_val.labels == 1).sum())
        assert loc["method"]["pairs"] == loc["random"]["pairs"] == loc["centre"]["pairs"] == pairs == 12
        for source in ("method", "random", "centre"):
            assert 0 <= loc[source]["pointing"] <= 1 and 0 <= loc[source]["energy"] <= 1
        assert (d["graph"] is None) == (name == "baseline")
        if d["graph"]:
            assert d["graph"]["map"] - d["graph"]["map_identity"] == pytest.approx(d["graph"]["difference"])
        # L_A is G-CAM's flip term over the whole split: the mean of the per-image squared errors
        from mlc.data import build_transforms

        images = torch.stack([build_transforms(64, train=False, mean=model.normalization.mean,
                                               std=model.normalization.std)(voc_val.load_image(i)) for i in range(6)])
        with torch.no_grad():
            fc = flip_consistency(model, images)
        assert d["flip"]["la"] == pytest.approx(float(fc.squared_error.mean()), rel=1e-4)
        cos = fc.score.numpy()[voc_val.labels == 1]
        assert d["flip"]["cosine"] == pytest.approx(float(cos.mean()), rel=1e-4)
        # the scale term is G-CAM's, at 192/224 of the input: 55 px for 64
        from mlc.explain import explanation_maps, rescale
        from mlc.losses import attention_consistency_loss

        assert d["scale"]["size"] == 55
        with torch.no_grad():
            small = explanation_maps(model, rescale(images, 55), raw=True)[1]
            expected = attention_consistency_loss(fc.maps, small, "scale")
        assert d["scale"]["la"] == pytest.approx(float(expected), rel=1e-4)
        assert -1 <= d["scale"]["cosine"] <= 1 and d["scale"]["pairs"] == d["flip"]["pairs"]
        assert loc["grad_cam"]["pairs"] == pairs  # Grad-CAM beside the own map, for every method
        faith, sanity = d["faithfulness"], d["sanity"]  # on min(50, present) seeded pairs, with their cost
        assert faith["pairs"] == sanity["pairs"] == 12 and faith["seconds"] > 0 and sanity["seconds"] > 0
        assert set(faith["maps"]) == {"own", "grad-cam", "random", "centre"}
        assert faith["fractions"] == [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0] and faith["blur_sigma_px"] == 10.0
        for entry in faith["maps"].values():
            for curve in ("deletion", "insertion"):
                a = entry[curve]["auc"]
                assert 0 <= a["low"] <= a["value"] <= a["high"] <= 1 and len(entry[curve]["curve"]) == 7
        # deletion at 100% is the blurred image, where insertion starts: the same probability for every map
        ends = {round(m["deletion"]["curve"][-1], 6) for m in faith["maps"].values()}
        assert ends == {round(m["insertion"]["curve"][0], 6) for m in faith["maps"].values()} and len(ends) == 1
        assert set(faith["beats"]) == {"own", "grad-cam"} and set(faith["beats"]["own"]["deletion"]) == {"random", "centre"}
        assert set(sanity["explainers"]) == {"own", "grad-cam"} and sanity["randomized"]
        own = sanity["explainers"]["own"]
        assert own["kind"] == d["map"] and -1 <= own["model_randomization"]["median"] <= 1
        # the random baseline is seeded: the same seed gives the same figures
        again = diagnose(model, voc_val, batch_size=3, seed=3)
        assert again["localization"]["random"] == loc["random"]
        assert again["faithfulness"]["maps"] == faith["maps"]
    assert diagnose(model, voc_val, batch_size=4, faithfulness_pairs=0)["faithfulness"] is None


def test_grad_cam_of_an_average_pooled_linear_head_localises_like_its_cam(voc_val, tiny_setup):
    """Grad-CAM = ReLU(CAM) / (h w) for GAP + linear: the same pointing game and box energy."""
    torch.manual_seed(0)
    model = tiny_model("baseline", {**tiny_setup, "classes": voc_val.classes, "label_stats": None},
                       image_size=128, pooling="avg").eval()
    loc = diagnose(model, voc_val, batch_size=4, scale_ratio=None)["localization"]
    for key in ("pointing", "energy", "pairs", "empty_pairs"):
        assert loc["grad_cam"][key] == pytest.approx(loc["method"][key])


@pytest.mark.parametrize("image_size", [64, 96])
def test_scale_term_follows_the_model_size_and_its_own_scale(voc_val, tiny_setup, image_size):
    """The scale pair is taken at the model's size: 192/224 of it for a model without a second
    scale, G-CAM's own second scale (ratio or pinned size) for G-CAM, not 192/224 of 224 px."""
    rng = np.random.default_rng(0)
    from mlc.stats import label_statistics

    setup = {**tiny_setup, "classes": voc_val.classes,
             "label_stats": label_statistics((rng.random((40, 20)) < 0.3).astype(np.int8), voc_val.classes),
             "embeddings": rng.normal(size=(20, 8)).astype(np.float32)}
    cases = {
        "baseline": ({}, round(image_size * 192 / 224)),
        "gcam": ({"scale_ratio": 0.75}, round(image_size * 0.75)),
        "gcam pinned": ({"scale_size": 40}, 40),  # what that G-CAM trains with at any input size
    }
    for label, (params, expected) in cases.items():
        model = tiny_model(label.split()[0], setup, image_size=image_size, **params).eval()
        scale = diagnose(model, voc_val, batch_size=6)["scale"]
        assert scale["size"] == expected, label
        assert scale["ratio"] == pytest.approx(expected / image_size)
        assert diagnose(model, voc_val, batch_size=6, scale_ratio=None)["scale"] is None


def test_diagnose_without_boxes_says_so(tmp_path, tiny_setup):
    from fixtures import make_csv

    dataset = build_dataset("csv", make_csv(tmp_path / "csv", n_images=4), "train")
    model = tiny_model("baseline", {**tiny_setup, "classes": dataset.classes, "label_stats": None}, image_size=64)
    d = diagnose(model, dataset, batch_size=4)
    assert "no object boxes" in d["localization"]["skipped"]
    assert d["flip"]["pairs"] == int((dataset.labels == 1).sum())
    other = tiny_model("baseline", {**tiny_setup, "label_stats": None}, image_size=64)
    with pytest.raises(ValueError, match="differ from the model"):
        diagnose(other, dataset)


def test_disagreement_ranks_the_most_disputed_images_first():
    classes = ["a", "b", "c"]
    a = np.array([[0.9, 0.1, 0.1], [0.9, 0.9, 0.1], [0.2, 0.2, 0.2], [0.9, 0.1, 0.1]])
    b = np.array([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9], [0.2, 0.2, 0.2], [0.9, 0.6, 0.1]])
    c = np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.9], [0.2, 0.2, 0.2], [0.9, 0.1, 0.1]])
    targets = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]])
    d = disagreement({"x": a, "y": b, "z": c}, ["i0", "i1", "i2", "i3"], classes, targets, top=2)
    assert [im["id"] for im in d["images"]] == ["i1", "i3"]
    first = d["images"][0]
    assert first["split_labels"] == 3  # a: x, z but not y; b: x only; c: y, z
    assert first["predicted"] == {"x": ["a", "b"], "y": ["c"], "z": ["a", "c"]}
    assert first["true"] == ["a", "c"]
    assert set(first["scores"]["y"]) == {"a", "b", "c"}
    assert d["agree_all"] == pytest.approx(0.5)  # i0 and i2
    assert d["pairwise_jaccard"]["x"]["x"] == 1.0
    # x and y: i0 1, i1 0 ({a,b} vs {c}), i2 1 (both empty), i3 1/2
    assert d["pairwise_jaccard"]["x"]["y"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    with pytest.raises(ValueError, match="at least two"):
        disagreement({"x": a}, ["i0"] * 4, classes)
