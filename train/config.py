"""Training configuration: a dataclass whose defaults come from YAML files, overridden by flags.

A YAML file may name a ``base:`` file, or a list of them (relative to itself); keys are merged
base-first, left to right. Every
dataclass field becomes a ``--flag`` whose default is the YAML value, so the command line always
wins; the fully resolved config is written into every run folder.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def variants() -> list[str]:
    """The registered variants (``mlc.models.list_models``): the only list of what can be trained."""
    from mlc.models import list_models

    return list_models()


def default_variant() -> str:
    from mlc.models import reference_model

    return reference_model() or variants()[0]


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the file or key."""


@dataclass
class TrainConfig:
    # what
    variant: str = ""  # "": the registry's reference variant (``default_variant``)
    dataset: str = "voc2007"  # voc2007 | voc2012 | coco2014 | coco2017 | csv
    data_root: str = "data/voc2007"
    train_split: str = "train"
    eval_split: str = "val"  # reported; never used to choose anything
    selection_fraction: float = 0.1  # carved, seeded, from the training split for model selection
    seed: int = 0  # draws the selection split, the head's initialisation and the data order
    seeds: int = 1  # `train all`: run seeds seed, seed+1, ... (further seeds in <group>/seed<S>/<variant>)
    eval_fraction: float = 0.2  # carved (seeded) for evaluation only when the eval split is the training data
    difficult_as_positive: bool = True
    limit: int | None = None  # a quick try: a seeded sample of this many images of each split (split.json lists them)
    # model
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    image_size: int = 224
    pooling: str = "max"
    embeddings: str = "glove50"  # glove50 | onehot | path to GloVe txt/npy
    knowledge_graph: str | None = None  # Visual Genome relationships.json for ggnn (else co-occurrence)
    model_params: dict[str, Any] = field(default_factory=dict)  # variant hyper-parameters (tau, p, ...)
    # recipe: stage 1 trains the head on a frozen backbone, stage 2 everything [Viel]
    optimizer: str = "adam"  # adam | sgd (G-CAM's recipe)
    scheduler: str = "cosine"  # cosine | step
    momentum: float = 0.9
    weight_decay: float = 0.0
    step_size: int = 30  # step scheduler: epochs between decays
    step_gamma: float = 0.5
    stage1_epochs: int = 3
    stage1_lr: float = 1e-3
    stage1_min_lr: float = 1e-4
    stage2_epochs: int = 5
    stage2_lr: float = 1e-4
    stage2_min_lr: float = 1e-6
    finetune: str = "all"  # stage 2: "all" layers on images, or "top:K" = backbone blocks K.. on cached bottom maps
    cache_views: int = 1  # "top:K": cached views per image (1 image, 2 + mirror, 3.. + seeded crops); one per epoch
    stage2_from_best: bool = True  # stage 2 starts from the stage-1 epoch the selection split chose, not the last
    batch_size: int = 32  # global batch, split over processes
    eval_batch_size: int = 64
    augment: bool = True  # flip, rotation, brightness / contrast / gamma; no crops
    stage1_augment: bool = True
    cache_features: bool = True  # stage 1: compute frozen-backbone features once, when that is exact (no augmentation)
    cache_dir: str | None = None  # default <output_dir>/<group>/feature_cache
    check_images: bool = True  # decode every image once before training (a broken file fails at the start)
    diagnostics: bool = True  # eval.json "diagnostics": map localisation (datasets with boxes), flip consistency, graph ablation
    # speed
    device: str = "auto"
    num_workers: int = 4
    amp: str = "bf16"  # bf16 | none (CUDA only, unless amp_on_cpu)
    amp_on_cpu: bool = False  # bf16 autocast on the CPU too (slow; exercises the GPU dtype path in tests)
    channels_last: bool = True
    compile: bool = False
    # output
    output_dir: str = "runs"
    group: str = "default"
    save_half: bool = False
    push_to_hub: str | None = None
    hub_private: bool = False
    dry_run: bool = False

    def validate(self) -> "TrainConfig":
        if not self.variant:
            self.variant = default_variant()
        checks = {
            "variant": (self.variant in variants(), f"one of the registered variants {tuple(variants())}"),
            "optimizer": (self.optimizer in ("adam", "sgd"), "adam or sgd"),
            "scheduler": (self.scheduler in ("cosine", "step"), "cosine or step"),
            "amp": (self.amp in ("bf16", "none"), "bf16 or none"),
            "pooling": (self.pooling in ("max", "avg"), "max or avg"),
            "selection_fraction": (0.0 < self.selection_fraction < 1.0, "in (0, 1)"),
            "batch_size": (self.batch_size > 0, "positive"),
            "eval_batch_size": (self.eval_batch_size > 0, "positive"),
            "image_size": (self.image_size >= 32, "at least 32 (the backbones' stride: a smaller image has no feature-map cell)"),
            "stage1_epochs": (self.stage1_epochs >= 0, "0 or more"),
            "stage2_epochs": (self.stage2_epochs >= 0, "0 or more"),
            "num_workers": (self.num_workers >= 0, "0 or more"),
            "seeds": (self.seeds >= 1, "1 or more"),
            "cache_views": (self.cache_views >= 1, "1 or more (1: the image only, 2: and its mirror, 3..: and seeded crops)"),
            "eval_fraction": (0.0 < self.eval_fraction < 1.0, "in (0, 1)"),
            "finetune": (_valid_finetune(self.finetune), "'all' or 'top:K' with K a block index"),
        }
        for key, (ok, what) in checks.items():
            if not ok:
                raise ConfigError(f"config value {key}={getattr(self, key)!r} must be {what}")
        group = Path(str(self.group))
        if group.is_absolute() or ".." in group.parts:  # runs/<group>/<variant> must stay under output_dir
            raise ConfigError(f"config value group={self.group!r} must be a folder name inside output_dir "
                              f"{str(self.output_dir)!r}: not absolute, no '..'")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"config value limit={self.limit!r} must be at least 2 images (the selection split is "
                              "carved from the training images), or none")
        if self.stage1_epochs + self.stage2_epochs == 0:
            raise ConfigError("stage1_epochs + stage2_epochs is 0: nothing would be trained; give at least one epoch")
        self.model_params = check_model_params(self.variant, self.model_params)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.group / self.variant

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _valid_finetune(text: str) -> bool:
    kind, _, index = str(text).partition(":")
    return text == "all" or (kind == "top" and index.isdigit())


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def check_model_params(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """Variant hyper-parameters checked against the variant's own defaults: unknown keys and values
    of the wrong kind (``tau=abc``) are refused with the key named, before any data is read."""
    import mlc.models  # noqa: F401  (registers the variants)
    from mlc.models import registry

    defaults = registry.get_model_class(variant).defaults
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown model parameter(s) {unknown} for {variant}; known: {', '.join(sorted(defaults))}")
    for key, value in params.items():
        default = defaults[key]
        if default is None or value is None:
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            continue  # 1 for 1.0
        if _kind_of(default) != _kind_of(value) or (isinstance(default, int) and not isinstance(default, bool)
                                                     and isinstance(value, float)):
            raise ConfigError(f"model parameter {key}={value!r} for {variant} must be "
                              f"{'an integer' if isinstance(default, int) and not isinstance(default, bool) else _kind_of(default)}"
                              f" (like the default {default!r})")
    return dict(params)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and its ``base:`` chain, base first."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through 'base:'")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:  # several bases merge left to right
        merged = _merge(merged, load_yaml(path.parent / base, _seen + (path,)))
    return _merge(merged, data)


