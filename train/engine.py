"""The two-stage training loop: frozen backbone, then all layers (or the top blocks); selection on a
held-out split.

Every epoch ends with a selection-split evaluation, ``metrics.csv`` / ``metrics.json`` (rewritten
whole from the history, so a kill cannot leave a duplicate row), TensorBoard, and ``checkpoint.pt``
(weights, optimizer, scheduler, history), so ``--resume`` continues a killed run exactly: each
image's augmentation is seeded by (seed, epoch, index), whatever the number of workers. The epoch
with the best selection mAP is saved (atomically) to ``model/``; only that model is evaluated on
the eval split (``eval.json``, per-image scores in ``eval_scores.npz``), which never chooses anything.
The selected epoch's selection-split logits (``selection_scores.npz``, kept with ``model/``) also set
the model's calibration (``mlc.calibration``: per-class thresholds, out-of-distribution threshold),
written into ``model/config.json`` at the end of the run; the eval split never tunes them either.

Stage 2 trains either every layer on (augmented) images (``finetune: all``) or only the backbone's
top blocks and the head on cached outputs of the frozen bottom (``finetune: "top:K"``): exact, since
the cached views are exactly what the top blocks see, and cheap enough for a CPU.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from mlc.calibration import calibrate, decision_report
from mlc.data import build_transforms
from mlc.diagnostics import diagnose
from mlc.embeddings import label_embeddings
from mlc.metrics import evaluate
from mlc.models import MultiLabelModel, create_model, load_model
from mlc.models.base import top_cut, write_calibration
from mlc.models.registry import get_model_class
from mlc.stats import label_statistics
from train.config import TrainConfig, save_config
from train.data import build_splits, verify_images
from train.distributed import DistEnv
from train.features import (
    FeatureSet, cache_key, cached_tensor, extract_view, gather_rows, part_tag, weights_digest,
)

CHECKPOINT = "checkpoint.pt"
# what a run writes into its folder besides config.yaml / split.json (rewritten at its start)
SELECTION_SCORES = "selection_scores.npz"  # the selected epoch's selection-split logits (calibration)
RUN_OUTPUTS = ("model", "model_stage1", "metrics.csv", "metrics.json", CHECKPOINT, CHECKPOINT + ".tmp",
               "eval.json", "eval_scores.npz", SELECTION_SCORES, "tensorboard")
LOG_EVERY = 20  # steps between progress-bar updates (each reads the loss from the device)


@dataclass
class Stage:
    index: int  # 1 = frozen backbone, 2 = all layers / top blocks
    epochs: int
    lr: float
    min_lr: float
    augment: bool
    cut: int | None = None  # stage 2 "top:K": blocks K.. train on cached bottom features

    @property
    def trained_part(self) -> str | None:
        """The part of the backbone this stage trains: None (frozen), "top:K" or "all"."""
        if self.index == 1:
            return None
        return "all" if self.cut is None else f"top:{self.cut}"


@dataclass
class History:
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_map: float = -math.inf
    best_epoch: int = -1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def item_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class EpochSeededSampler(Sampler):
    """Yields (index, seed) pairs: the seed of an item's augmentation depends on (run seed, epoch,
    index) only, so persistent workers, any worker count and ``--resume`` all give the same images."""

    def __init__(self, sampler: DistributedSampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((i, item_seed(self.seed, self.epoch, i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """Dataset wrapper for ``EpochSeededSampler``: seeds torch's RNG per item before transforming."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]


class TrainStep(nn.Module):
    """Loss of one batch as a module, so DistributedDataParallel can sync its gradients.

    The loss and the views it needs belong to the variant (``training_views`` / ``training_loss``);
    this module only produces those views' feature maps, from images or from cached maps.
    """

    def __init__(self, model: MultiLabelModel, config: TrainConfig):
        super().__init__()
        self.model = model
        self.difficult_as_positive = config.difficult_as_positive
        self.cut: int | None = None  # set per stage: cached inputs are bottom-of-cut maps

    def views(self) -> tuple[str, ...]:
        return self.model.training_views()

    def forward(self, targets, images=None, **cached):
        model = self.model
        if images is not None:
            features = {v: model.forward_features(model.view_images(images, v)) for v in self.views()}
        elif self.cut is not None:
            features = {v: model.backbone.forward_top(x, self.cut) for v, x in cached.items()}
        else:
            features = cached
        return model.training_loss(features, targets, self.difficult_as_positive)


