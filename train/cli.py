"""``python -m train``: fit one variant, all five, evaluate a saved model, push a run, write a report.

  python -m train fit --variant mlgcn --dataset voc2007 --data-root data/voc2007
  python -m train all --dataset voc2007 --data-root data/voc2007 [--push-to-hub user/repo [--dry-run]] [--limit 100]
  python -m train evaluate --model runs/default/mlgcn/model --dataset voc2007 --data-root ... --split val
  python -m train push runs/default [--repo user/repo] [--dry-run]
  python -m train report runs/default
  python -m train export --model runs/default/mlgcn/model --format onnx [--output mlgcn.onnx]
  python -m train predict --model runs/default/mlgcn/model photos/ a.jpg --output preds.csv [--threshold 0.5]

Boolean flags: ``--dry-run`` / ``--no-diagnostics`` (``--flag true|false`` is still accepted).
``--limit N`` on fit / all / evaluate: a seeded sample of N images of each split, for a quick try.
Values come from ``train/configs/<dataset>/<variant>.yaml`` (or ``--config FILE``, or
``--config-dir DIR`` with one ``<variant>.yaml`` per variant, e.g. ``train/configs/voc2007-cpu``); flags override.
Launch with ``torchrun --nproc-per-node N -m train ...`` for several GPUs (DistributedDataParallel).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from mlc.diagnostics_record import num, pct
from train.config import (
    ConfigError,
    TrainConfig,
    add_bool_flag,
    add_config_arguments,
    config_path_for,
    default_variant,
    load_yaml,
    resolve_config,
    variants,
)


def _preparse(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--config-dir")
    pre.add_argument("--dataset", default="voc2007")
    pre.add_argument("--variant")
    return pre.parse_known_args(argv)[0]


def config_for(argv: list[str], variant: str | None = None, prog: str = "python -m train fit") -> tuple[TrainConfig, bool]:
    """Resolve YAML (base chain) -> argparse defaults -> flags, for one variant; also --resume."""
    pre = _preparse(argv)
    variant = variant or pre.variant
    folder = Path(pre.config_dir) if pre.config_dir else config_path_for(pre.dataset, "dataset").parent
    path = Path(pre.config) if pre.config else folder / f"{variant or default_variant()}.yaml"
    if pre.config or path.is_file():
        values = load_yaml(path)
    else:  # no file for this variant: the dataset's settings, then what the variant declares
        values = _variant_defaults(folder, variant or default_variant())
        print(f"note: no config file {path}; using {folder / 'dataset.yaml' if (folder / 'dataset.yaml').is_file() else 'the built-in defaults'}"
              " and the variant's own defaults", file=sys.stderr)
    # the variant: `train all`'s loop, else --variant, else the config file's, else the reference one
    variant = variant or values.get("variant") or default_variant()
    values["variant"] = variant
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", help="YAML config (default: train/configs/<dataset>/<variant>.yaml)")
    parser.add_argument("--config-dir", help="folder of <variant>.yaml files, e.g. train/configs/voc2007-cpu")
    add_bool_flag(parser, "resume", False, "continue the run in its folder from its last checkpoint")
    add_config_arguments(parser, values)
    args = parser.parse_args(argv)
    if variant:
        args.variant = variant
    return resolve_config(args, values), args.resume


def _variant_defaults(folder: Path, variant: str) -> dict:
    """The dataset's ``dataset.yaml`` (if any) under the variant's ``train_defaults``: a registered
    variant trains on any dataset without a YAML file of its own."""
    import copy

    from mlc.models import get_model_class

    values = load_yaml(folder / "dataset.yaml") if (folder / "dataset.yaml").is_file() else {}
    try:
        declared = copy.deepcopy(get_model_class(variant).train_defaults)
    except ValueError:
        return values  # an unknown variant: TrainConfig.validate names the registered ones
    params = {**(values.get("model_params") or {}), **declared.pop("model_params", {})}
    return {**values, **declared, **({"model_params": params} if params else {})}


def fit(config: TrainConfig, resume: bool = False) -> dict:
    from train.distributed import cleanup_distributed, init_distributed
    from train.engine import Trainer

    env = init_distributed(config.device)
    try:
        result = Trainer(config, env).fit(resume=resume)
    finally:
        cleanup_distributed()
    if env.is_main:
        m = result["metrics"]
        print(f"{config.variant}: {config.eval_split} mAP {100 * m['map']:.2f} (VOC {100 * m['map_voc']:.2f}) "
              f"CF1 {100 * m['cf1']:.2f} OF1 {100 * m['of1']:.2f}  [{result['train_seconds'] / 60:.1f} min] -> {config.run_dir}")
        tuned = (result.get("decision_metrics") or {}).get("tuned")
        if tuned:
            print(f"  at the per-class thresholds tuned on the selection split: CF1 {100 * tuned['cf1']:.2f} "
                  f"OF1 {100 * tuned['of1']:.2f} exact match {100 * tuned['exact_match']:.2f}")
    return result


def cmd_fit(argv: list[str]) -> int:
    fit(*config_for(argv))
    return 0


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """The runs of ``config.seeds`` seeds: the first in <group>/<variant>, the others in
    <group>/seed<S>/<variant>; all share the group's feature cache (the cache key names the weights).
    Only the first seed computes the diagnostics (the report shows the first seed's)."""
    import dataclasses

    cache_dir = config.cache_dir or str(Path(config.output_dir) / config.group / "feature_cache")
    runs = []
    for k in range(config.seeds):
        seed = config.seed + k
        group = config.group if k == 0 else f"{config.group}/seed{seed}"
        runs.append(dataclasses.replace(config, seed=seed, group=group, cache_dir=cache_dir,
                                        diagnostics=config.diagnostics and k == 0))
    return runs


def cmd_all(argv: list[str]) -> int:
    from train.report import write_report

    resolved = [config_for(argv, variant, prog="python -m train all") for variant in variants()]
    configs = [config for config, _ in resolved]
    # seed-major: every variant of the first seed is trained before any further seed
    for k in range(configs[0].seeds):
        for config, resume in resolved:
            fit(seed_configs(config)[k], resume)
    group_dir = configs[0].run_dir.parent
    report = write_report(group_dir)
    print(f"report: {report}")
    first = configs[0]
    if first.push_to_hub or first.dry_run:
        return publish(group_dir, first.push_to_hub, first.dry_run, first.hub_private)
    return 0


def publish(path: Path, repo: str | None, dry_run: bool, private: bool = False) -> int:
    """Push a run (one repo) or every variant of a run group (one repo, a subfolder each) to the Hub.

    What would be uploaded is always written first under ``hub_upload/``; ``dry_run`` stops there.
    """
    from mlc.hub import CARD_NAME, HubError, prepare_upload, push_folder, push_variants, upload_listing

    path = Path(path)
    single = (path / "model").is_dir()
    runs = [path] if single else sorted(p for p in path.iterdir() if (p / "model").is_dir())  # first seed only
    if not runs:
        print(f"error: {path} holds no trained run (no model/ folder)", file=sys.stderr)
        return 2
    staging = path / "hub_upload"
    folders: dict[str, Path] = {}
    for run in runs:
        read = lambda name: json.loads((run / name).read_text()) if (run / name).is_file() else None  # noqa: E731
        train_config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
        split_info = read("split.json")
        if split_info:
            split_info.pop("selection_ids", None)
        target = repo if single or not repo else f"{repo}/{run.name}"
        folders[run.name] = prepare_upload(run / "model", staging if single else staging / run.name,
                                           eval_result=read("eval.json"), train_config=train_config,
                                           split_info=split_info, repo_id=target)
    if dry_run:  # what would go up, file by file, and the card(s) a reader of the Hub page would see
        print(upload_listing({"": folders[runs[0].name]} if single else folders, repo))
        for name, folder in folders.items():
            print(f"\n----- {name + '/' if not single else ''}{CARD_NAME} -----\n{(folder / CARD_NAME).read_text()}")
        print(f"dry run: the upload for {repo or '<no repo given>'} is in {staging}")
        return 0
    if not repo:
        print("error: give --repo user/name (or --push-to-hub) to push, or --dry-run", file=sys.stderr)
        return 2
    try:
        url = push_folder(folders[runs[0].name], repo, private=private) if single else push_variants(folders, repo, private=private)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"pushed {', '.join(folders)} -> {url}")
    return 0


