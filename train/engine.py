"""The two-stage training loop: frozen backbone, then all layers; selection on a held-out split.

Every epoch ends with a selection-split evaluation, a row in ``metrics.csv`` / ``metrics.json`` /
TensorBoard, and ``checkpoint.pt`` (weights, optimizer, scheduler, history), so ``--resume``
continues a killed run exactly: each epoch's data order and augmentation are seeded by the epoch.
The epoch with the best selection mAP is saved to ``model/``; only that model is evaluated on the
eval split (``eval.json``), which never chooses anything.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mlc.data import build_transforms
from mlc.embeddings import label_embeddings
from mlc.losses import GCAMLoss, multilabel_bce
from mlc.metrics import evaluate
from mlc.models import MultiLabelModel, create_model, load_model
from mlc.stats import label_statistics
from train.config import TrainConfig, save_config
from train.data import build_splits
from train.distributed import DistEnv
from train.features import FeatureSet, cache_key, cached_tensor, extract_view, scale_images

CHECKPOINT = "checkpoint.pt"


@dataclass
class Stage:
    index: int  # 1 = frozen backbone, 2 = all layers
    epochs: int
    lr: float
    min_lr: float
    augment: bool


@dataclass
class History:
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_map: float = -math.inf
    best_epoch: int = -1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class TrainStep(nn.Module):
    """Loss of one batch as a module, so DistributedDataParallel can sync its gradients."""

    def __init__(self, model: MultiLabelModel, config: TrainConfig):
        super().__init__()
        self.model = model
        self.difficult_as_positive = config.difficult_as_positive
        self.gcam = model.model_name == "gcam"
        params = model.params
        self.gcam_loss = GCAMLoss(params.get("consistency_weight", 0.4), config.difficult_as_positive)
        scales = params.get("scales", [])
        self.scale = int(scales[1]) if self.gcam and len(scales) > 1 else None
        self.flip = bool(params.get("flip", True)) if self.gcam else False

    def views(self) -> tuple[str, ...]:
        return ("image",) + (("flipped",) if self.flip else ()) + (("scaled",) if self.scale else ())

    def forward(self, targets, images=None, features=None, flipped=None, scaled=None):
        model = self.model
        if features is None:
            features = model.forward_features(images)
            if self.flip:
                flipped = model.forward_features(images.flip(-1))
            if self.scale:
                scaled = model.forward_features(scale_images(images, self.scale))
        if self.gcam:
            loss, logits, _ = self.gcam_loss(model, features, targets, flipped, scaled)
            return loss, logits
        logits = model.forward_head(features).logits
        return multilabel_bce(logits.float(), targets, self.difficult_as_positive), logits


class Trainer:
    def __init__(self, config: TrainConfig, env: DistEnv):
        self.config = config
        self.env = env
        self.device = env.device
        self.run_dir = config.run_dir
        self.cache_dir = Path(config.output_dir) / config.group / "feature_cache"
        self.autocast = config.amp == "bf16" and self.device.type == "cuda"
        self._feature_cache: dict[str, torch.Tensor] = {}

    # -- setup ------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        self.splits, self.split_info = build_splits(
            cfg.dataset, cfg.data_root, cfg.train_split, cfg.eval_split, cfg.selection_fraction, cfg.seed
        )
        classes = self.splits.fit.classes
        stats = label_statistics(self.splits.fit.labels, classes, difficult_as_positive=cfg.difficult_as_positive)
        needs_embeddings = cfg.variant in ("ssgrl", "mlgcn", "gcam")
        embeddings = label_embeddings(classes, cfg.embeddings) if needs_embeddings else None
        extra: dict[str, Any] = {}
        if cfg.variant == "ggnn" and cfg.knowledge_graph:
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
            self.model.backbone = torch.compile(self.model.backbone)
        self.step_module = TrainStep(self.model, cfg)
        norm = self.model.normalization
        self.test_transform = build_transforms(cfg.image_size, train=False, mean=norm.mean, std=norm.std)
        self.train_transform = build_transforms(cfg.image_size, train=True, mean=norm.mean, std=norm.std)
        self.stages = [
            Stage(1, cfg.stage1_epochs, cfg.stage1_lr, cfg.stage1_min_lr, cfg.augment and cfg.stage1_augment),
            Stage(2, cfg.stage2_epochs, cfg.stage2_lr, cfg.stage2_min_lr, cfg.augment),
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
        return self.config.cache_features and stage.index == 1 and not stage.augment

    def enter_stage(self, stage: Stage) -> None:
        cfg = self.config
        frozen = stage.index == 1
        for p in self.model.backbone.parameters():
            p.requires_grad_(not frozen)
        if not frozen:
            self.model.backbone_is_pretrained = False
        params = [p for p in self.model.parameters() if p.requires_grad]
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

    def features(self, split: str, views: tuple[str, ...]) -> FeatureSet:
        """Frozen-backbone maps of a split (computed by the main process once, then read from disk)."""
        dataset = getattr(self.splits, split).with_transform(self.test_transform)
        targets = torch.from_numpy(dataset.labels.astype(np.float32))
        return FeatureSet(features=self.view_features(dataset, "image"), targets=targets,
                          flipped=self.view_features(dataset, "flipped") if "flipped" in views else None,
                          scaled=self.view_features(dataset, "scaled") if "scaled" in views else None)

    def view_features(self, dataset, view: str) -> torch.Tensor:
        cfg = self.config
        scale = self.step_module.scale if view == "scaled" else None
        seed_tag = "pretrained" if cfg.pretrained else f"seed{cfg.seed}"
        key = cache_key(f"{cfg.backbone}:{seed_tag}", cfg.image_size, dataset, view, scale)
        if key not in self._feature_cache:
            compute = lambda: extract_view(  # noqa: E731
                self.model.backbone, dataset, self.device, cfg.eval_batch_size, cfg.num_workers, view, scale,
                self.autocast, progress=self.env.is_main,
            )
            tensor = cached_tensor(self.cache_dir, key, compute) if self.env.is_main else None
            self.env.barrier()
            self._feature_cache[key] = tensor if tensor is not None else cached_tensor(self.cache_dir, key, compute)
        return self._feature_cache[key]

    def train_batches(self, stage: Stage, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        sampler = self.sampler(len(self.splits.fit), shuffle=True)
        sampler.set_epoch(epoch)
        if self.uses_cache(stage):
            fs = self.features("fit", self.step_module.views())
            indices = list(sampler)
            for start in range(0, len(indices), self.per_rank_batch):
                idx = torch.tensor(indices[start:start + self.per_rank_batch])
                batch = {"features": fs.features[idx], "targets": fs.targets[idx]}
                if fs.flipped is not None:
                    batch["flipped"] = fs.flipped[idx]
                if fs.scaled is not None:
                    batch["scaled"] = fs.scaled[idx]
                yield batch
            return
        dataset = self.splits.fit.with_transform(self.train_transform if stage.augment else self.test_transform)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch * 101 + self.env.rank)
        loader = DataLoader(
            dataset, batch_size=self.per_rank_batch, sampler=sampler, num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False, generator=generator,
            prefetch_factor=4 if self.config.num_workers > 0 else None,
        )
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
    def train_epoch(self, stage: Stage, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        seed_everything(self.config.seed * 7919 + epoch)
        self.model.train()
        if stage.index == 1:
            self.model.backbone.eval()  # frozen: BatchNorm statistics stay as pretrained
        total, count, start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch(), desc=f"{self.config.variant} e{epoch + 1}/{self.total_epochs} s{stage.index}",
                   disable=not self.env.is_main, leave=False)
        for batch in self.train_batches(stage, epoch):
            loss = self.train_step(batch)
            n = batch["targets"].shape[0]
            total += loss.item() * n
            count += n
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}", img_s=f"{count * self.env.world_size / (time.perf_counter() - start):.0f}")
        bar.close()
        seconds = time.perf_counter() - start
        return {"train_loss": total / max(count, 1), "train_seconds": seconds,
                "train_images_per_second": count * self.env.world_size / max(seconds, 1e-9)}

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step on a batch (images or cached features); returns the loss."""
        batch = self.to_device(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, _ = self.trainable(**batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, split: str, use_cache: bool, model: MultiLabelModel | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and targets of a split, in dataset order (sharded over processes)."""
        model = model or self.model
        model.eval()
        dataset = getattr(self.splits, split)
        sampler = self.sampler(len(dataset), shuffle=False)
        indices = list(sampler)
        scores = []
        if use_cache:
            fs = self.features(split, ("image",))
            for start in range(0, len(indices), self.config.eval_batch_size):
                idx = torch.tensor(indices[start:start + self.config.eval_batch_size])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    scores.append(model.forward_head(fs.features[idx].to(self.device)).logits.float().sigmoid().cpu())
        else:
            loader = DataLoader(dataset.with_transform(self.test_transform), batch_size=self.config.eval_batch_size,
                                sampler=sampler, num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")
            for images, _ in loader:
                images = self.to_device({"images": images})["images"]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    scores.append(model(images).float().sigmoid().cpu())
        local = (indices, torch.cat(scores).numpy() if scores else np.zeros((0, len(dataset.classes))))
        merged = np.zeros((len(dataset), len(dataset.classes)), dtype=np.float64)
        for idx, part in self.env.all_gather_object(local):
            merged[idx] = part  # DistributedSampler pads by repeating indices: same rows, same values
        return merged, dataset.labels.astype(np.int64)

    def evaluate_split(self, split: str, use_cache: bool, model: MultiLabelModel | None = None):
        scores, targets = self.predict(split, use_cache, model)
        return evaluate(scores, targets, classes=self.splits.fit.classes)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, history: History) -> None:
        state = {
            "epoch": epoch, "stage": self.current_stage, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "history": vars(history), "backbone_is_pretrained": self.model.backbone_is_pretrained,
        }
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.run_dir / CHECKPOINT)

    def load_checkpoint(self) -> tuple[int, History]:
        state = torch.load(self.run_dir / CHECKPOINT, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        stage, _ = self.stage_of(state["epoch"]) if state["epoch"] < self.total_epochs else (None, None)
        if stage is not None and stage.index == state["stage"]:  # resume inside the same stage
            self.enter_stage(stage)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.model.backbone_is_pretrained = state["backbone_is_pretrained"]
        return state["epoch"], History(**state["history"])

    def log_epoch(self, row: dict[str, Any], writer) -> None:
        csv_path = self.run_dir / "metrics.csv"
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
            writer.flush()

    # -- public -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, env = self.config, self.env
        started = time.perf_counter()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        self.build()
        if env.is_main:
            self.split_info.save(self.run_dir / "split.json")
        start_epoch, history = 0, History()
        has_checkpoint = (self.run_dir / CHECKPOINT).is_file()
        if resume and has_checkpoint:
            start_epoch, history = self.load_checkpoint()
        elif env.is_main and not resume:
            for stale in ("metrics.csv", "metrics.json", CHECKPOINT):
                (self.run_dir / stale).unlink(missing_ok=True)
        env.barrier()
        writer = None
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        stage_index = getattr(self, "current_stage", None)
        for epoch in range(start_epoch, self.total_epochs):
            stage, _ = self.stage_of(epoch)
            if stage.index != stage_index:
                self.enter_stage(stage)
                stage_index = stage.index
            row: dict[str, Any] = {"epoch": epoch + 1, "stage": stage.index, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(stage, epoch))
            report = self.evaluate_split("selection", use_cache=self.uses_cache(stage))
            row.update({"selection_map": report.map, "selection_map_voc": report.map_voc,
                        "selection_cf1": report.cf1, "selection_of1": report.of1})
            history.rows.append(row)
            if env.is_main:
                if report.map > history.best_map:
                    history.best_map, history.best_epoch = report.map, epoch + 1
                    self.model.save(self.run_dir / "model", half=cfg.save_half)
                self.log_epoch(row, writer)
                (self.run_dir / "metrics.json").write_text(json.dumps(history.rows, indent=1))
                self.save_checkpoint(epoch + 1, history)
            else:
                history.best_map = max(history.best_map, report.map)
            env.barrier()
        if writer is not None:
            writer.close()
        return self.final_evaluation(history, time.perf_counter() - started)

    def final_evaluation(self, history: History, seconds: float) -> dict[str, Any]:
        """Evaluate the selected model (as saved) on the eval split and write eval.json."""
        cfg = self.config
        best = load_model(self.run_dir / "model").to(self.device)
        use_cache = cfg.cache_features and best.backbone_is_pretrained and not self.stages[0].augment
        report = self.evaluate_split("evaluation", use_cache=use_cache, model=best)
        result = {
            "model_name": cfg.variant, "dataset": cfg.dataset, "split": cfg.eval_split,
            "num_images": len(self.splits.evaluation), "selected_epoch": history.best_epoch,
            "selection_map": history.best_map, "train_seconds": seconds,
            "split_info": self.split_info.summary(), "metrics": report.to_dict(),
        }
        if self.env.is_main:
            from mlc.hub import model_card

            text = json.dumps(result, indent=1)
            (self.run_dir / "eval.json").write_text(text)
            (self.run_dir / "model" / "eval.json").write_text(text)
            config = json.loads((self.run_dir / "model" / "config.json").read_text())
            card = model_card(config, result, cfg.to_dict(), self.split_info.summary(), repo_id=None)
            (self.run_dir / "model" / "README.md").write_text(card)
        return result
