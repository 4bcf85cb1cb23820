"""End-to-end training on a generated VOC-format dataset: run folder, eval.json, report, dry-run Hub
folder, load-back equality, exact resume, and DDP (gloo, 2 processes) against 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import VARIANTS
from fixtures import make_voc
from mlc.models import load_model
from train.cli import main

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(root: Path, out: Path, group: str, **overrides) -> list[str]:
    values = {
        "data-root": root, "backbone": "tiny", "pretrained": "false", "image-size": 64, "batch-size": 6,
        "eval-batch-size": 16, "stage1-epochs": 1, "stage2-epochs": 1, "embeddings": "onehot",
        "num-workers": 0, "output-dir": out, "group": group, "selection-fraction": 0.25,
        "stage1-augment": "false", "channels-last": "false",
    }
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=24, n_val=8, image_size=64)


@pytest.fixture(scope="module")
def trained_group(voc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["all", *tiny_args(voc_root, out, "e2e"), "--dry-run", "true"]) == 0
    return out / "e2e"


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_run_folder_contents(trained_group, variant):
    run = trained_group / variant
    for name in ["config.yaml", "split.json", "metrics.csv", "metrics.json", "checkpoint.pt", "eval.json",
                 "model/config.json", "model/model.safetensors", "model/eval.json"]:
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["variant"] == variant and config["backbone"] == "tiny" and config["stage1_epochs"] == 1
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2] and [r["stage"] for r in rows] == [1, 2]
    split = json.loads((run / "split.json").read_text())
    assert split["train"] + split["selection"] == 24 and split["eval"] == 8 and len(split["selection_ids"]) == 6
    result = json.loads((run / "eval.json").read_text())
    metrics = result["metrics"]
    assert result["split"] == "val" and result["num_images"] == 8 and result["selected_epoch"] in (1, 2)
    assert len(metrics["ap"]) == 20 and 0 <= metrics["map"] <= 1 and 0 <= metrics["map_voc"] <= 1
    assert set(metrics["classes_without_positives"]) == set(metrics["classes"][5:])  # fixture uses 5 classes
    card = (run / "model" / "README.md").read_text()
    assert f"{100 * metrics['map']:.1f}" in card and "load_model" in card
    diag = result["diagnostics"]  # what the selected model sees (mlc.diagnostics), on the eval split
    assert diag["input_size"] == 64 and diag["num_images"] == 8
    assert {"method", "grad_cam", "random", "centre"} <= set(diag["localization"])
    assert diag["localization"]["method"]["pairs"] == diag["flip"]["pairs"] > 0  # every positive has a box
    assert (diag["graph"] is None) == (variant == "baseline")
    if diag["graph"]:
        assert diag["graph"]["map"] == pytest.approx(metrics["map"], abs=1e-6)
    pointing = diag["localization"]["method"]["pointing"]
    assert "## What the model sees" in card and f"pointing game (map maximum on a box of the class, mean over classes): {100 * pointing:.1f}%" in card
    assert ("without its label graph" in card) == (variant != "baseline")
    assert ("the same with Grad-CAM" in card) == (variant != "ggnn")  # ggnn's own map is Grad-CAM
    assert diag["faithfulness"]["pairs"] == diag["sanity"]["pairs"] > 0  # on the eval split, with their cost
    assert "| map | deletion AUC (lower is better) |" in card and "sanity checks (Adebayo et al. 2018)" in card


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "ssgrl"])
def test_calibration_comes_from_the_selected_epochs_selection_scores(trained_group, variant):
    import numpy as np

    from mlc.calibration import calibrate
    from mlc.metrics import decision_metrics

    run = trained_group / variant
    model = load_model(run / "model")
    cal = model.calibration
    assert cal is not None and cal.selection_size == 6 and cal.classes == model.classes
    with np.load(run / "selection_scores.npz") as saved:  # the selection split's, never the eval split's
        logits, targets, ids = saved["logits"], saved["targets"], saved["ids"]
    assert list(ids) == json.loads((run / "split.json").read_text())["selection_ids"]
    expected = calibrate(1 / (1 + np.exp(-logits.astype(np.float64))), logits, targets, model.classes,
                         selected_epoch=cal.extra["selected_epoch"])
    assert cal.thresholds == pytest.approx(expected.thresholds) and cal.ood_threshold == pytest.approx(expected.ood_threshold)
    assert cal.thresholds == [0.5] * 20  # no class has 10 positives among 6 images
    assert cal.ood_flags(logits).sum() == 0  # at most 5% of 6 images: none
    result = json.loads((run / "eval.json").read_text())
    with np.load(run / "eval_scores.npz") as ev:
        at_half = decision_metrics(ev["scores"], ev["targets"], 0.5).to_dict()
        tuned = decision_metrics(ev["scores"], ev["targets"], cal.thresholds).to_dict()
        assert result["ood"]["flagged"] == int(cal.ood_flags(ev["logits"]).sum())
    assert result["decision_metrics"] == {"0.5": at_half, "tuned": tuned}
    assert at_half["cf1"] == pytest.approx(result["metrics"]["cf1"]) and at_half["of1"] == pytest.approx(result["metrics"]["of1"])


@pytest.mark.slow
def test_report_compares_every_variant(trained_group):
    report = (trained_group / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| class |"))
    assert all(v in header for v in VARIANTS)
    assert "| aeroplane |" in report and "mAP" in report
    assert "## What the models see" in report and "| pointing game (%) |" in report
    assert "| pointing game, Grad-CAM (%) |" in report
    assert "### Faithfulness and sanity" in report and "| deletion AUC, own map (↓) |" in report
    assert "## Where the methods disagree" in report
    analysis = json.loads((trained_group / "report.json").read_text())
    assert list(analysis["diagnostics"]) == VARIANTS
    assert analysis["disagreement"]["skipped"] is None and analysis["disagreement"]["methods"] == VARIANTS


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_dry_run_hub_folder_and_load_back_equality(trained_group, variant):
    upload = trained_group / "hub_upload" / variant
    assert {"config.json", "model.safetensors", "README.md", "eval.json"} <= {p.name for p in upload.iterdir()}
    card = (upload / "README.md").read_text()
    assert "load_model" in card and variant in card
    shipped, saved = load_model(upload), load_model(trained_group / variant / "model")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(shipped(x), saved(x), rtol=0, atol=0)


@pytest.mark.slow
def test_evaluate_command_reproduces_eval_json(trained_group, voc_root, tmp_path):
    out = tmp_path / "eval.json"
    run = trained_group / "mlgcn"
    assert main(["evaluate", "--model", str(run / "model"), "--data-root", str(voc_root), "--split", "val",
                 "--num-workers", "0", "--output", str(out)]) == 0
    expected = json.loads((run / "eval.json").read_text())["metrics"]
    got = json.loads(out.read_text())["metrics"]
    assert got["map"] == pytest.approx(expected["map"], abs=1e-9)
    saved = json.loads((run / "eval.json").read_text())["diagnostics"]
    assert json.loads(out.read_text())["diagnostics"]["localization"] == saved["localization"]


@pytest.mark.slow
def test_evaluate_merges_into_a_runs_eval_json(trained_group, voc_root, tmp_path, capsys):
    run = trained_group / "ggnn"
    target = tmp_path / "eval.json"
    previous = json.loads((run / "eval.json").read_text())
    target.write_text(json.dumps({k: v for k, v in previous.items() if k != "diagnostics"}))
    args = ["evaluate", "--model", str(run / "model"), "--data-root", str(voc_root), "--num-workers", "0",
            "--output", str(target), "--merge"]
    assert main(args + ["--split", "val"]) == 0
    merged = json.loads(target.read_text())
    assert merged["selected_epoch"] == previous["selected_epoch"] and merged["seed"] == previous["seed"]
    assert merged["diagnostics"]["graph"]["map_identity"] == pytest.approx(previous["diagnostics"]["graph"]["map_identity"])
    printed = capsys.readouterr().out
    assert "mAP without the graph" in printed and "deletion AUC" in printed and "sanity:" in printed
    assert main(args + ["--split", "train"]) == 2  # another split's evaluation is not merged into it
    assert "not merged" in capsys.readouterr().err
    assert json.loads(target.read_text()) == merged


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mlgcn", "gcam"])
def test_resume_after_a_kill_matches_an_uninterrupted_run(voc_root, tmp_path, monkeypatch, variant):
    from train.engine import Trainer

    args = ["fit", "--variant", variant, *tiny_args(voc_root, tmp_path, "resume", stage1_epochs=2, stage2_epochs=1)]
    assert main(args + ["--group", "straight"]) == 0

    original = Trainer.train_epoch

    def killed_in_epoch_2(self, stage, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, stage, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--group", "killed"])
    assert json.loads((tmp_path / "killed" / variant / "metrics.json").read_text())[-1]["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert main(args + ["--group", "killed", "--resume"]) == 0

    straight, resumed = _weights(tmp_path / "straight" / variant), _weights(tmp_path / "killed" / variant)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    rows = json.loads((tmp_path / "killed" / variant / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    calibration = [load_model(tmp_path / group / variant / "model").calibration for group in ("straight", "killed")]
    assert calibration[0] is not None and calibration[0] == calibration[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(voc_root, tmp_path):
    # Stage 1 only: frozen BatchNorm makes the 2 x 3-image shards exactly the 6-image batch.
    common = ["fit", "--variant", "mlgcn", *tiny_args(voc_root, tmp_path, "g", stage1_epochs=2, stage2_epochs=0)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "train", *common, "--group", "one"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                          "-m", "train", *common, "--group", "two"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "mlgcn" / "eval.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "mlgcn" / "eval.json").read_text())["metrics"]
    for key in ("map", "map_voc", "cf1", "of1"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    np.testing.assert_allclose(
        np.array(two["ap"], dtype=float), np.array(one["ap"], dtype=float), atol=1e-6
    )


def test_config_yaml_defaults_and_cli_override(tmp_path):
    from train.cli import config_for

    config, resume = config_for(["--dataset", "voc2007", "--variant", "mlgcn", "--stage1-epochs", "4",
                                 "--model-param", "tau=0.3"])
    assert config.stage1_epochs == 4 and config.model_params["tau"] == 0.3 and config.model_params["p"] == 0.25
    assert config.stage2_epochs == 5 and config.pooling == "avg" and not resume
    sgd, _ = config_for(["--config", str(ROOT / "train/configs/voc2007/gcam-sgd.yaml")])
    assert sgd.optimizer == "sgd" and sgd.model_params["tau"] == 0.4 and sgd.model_params["consistency_weight"] == 0.4
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1_epochs: [oops\n")
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="bad.yaml"):
        config_for(["--config", str(bad)])


def test_only_the_first_seed_computes_the_diagnostics(tmp_path):
    from train.cli import seed_configs
    from train.config import TrainConfig

    runs = seed_configs(TrainConfig(seeds=3, seed=5, group="g", output_dir=str(tmp_path)))
    assert [(r.seed, r.group, r.diagnostics) for r in runs] == [(5, "g", True), (6, "g/seed6", False), (7, "g/seed7", False)]
    assert not any(r.diagnostics for r in seed_configs(TrainConfig(seeds=2, diagnostics=False)))


@pytest.mark.slow
def test_diagnose_script_carries_checkpoint_diagnostics_into_the_group_report(trained_group, tmp_path):
    """scripts/diagnose_checkpoints.sh with GROUP: a shipped checkpoint's diagnostics go into its run's
    eval.json (same weights only) and the group's report is redone into the checkpoints folder."""
    import shutil

    group, ckpt = tmp_path / "e2e", tmp_path / "checkpoints"
    shutil.copytree(trained_group, group)
    for variant in VARIANTS:
        shutil.copytree(group / variant / "model", ckpt / variant)
        run_eval = group / variant / "eval.json"
        result = json.loads(run_eval.read_text())
        del result["diagnostics"]  # as a shipped run's was before the diagnostics pass
        run_eval.write_text(json.dumps(result))
        assert json.loads((ckpt / variant / "eval.json").read_text())["diagnostics"]["faithfulness"]  # done: skipped
    shutil.copy(ckpt / "baseline" / "model.safetensors", ckpt / "ggnn" / "model.safetensors")  # not ggnn's run
    (group / "report.md").unlink(missing_ok=True)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "diagnose_checkpoints.sh"), str(tmp_path / "no-data"), str(ckpt)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "GROUP": str(group)})
    assert out.returncode == 0, out.stderr
    for variant in VARIANTS:
        run_result = json.loads((group / variant / "eval.json").read_text())
        if variant == "ggnn":
            assert "diagnostics" not in run_result and "holds other weights" in out.stdout
        else:
            assert run_result["diagnostics"] == json.loads((ckpt / variant / "eval.json").read_text())["diagnostics"]
    report = (ckpt / "REPORT.md").read_text()
    assert report == (group / "report.md").read_text() and "## What the models see" in report
    assert set(json.loads((ckpt / "report.json").read_text())["diagnostics"]) == set(VARIANTS) - {"ggnn"}


def test_diagnose_script_refuses_a_missing_group(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "diagnose_checkpoints.sh"), str(tmp_path), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GROUP": str(tmp_path / "nowhere")})
    assert out.returncode == 2 and out.stderr.strip() == f"GROUP: no run group folder {tmp_path / 'nowhere'}"
