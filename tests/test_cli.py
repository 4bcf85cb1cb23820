"""CLI consistency (issue 19, item 13): the summary infers the dataset kind, boolean flags take one
style everywhere (``--dry-run``, ``--no-diagnostics``; ``--flag true|false`` still works), ``--limit N``
on fit / all / evaluate, and progress bars with counts on the long steps."""
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from fixtures import make_coco, make_csv, make_voc
from mlc.data.summary import main as summary_main
from train.cli import config_for, main


# ----------------------------------------------------------------------------- summary: the kind
@pytest.mark.parametrize("layout", ["plain", "devkit"])
def test_summary_infers_a_voc_tree(tmp_path, capsys, layout):
    root = make_voc(tmp_path, n_train=4, n_val=3, layout=layout, year="2012")
    assert summary_main([str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| class | train | val |") and "| **images** | 4 | 3 |" in "\n".join(lines)


def test_summary_infers_coco_and_its_year(tmp_path, capsys):
    make_coco(tmp_path, n_images=5, year="2014", split="train")
    assert summary_main([str(tmp_path)]) == 0  # only a train split: one column, no error about val
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "| class | train |" and "| dog |" in out


def test_summary_infers_a_csv_file_and_a_csv_folder(tmp_path, capsys):
    csv_file = make_csv(tmp_path, labels=[["dog"], ["dog", "cat"], []])
    assert summary_main([str(csv_file)]) == 0  # before: "no VOC2007 tree" without the undocumented --kind csv
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"| class | {csv_file.name} |" and "| dog | 2 |" in out
    assert summary_main([str(tmp_path)]) == 0  # the folder of train.csv
    assert "| class | train |" in capsys.readouterr().out
    assert summary_main([str(csv_file), "--kind", "csv", "--splits", "train"]) == 0  # the override still works


def test_summary_kind_override_and_unknown_roots(tmp_path, capsys):
    root = make_voc(tmp_path / "v", n_train=3, n_val=3)
    assert summary_main([str(root), "--kind", "voc2007", "--splits", "val"]) == 0
    assert "| class | val |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert summary_main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "cannot tell the dataset kind" in err and "--kind" in err


# ----------------------------------------------------------------------------- boolean flags
@pytest.mark.parametrize("prog", ["python -m train fit", "python -m train all"])
def test_boolean_flags_take_one_style_and_the_old_one(prog):
    new, _ = config_for(["--dry-run", "--no-diagnostics", "--no-augment", "--resume"], "mlgcn", prog=prog)
    assert new.dry_run and not new.diagnostics and not new.augment
    old, _ = config_for(["--dry-run", "true", "--diagnostics", "false", "--augment", "no"], "mlgcn", prog=prog)
    assert old.dry_run and not old.diagnostics and not old.augment
    default, resume = config_for([], "mlgcn", prog=prog)
    assert not default.dry_run and default.diagnostics and default.augment and not resume
    assert config_for(["--resume"], "mlgcn", prog=prog)[1] is True


def test_push_takes_both_styles(tmp_path, capsys):
    assert main(["push", str(tmp_path), "--dry-run"]) == 2  # parsed; refused because nothing is trained there
    assert main(["push", str(tmp_path), "--dry-run", "true", "--no-private"]) == 2
    assert "holds no trained run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --limit
def _tiny_fit_args(root: Path, out: Path, **extra: str) -> list[str]:
    values = {"data-root": root, "backbone": "tiny", "pretrained": "false", "image-size": 64, "batch-size": 4,
              "eval-batch-size": 4, "stage1-epochs": 1, "stage2-epochs": 0, "embeddings": "onehot",
              "num-workers": 0, "output-dir": out, "group": "g", "selection-fraction": 0.25, "channels-last": "false",
              **extra}
    return [x for k, v in values.items() for x in (f"--{k}", str(v))]


def test_fit_limit_samples_each_split_seeded_and_records_it(tmp_path, capfd):
    root = make_voc(tmp_path / "voc", n_train=16, n_val=8, image_size=64)
    assert main(["fit", *_tiny_fit_args(root, tmp_path / "runs"), "--limit", "6", "--no-diagnostics"]) == 0
    run = tmp_path / "runs" / "g" / "baseline"
    split = json.loads((run / "split.json").read_text())
    assert split["limit"] == 6 and split["train"] + split["selection"] == 6 and split["eval"] == 6
    assert len(split["limit_ids"]["train"]) == len(split["limit_ids"]["val"]) == 6
    assert set(split["selection_ids"]) <= set(split["limit_ids"]["train"])
    result = json.loads((run / "eval.json").read_text())
    assert result["num_images"] == 6 and "diagnostics" not in result
    err = capfd.readouterr().err
    assert "--limit 6: 6 images of 'train' and 6 of 'val'" in err
    assert "note: the selection split has 2 image(s): its mAP hardly tells epochs apart" in err
    assert "check images" in err and "/12 [" in err  # the decode check has a bar with counts

    from mlc.data import build_dataset
    from train.data import limit_dataset

    again = limit_dataset(build_dataset("voc2007", root, "train"), 6, seed=0)
    assert list(again.ids) == split["limit_ids"]["train"]  # seeded: the same sample again
    other = limit_dataset(build_dataset("voc2007", root, "train"), 6, seed=1)
    assert list(other.ids) != split["limit_ids"]["train"]


def test_limit_is_checked(tmp_path, capsys):
    assert main(["fit", "--data-root", str(tmp_path), "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: config value limit=1 must be at least 2") and "\n" not in err


def test_evaluate_limit_and_boolean_flags(tiny_setup, tmp_path, capfd):
    from mlc.data import VOC_CLASSES
    from mlc.stats import label_statistics

    root = make_voc(tmp_path / "voc", n_train=3, n_val=9, image_size=64)
    setup = {**tiny_setup, "classes": list(VOC_CLASSES), "embeddings": None,
             "label_stats": label_statistics(torch.zeros(4, 20).int().numpy(), list(VOC_CLASSES))}
    tiny_model("baseline", setup, image_size=64).save(tmp_path / "model")
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(tmp_path / "model"), "--data-root", str(root), "--split", "val",
            "--num-workers", "0", "--batch-size", "2", "--output", str(out), "--limit", "4"]
    assert main([*args, "--diagnostics", "false"]) == 0
    first = json.loads(out.read_text())
    assert first["num_images"] == 4 and first["limit"] == 4 and len(first["ids"]) == 4 and "diagnostics" not in first
    assert "--limit 4: a seeded sample" in first["rows"]
    assert main([*args, "--no-diagnostics"]) == 0
    assert json.loads(out.read_text())["ids"] == first["ids"]
    err = capfd.readouterr().err
    assert "/2 [" in err  # the evaluation bar counts batches