def cmd_push(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m train push")
    parser.add_argument("run", help="a run folder (runs/<group>/<variant>) or a group folder (all variants)")
    parser.add_argument("--repo", help="Hub repo id user/name; a group's variants go to its subfolders <variant>/")
    add_bool_flag(parser, "dry-run", False, "only write what would be uploaded, under <run>/hub_upload")
    add_bool_flag(parser, "private", False, "create the repo private")
    args = parser.parse_args(argv)
    return publish(Path(args.run), args.repo, args.dry_run, args.private)


def cmd_evaluate(argv: list[str]) -> int:
    import torch

    from mlc.data import build_dataset, build_transforms
    from mlc.diagnostics import diagnose
    from mlc.metrics import evaluate
    from mlc.models import load_model
    from train.distributed import pick_device

    parser = argparse.ArgumentParser(prog="python -m train evaluate")
    parser.add_argument("--model", required=True, help="saved model folder or Hub repo id")
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", help="write the metrics JSON here")
    add_bool_flag(parser, "merge", False,
                  "update the JSON already at --output (e.g. a run's eval.json) instead of replacing it")
    add_bool_flag(parser, "diagnostics", True,
                  "map localisation, flip consistency and the graph ablation (mlc.diagnostics)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="a quick try: score a seeded sample of N images of the split (--seed), not all of it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-map baseline, the pair subset and --limit's sample")
    parser.add_argument("--faithfulness-pairs", type=int, default=50,
                        help="present (image, class) pairs for deletion / insertion and the sanity checks (0: skip)")
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.num_workers < 0:
        print("error: --batch-size must be positive and --num-workers 0 or more", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit {args.limit} must be 1 or more images", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    model = load_model(args.model).to(device).eval()
    norm = model.normalization
    dataset = build_dataset(args.dataset, args.data_root, args.split)
    if dataset.classes != model.classes:
        print(f"error: the model's classes differ from those of {args.dataset}/{args.split}", file=sys.stderr)
        return 2
    dataset, rows = held_out_rows(dataset, Path(args.model))
    if args.limit is not None and args.limit < len(dataset):
        from train.data import limit_dataset

        dataset = limit_dataset(dataset, args.limit, args.seed)
        rows = f"--limit {args.limit}: a seeded sample (--seed {args.seed}) of {rows}"
    print(f"evaluating {model.model_name} on {len(dataset)} images of {args.dataset}/{args.split} ({rows})", file=sys.stderr)
    diagnostics = None
    if args.diagnostics:  # its forward passes give the scores too: one pass over the split, not two
        diagnostics, scores = diagnose(model, dataset, device, args.batch_size, args.num_workers, seed=args.seed,
                                       return_scores=True, progress=True, faithfulness_pairs=max(0, args.faithfulness_pairs))
    else:
        from tqdm import tqdm

        dataset = dataset.with_transform(build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std))
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        with torch.inference_mode():
            scores = torch.cat([model(images.to(device)).float().sigmoid().cpu()
                                for images, _ in tqdm(loader, desc="evaluate", unit="batch", leave=False)]).numpy()
    report = evaluate(scores, dataset.labels, classes=model.classes)
    result = {"model": str(args.model), "model_name": model.model_name, "dataset": args.dataset, "split": args.split,
              "rows": rows, "num_images": len(dataset), "metrics": report.to_dict()}
    if args.limit is not None:
        result.update(limit=args.limit, limit_seed=args.seed, ids=list(dataset.ids))
    print(f"{model.model_name} on {args.dataset}/{args.split} ({rows}): mAP {100 * report.map:.2f} "
          f"(VOC {100 * report.map_voc:.2f}) CF1 {100 * report.cf1:.2f} OF1 {100 * report.of1:.2f}")
    if diagnostics is not None:
        result["diagnostics"] = diagnostics
        print(diagnostics_line(diagnostics))
    if args.output:
        output = Path(args.output)
        if args.merge and output.is_file():
            try:
                previous = json.loads(output.read_text())
            except ValueError as err:
                raise ValueError(f"{output}: cannot merge into it, not valid JSON ({err})") from None
            if (previous.get("num_images"), previous.get("split")) not in ((None, None), (result["num_images"], args.split)):
                raise ValueError(f"{output} holds an evaluation of {previous.get('num_images')} images of split "
                                 f"{previous.get('split')!r}, this one {result['num_images']} of {args.split!r}: not merged")
            result = {**previous, "metrics": result["metrics"],
                      **({"diagnostics": result["diagnostics"]} if "diagnostics" in result else {})}
        output.write_text(json.dumps(result, indent=1))
    return 0


def held_out_rows(dataset, model: Path):
    """The rows of ``dataset`` to score, and a few words saying which.

    When the model's run carved its evaluation rows out of the training data (a single CSV file as
    the root: ``split.json`` beside ``model/`` has ``eval_carved`` and ``eval_ids``), only those
    held-out rows are scored, as ``fit`` did; data holding some but not all of them mixes rows the
    model was trained or selected on, and is refused. Any other data is scored whole."""
    split_file = model.parent / "split.json"
    info = json.loads(split_file.read_text()) if model.is_dir() and split_file.is_file() else {}
    whole = f"all {len(dataset)} rows"
    if not info.get("eval_carved") or not info.get("eval_ids"):
        return dataset, whole
    held = set(info["eval_ids"])
    index = [i for i, item in enumerate(dataset.ids) if item in held]
    if len(index) == len(held):
        return dataset.subset(index), f"the {len(index)} held-out rows of {split_file}"
    seen = set(dataset.ids) & (held | set(info.get("selection_ids") or []))
    if seen:
        raise ValueError(f"{split_file} holds out {len(held)} rows of the run's data for evaluation, but this data has "
                         f"{len(index)} of them and rows the model was trained or selected on: not scored")
    return dataset, whole


def diagnostics_line(d: dict) -> str:
    """One line of ``mlc.diagnostics.diagnose``'s result for the terminal."""
    loc, flip, graph = d.get("localization") or {}, d["flip"], d.get("graph")
    parts = [f"{d['map']} maps:"]
    if "method" in loc:
        parts.append(f"pointing game {pct(loc['method']['pointing'], 2, '%')} (random {pct(loc['random']['pointing'], 2, '%')}, "
                     f"centre {pct(loc['centre']['pointing'], 2, '%')}), box energy {pct(loc['method']['energy'], 2, '%')}")
        if loc.get("grad_cam") and d["map"] != "Grad-CAM":
            parts.append(f"Grad-CAM pointing game {pct(loc['grad_cam']['pointing'], 2, '%')}, "
                         f"box energy {pct(loc['grad_cam']['energy'], 2, '%')}")
    parts.append(f"flip cosine {flip['cosine']:.3f}, L_A {flip['la']:.3g}" if flip["cosine"] is not None
                 else f"flip L_A {flip['la']:.3g}")
    scale = d.get("scale") or {}
    if scale.get("cosine") is not None:
        parts.append(f"scale ({scale['size']} px) cosine {scale['cosine']:.3f}, L_A {scale['la']:.3g}")
    faith, sanity = d.get("faithfulness"), d.get("sanity")
    if faith and faith.get("maps"):
        auc = {k: m["deletion"]["auc"]["value"] for k, m in faith["maps"].items()}
        ins = {k: m["insertion"]["auc"]["value"] for k, m in faith["maps"].items()}
        parts.append(f"deletion AUC {num(auc.get('own'))} (Grad-CAM {num(auc.get('grad-cam', auc.get('own')))}, "
                     f"random {num(auc.get('random'))}, centre {num(auc.get('centre'))}; lower is better), insertion AUC "
                     f"{num(ins.get('own'))} (random {num(ins.get('random'))}, centre {num(ins.get('centre'))}) "
                     f"on {faith['pairs']} pairs in {faith['seconds']:.0f} s")
    if sanity and sanity.get("explainers"):
        own = sanity["explainers"]["own"]
        parts.append(f"sanity: median |Spearman| with a randomised classifier {num(own['model_randomization']['median_abs'])} "
                     f"(map depends on the model: {_yes(own['depends_on_model'])}), present vs absent class "
                     f"{num(own['class_discrimination']['median'])} in {sanity['seconds']:.0f} s")
    if graph:
        parts.append(f"mAP without the graph {pct(graph['map_identity'], 2, '%')} ({100 * graph['difference']:+.2f} pp from it)")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


def _yes(x: bool | None) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def cmd_report(argv: list[str]) -> int:
    from train.report import write_report

    parser = argparse.ArgumentParser(prog="python -m train report")
    parser.add_argument("group", help="runs/<group>")
    print(write_report(Path(parser.parse_args(argv).group)))
    return 0


def cmd_export(argv: list[str]) -> int:
    """Wires ``mlc.export``: load, export, check against PyTorch with onnxruntime, say where it went."""
    from mlc.export import TOLERANCE, export_onnx
    from mlc.models import load_model
    from mlc.predict import model_thresholds

    parser = argparse.ArgumentParser(prog="python -m train export")
    parser.add_argument("--model", required=True, help="saved model folder or Hub repo id")
    parser.add_argument("--format", default="onnx", choices=["onnx"])
    parser.add_argument("--output", help="file to write (default: <model name>.onnx in the current folder)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help=f"skip the comparison with PyTorch in onnxruntime (max abs logit difference < {TOLERANCE:g})")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    thresholds, _ = model_thresholds(model, args.model)
    output = Path(args.output or f"{model.model_name}.onnx")
    result = export_onnx(model, output, opset=args.opset, check=args.check, thresholds=thresholds.tolist())
    size = model.image_size
    checked = (f"; onnxruntime matches PyTorch (max abs logit difference {result['max_abs_diff']:.2g})"
               if result["max_abs_diff"] is not None else "")
    print(f"{model.model_name} -> {output} ({output.stat().st_size / 2**20:.1f} MB): input 'images' float32 "
          f"(batch, 3, {size}, {size}) RGB in [0, 1], output 'logits' (batch, {model.num_classes}){checked}")
    return 0


def cmd_predict(argv: list[str]) -> int:
    """Wires ``mlc.predict``: files and folders -> one CSV row per image, with a progress bar."""
    from mlc.models import load_model
    from mlc.predict import PredictError, collect_images, model_thresholds, predict_files, write_predictions
    from train.distributed import pick_device

    parser = argparse.ArgumentParser(prog="python -m train predict")
    parser.add_argument("--model", required=True, help="saved model folder or Hub repo id")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--output", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    parser.add_argument("--threshold", type=float,
                        help="one threshold for every class (default: the model's per-class thresholds, else 0.5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0, help="decoding processes (default: 0, in this one)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise PredictError(f"--threshold {args.threshold:g} must be a probability in [0, 1]")
    if args.batch_size <= 0 or args.num_workers < 0:
        raise PredictError("--batch-size must be positive and --num-workers 0 or more")
    files = collect_images(args.images)  # a missing path stops here, before the model loads
    model = load_model(args.model)
    thresholds, source = model_thresholds(model, args.model)
    if args.threshold is not None:
        thresholds, source = np.full(model.num_classes, args.threshold), f"--threshold {args.threshold:g} for every class"
    print(f"predicting {len(files)} image(s) with {model.model_name}; labels: {source}", file=sys.stderr)
    result = predict_files(model, files, thresholds, device=pick_device(args.device), batch_size=args.batch_size,
                           num_workers=args.num_workers)
    if not result.rows:
        raise PredictError(f"none of the {len(files)} file(s) could be decoded as an image; nothing written")
    write_predictions(result.rows, model.classes, args.output)
    skipped = f"; skipped {len(result.skipped)} file(s) that are not decodable images (named above)" if result.skipped else ""
    print(f"{len(result.rows)} image(s) -> {args.output}{skipped}")
    return 0


COMMANDS = {"fit": cmd_fit, "all": cmd_all, "evaluate": cmd_evaluate, "push": cmd_push, "report": cmd_report,
            "export": cmd_export, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The user-facing line of an error. An exception re-raised from a DataLoader worker carries the
    worker's whole traceback in its message; its last line is the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(err).__name__