def config_path_for(dataset: str, variant: str) -> Path:
    return CONFIG_DIR / dataset / f"{variant}.yaml"


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str = "") -> None:
    """``--name`` (true), ``--no-name`` (false) and the older ``--name true|false``: one style for every
    boolean flag of every command, without breaking scripts written for the older one."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", dest=dest, type=_parse_bool, nargs="?", const=True, default=default,
                        metavar="true|false", help=f"{help} (default: {default}; --no-{name} to turn off)".strip())
    parser.add_argument(f"--no-{name}", dest=dest, action="store_false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    return parse


def add_config_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """One ``--flag`` per TrainConfig field, default from the YAML values (else the dataclass)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_params":
            parser.add_argument(
                "--model-param", action="append", default=[], metavar="KEY=VALUE",
                help="variant hyper-parameter, YAML value (repeatable), e.g. tau=0.25",
            )
            continue
        default = defaults.get(f.name, f.default)
        kind = {"bool": _parse_bool, "int": int, "float": float, "str": str}.get(str(f.type).split(" |")[0], str)
        if kind is _parse_bool and "None" not in str(f.type):
            add_bool_flag(parser, f.name.replace("_", "-"), default)
            continue
        if "None" in str(f.type):
            kind = _optional(kind)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default, help=f"(default: {default})")


def resolve_config(args: argparse.Namespace, yaml_values: dict[str, Any]) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model_params"}
    params = dict(yaml_values.get("model_params") or {})
    for item in getattr(args, "model_param", []):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--model-param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = yaml.safe_load(raw)
    unknown = set(yaml_values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}")
    return TrainConfig(**values, model_params=params).validate()


def save_config(config: TrainConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
