"""The training paths a GPU user takes, run on the CPU: stage 2 with cached evaluation features,
compile, bf16 autocast, channels_last, DDP through stage 2, top-block fine-tuning, kills during a
save, a single-file CSV dataset, and every user mistake answered by one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import corrupt_file, make_csv, make_voc
from mlc.models import load_model
from test_train import ROOT, tiny_args
from train.cli import main


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("voc"), n_train=24, n_val=8, image_size=64)


def evaluate_saved(run: Path, voc_root: Path, tmp_path: Path) -> dict:
    out = tmp_path / f"{run.name}-evaluate.json"
    assert main(["evaluate", "--model", str(run / "model"), "--data-root", str(voc_root), "--split", "val",
                 "--num-workers", "0", "--output", str(out)]) == 0
    return json.loads(out.read_text())["metrics"]


def error_line(capsys) -> str:
    """The error output of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and not line.startswith("note:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("error: ")
    return lines[0]


# -- bug 1: eval-split features cached from the fine-tuned backbone ----------------------------
@pytest.mark.slow
def test_eval_features_come_from_the_selected_models_backbone(voc_root, tmp_path, monkeypatch):
    """Best epoch in stage 1, stage 2 then ruins the backbone: eval.json must still be the stage-1
    model's true score (as `train evaluate` measures it), and the group's cache must stay clean."""
    from train.engine import Trainer

    original = Trainer.train_epoch

    def ruinous_stage_2(self, stage, epoch):
        out = original(self, stage, epoch)
        if stage.index == 2:
            with torch.no_grad():
                for p in self.model.backbone.parameters():
                    p.zero_()
        return out

    monkeypatch.setattr(Trainer, "train_epoch", ruinous_stage_2)
    # a pretrained backbone: only then is the frozen stage's cache reused for the final evaluation
    args = tiny_args(voc_root, tmp_path, "poison", stage1_epochs=3, stage2_epochs=1, stage1_lr=0.05,
                     backbone="efficientnet_lite0", pretrained="true")
    assert main(["fit", "--variant", "baseline", *args]) == 0
    run = tmp_path / "poison" / "baseline"
    result = json.loads((run / "eval.json").read_text())
    assert result["selected_epoch"] <= 3, "precondition: the stage-1 model must be the selected one"
    true = evaluate_saved(run, voc_root, tmp_path)
    assert result["metrics"]["map"] == pytest.approx(true["map"], abs=1e-9)
    # a second variant of the group reads the cache: it must hold the pretrained (frozen) maps
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert main(["fit", "--variant", "mlgcn", *args]) == 0
    run = tmp_path / "poison" / "mlgcn"
    if json.loads((run / "eval.json").read_text())["selected_epoch"] <= 3:
        assert json.loads((run / "eval.json").read_text())["metrics"]["map"] == pytest.approx(
            evaluate_saved(run, voc_root, tmp_path)["map"], abs=1e-9)


# -- bug 2: a single CSV file trained and evaluated on the same images -------------------------
def test_single_csv_file_carves_a_held_out_eval_split(tmp_path):
    csv = make_csv(tmp_path / "data", n_images=20)
    args = tiny_args(csv, tmp_path / "runs", "csv", stage2_epochs=0)
    assert main(["fit", "--variant", "baseline", "--dataset", "csv", *args]) == 0
    run = tmp_path / "runs" / "csv" / "baseline"
    split = json.loads((run / "split.json").read_text())
    assert split["eval_carved"] is True and split["eval"] == 4 and split["train"] + split["selection"] == 16
    result = json.loads((run / "eval.json").read_text())
    assert result["num_images"] == 4
    scores = np.load(run / "eval_scores.npz")
    evaluated = set(scores["ids"].tolist())
    assert evaluated == set(split["eval_ids"]) and not evaluated & set(split["selection_ids"])
    in_csv = {line.split(",")[0] for line in csv.read_text().splitlines()[1:]}
    assert evaluated <= in_csv and len(in_csv - evaluated) == 16  # the other 16 train / select


# -- bug 3: --compile with stage 2 saved names with _orig_mod ---------------------------------
@pytest.mark.slow
def test_compile_through_both_stages_saves_a_loadable_model(voc_root, tmp_path):
    args = tiny_args(voc_root, tmp_path, "compiled", stage1_epochs=1, stage2_epochs=1, compile="true")
    assert main(["fit", "--variant", "mlgcn", *args]) == 0
    run = tmp_path / "compiled" / "mlgcn"
    names = json.loads((run / "model" / "config.json").read_text())
    assert names["backbone_in_checkpoint"]
    model = load_model(run / "model")
    assert not any("_orig_mod" in k for k in model.state_dict())
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert not any("_orig_mod" in k for k in state)
    assert json.loads((run / "eval.json").read_text())["metrics"]["map"] == pytest.approx(
        evaluate_saved(run, voc_root, tmp_path)["map"], abs=1e-9)


# -- bug 4: model/ written non-atomically; duplicate metrics rows after a kill + resume --------
def test_kill_during_model_save_leaves_no_half_written_folder(voc_root, tmp_path, monkeypatch):
    from mlc.models.base import MultiLabelModel

    original = MultiLabelModel._save_pretrained

    def killed_after_weights(self, save_directory):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(save_directory) / "model.safetensors"))
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(MultiLabelModel, "_save_pretrained", killed_after_weights)
    with pytest.raises(KeyboardInterrupt):
        main(["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "kill", stage2_epochs=0)])
    run = tmp_path / "kill" / "baseline"
    assert not (run / "model").exists(), sorted(p.name for p in (run / "model").iterdir())
    assert not [p for p in run.iterdir() if "partial" in p.name]

    # a kill in a later epoch's save keeps the earlier complete model
    calls = {"n": 0}

    def killed_second_time(self, save_directory):
        calls["n"] += 1
        if calls["n"] == 2:
            killed_after_weights(self, save_directory)
        return original(self, save_directory)

    monkeypatch.setattr(MultiLabelModel, "_save_pretrained", killed_second_time)
    from train.engine import Trainer

    monkeypatch.setattr(Trainer, "predict_logits", _improving(Trainer.predict_logits))
    with pytest.raises(KeyboardInterrupt):
        main(["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "kill2", stage1_epochs=3, stage2_epochs=0)])
    assert calls["n"] == 2
    load_model(tmp_path / "kill2" / "baseline" / "model")  # complete: config and weights of one epoch


def _scripted_selection(predict, perfect_at):
    """Wrap Trainer.predict_logits (the selection split's scores choose the epoch): selection logits
    are perfect in the epochs ``perfect_at(epoch)`` names and random otherwise, so a test decides
    which epochs improve (and save model/)."""
    state = {"epoch": 0}

    def wrapped(self, split, use_cache, model=None, trained=None):
        scores, targets = predict(self, split, use_cache, model, trained)
        if split == "selection":
            state["epoch"] += 1
            scores = (np.where(targets > 0, 20.0, -20.0) if perfect_at(state["epoch"])
                      else np.random.default_rng(state["epoch"]).normal(size=scores.shape))
        return scores, targets

    return wrapped


def _improving(predict):
    """Epoch 1's selection scores are random, epoch 2's perfect (both save model/)."""
    return _scripted_selection(predict, lambda epoch: epoch >= 2)


def _improving_then_worse(predict):
    """Perfect at epoch 1, random afterwards (so epoch 1 is selected)."""
    return _scripted_selection(predict, lambda epoch: epoch == 1)


def test_kill_between_metrics_and_checkpoint_leaves_each_epoch_once(voc_root, tmp_path, monkeypatch):
    from train.engine import Trainer

    original = Trainer.save_checkpoint

    def killed_at_epoch_2(self, epoch, history):
        if epoch == 2:
            raise KeyboardInterrupt("killed before the checkpoint")
        return original(self, epoch, history)

    args = ["fit", "--variant", "baseline", *tiny_args(voc_root, tmp_path, "dup", stage1_epochs=2, stage2_epochs=1)]
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert main(args + ["--resume"]) == 0
    run = tmp_path / "dup" / "baseline"
    csv_epochs = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_epochs == ["1", "2", "3"]
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2, 3]


# -- the GPU paths, on the CPU ------------------------------------------------------------------
@pytest.mark.slow
def test_bf16_autocast_and_channels_last_through_both_stages_evaluate_in_float32(voc_root, tmp_path):
    args = tiny_args(voc_root, tmp_path, "bf16", stage1_epochs=1, stage2_epochs=1, amp_on_cpu="true",
                     channels_last="true")
    assert main(["fit", "--variant", "gcam", *args]) == 0
    run = tmp_path / "bf16" / "gcam"
    scores = np.load(run / "eval_scores.npz")["scores"]
    # float32 scores: as many distinct values per class as images (bf16 logits collapse them)
    assert min(len(np.unique(scores[:, c])) for c in range(5)) == len(scores)
    assert json.loads((run / "eval.json").read_text())["metrics"]["map"] == pytest.approx(
        evaluate_saved(run, voc_root, tmp_path)["map"], abs=1e-6)


@pytest.mark.slow
def test_no_host_sync_per_step(voc_root, tmp_path, monkeypatch):
    """Only the epoch's mean loss is read from the device (plus one per LOG_EVERY steps)."""
    from train import engine

    calls = {"train": 0}
    original_item, original_epoch = torch.Tensor.item, engine.Trainer.train_epoch
    inside = {"on": False}

    def counting_item(self):
        caller = sys._getframe(1).f_code.co_filename  # our code, not torch's CPU-side bookkeeping
        if inside["on"] and str(ROOT / "mlc") in caller or inside["on"] and str(ROOT / "train") in caller:
            calls["train"] += 1
        return original_item(self)

    def epoch(self, stage, e):
        inside["on"] = True
        try:
            return original_epoch(self, stage, e)
        finally:
            inside["on"] = False

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    monkeypatch.setattr(engine.Trainer, "train_epoch", epoch)
    args = tiny_args(voc_root, tmp_path, "sync", stage1_epochs=1, stage2_epochs=1, batch_size=2, augment="false")
    assert main(["fit", "--variant", "gcam", *args]) == 0
    steps = 2 * 9  # 18 fit images, batch 2, two epochs
    assert calls["train"] <= 2 * (1 + 9 // engine.LOG_EVERY), (calls, steps)


@pytest.mark.slow
def test_augmentation_is_seeded_per_image_so_workers_persist_and_do_not_change_results(voc_root, tmp_path):
    weights = {}
    for workers in (0, 2):
        group = f"w{workers}"
        args = tiny_args(voc_root, tmp_path, group, stage1_epochs=2, stage2_epochs=1, stage1_augment="true",
                         num_workers=workers)
        assert main(["fit", "--variant", "baseline", *args]) == 0
        weights[workers] = torch.load(tmp_path / group / "baseline" / "checkpoint.pt", weights_only=True)["model"]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[2][key], rtol=0, atol=0, msg=key)


def test_persistent_loader_is_reused_across_epochs(voc_root, tmp_path):
    from train.cli import config_for
    from train.distributed import DistEnv
    from train.engine import Trainer

    config, _ = config_for(["--variant", "baseline", *tiny_args(voc_root, tmp_path, "p", num_workers=1,
                                                                stage1_augment="true")])
    trainer = Trainer(config, DistEnv())
    trainer.build()
    trainer.enter_stage(trainer.stages[0])
    first = list(trainer.train_batches(trainer.stages[0], 0))
    loader = trainer.loader(True)
    assert loader.persistent_workers and trainer.loader(True) is loader
    second = list(trainer.train_batches(trainer.stages[0], 1))
    again = list(trainer.train_batches(trainer.stages[0], 0))
    assert not torch.equal(first[0]["images"], second[0]["images"])
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, again))


@pytest.mark.slow
def test_ddp_gloo_through_stage_2(voc_root, tmp_path):
    common = ["fit", "--variant", "gcam", *tiny_args(voc_root, tmp_path, "ddp2", stage1_epochs=1, stage2_epochs=1,
                                                     stage1_augment="true")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
                          "-m", "train", *common], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run = tmp_path / "ddp2" / "gcam"
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == [1, 2]
    model = load_model(run / "model")
    assert model.backbone_trained == "all"


# -- top-block fine-tuning on cached bottom features ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "ssgrl", "gcam"])
def test_top_block_finetune_trains_only_the_top_and_saves_only_it(voc_root, tmp_path, variant):
    args = tiny_args(voc_root, tmp_path, "top", stage1_epochs=1, stage2_epochs=2, finetune="top:3",
                     pretrained="false")
    assert main(["fit", "--variant", variant, *args]) == 0
    run = tmp_path / "top" / variant
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["trained_part"] == "top:3"
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == [1, 2, 2]
    load_model(run / "model")  # the partial top-only checkpoint loads
    result = json.loads((run / "eval.json").read_text())
    if result["selected_stage"] == 2:
        # the fine-tuned top part is in the model; evaluation on cached bottom maps is exact
        assert result["backbone_trained"] in ("top:3", "all")
    assert result["metrics"]["map"] == pytest.approx(evaluate_saved(run, voc_root, tmp_path)["map"], abs=1e-6)
    # bottom blocks unchanged from their initial weights: compare with stage-1's checkpointed bottom
    cached = sorted((tmp_path / "top" / "feature_cache").glob("*.pt"))
    assert cached, "the bottom maps are cached"


def test_top_block_checkpoint_stores_only_the_top_part(tmp_path, tiny_setup):
    from mlc.models import create_model
    from safetensors.torch import load_file

    setup = {**tiny_setup, "backbone": "efficientnet_lite0", "pretrained": True}
    model = create_model("mlgcn", **setup).eval()
    with torch.no_grad():
        model.backbone.body.blocks()[15].conv_pwl.weight.mul_(0.5)
    model.backbone_trained = "top:15"
    folder = model.save(tmp_path / "m")
    stored = load_file(str(folder / "model.safetensors"))
    backbone_keys = [k for k in stored if k.startswith("backbone.")]
    assert backbone_keys and all(".blocks.6.0." in k or "conv_head" in k or ".bn2." in k for k in backbone_keys)
    loaded = load_model(folder)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


# -- bug 7: user mistakes answered by one line ---------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    (["--image-size", "0"], "image_size"),
    (["--image-size", "7"], "image_size"),
    (["--model-param", "tau=abc"], "tau"),
    (["--model-param", "colour=3"], "colour"),
    (["--stage1-epochs", "0", "--stage2-epochs", "0"], "nothing would be trained"),
    (["--finetune", "middle"], "finetune"),
])
def test_bad_training_flags_give_one_line(voc_root, tmp_path, capsys, flags, expected):
    args = ["fit", "--variant", "mlgcn", *tiny_args(voc_root, tmp_path, "bad"), *flags]
    assert main(args) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "bad").exists()


