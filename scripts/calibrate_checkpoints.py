"""Add a calibration (per-class thresholds, out-of-distribution threshold) to already-trained checkpoints,
without retraining, and record the metrics it changes in their eval.json.

    nice python scripts/calibrate_checkpoints.py [checkpoints] [--data-root /work/shared/data/voc2007]
        [--ood-images a.jpg b.png ...] [--report calibration_report.json]

For each ``<checkpoints>/<variant>/`` (config.json, model.safetensors, eval.json, training_config.yaml):

1. the run's selection split: from ``split.json`` when the folder has one, otherwise recomputed with the
   project's own seeded split (``train.data.build_splits``, the run's dataset / splits / fraction / seed),
   and checked: its sizes must equal eval.json's ``split_info`` and its fit part's label counts and
   co-occurrence those of config.json's ``label_stats`` (which training computed from that fit part);
2. the model (as saved) scores the selection split and the eval split, logits in float32;
3. ``mlc.calibration.calibrate`` on the selection split only, written into config.json
   (``write_calibration``: the weights file is not touched, its md5 is checked before and after);
4. eval.json gets ``decision_metrics`` (CF1/OF1/macro F1/exact match at 0.5 and tuned) and ``ood``
   (how often the rule fires on the eval split), next to what training wrote.

Every image is decoded once and scored by all the models that share an input size and normalisation.
Finally the out-of-distribution notice (shown when most models flag a photo) is measured on the eval
split and on ``--ood-images`` (photos outside the 20 VOC classes) plus synthetic textures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc.calibration import calibrate, decision_report, majority_flag  # noqa: E402
from mlc.data import build_transforms  # noqa: E402
from mlc.metrics import evaluate  # noqa: E402
from mlc.models import load_model  # noqa: E402
from mlc.models.base import write_calibration  # noqa: E402
from mlc.stats import label_statistics  # noqa: E402
from train.data import build_splits  # noqa: E402


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def selection_split(folder: Path, train_config: dict, data_root: Path, eval_result: dict, model) -> tuple[Any, str]:
    """(RunSplits, how the selection split was found) for a checkpoint folder; ValueError if it cannot
    be shown to be the run's."""
    cfg = train_config
    splits, info = build_splits(cfg["dataset"], str(data_root), cfg["train_split"], cfg["eval_split"],
                                cfg["selection_fraction"], cfg["seed"], eval_fraction=cfg.get("eval_fraction", 0.2))
    split_file = folder / "split.json"
    if split_file.is_file():
        ids = json.loads(split_file.read_text())["selection_ids"]
        if ids != info.selection_ids:
            raise ValueError(f"{split_file} lists other selection images than the seeded split of {data_root}")
        how = f"{split_file.name} of the run"
    else:
        how = (f"split.json not shipped: recomputed with train.data.build_splits ({cfg['dataset']} {cfg['train_split']}, "
               f"fraction {cfg['selection_fraction']}, seed {cfg['seed']})")
    shipped = eval_result.get("split_info") or {}
    sizes = {"train": info.train, "selection": info.selection, "eval": info.eval}
    if any(shipped.get(k) != v for k, v in sizes.items()):
        raise ValueError(f"{folder}: the recomputed split sizes {sizes} differ from eval.json's split_info {shipped}")
    stats = label_statistics(splits.fit.labels, splits.fit.classes, difficult_as_positive=cfg.get("difficult_as_positive", True))
    stored = model.label_stats or {}
    if stats.to_dict()["counts"] != stored.get("counts") or stats.to_dict()["cooccurrence"] != stored.get("cooccurrence"):
        raise ValueError(f"{folder}: the recomputed fit split's label counts differ from config.json's label_stats: "
                         "not the run's split")
    return splits, how + "; sizes match eval.json's split_info and the fit part's label counts and co-occurrence match config.json's label_stats"


