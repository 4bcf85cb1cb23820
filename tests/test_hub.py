"""Model card, dry-run upload folder, and push errors (no network: the Hub API is monkeypatched)."""
import json
import re
import shutil

import httpx2
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image

from conftest import VARIANTS, tiny_model
from mlc.graph import count_edges
from mlc.hub import HubError, model_card, prepare_upload, push_folder, push_variants
from mlc.metrics import evaluate
from mlc.models import load_model

REPO = "someone/mlgcn-voc"
TRAIN_CONFIG = {"model": {"name": "mlgcn", "tau": 0.4}, "epochs": [10, 5], "hub": {"token": "hf_secret"}}
SPLIT_INFO = {"train": 2250, "selection": 250, "eval": 1254, "selection_fraction": 0.1, "seed": 0, "eval_split": "val"}


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def _code_blocks(card: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", card, re.S)


@pytest.fixture
def saved(tiny_setup, tmp_path):
    """A tiny saved mlgcn model folder and the model itself."""
    torch.manual_seed(0)
    model = tiny_model("mlgcn", tiny_setup).eval()
    model.backbone_is_pretrained = False
    return model.save(tmp_path / "model"), model


@pytest.fixture
def eval_result(tiny_setup):
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 5)) < 0.4).astype(np.int8)
    targets[:, 4] = 0  # "bus" has no positive: AP undefined, left out of mAP
    scores = rng.random((40, 5)).astype(np.float32)
    report = evaluate(scores, targets, tiny_setup["classes"]).to_dict()
    return {"model_name": "mlgcn", "dataset": "voc2007", "split": "val", "num_images": 40, "metrics": report}


def test_card_has_metrics_per_class_ap_graph_config_and_load_snippet(saved, eval_result):
    folder, model = saved
    config = json.loads((folder / "config.json").read_text())
    card = model_card(config, eval_result, TRAIN_CONFIG, SPLIT_INFO, REPO)
    meta = _front_matter(card)
    assert meta["library_name"] == "mlc" and meta["datasets"] == ["voc2007"] and meta["metrics"] == ["mAP"]
    assert {"multi-label-image-classification", "label-graph", "mlgcn"} <= set(meta["tags"])

    m = eval_result["metrics"]
    assert f"| {100 * m['map']:.1f} | {100 * m['map_voc']:.1f} |" in card
    for label, keys in (("score >= 0.5", ("cp", "cr", "cf1", "op", "or_", "of1")),
                        ("top-3, score >= 0.5", ("cp_top3", "cr_top3", "cf1_top3", "op_top3", "or_top3", "of1_top3"))):
        assert f"| {label} | " + " | ".join(f"{100 * m[k]:.1f}" for k in keys) + " |" in card
    counts = config["label_stats"]["counts"]
    for i, name in enumerate(m["classes"][:4]):
        assert f"| {name} | {100 * m['ap'][i]:.1f} | {100 * m['ap_voc'][i]:.1f} | {counts[i]} |" in card
    assert f"| bus | n/a | n/a | {counts[4]} |" in card and "left out of mAP): bus" in card
    assert "2250" in card and "1254" in card and "**val**" in card

    assert "tau = 0.4" in card and "p = 0.25" in card
    assert f"{count_edges(config['graph']['adjacency'])} directed edges" in card
    (yaml_block,) = _code_blocks(card, "yaml")
    assert yaml.safe_load(yaml_block) == {**TRAIN_CONFIG, "hub": {"token": "<redacted>"}}
    assert "hf_secret" not in card
    assert f'from mlc.models import load_model\nmodel = load_model("{REPO}")' in card