class Trainer:
    def __init__(self, config: TrainConfig, env: DistEnv):
        self.config = config
        self.env = env
        self.device = env.device
        self.run_dir = config.run_dir
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else Path(config.output_dir) / config.group / "feature_cache"
        self.autocast = config.amp == "bf16" and (self.device.type == "cuda" or config.amp_on_cpu)
        self._feature_cache: dict[Any, torch.Tensor] = {}
        self._loaders: dict[bool, DataLoader] = {}
        # the part of the backbone that training has changed so far (None / "all" / "top:K"); the
        # cache of a part is exact only while training has not touched it
        self.trained_part: str | None = None

    # -- setup ------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        self.splits, self.split_info = build_splits(
            cfg.dataset, cfg.data_root, cfg.train_split, cfg.eval_split, cfg.selection_fraction, cfg.seed,
            eval_fraction=cfg.eval_fraction,
        )
        if cfg.check_images:
            verify_images([self.splits.train, self.splits.evaluation], threads=max(2, cfg.num_workers))
        classes = self.splits.fit.classes
        stats = label_statistics(self.splits.fit.labels, classes, difficult_as_positive=cfg.difficult_as_positive)
        variant = get_model_class(cfg.variant)
        embeddings = label_embeddings(classes, cfg.embeddings) if variant.needs_embeddings else None
        extra: dict[str, Any] = {}
        if variant.uses_knowledge_graph and cfg.knowledge_graph:
            from mlc.graph import visual_genome_graph

            extra["knowledge_graph"] = visual_genome_graph(cfg.knowledge_graph, classes)
        seed_everything(cfg.seed)
        self.model = create_model(
            cfg.variant, classes=classes, backbone=cfg.backbone, pretrained=cfg.pretrained, image_size=cfg.image_size,
            pooling=cfg.pooling, label_stats=stats, embeddings=embeddings, **cfg.model_params, **extra,
        ).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            # in place (nn.Module.compile): the state_dict keeps its names, so saved models load
            self.model.backbone.compile()
        self.step_module = TrainStep(self.model, cfg)
        norm = self.model.normalization
        self.test_transform = build_transforms(cfg.image_size, train=False, mean=norm.mean, std=norm.std)
        self.train_transform = build_transforms(cfg.image_size, train=True, mean=norm.mean, std=norm.std)
        cut = top_cut(cfg.finetune)
        if cut is not None:
            self.model.backbone._check_cut(cut)
        self.stages = [
            Stage(1, cfg.stage1_epochs, cfg.stage1_lr, cfg.stage1_min_lr, cfg.augment and cfg.stage1_augment),
            # top-block fine-tuning runs on cached (unaugmented) bottom features
            Stage(2, cfg.stage2_epochs, cfg.stage2_lr, cfg.stage2_min_lr, cfg.augment and cut is None, cut),
        ]
        self.per_rank_batch = cfg.batch_size // self.env.world_size
        if self.per_rank_batch * self.env.world_size != cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.env.world_size} processes")

    def stage_of(self, epoch: int) -> tuple[Stage, int]:
        """(stage, epoch within stage) of a 0-based global epoch."""
        for stage in self.stages:
            if epoch < stage.epochs:
                return stage, epoch
            epoch -= stage.epochs
        raise IndexError(epoch)

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def uses_cache(self, stage: Stage) -> bool:
        if stage.cut is not None:
            return True  # top-block fine-tuning is defined on cached bottom features
        return self.config.cache_features and stage.index == 1 and not stage.augment

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        backbone = self.model.backbone
        if stage.index == 1:
            train_backbone: list[nn.Parameter] = []
        elif stage.cut is None:
            train_backbone = list(backbone.parameters())
        else:
            train_backbone = [p for m in backbone.top_modules(stage.cut) for p in m.parameters()]
        ids = {id(p) for p in train_backbone}
        for p in backbone.parameters():
            p.requires_grad_(id(p) in ids)
        return [p for p in self.model.parameters() if p.requires_grad]

    def enter_stage(self, stage: Stage) -> None:
        cfg = self.config
        params = self.trainable_parameters(stage)
        if stage.index == 2:
            self.trained_part = stage.trained_part
            if self.model.backbone_trained is None:  # what a checkpoint must store beyond the packaged weights
                self.model.backbone_trained = self.trained_part
        self.step_module.cut = stage.cut
        if cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=stage.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=stage.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        steps_per_epoch = self.steps_per_epoch()
        if cfg.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, stage.epochs * steps_per_epoch), eta_min=stage.min_lr
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                self.optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.step_gamma
            )
        if self.env.enabled:
            self.trainable = DistributedDataParallel(self.step_module, device_ids=None if self.device.type == "cpu" else [self.device])
        else:
            self.trainable = self.step_module
        self.current_stage = stage.index

    def steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.splits.fit) / self.env.world_size)
        return math.ceil(per_rank / self.per_rank_batch)

    # -- data -------------------------------------------------------------------------------
    def sampler(self, n: int, shuffle: bool) -> DistributedSampler:
        return DistributedSampler(
            range(n), num_replicas=self.env.world_size, rank=self.env.rank, shuffle=shuffle, seed=self.config.seed
        )

    @staticmethod
    def cache_source(trained: str | None) -> tuple[bool, int | None]:
        """(usable, cut): which cached part of a backbone whose ``trained`` part training changed is
        still exact. The whole backbone before stage 2; the bottom below K after a "top:K"
        fine-tune; none after all layers trained."""
        if trained is None:
            return True, None
        if trained == "all":
            return False, None
        return True, top_cut(trained)

    def features(self, split: str, views: tuple[str, ...], cut: int | None, model: MultiLabelModel | None = None,
                 trained: str | None = None) -> FeatureSet:
        """Cached maps of a split's views from the frozen part (the whole backbone, or the blocks
        below ``cut``) of ``model`` (default: the model being trained).

        The fit and selection splits are rows of the training split's cache, so seeds (which
        draw the selection split) share one cache.
        """
        if model is None:
            model, trained = self.model, self.trained_part
        if split == "evaluation":
            dataset, rows = self.splits.evaluation, None
        else:
            dataset = self.splits.train
            rows = self.splits.fit_indices if split == "fit" else self.splits.selection_indices
        dataset = dataset.with_transform(self.test_transform)
        maps = {}
        for view in views:
            key = self.view_features(dataset, view, cut, model, trained)
            if (key, split) not in self._feature_cache:  # rows of the split, pinned once for fast copies
                full = self._feature_cache[key]
                part = full if rows is None else full[torch.from_numpy(rows)]
                self._feature_cache[(key, split)] = part.pin_memory() if self.device.type == "cuda" else part
            maps[view] = self._feature_cache[(key, split)]
        labels = dataset.labels if rows is None else dataset.labels[rows]
        return FeatureSet(views=maps, targets=torch.from_numpy(labels.astype(np.float32)))

    def view_features(self, dataset, view: str, cut: int | None, model: MultiLabelModel, trained: str | None) -> str:
        """Compute (or read) one view's cached maps; returns their key in ``self._feature_cache``."""
        cfg = self.config
        usable, model_cut = self.cache_source(trained)
        if not usable or (model_cut is not None and (cut is None or cut > model_cut)):
            raise RuntimeError(f"the {part_tag(cut)} features of a backbone trained as {trained!r} "
                               "are not its pretrained ones and cannot be cached")
        state = model.backbone.state_dict()
        if cut is not None:  # only the bottom is cached: the top's weights do not change its maps
            top = model.backbone.top_state_names(cut)
            state = {k: v for k, v in state.items() if k not in top}
        weights = f"{cfg.backbone}:{weights_digest(state)}"
        probe = model.view_images(torch.zeros(1, 3, cfg.image_size, cfg.image_size), view)
        key = cache_key(weights, part_tag(cut), cfg.image_size, dataset, view, probe.shape[-1],
                        precision="bf16" if self.autocast else "float32")
        if key not in self._feature_cache:
            backbone = model.backbone
            part = backbone if cut is None else (lambda x: backbone.forward_bottom(x, cut))  # noqa: E731
            backbone.eval()

            def compute() -> torch.Tensor:
                return extract_view(part, lambda x: model.view_images(x, view), dataset, self.device,
                                    cfg.eval_batch_size, cfg.num_workers, self.autocast, progress=self.env.is_main,
                                    desc=f"features ({part_tag(cut)}, {view})")

            tensor = cached_tensor(self.cache_dir, key, compute) if self.env.is_main else None
            self.env.barrier()
            self._feature_cache[key] = tensor if tensor is not None else cached_tensor(self.cache_dir, key, compute)
        return key

    def loader(self, augment: bool) -> DataLoader:
        """One DataLoader per transform, kept for the run (persistent workers)."""
        if augment not in self._loaders:
            cfg = self.config
            dataset = self.splits.fit.with_transform(self.train_transform if augment else self.test_transform)
            sampler = EpochSeededSampler(self.sampler(len(dataset), shuffle=True), cfg.seed)
            self._loaders[augment] = DataLoader(
                SeededItems(dataset), batch_size=self.per_rank_batch, sampler=sampler, num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                prefetch_factor=4 if cfg.num_workers > 0 else None,
            )
        return self._loaders[augment]

    def train_batches(self, stage: Stage, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        if self.uses_cache(stage):
            sampler = self.sampler(len(self.splits.fit), shuffle=True)
            sampler.set_epoch(epoch)
            fs = self.features("fit", self.step_module.views(), stage.cut)
            indices = torch.tensor(list(sampler))
            for start in range(0, len(indices), self.per_rank_batch):
                idx = indices[start:start + self.per_rank_batch]
                batch = {view: gather_rows(maps, idx) for view, maps in fs.views.items()}
                batch["targets"] = fs.targets[idx]
                yield batch
            return
        loader = self.loader(stage.augment)
        loader.sampler.set_epoch(epoch)
        for images, targets in loader:
            yield {"images": images, "targets": targets}

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            if self.config.channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        return out

    # -- loop -------------------------------------------------------------------------------
    def set_train_mode(self, stage: Stage) -> None:
        self.model.train()
        if stage.index == 1 or stage.cut is not None:
            # frozen, or a top-block fine-tune: BatchNorm statistics stay as pretrained
            self.model.backbone.eval()

    def train_epoch(self, stage: Stage, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        seed_everything(self.config.seed * 7919 + epoch)
        self.set_train_mode(stage)
        total = torch.zeros((), device=self.device)  # summed on the device: no host sync per step
        count, steps, start = 0, 0, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch(), desc=f"{self.config.variant} e{epoch + 1}/{self.total_epochs} s{stage.index}",
                   disable=not self.env.is_main, leave=False)
        for batch in self.train_batches(stage, epoch):
            n = batch["targets"].shape[0]
            loss = self.train_step(batch)
            total += loss * n
            count += n
            steps += 1
            bar.update(1)
            if self.env.is_main and steps % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{total.item() / count:.4f}",
                                img_s=f"{count * self.env.world_size / (time.perf_counter() - start):.0f}")
        bar.close()
        mean_loss = total.item() / max(count, 1)
        seconds = time.perf_counter() - start
        return {"train_loss": mean_loss, "train_seconds": seconds,
                "train_images_per_second": count * self.env.world_size / max(seconds, 1e-9)}

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step on a batch (images or cached features); returns the loss (on the device)."""
        batch = self.to_device(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, _ = self.trainable(**batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().float()

    def predict(self, split: str, use_cache: bool, model: MultiLabelModel | None = None,
                trained: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (float32 forward: no autocast) and targets of a split, in dataset order
        (sharded over processes). ``trained``: the part of ``model``'s backbone training changed."""
        logits, targets = self.predict_logits(split, use_cache, model, trained)
        return probabilities(logits), targets

    @torch.no_grad()
    def predict_logits(self, split: str, use_cache: bool, model: MultiLabelModel | None = None,
                       trained: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits (float32 forward) and targets of a split, as ``predict``; the out-of-distribution
        score needs logits, which saturated probabilities cannot give back."""
        if model is None:
            model, trained = self.model, self.trained_part
        model.eval()
        dataset = {"fit": self.splits.fit, "selection": self.splits.selection, "evaluation": self.splits.evaluation}[split]
        sampler = self.sampler(len(dataset), shuffle=False)
        indices = list(sampler)
        scores = []
        if use_cache:
            usable, cut = self.cache_source(trained)
            fs = self.features(split, ("image",), cut, model, trained)
            for start in range(0, len(indices), self.config.eval_batch_size):
                idx = torch.tensor(indices[start:start + self.config.eval_batch_size])
                x = fs.features[idx].to(self.device)
                if cut is not None:
                    x = model.backbone.forward_top(x, cut)
                scores.append(model.forward_head(x).logits.float().cpu())
        else:
            loader = DataLoader(dataset.with_transform(self.test_transform), batch_size=self.config.eval_batch_size,
                                sampler=sampler, num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")
            for images, _ in loader:
                images = self.to_device({"images": images})["images"]
                scores.append(model(images).float().cpu())
        local = (indices, torch.cat(scores).numpy() if scores else np.zeros((0, len(dataset.classes))))
        merged = np.zeros((len(dataset), len(dataset.classes)), dtype=np.float64)
        for idx, part in self.env.all_gather_object(local):
            merged[idx] = part  # DistributedSampler pads by repeating indices: same rows, same values
        return merged, dataset.labels.astype(np.int64)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, history: History) -> None:
        state = {
            "epoch": epoch, "stage": self.current_stage, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "history": _plain(vars(history)), "backbone_trained": self.model.backbone_trained,
            "trained_part": self.trained_part,
        }
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.run_dir / CHECKPOINT)

    def load_checkpoint(self) -> tuple[int, History]:
        """Restore a run from its checkpoint. Read with ``weights_only=True`` (tensors, dicts, lists,
        numbers, strings): a checkpoint someone hands you cannot run code. A file that is not such a
        checkpoint, or does not fit this run, is refused (ValueError: one line) before anything changes."""
        path = self.run_dir / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001  (pickle, zip and EOF errors alike: all mean "not loadable")
            raise ValueError(f"{path} is not a checkpoint that can be loaded safely ({_load_error_reason(err)}); "
                             "remove it to start afresh, or run without --resume") from None
        try:
            return self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            raise ValueError(f"{path} does not fit this run ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else 'bad entry'}); "
                             "remove it to start afresh, or run without --resume") from None

    def _restore(self, state: dict[str, Any]) -> tuple[int, History]:
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict")
        epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        stage, _ = self.stage_of(epoch) if epoch < self.total_epochs else (None, None)
        if stage is not None and stage.index == state["stage"]:  # resume inside the same stage
            self.enter_stage(stage)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.trained_part = state.get("trained_part")
        if "backbone_trained" in state:
            self.model.backbone_trained = state["backbone_trained"]
        else:  # checkpoints written before top-block fine-tuning existed
            self.model.backbone_is_pretrained = state["backbone_is_pretrained"]
        return epoch, History(**state["history"])

    def write_metrics(self, history: History, writer) -> None:
        """metrics.csv / metrics.json rewritten whole from the history (atomic): after a kill and
        ``--resume`` they hold each epoch once, as the checkpoint does."""
        rows = history.rows
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        buffer = io.StringIO()
        w = csv.DictWriter(buffer, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        for name, text in (("metrics.csv", buffer.getvalue()), ("metrics.json", json.dumps(rows, indent=1))):
            tmp = self.run_dir / f"{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.run_dir / name)
        if writer is not None and rows:
            row = rows[-1]
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
            writer.flush()

    # -- public -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, env = self.config, self.env
        started = time.perf_counter()
        self.build()
        start_epoch, history = 0, History()
        resuming = resume and (self.run_dir / CHECKPOINT).is_file()
        if resuming:  # before the folder changes: a refused checkpoint leaves it as it was
            start_epoch, history = self.load_checkpoint()
        if env.is_main:
            if not resuming:
                self.clear_earlier_run(resume)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            self.split_info.save(self.run_dir / "split.json")
        env.barrier()
        writer = None
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        stage_index = getattr(self, "current_stage", None)
        for epoch in range(start_epoch, self.total_epochs):
            stage, _ = self.stage_of(epoch)
            if stage.index != stage_index:
                if stage.index == 2 and (self.run_dir / "model").is_dir():
                    if env.is_main:
                        self.snapshot_stage1()
                    env.barrier()
                    if cfg.stage2_from_best:
                        self.restore_selected()
                self.enter_stage(stage)
                stage_index = stage.index
            row: dict[str, Any] = {"epoch": epoch + 1, "stage": stage.index, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(stage, epoch))
            logits, targets = self.predict_logits("selection", use_cache=self.uses_cache(stage))
            report = evaluate(probabilities(logits), targets, classes=self.splits.fit.classes)
            row.update({"selection_map": report.map, "selection_map_voc": report.map_voc,
                        "selection_cf1": report.cf1, "selection_of1": report.of1})
            history.rows.append(row)
            if report.map > history.best_map:
                history.best_map, history.best_epoch = report.map, epoch + 1
                if env.is_main:
                    self.model.save(self.run_dir / "model", half=cfg.save_half)
                    self.save_selection_scores(logits, targets)
            if env.is_main:
                self.write_metrics(history, writer)
                self.save_checkpoint(epoch + 1, history)
            env.barrier()
        if writer is not None:
            writer.close()
        return self.final_evaluation(history, time.perf_counter() - started)

    def save_selection_scores(self, logits: np.ndarray, targets: np.ndarray) -> None:
        """Keep the selected epoch's selection-split logits (atomically, beside ``model/``): the
        calibration at the end of the run reuses them, also after ``--resume``."""
        tmp = self.run_dir / f".{SELECTION_SCORES}.tmp.npz"
        np.savez_compressed(tmp, logits=logits.astype(np.float32), targets=targets.astype(np.int8),
                            ids=np.array(self.splits.selection.ids))
        tmp.replace(self.run_dir / SELECTION_SCORES)

    def selection_logits(self, best: MultiLabelModel, trained: str | None) -> tuple[np.ndarray, np.ndarray]:
        """The selected epoch's selection-split logits and targets: as saved during training, or (a run
        resumed from a checkpoint written before they were kept) scored again with the saved model."""
        path = self.run_dir / SELECTION_SCORES
        if path.is_file():
            with np.load(path) as saved:
                if list(saved["ids"]) == list(self.splits.selection.ids):
                    return saved["logits"].astype(np.float64), saved["targets"].astype(np.int64)
        usable, cut = self.cache_source(trained)
        use_cache = usable and (cut is not None or (self.config.cache_features and not self.stages[0].augment))
        return self.predict_logits("selection", use_cache=use_cache, model=best.to(self.device), trained=trained)

    def clear_earlier_run(self, resume: bool) -> None:
        """A run starting afresh removes what an earlier run left in its folder (the files this run
        rewrites), and says so: a stale ``model/`` would otherwise become this run's stage-1 model,
        old metrics and TensorBoard events would mix with the new ones."""
        removed = []
        for name in RUN_OUTPUTS:
            path = self.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(name + "/")
            elif path.exists() or path.is_symlink():
                path.unlink()
                removed.append(name)
        for partial in self.run_dir.glob(".model*"):  # what a save killed half-way left (.model.partial-*, .model.old)
            shutil.rmtree(partial, ignore_errors=True)
        if removed:
            why = "--resume found no checkpoint.pt to continue from" if resume else "a new run (no --resume)"
            print(f"note: {self.run_dir} held an earlier run; {why}: removed {', '.join(removed)}", file=sys.stderr)

    def snapshot_stage1(self) -> None:
        """Keep the best frozen-backbone model as ``model_stage1/`` before stage 2 may replace
        ``model/``, so eval.json can report frozen against fine-tuned."""
        target = self.run_dir / "model_stage1"
        tmp = self.run_dir / ".model_stage1.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.run_dir / "model", tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)

    def restore_selected(self) -> None:
        """Load the selected stage-1 model (``model_stage1/``, as saved) into the model being trained,
        so stage 2 fine-tunes the head the selection split chose rather than the last, overfitted one.
        Read from disk, so a resumed run restores exactly what an uninterrupted one did."""
        from safetensors.torch import load_file

        state = load_file(str(self.run_dir / "model_stage1" / "model.safetensors"))
        own = self.model.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if key in own:
                    own[key].copy_(value.to(own[key].dtype))

    def evaluate_saved(self, model: MultiLabelModel, trained: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Eval-split scores of a model as saved (from the cache when it is exact for that model)."""
        logits, targets = self.evaluate_saved_logits(model, trained)
        return probabilities(logits), targets

    def evaluate_saved_logits(self, model: MultiLabelModel, trained: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Eval-split logits and targets of a model as saved."""
        model = model.to(self.device)
        usable, cut = self.cache_source(trained)
        # the eval split's cached maps are exact when the cached part is untouched by training and
        # training used those maps (no augmentation of the images that part sees)
        use_cache = usable and (cut is not None or (self.config.cache_features and not self.stages[0].augment))
        return self.predict_logits("evaluation", use_cache=use_cache, model=model, trained=trained)

    def final_evaluation(self, history: History, seconds: float) -> dict[str, Any]:
        """Evaluate the selected model (as saved) on the eval split; write eval.json and its scores."""
        cfg = self.config
        best_stage = self.stage_of(history.best_epoch - 1)[0]
        best = load_model(self.run_dir / "model")
        classes = self.splits.fit.classes
        sel_logits, sel_targets = self.selection_logits(best, best_stage.trained_part)
        best.calibration = calibrate(probabilities(sel_logits), sel_logits, sel_targets, classes,
                                     selected_epoch=history.best_epoch)
        logits, targets = self.evaluate_saved_logits(best, best_stage.trained_part)
        scores = probabilities(logits)
        report = evaluate(scores, targets, classes=classes)
        stage1 = None
        if (self.run_dir / "model_stage1").is_dir() and self.stages[1].epochs > 0:
            stage1_rows = [r for r in history.rows if r["stage"] == 1]
            s1_scores, _ = self.evaluate_saved(load_model(self.run_dir / "model_stage1"), None)
            stage1 = {"selected_epoch": 1 + max(range(len(stage1_rows)), key=lambda i: stage1_rows[i]["selection_map"]),
                      "selection_map": max(r["selection_map"] for r in stage1_rows),
                      "metrics": evaluate(s1_scores, targets, classes=self.splits.fit.classes).to_dict()}
        result = {
            "model_name": cfg.variant, "dataset": cfg.dataset, "split": cfg.eval_split, "seed": cfg.seed,
            "num_images": len(self.splits.evaluation), "selected_epoch": history.best_epoch,
            "selected_stage": best_stage.index,
            "backbone_trained": best.backbone_trained, "selection_map": history.best_map, "train_seconds": seconds,
            "split_info": self.split_info.summary(), "metrics": report.to_dict(),
            "stage1": stage1,  # the best frozen-backbone model of the same run (None without stage 2)
            # CF1/OF1/exact match at 0.5 and at the per-class thresholds tuned on the selection split
            **decision_report(scores, logits, targets, best.calibration),
        }
        if self.env.is_main:
            from mlc.hub import model_card

            if cfg.diagnostics:  # what the selected model's maps and graph do (mlc.diagnostics)
                result["diagnostics"] = diagnose(best, self.splits.evaluation, self.device,
                                                 cfg.eval_batch_size, cfg.num_workers, seed=cfg.seed)
            write_calibration(self.run_dir / "model", best.calibration)
            np.savez_compressed(self.run_dir / "eval_scores.npz", scores=scores.astype(np.float32),
                                logits=logits.astype(np.float32), targets=targets.astype(np.int8),
                                ids=np.array(self.splits.evaluation.ids))
            text = json.dumps(result, indent=1)
            (self.run_dir / "eval.json").write_text(text)
            (self.run_dir / "model" / "eval.json").write_text(text)
            config = json.loads((self.run_dir / "model" / "config.json").read_text())
            card = model_card(config, result, cfg.to_dict(), self.split_info.summary(), repo_id=None)
            (self.run_dir / "model" / "README.md").write_text(card)
        return result


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of float32 logits (as the forward pass computes it), as float64."""
    return torch.from_numpy(np.asarray(logits, dtype=np.float32)).sigmoid().numpy().astype(np.float64)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, so ``torch.load(weights_only=True)`` accepts it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def _load_error_reason(err: BaseException) -> str:
    """A short reason why ``torch.load`` refused a file (its messages run to several paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    code = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    if code:  # weights_only refused a global: the file asks to import or call something
        return f"it asks to run code: {code[0][:160]}"
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
