"""The registry is the only list of variants: a sixth one, registered here and nowhere else, trains
through the CLI without a YAML file of its own, is served by the app and gets its own model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fixtures import make_voc
from test_app import write_photo
from test_train import tiny_args


@pytest.fixture
def sixth():
    """A throw-away variant: the baseline's head over ReLU'd features, with its own declarations."""
    from mlc.models import list_models, register_model, unregister_model
    from mlc.models.baseline import Baseline

    class RectifiedLinear(Baseline):
        is_reference = False
        colour = "tab:green"
        train_defaults = {"model_params": {"dropout": 0.125}}

        @classmethod
        def describe(cls, params: dict, pooling: str) -> str:
            return f"**{cls.model_name}**: a test variant, one linear layer over rectified {pooling}-pooled features."

        @classmethod
        def graph_card(cls, config):
            return ["- source: none; this line comes from the sixth variant itself"]

        def forward_head(self, features: torch.Tensor, explain: bool = False):
            return super().forward_head(torch.relu(features), explain)

    register_model("sixth")(RectifiedLinear)
    try:
        yield "sixth"
    finally:
        unregister_model("sixth")
    assert "sixth" not in list_models()


def test_a_registered_sixth_variant_trains_serves_and_gets_a_card(sixth, tmp_path):
    import app
    from mlc.serving import ModelSet
    from train.cli import main

    voc = make_voc(tmp_path / "voc", n_train=24, n_val=8, image_size=64)
    out = tmp_path / "runs"
    assert not (Path(__file__).parents[1] / "train" / "configs" / "voc2007" / f"{sixth}.yaml").exists()
    assert main(["fit", "--variant", sixth, *tiny_args(voc, out, "six")]) == 0
    run = out / "six" / sixth
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["variant"] == sixth and config["model_params"] == {"dropout": 0.125}  # the variant's defaults
    assert config["pooling"] == "avg"  # and the dataset's (voc2007/dataset.yaml)
    assert main(["push", str(run), "--dry-run"]) == 0

    upload = run / "hub_upload"
    card = (upload / "README.md").read_text()
    graph = card.split("## Label graph", 1)[1].split("##", 1)[0]
    assert "this line comes from the sixth variant itself" in graph and f"**{sixth}**: a test variant" in card

    handlers = app.Handlers(ModelSet.load(upload))
    assert handlers.models.names == [sixth]
    photo = str(write_photo(tmp_path / "photo.jpg"))
    status, table, _, labels, grid = handlers.predict(photo, 0.5, 5)
    assert list(labels) == [sixth] and f"<th>{sixth}</th>" in grid
    _, gallery = handlers.explain(photo, None)
    assert len(gallery) == 1 and gallery[0][1].startswith(f"{sixth} - CAM")
    ap_status, _, ap_table, _ = handlers.per_class_ap()
    assert sixth in ap_table.columns
    tsne_status, _ = handlers.classifier_tsne()
    assert sixth in tsne_status
    assert handlers.flip_default() == sixth
    assert json.loads((upload / "config.json").read_text())["model_name"] == sixth