@torch.inference_mode()
def score(models: dict[str, Any], dataset, batch_size: int, num_workers: int, desc: str) -> dict[str, np.ndarray]:
    """float32 logits (N, C) of each model on ``dataset`` (all models share the input transform)."""
    from tqdm import tqdm

    first = next(iter(models.values()))
    norm = first.normalization
    transform = build_transforms(first.image_size, train=False, mean=norm.mean, std=norm.std)
    loader = torch.utils.data.DataLoader(dataset.with_transform(transform), batch_size=batch_size, num_workers=num_workers)
    cut = shared_cut(models)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    for images, _ in tqdm(loader, desc=desc, unit="batch", file=sys.stdout, mininterval=10):
        bottom = first.backbone.forward_bottom(images, cut) if cut else None
        for name, model in models.items():
            if bottom is None:
                out[name].append(model(images).float())
            else:
                out[name].append(model.forward_head(model.backbone.forward_top(bottom, cut)).logits.float())
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def shared_cut(models: dict[str, Any]) -> int | None:
    """The block before which every model's backbone is the same packaged one (their bottoms' weights
    are compared), so the bottom runs once per batch for all of them; None when they share none."""
    from mlc.models.base import top_cut

    first = next(iter(models.values()))
    n = first.backbone.num_blocks
    if n is None or len({m.backbone_name for m in models.values()}) != 1:
        return None
    cuts = []
    for model in models.values():
        trained = model.backbone_trained
        cuts.append(n - 1 if trained is None else (top_cut(trained) if trained != "all" else 0))
    cut = min(cuts)
    if cut <= 0:
        return None
    top = first.backbone.top_state_names(cut)
    reference = {k: v for k, v in first.backbone.state_dict().items() if k not in top}
    for model in models.values():
        state = model.backbone.state_dict()
        if any(not torch.equal(state[k], v) for k, v in reference.items()):
            return None
    return cut


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits.astype(np.float32)).sigmoid().numpy().astype(np.float64)


