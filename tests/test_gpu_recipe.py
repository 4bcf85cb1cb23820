"""The GPU recipe cannot rot: scripts/train_voc2007_gpu.sh's settings (the config folders it names,
the same YAML files) run on the tiny fixture on the CPU, one step of each stage, for all five
variants. Only the backbone (tiny), the batch size and the number of images differ (and bf16
autocast runs on the CPU, ``amp_on_cpu``, so the GPU's dtype path is the one exercised)."""
import re
from pathlib import Path

import pytest

from conftest import VARIANTS
from fixtures import default_voc_annotations, make_voc
from mlc.data import VOC_CLASSES
from train.cli import config_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_voc2007_gpu.sh"


def recipe_settings() -> dict[str, Path]:
    """name -> config folder, as the script's SETTINGS array lists them."""
    text = SCRIPT.read_text()
    block = re.search(r"^SETTINGS=\((.*?)^\)", text, re.S | re.M)
    assert block, "scripts/train_voc2007_gpu.sh has no SETTINGS=( ... ) array"
    return {name: ROOT / folder for name, folder in re.findall(r'"(\w+)=([\w/.-]+)"', block.group(1))}


def test_script_names_both_settings_and_the_published_figure():
    settings = recipe_settings()
    assert set(settings) == {"lite2", "resnet101"} and all(p.is_dir() for p in settings.values())
    text = SCRIPT.read_text()
    assert "94.0" in text and "--config-dir" in text and "download=True" in text
    papers = config_for(["--config-dir", str(settings["resnet101"]), "--variant", "mlgcn"])[0]
    assert (papers.backbone, papers.image_size, papers.train_split, papers.eval_split) == ("resnet101", 448, "trainval", "test")
    shipped = config_for(["--config-dir", str(settings["lite2"]), "--variant", "mlgcn"])[0]
    assert (shipped.backbone, shipped.image_size) == ("efficientnet_lite2", 448)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    ann = default_voc_annotations(8, 8, VOC_CLASSES)
    val = list(ann["val"].items())
    annotations = {"train": ann["train"], "val": dict(val[:4]), "test": dict(val[4:])}
    return make_voc(tmp_path_factory.mktemp("voc"), annotations=annotations, image_size=64)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["lite2", "resnet101"])
def test_recipe_settings_run_one_step_of_each_stage(setting, voc_root, tmp_path, monkeypatch):
    from train.engine import Trainer

    folder = recipe_settings()[setting]
    built = []
    original_build = Trainer.build

    def one_step_per_stage(self):
        original_build(self)
        for stage in self.stages:  # the recipe's stages, each cut to one epoch of one batch
            stage.epochs = min(stage.epochs, 1)
        built.append(self)

    monkeypatch.setattr(Trainer, "build", one_step_per_stage)
    from train.cli import fit

    for variant in VARIANTS:
        # only the backbone, the batch size and the image count (the fixture) differ from the recipe
        config, _ = config_for(["--config-dir", str(folder), "--variant", variant, "--data-root", str(voc_root),
                                "--backbone", "tiny", "--pretrained", "false", "--batch-size", "16",
                                "--eval-batch-size", "8", "--num-workers", "0", "--selection-fraction", "0.25",
                                "--output-dir", str(tmp_path), "--amp-on-cpu", "true", "--device", "cpu",
                                "--diagnostics", "false"])
        recipe = config_for(["--config-dir", str(folder), "--variant", variant])[0]
        for key in ("image_size", "finetune", "amp", "channels_last", "augment", "stage1_augment", "stage1_lr",
                    "stage2_lr", "optimizer", "scheduler", "train_split", "eval_split", "model_params", "pooling"):
            assert getattr(config, key) == getattr(recipe, key), key
        result = fit(config)
        trainer = built[-1]
        assert trainer.autocast and config.image_size == 448
        assert [s.epochs for s in trainer.stages] == [min(1, s) for s in (recipe.stage1_epochs, recipe.stage2_epochs)]
        assert trainer.steps_per_epoch() == 1
        assert result["backbone_trained"] in (None, "all")  # stage 2 trains the whole backbone
        assert trainer.stages[1].cut is None and trainer.stages[1].augment
        assert result["split"] == recipe.eval_split
