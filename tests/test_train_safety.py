"""The training CLI against hostile or careless input (issue 16, items 9-14): a checkpoint that
would run code, a group that leaves the output folder, a device that is not there, a folder
holding an earlier run, stale feature caches, and `train evaluate` on a single CSV file."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fixtures import make_voc
from test_train import tiny_args
from test_train_paths import error_line
from train.cli import main


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=24, n_val=8, image_size=64)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


class _Payload:
    """Unpickling this calls ``os.makedirs(marker)``: a stand-in for any code a crafted file runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


# -- item 9: --resume reads the checkpoint with weights_only=True ------------------------------
@pytest.mark.parametrize("tamper", ["code", "truncated", "not a dict"])
def test_resume_refuses_a_tampered_checkpoint_without_running_it(voc_root, tmp_path, capsys, tamper):
    args = ["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "g", stage1_epochs=1, stage2_epochs=1)]
    assert main(args) == 0
    run = tmp_path / "g" / "baseline"
    checkpoint = run / "checkpoint.pt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == 2  # what it writes loads safely
    marker = tmp_path / "payload-ran"
    if tamper == "code":
        torch.save({"epoch": 1, "payload": _Payload(marker)}, checkpoint)
    elif tamper == "truncated":
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(data[: len(data) // 2])
    else:
        torch.save([torch.zeros(3)], checkpoint)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    line = error_line(capsys)
    assert str(checkpoint) in line and "without --resume" in line
    assert ("run code" in line) == (tamper == "code")
    assert not marker.exists()
    assert _snapshot(run) == before  # refused before anything in the run folder changed


# -- item 12: a new run in a used folder never mixes with the earlier run ---------------------
def test_a_new_run_in_a_used_folder_clears_the_earlier_one_and_says_so(voc_root, tmp_path, capsys):
    args = ["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "g")]
    assert main(args + ["--stage1-epochs", "1", "--stage2-epochs", "1"]) == 0
    run = tmp_path / "g" / "baseline"
    assert (run / "model_stage1").is_dir()
    capsys.readouterr()
    # no stage 1 this time: the earlier run's model/ must not become this run's stage-1 model
    assert main(args + ["--stage1-epochs", "0", "--stage2-epochs", "1"]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:") and "earlier run" in line]
    assert len(note) == 1 and "model/" in note[0] and "metrics.csv" in note[0], note
    assert not (run / "model_stage1").exists()
    result = json.loads((run / "eval.json").read_text())
    assert result["stage1"] is None and result["selected_stage"] == 2
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1]
    assert len(list((run / "tensorboard").iterdir())) == 1  # no events of the earlier run

    # --resume without a checkpoint starts afresh the same way; with one it continues
    (run / "checkpoint.pt").unlink()
    assert main(args + ["--stage1-epochs", "1", "--stage2-epochs", "0", "--resume"]) == 0
    assert "--resume found no checkpoint.pt" in capsys.readouterr().err
    assert [r["stage"] for r in json.loads((run / "metrics.json").read_text())] == [1]
    assert main(args + ["--stage1-epochs", "2", "--stage2-epochs", "0", "--resume"]) == 0
    assert "earlier run" not in capsys.readouterr().err
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]


# -- item 10: --group stays inside the output folder ------------------------------------------
@pytest.mark.parametrize("group", ["../..", "../elsewhere", "a/../../b", "<absolute>"])
def test_group_that_leaves_the_output_folder_is_refused(voc_root, tmp_path, capsys, group):
    out = tmp_path / "deep" / "runs"
    out.mkdir(parents=True)
    group = str(tmp_path / "absolute") if group == "<absolute>" else group
    args = ["fit", "--variant", "baseline", *tiny_args(voc_root, out, group, stage1_epochs=1, stage2_epochs=0)]
    assert main(args) == 2
    line = error_line(capsys)
    assert "group" in line and repr(group) in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("deep"), Path("deep/runs")]


# -- item 11: a device the machine lacks -------------------------------------------------------
@pytest.mark.parametrize("device, gpus, available", [
    ("cuda:7", 1, "cpu, cuda:0"),  # a GPU machine with one GPU
    ("cuda", 0, "cpu"),  # no GPU at all
    ("cuda:1", 0, "cpu"),
    ("gpu", 0, "cpu"),  # not a device name
])
def test_unavailable_device_gives_one_line_naming_the_available_ones(voc_root, tmp_path, capsys, monkeypatch,
                                                                     device, gpus, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    args = ["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "dev", stage1_epochs=1, stage2_epochs=0)]
    assert main(args + ["--device", device]) == 2
    line = error_line(capsys)
    assert repr(device) in line and line.endswith(f"available: {available}")
    assert not (tmp_path / "dev").exists()
    assert main(["evaluate", "--model", str(tmp_path / "any"), "--data-root", str(voc_root), "--device", device]) == 2
    assert line == error_line(capsys)


# -- item 13: the feature cache key names everything that changes the features ----------------
def _changed_tiny(change: str):
    """The "tiny" backbone with other weights, or another normalization, under the same name."""
    from mlc.models import backbones

    original = backbones._tiny

    def tiny(pretrained: bool):
        backbone = original(pretrained)
        if change == "weights":
            generator = torch.Generator().manual_seed(123)
            with torch.no_grad():
                for p in backbone.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.5)
        else:
            backbone.normalization = backbones.Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return backbone

    return tiny


@pytest.mark.parametrize("change", ["weights", "normalization"])
def test_runs_differing_only_in_weights_or_transform_do_not_share_cached_features(voc_root, tmp_path, monkeypatch,
                                                                                  change):
    import numpy as np

    from mlc.data import build_dataset, build_transforms
    from mlc.models import backbones, load_model

    cache = tmp_path / "cache"
    args = ["fit", "--variant", "baseline",
            *tiny_args(voc_root, tmp_path, "a", stage1_epochs=1, stage2_epochs=0, diagnostics="false"),
            "--cache-dir", str(cache)]
    assert main(args) == 0
    first = sorted(p.name for p in cache.glob("*.pt"))
    monkeypatch.setattr(backbones, "_tiny", _changed_tiny(change))
    assert main(args + ["--group", "b"]) == 0
    assert len(list(cache.glob("*.pt"))) == 2 * len(first)  # none of the first run's features reused
    # the second run's eval scores (from its cached features) are its saved model's own forward passes
    run = tmp_path / "b" / "baseline"
    model = load_model(run / "model").eval()
    norm = model.normalization
    dataset = build_dataset("voc2007", voc_root, "val").with_transform(
        build_transforms(64, train=False, mean=norm.mean, std=norm.std))
    with torch.no_grad():
        expected = model(torch.stack([dataset[i][0] for i in range(len(dataset))])).sigmoid().numpy()
    saved = np.load(run / "eval_scores.npz")
    assert saved["ids"].tolist() == dataset.ids
    np.testing.assert_allclose(saved["scores"], expected, atol=1e-5)


def test_cache_key_changes_with_every_input(voc_root, tmp_path):
    from mlc.data import build_dataset, build_transforms
    from train.features import cache_key

    root = shutil.copytree(voc_root, tmp_path / "voc")  # its own copy: one image is replaced below
    dataset = build_dataset("voc2007", root, "val").with_transform(build_transforms(64, train=False))
    base = dict(weights="tiny:abc", part="full", image_size=64, dataset=dataset, view="image", view_size=64)
    key = cache_key(**base)
    other = build_transforms(64, train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    variants = [dict(weights="tiny:abd"), dict(part="bottom3"), dict(image_size=96), dict(view="flip"),
                dict(view_size=56), dict(dataset=dataset.with_transform(other)), dict(precision="bf16")]
    keys = [cache_key(**{**base, **change}) for change in variants]
    assert key == cache_key(**base) and key not in keys and len(set(keys)) == len(keys)
    image = Path(dataset.image_paths[0])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # copied again, same bytes
    assert cache_key(**base) == key
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF  # the file was replaced by another of the same size: only its bytes tell
    image.write_bytes(bytes(data))
    assert cache_key(**base) != key


def test_cache_key_survives_a_copy_of_the_dataset(voc_root, tmp_path):
    """Re-provisioned or moved data (same bytes, new paths and times) keeps its cache."""
    from mlc.data import build_dataset, build_transforms
    from train.features import cache_key

    copy = tmp_path / "copy"
    shutil.copytree(voc_root, copy, copy_function=shutil.copyfile)  # new modification times, another folder
    keys = [cache_key("tiny:abc", "full", 64, build_dataset("voc2007", root, "val").with_transform(
        build_transforms(64, train=False)), "image", 64) for root in (voc_root, copy)]
    assert keys[0] == keys[1]


# -- item 14: `train evaluate` on a single CSV file scores the held-out rows ------------------
def test_evaluate_on_a_single_csv_scores_the_held_out_rows_fit_reported(tmp_path, capsys):
    from fixtures import make_csv

    csv = make_csv(tmp_path / "data", n_images=20)
    assert main(["fit", "--variant", "baseline", "--dataset", "csv",
                 *tiny_args(csv, tmp_path / "runs", "csv", stage2_epochs=0, diagnostics="false")]) == 0
    run = tmp_path / "runs" / "csv" / "baseline"
    split = json.loads((run / "split.json").read_text())
    capsys.readouterr()
    out = tmp_path / "evaluate.json"
    assert main(["evaluate", "--model", str(run / "model"), "--dataset", "csv", "--data-root", str(csv),
                 "--num-workers", "0", "--no-diagnostics", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(out.read_text())
    fitted = json.loads((run / "eval.json").read_text())
    assert result["num_images"] == fitted["num_images"] == len(split["eval_ids"]) == 4
    assert result["metrics"]["map"] == pytest.approx(fitted["metrics"]["map"], abs=1e-6)
    assert "held-out rows" in result["rows"] and "split.json" in result["rows"]
    assert "4 images" in captured.err and "held-out rows" in captured.out and "evaluate" in captured.err  # the bar

    # data with some held-out rows missing and training rows present is refused, not scored
    lines = csv.read_text().splitlines()
    partial = csv.with_name("partial.csv")
    partial.write_text("\n".join(line for line in lines if line.split(",")[0] != split["eval_ids"][0]) + "\n")
    assert main(["evaluate", "--model", str(run / "model"), "--dataset", "csv", "--data-root", str(partial),
                 "--num-workers", "0", "--no-diagnostics"]) == 2
    line = error_line(capsys)
    assert "split.json" in line and "3 of them" in line