def test_card_with_missing_parts_still_renders(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    card = model_card(config, None, None, None, None)
    assert _front_matter(card)["library_name"] == "mlc"
    for section in ("## Data", "## Evaluation", "## Label graph", "## Training configuration", "## How to use"):
        assert section in card
    assert card.count("not available") + card.count("Not available") >= 4
    assert 'load_model("path/to/model-folder")' in card
    bare = model_card({"model_name": "ssgrl"}, None, None, None, None)  # no graph, classes, params
    assert "## Label graph\n\nNot stored in this checkpoint." in bare


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_gets_its_description_and_graph(name, tiny_setup):
    model = tiny_model(name, tiny_setup)
    model.backbone_is_pretrained = False
    config = json.loads(json.dumps(model.get_config()))
    card = model_card(config, None, None, None, f"someone/{name}")
    assert f"**{name}**" in card and "no description available" not in card
    graph = card.split("## Label graph", 1)[1].split("##", 1)[0]
    if not model.has_label_graph:
        assert "None: this variant predicts every label independently" in graph
    else:
        assert "directed edges" in graph and "Not available" not in graph


def test_prepare_upload_writes_exactly_the_upload_and_it_loads_back(saved, eval_result, tmp_path, monkeypatch):
    folder, model = saved
    out = prepare_upload(folder, tmp_path / "upload", eval_result, TRAIN_CONFIG, SPLIT_INFO)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "eval.json", "training_config.yaml", "README.md"]
    )
    assert json.loads((out / "eval.json").read_text()) == eval_result
    assert yaml.safe_load((out / "training_config.yaml").read_text())["hub"]["token"] == "<redacted>"
    assert (out / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(images), model(images), rtol=0, atol=0)

    # the card's predict snippet runs as written against this folder
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((80, 60, 3), dtype=np.uint8)).save("image.jpg")
    namespace: dict = {}
    for block in _code_blocks((out / "README.md").read_text(), "python"):
        exec(block.replace("path/to/model-folder", str(out)), namespace)
    assert namespace["probs"].shape == (5,)

    # a second dry run replaces the previous one; eval.json / config of the first do not linger
    prepare_upload(folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        prepare_upload(folder, out)


def _forbid_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no Hub request may be made")

    for name in ("create_repo", "upload_folder", "create_commit"):
        monkeypatch.setattr(HfApi, name, fail)


def _online(monkeypatch):
    """Leave offline mode (the test suite runs with HF_HUB_OFFLINE=1); every request is still patched out."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_push_offline_fails_fast_and_keeps_the_files(saved, monkeypatch):
    folder, _ = saved
    before = sorted(p.name for p in folder.iterdir())
    _forbid_network(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline") as err:
        push_folder(folder, REPO)
    assert str(folder.resolve()) in str(err.value)
    with pytest.raises(HubError, match="offline"):
        push_variants({"mlgcn": folder}, REPO)
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("status", [401, 403])
def test_unauthorised_push_says_to_set_the_token(saved, monkeypatch, status):
    folder, _ = saved
    _online(monkeypatch)
    _forbid_network(monkeypatch)
    response = httpx2.Response(status, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))

    def create_repo(self, repo_id, **kwargs):
        raise HfHubHTTPError(f"{status} Client Error: Unauthorized", response=response)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    with pytest.raises(HubError, match="HF_TOKEN") as err:
        push_folder(folder, REPO)
    assert REPO in str(err.value) and "hf auth login" in str(err.value) and str(folder.resolve()) in str(err.value)
    assert (folder / "model.safetensors").is_file()


def test_unreachable_hub_is_reported_as_such(saved, monkeypatch):
    folder, _ = saved
    _online(monkeypatch)
    _forbid_network(monkeypatch)

    def create_repo(self, repo_id, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    with pytest.raises(HubError, match="cannot reach the Hugging Face Hub") as err:
        push_folder(folder, REPO)
    assert str(folder.resolve()) in str(err.value)


def test_push_folder_creates_the_repo_then_uploads(saved, monkeypatch):
    folder, _ = saved
    _online(monkeypatch)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert push_folder(folder, REPO, private=True) == f"https://huggingface.co/{REPO}"
    assert calls[0] == ("create", REPO, {"private": True, "exist_ok": True})
    assert calls[1][1]["repo_id"] == REPO and calls[1][1]["folder_path"] == folder


def test_push_variants_is_one_commit_with_a_subfolder_per_variant(saved, eval_result, tmp_path, monkeypatch):
    folder, _ = saved
    _online(monkeypatch)
    ups = {v: prepare_upload(folder, tmp_path / v, eval_result, repo_id=f"{REPO}/{v}") for v in ("mlgcn", "gcam")}
    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, ops, **kw: commits.append(list(ops)))
    push_variants(ups, REPO)
    (operations,) = commits
    paths = {op.path_in_repo for op in operations}
    files = ("README.md", "config.json", "eval.json", "model.safetensors")
    assert paths == {"README.md"} | {f"{v}/{name}" for v in ups for name in files}
    index = next(op for op in operations if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert f'load_model("{REPO}/gcam")' in index and f"{100 * eval_result['metrics']['map']:.1f}" in index
    assert f'load_model("{REPO}/gcam")' in (ups["gcam"] / "README.md").read_text()


def test_variant_subfolder_loads_from_the_hub_cache(saved, tmp_path):
    """The layout push_variants creates, as hf_hub_download caches it, loads by "user/repo/<variant>"."""
    folder, model = saved
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "cache" / "models--someone--mlgcn-voc"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo_cache / "snapshots" / commit / "mlgcn")
    loaded = load_model(f"{REPO}/mlgcn", cache_dir=tmp_path / "cache")  # offline: served from the cache
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


# -- model-index, license, provenance, thresholds, dry-run listing (issue 19 item 9) --------------
def _calibrated(folder, model):
    from mlc.calibration import calibrate
    from mlc.models.base import write_calibration

    rng = np.random.default_rng(2)
    targets = (rng.random((80, len(model.classes))) < 0.4).astype(np.int8)
    logits = rng.normal(size=targets.shape) + 2 * targets
    cal = calibrate(1 / (1 + np.exp(-logits)), logits, targets, model.classes)
    write_calibration(folder, cal)
    return cal


def test_front_matter_has_license_and_model_index_with_eval_json_numbers(saved, eval_result):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    meta = _front_matter(model_card(config, eval_result, TRAIN_CONFIG, SPLIT_INFO, REPO))
    assert meta["license"] == "apache-2.0"
    (entry,) = meta["model-index"]
    assert entry["name"] == "mlgcn-voc"
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "PASCAL VOC 2007", "type": "voc2007", "split": "val"}
    m = eval_result["metrics"]
    values = {x["type"]: x["value"] for x in result["metrics"]}
    assert values == {"mAP": round(100 * m["map"], 2), "cf1": round(100 * m["cf1"], 2), "of1": round(100 * m["of1"], 2)}
    assert all(x.get("args", {"threshold": 0.5}) == {"threshold": 0.5} for x in result["metrics"])
    # without metrics there is no model-index (and the YAML still parses)
    assert "model-index" not in _front_matter(model_card(config, None, None, None, None))


def test_card_shows_the_per_class_thresholds_and_what_they_change(saved, eval_result):
    from mlc.calibration import decision_report
    from mlc.models.base import read_calibration

    folder, model = saved
    cal = _calibrated(folder, model)
    config = json.loads((folder / "config.json").read_text())
    assert read_calibration(config) == cal
    rng = np.random.default_rng(5)
    targets = (rng.random((40, 5)) < 0.4).astype(np.int8)
    logits = rng.normal(size=(40, 5))
    result = {**eval_result, **decision_report(1 / (1 + np.exp(-logits)), logits, targets, cal)}
    card = model_card(config, result, TRAIN_CONFIG, SPLIT_INFO, REPO)
    section = card.split("## Decision thresholds", 1)[1].split("\n## ", 1)[0]
    for name, t, n in zip(cal.classes, cal.thresholds, cal.positives):
        assert f"| {name} | {t:.3f} | {n}" in section
    d = result["decision_metrics"]
    for label, key in (("0.5", "0.5"), ("per-class (tuned)", "tuned")):
        cells = " | ".join(f"{100 * d[key][k]:.1f}" for k in ("cf1", "of1", "macro_f1", "exact_match"))
        assert f"| {label} | {cells} |" in section
    assert f"{cal.ood_threshold:.3f}" in section and "at most 5.0% of the selection split" in section
    # an old checkpoint (no calibration) says so
    del config["calibration"]
    assert "No calibration stored" in model_card(config, eval_result, TRAIN_CONFIG, SPLIT_INFO, REPO)


@pytest.mark.parametrize("name", VARIANTS)
def test_provenance_names_what_the_variant_was_built_from(name, tiny_setup):
    model = tiny_model(name, tiny_setup)
    config = json.loads(json.dumps(model.get_config()))
    card = model_card(config, {"dataset": "voc2007", "split": "val"}, {"embeddings": "glove50"}, None, None)
    section = card.split("## Where the weights and data come from", 1)[1].split("\n## ", 1)[0]
    assert "Backbone `tiny`" in section and "PASCAL VOC 2007" in section and "Flickr" in section
    assert ("GloVe 6B" in section and "PDDL" in section) == model.needs_embeddings
    assert "Visual Genome" not in section  # the tiny ggnn's graph is the label co-occurrence
    onehot = model_card(config, None, {"embeddings": "onehot"}, None, None)
    assert "GloVe" not in onehot.split("## Where the weights and data come from", 1)[1].split("\n## ", 1)[0]


def test_provenance_names_visual_genome_when_the_graph_came_from_it(tiny_setup):
    config = json.loads(json.dumps(tiny_model("ggnn", tiny_setup).get_config()))
    config["graph"]["source"] = "visual_genome"
    card = model_card(config, None, None, None, None)
    assert "Visual Genome relationships" in card and "CC BY 4.0" in card


def _fake_run(folder, eval_result, model, run):
    run.mkdir(parents=True)
    shutil.copytree(folder, run / "model")
    (run / "eval.json").write_text(json.dumps(eval_result))
    (run / "config.yaml").write_text(yaml.safe_dump({"variant": model.model_name, "embeddings": "glove50"}))
    (run / "split.json").write_text(json.dumps({**SPLIT_INFO, "selection_ids": ["a", "b"]}))
    return run


def _listed(out: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\S+)\s+(\d+ B|[\d.]+ [KMG]B)$", out, re.M))


def test_push_dry_run_lists_every_file_with_its_size_and_prints_the_card(saved, eval_result, tmp_path, capsys):
    from train.cli import main

    folder, model = saved
    _calibrated(folder, model)
    run = _fake_run(folder, eval_result, model, tmp_path / "runs" / "g" / "mlgcn")
    assert main(["push", str(run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    staged = run / "hub_upload"
    files = {p.name: p.stat().st_size for p in staged.iterdir()}
    listed = _listed(out)
    assert set(listed) == set(files) == {"config.json", "model.safetensors", "eval.json", "training_config.yaml", "README.md"}
    for name, size in files.items():
        assert listed[name] == (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB" if size < 1024 ** 2
                                else f"{size / 1024 ** 2:.1f} MB")
    assert f"{len(files)} files" in out
    assert (staged / "README.md").read_text() in out  # the whole card
    _front_matter((staged / "README.md").read_text())  # its YAML parses

    # a group: every variant's files under its subfolder, and the root index
    _fake_run(folder, {**eval_result, "model_name": "baseline"}, model, tmp_path / "runs" / "g" / "other")
    assert main(["push", str(tmp_path / "runs" / "g"), "--repo", "someone/set", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = _listed(out)
    assert "README.md" in listed and {"mlgcn/model.safetensors", "other/model.safetensors", "other/README.md"} <= set(listed)
    assert "to someone/set" in out and out.count("## Decision thresholds") == 2
