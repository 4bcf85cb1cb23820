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

import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mlc.data import build_transforms
from mlc.embeddings import label_embeddings
from mlc.metrics import evaluate
from mlc.models import MultiLabelModel, create_model
from mlc.models.base import top_cut
from mlc.models.registry import get_model_class
from mlc.stats import label_statistics
from train.checkpoint import Checkpointing
from train.config import TrainConfig, save_config
from train.constants import CHECKPOINT, LOG_EVERY
from train.data import build_splits, verify_images
from train.distributed import DistEnv
from train.evaluation import Evaluation, probabilities
from train.feature_store import FeatureStore
from train.features import (
    gather_rows,
    view_choice,
)
from train.sampling import EpochSeededSampler, SeededItems, item_seed, seed_everything  # noqa: E402,F401
from train.stages import History, Stage  # noqa: E402,F401


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


class Trainer(FeatureStore, Checkpointing, Evaluation):
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
            eval_fraction=cfg.eval_fraction, limit=cfg.limit,
        )
        if cfg.check_images:
            verify_images([self.splits.train, self.splits.evaluation], threads=max(2, cfg.num_workers),
                          progress=self.env.is_main)
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
        self.release_features()  # the previous stage's maps are not what this one reads
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
            n_views = self.cached_views(stage)
            sets = [self.features("fit", self.step_module.views(), stage.cut, augmented=v) for v in range(n_views)]
            indices = torch.tensor(list(sampler))
            # each image's view this epoch: a function of (seed, epoch, index) only
            choice = torch.tensor([view_choice(self.config.seed, epoch, int(i), n_views) for i in indices])
            for start in range(0, len(indices), self.per_rank_batch):
                idx = indices[start:start + self.per_rank_batch]
                if n_views == 1:
                    batch = {view: gather_rows(maps, idx) for view, maps in sets[0].views.items()}
                else:
                    picked = choice[start:start + self.per_rank_batch]
                    batch = {}
                    for view, maps in sets[0].views.items():
                        out = torch.empty((len(idx), *maps.shape[1:]), dtype=maps.dtype)
                        for v, fs in enumerate(sets):
                            rows = (picked == v).nonzero().flatten()
                            if len(rows):
                                out[rows] = fs.views[view][idx[rows]]
                        batch[view] = out
                batch["targets"] = sets[0].targets[idx]
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
                   unit="batch", disable=not self.env.is_main, leave=False)
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


    # -- checkpoints ------------------------------------------------------------------------


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