def textures(size: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic non-photos (uint8 RGB): what no VOC class looks like (see tests/fixtures.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures import synthetic_textures

    return synthetic_textures(size, seed)


@torch.inference_mode()
def score_images(models: dict[str, Any], images: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per image name: each model's logits (C,)."""
    from PIL import Image

    first = next(iter(models.values()))
    norm = first.normalization
    transform = build_transforms(first.image_size, train=False, mean=norm.mean, std=norm.std)
    result = {}
    for name, image in images.items():
        pil = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else Image.fromarray(image)
        x = transform(pil)[None]
        result[name] = {variant: model(x).float()[0].numpy() for variant, model in models.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="?", default=str(ROOT / "checkpoints"))
    parser.add_argument("--data-root", help="default: the training config's data_root, relative to the repository")
    parser.add_argument("--variants", nargs="*", help="default: every folder with a config.json")
    parser.add_argument("--ood-images", nargs="*", default=[], help="photos outside the model's classes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--report", help="write the figures (JSON) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(args.checkpoints)
    folders = [root / v for v in args.variants] if args.variants else sorted(p.parent for p in root.glob("*/config.json"))
    if not folders:
        print(f"error: no checkpoint folders (*/config.json) in {root}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    models, evals, configs, before, indent = {}, {}, {}, {}, {}
    for folder in folders:
        models[folder.name] = load_model(folder).eval()
        text = (folder / "eval.json").read_text()
        evals[folder.name] = json.loads(text)
        # rewritten with its own indentation, so its diff shows only what changed
        second = text.splitlines()[1] if text.count("\n") else ""
        indent[folder.name] = (len(second) - len(second.lstrip(" "))) or None
        configs[folder.name] = yaml.safe_load((folder / "training_config.yaml").read_text())
        before[folder.name] = md5(folder / "model.safetensors")
    # one split for all: the runs must share dataset, splits, fraction and seed
    keys = {(c["dataset"], c["data_root"], c["train_split"], c["eval_split"], c["selection_fraction"], c["seed"])
            for c in configs.values()}
    if len(keys) != 1:
        print(f"error: the checkpoints come from runs with different splits {keys}; calibrate them one at a time",
              file=sys.stderr)
        return 2
    cfg = next(iter(configs.values()))
    data_root = Path(args.data_root) if args.data_root else (ROOT / cfg["data_root"]).resolve()
    splits, how = None, {}
    for name, folder in zip(models, folders):
        splits, how[name] = selection_split(folder, configs[name], data_root, evals[name], models[name])
    print(f"selection split: {len(splits.selection)} images ({how[folders[0].name]})", flush=True)
    groups: dict[tuple, dict[str, Any]] = {}
    for name, model in models.items():
        groups.setdefault((model.image_size, tuple(model.normalization.mean), tuple(model.normalization.std)), {})[name] = model
    sel_logits, eval_logits = {}, {}
    for group in groups.values():
        sel_logits.update(score(group, splits.selection, args.batch_size, args.num_workers, "selection"))
        eval_logits.update(score(group, splits.evaluation, args.batch_size, args.num_workers, cfg["eval_split"]))
    sel_targets, eval_targets = splits.selection.labels, splits.evaluation.labels
    report: dict[str, Any] = {"selection_images": len(splits.selection), "eval_split": cfg["eval_split"],
                              "eval_images": len(splits.evaluation), "variants": {}}
    for folder in folders:
        name = folder.name
        model = models[name]
        cal = calibrate(sigmoid(sel_logits[name]), sel_logits[name], sel_targets, model.classes,
                        selection_split=how[name], computed_by="scripts/calibrate_checkpoints.py")
        probs = sigmoid(eval_logits[name])
        result = evals[name]
        recomputed = evaluate(probs, eval_targets, classes=model.classes).map
        if abs(recomputed - result["metrics"]["map"]) > 2e-3:
            raise ValueError(f"{name}: mAP on {cfg['eval_split']} recomputed {recomputed:.4f}, eval.json says "
                             f"{result['metrics']['map']:.4f}: not the model or data eval.json describes")
        write_calibration(folder, cal)
        result.update(decision_report(probs, eval_logits[name], eval_targets, cal))
        result["calibration"] = {"computed_by": "scripts/calibrate_checkpoints.py", "selection_split": how[name],
                                 "map_recomputed": recomputed}
        (folder / "eval.json").write_text(json.dumps(result, indent=indent[name]))
        after = md5(folder / "model.safetensors")
        if after != before[name]:
            raise RuntimeError(f"{folder / 'model.safetensors'} changed (md5 {before[name]} -> {after})")
        d = result["decision_metrics"]
        report["variants"][name] = {
            "md5": after, "map": result["metrics"]["map"], "map_recomputed": recomputed,
            "at_0.5": {k: d["0.5"][k] for k in ("cf1", "of1", "macro_f1", "exact_match")},
            "tuned": {k: d["tuned"][k] for k in ("cf1", "of1", "macro_f1", "exact_match")},
            "tuned_classes": sum(cal.tuned), "thresholds": dict(zip(cal.classes, cal.thresholds)),
            "ood_threshold": cal.ood_threshold, "ood_flagged_selection": int(cal.ood_flags(sel_logits[name]).sum()),
            "ood_flagged_eval": result["ood"]["flagged"],
        }
        print(f"{name}: md5 unchanged; {cfg['eval_split']} CF1/OF1/exact at 0.5 "
              f"{100 * d['0.5']['cf1']:.1f}/{100 * d['0.5']['of1']:.1f}/{100 * d['0.5']['exact_match']:.1f}, tuned "
              f"{100 * d['tuned']['cf1']:.1f}/{100 * d['tuned']['of1']:.1f}/{100 * d['tuned']['exact_match']:.1f} "
              f"({sum(cal.tuned)} classes tuned); OOD flags {result['ood']['flagged']}/{len(probs)} of "
              f"{cfg['eval_split']}", flush=True)
    cals = {name: models[name] for name in models}
    for folder in folders:
        cals[folder.name].calibration = load_model(folder).calibration

    def notice(logits_of: dict[str, np.ndarray]) -> tuple[bool, list[str]]:
        flagged = [n for n in models if bool(cals[n].calibration.ood_flags(logits_of[n][None])[0])]
        return majority_flag([n in flagged for n in models]), flagged

    eval_flags = np.stack([cals[n].calibration.ood_flags(eval_logits[n]) for n in models])
    fires = eval_flags.sum(axis=0) * 2 > len(models)
    report["notice_eval"] = {"fired": int(fires.sum()), "images": int(fires.size)}
    print(f"notice (most of {len(models)} models flag) on {cfg['eval_split']}: {int(fires.sum())}/{fires.size} "
          f"({100 * fires.mean():.1f}%)")
    sets = {"photos": {Path(p).name: p for p in args.ood_images}, "textures": textures()}
    for label, images in sets.items():
        if not images:
            continue
        scored = score_images(models, images)
        rows = {}
        for image, logits_of in scored.items():
            fired, flagged = notice(logits_of)
            top = {n: models[n].classes[int(np.argmax(logits_of[n]))] + f" {sigmoid(logits_of[n]).max():.2f}" for n in models}
            rows[image] = {"notice": fired, "flagged_by": flagged, "top_label": top}
            print(f"  {label}/{image}: notice {'yes' if fired else 'no '} (flagged by {len(flagged)}: "
                  f"{', '.join(flagged) or '-'}); top labels {top}")
        report[f"notice_{label}"] = {"fired": sum(r["notice"] for r in rows.values()), "images": len(rows), "per_image": rows}
        print(f"notice on {label}: {report[f'notice_{label}']['fired']}/{len(rows)}")
    report["seconds"] = time.perf_counter() - started
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