def test_corrupt_image_stops_the_run_before_training_with_its_path(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", n_train=12, n_val=4, image_size=64)
    broken = sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))[5]
    corrupt_file(broken, "truncate")
    args = tiny_args(root, tmp_path / "runs", "corrupt", num_workers=1, stage1_augment="true")
    assert main(["fit", "--variant", "baseline", *args]) == 2
    line = error_line(capsys)
    assert broken.name in line
    assert not (tmp_path / "runs" / "corrupt" / "baseline" / "metrics.csv").exists()


def test_evaluate_missing_folder_says_so(voc_root, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nowhere" / "model"), "--data-root", str(voc_root)]) == 2
    line = error_line(capsys)
    assert "no such" in line and "connection" not in line


@pytest.mark.parametrize("variant, edit, expected", [
    ("mlgcn", lambda c: {**c, "classes": c["classes"][:-1]}, "shape"),
    ("baseline", lambda c: {**c, "classes": c["classes"][:-1]}, "shape"),
    ("mlgcn", lambda c: {**c, "classes": None}, "classes"),
    ("mlgcn", lambda c: {**c, "params": {**c["params"], "colour": 1}}, "colour"),
])
def test_inconsistent_checkpoint_names_the_file(tmp_path, tiny_setup, capsys, voc_root, variant, edit, expected):
    from conftest import tiny_model

    model = tiny_model(variant, tiny_setup)
    model.backbone_is_pretrained = False
    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    assert main(["evaluate", "--model", str(folder), "--data-root", str(voc_root), "--num-workers", "0"]) == 2
    line = error_line(capsys)
    assert expected in line and str(folder) in line


def test_stage_2_starts_from_the_selected_stage_1_model(voc_root, tmp_path, monkeypatch):
    """With a zero stage-2 learning rate the weights after stage 2 are the selected stage-1 ones."""
    from safetensors.torch import load_file
    from train.engine import Trainer

    monkeypatch.setattr(Trainer, "predict_logits", _improving_then_worse(Trainer.predict_logits))
    args = tiny_args(voc_root, tmp_path, "from-best", stage1_epochs=3, stage2_epochs=1, stage2_lr=0.0,
                     stage2_min_lr=0.0, finetune="top:3")
    assert main(["fit", "--variant", "baseline", *args]) == 0
    run = tmp_path / "from-best" / "baseline"
    assert json.loads((run / "eval.json").read_text())["stage1"]["selected_epoch"] == 1
    selected = load_file(str(run / "model_stage1" / "model.safetensors"))
    final = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(final[key], selected[key], rtol=0, atol=0)


# -- augmentation from the cache: several cached views per image for a top-block fine-tune ------
@pytest.mark.parametrize("image_size", [64, 96])
def test_top_block_finetune_trains_on_cached_views_picked_per_epoch(voc_root, tmp_path, image_size):
    """With ``cache_views: 4`` each image is cached as itself, its mirror and two seeded crops; each
    epoch trains every image on one of them, picked from (seed, epoch, index) alone, and the rows
    of a batch are exactly the bottom maps of the picked views (at either image size)."""
    from train.cli import config_for
    from train.distributed import DistEnv
    from train.engine import Trainer
    from train.features import CachedView, view_choice

    config, _ = config_for(["--variant", "baseline", *tiny_args(voc_root, tmp_path, f"views{image_size}",
                                                                finetune="top:3", cache_views=4,
                                                                image_size=image_size)])
    trainer = Trainer(config, DistEnv())
    trainer.build()
    stage = trainer.stages[1]
    trainer.enter_stage(stage)
    fit_rows = trainer.splits.fit_indices
    train = trainer.splits.train.with_transform(trainer.test_transform)
    backbone = trainer.model.backbone.eval()
    cells = image_size // 8  # three stride-2 blocks below the cut
    picked = {}
    for epoch in (1, 2):
        batches = list(trainer.train_batches(stage, epoch))
        again = list(trainer.train_batches(stage, epoch))
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, again))
        sampler = trainer.sampler(len(trainer.splits.fit), shuffle=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        rows = torch.cat([b["image"] for b in batches])
        assert rows.shape[1:] == (16, cells, cells)
        for position, i in enumerate(order[:6]):
            view = view_choice(config.seed, epoch, i, 4)
            picked[(epoch, i)] = view
            t = int(fit_rows[i])
            x = train[t][0] if view == 0 else CachedView(train, view)[t][0]
            with torch.no_grad():
                expected = backbone.forward_bottom(x[None], 3)[0]
            torch.testing.assert_close(rows[position], expected, rtol=0, atol=1e-6)
    assert len(set(picked.values())) > 1  # the views differ from image to image and epoch to epoch
    # the mirror view is the image mirrored; a crop keeps the labels and differs from the image
    x0, y0 = train[0]
    torch.testing.assert_close(CachedView(train, 1)[0][0], x0.flip(-1))
    x2, y2 = CachedView(train, 2)[0]
    assert torch.equal(y0, y2) and x2.shape == x0.shape and not torch.equal(x2, x0)
    assert torch.equal(CachedView(train, 2)[0][0], x2)  # seeded: the same crop every time


def test_cached_views_run_end_to_end_and_resume(voc_root, tmp_path, monkeypatch):
    """G-CAM (three views of its own) on three cached views per image; killed in stage 2's second
    epoch and resumed, it ends with the weights of the uninterrupted run."""
    from train.engine import Trainer

    args = ["fit", "--variant", "gcam", *tiny_args(voc_root, tmp_path, "views", stage1_epochs=1, stage2_epochs=2,
                                                   finetune="top:3", cache_views=3, cache_dir=tmp_path / "cache")]
    assert main(args + ["--group", "straight"]) == 0
    original = Trainer.train_epoch

    def killed_in_epoch_3(self, stage, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(self, stage, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--group", "killed"])
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert main(args + ["--group", "killed", "--resume"]) == 0
    straight, resumed = (torch.load(tmp_path / g / "gcam" / "checkpoint.pt", weights_only=False)["model"]
                         for g in ("straight", "killed"))
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    # the image, its mirror and one crop, for each of G-CAM's three views: 9 bottom caches of the
    # training split, beside the eval split's and the frozen stage's
    names = list((tmp_path / "cache").glob("*.pt"))
    assert len(names) >= 9


def test_cache_extraction_killed_midway_resumes_at_the_first_missing_chunk(tmp_path):
    """A CPU cache of thousands of images takes many minutes: a kill keeps the finished chunks, the
    next run computes only the rest, and the whole equals an uninterrupted extraction."""
    from train.features import cached_tensor, extract_in_chunks

    data = torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3)
    calls: list[list[int]] = []

    def rows_then_kill(rows):
        calls.append(rows)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return data[rows] * 2

    with pytest.raises(KeyboardInterrupt):
        cached_tensor(tmp_path, "k", lambda: extract_in_chunks(tmp_path, "k", 10, rows_then_kill, chunk=4))
    assert len(list(tmp_path.glob("k.chunk*.pt"))) == 2 and not (tmp_path / "k.pt").exists()
    calls.clear()
    whole = cached_tensor(tmp_path, "k", lambda: extract_in_chunks(tmp_path, "k", 10, lambda r: calls.append(r) or data[r] * 2,
                                                                   chunk=4))
    assert calls == [[8, 9]]  # only the missing chunk
    torch.testing.assert_close(whole, data * 2)
    assert (tmp_path / "k.pt").is_file() and not list(tmp_path.glob("k.chunk*"))


def test_cache_needed_by_two_workers_at_once_is_computed_once(tmp_path):
    """Parallel workers of the CPU recipe may need the same cache together: the second waits for the
    first's result instead of extracting the same maps again (minutes each on a CPU)."""
    import threading

    from train.features import cached_tensor

    first_started, release, second_computed = threading.Event(), threading.Event(), threading.Event()
    calls: list[str] = []
    results: dict[str, torch.Tensor] = {}

    def slow():  # the first worker's extraction, held open until the second has asked too
        calls.append("first")
        first_started.set()
        release.wait(timeout=60)
        return torch.ones(3, 2)

    def fast():
        calls.append("second")
        second_computed.set()
        return torch.zeros(3, 2)

    first = threading.Thread(target=lambda: results.setdefault("first", cached_tensor(tmp_path, "k", slow)))
    second = threading.Thread(target=lambda: results.setdefault("second", cached_tensor(tmp_path, "k", fast)))
    first.start()
    assert first_started.wait(timeout=60)
    second.start()
    # without a lock the second computes now; with it, it waits for the first
    second_computed.wait(timeout=2)
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert calls == ["first"]
    torch.testing.assert_close(results["second"], torch.ones(3, 2))
    torch.testing.assert_close(torch.load(tmp_path / "k.pt", weights_only=True), torch.ones(3, 2))


def test_a_stage_holds_only_its_own_cached_maps(voc_root, tmp_path, monkeypatch):
    """Stage 2 of a top-block fine-tune reads bottom maps: the whole-backbone maps of stage 1 (GBs at
    448 px, every view of G-CAM) are freed when it starts, not held beside them."""
    from train.engine import Trainer

    held: dict[int, set] = {}
    train_epoch = Trainer.train_epoch

    def recording(self, stage, epoch):  # what the epoch left in memory
        result = train_epoch(self, stage, epoch)
        held.setdefault(stage.index, set()).update(k if isinstance(k, str) else k[0] for k in self._feature_cache)
        return result

    monkeypatch.setattr(Trainer, "train_epoch", recording)
    args = tiny_args(voc_root, tmp_path, "stages", stage1_epochs=1, stage2_epochs=1, finetune="top:3")
    assert main(["fit", "--variant", "gcam", *args]) == 0
    assert held[1] and held[2] and not held[1] & held[2]


def test_extracting_a_cache_leaves_the_global_rng_alone(voc_root):
    """A run that extracts its cache must draw the same dropout and sampling as one that reads it."""
    from mlc.data import build_dataset, build_transforms
    from train.features import extract_view

    dataset = build_dataset("voc2007", voc_root, "val").with_transform(build_transforms(32, train=False))
    torch.manual_seed(0)
    extract_view(lambda x: x.mean((2, 3)), lambda x: x, dataset, torch.device("cpu"), 4, 0)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.testing.assert_close(after, torch.rand(3))
