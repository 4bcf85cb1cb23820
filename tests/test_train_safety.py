"""The training CLI against hostile or careless input (issue 16, items 9-14): a checkpoint that
would run code, a group that leaves the output folder, a device that is not there, a folder
holding an earlier run, stale feature caches, and `train evaluate` on a single CSV file."""
import json
import os
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
