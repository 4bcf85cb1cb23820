"""Which backbone outputs a stage reads from the feature cache, keyed by everything that changes
them, computed once per group and shared by epochs, seeds and variants.

A part of ``train.engine.Trainer`` (a mixin): its methods read the trainer's state as ``self``."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset

from mlc.models import MultiLabelModel
from mlc.models.base import top_cut
from train.features import (
    CachedView,
    FeatureSet,
    cache_key,
    cached_tensor,
    extract_in_chunks,
    extract_view,
    part_tag,
    weights_digest,
)
from train.stages import Stage


class FeatureStore:
    """The backbone outputs a stage reads from the feature cache."""

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
                 trained: str | None = None, augmented: int = 0) -> FeatureSet:
        """Cached maps of a split's views from the frozen part (the whole backbone, or the blocks
        below ``cut``) of ``model`` (default: the model being trained). ``augmented``: which cached
        view of each image (``train.features.CachedView``; 0 = the image itself).

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
        if augmented:
            dataset = CachedView(dataset, augmented)
        maps = {}
        for view in views:
            key = self.view_features(dataset, view, cut, model, trained)
            if (key, split) not in self._feature_cache:  # rows of the split, pinned once for fast copies
                full = self._feature_cache[key]
                part = full if rows is None else full[torch.from_numpy(rows)]
                self._feature_cache[(key, split)] = part.pin_memory() if self.device.type == "cuda" else part
            maps[view] = self._feature_cache[(key, split)]
        labels = self.splits.evaluation.labels if rows is None else self.splits.train.labels[rows]
        return FeatureSet(views=maps, targets=torch.from_numpy(labels.astype(np.float32)))

    def release_features(self) -> None:
        """Free the maps held in memory; a later use reads them back from the disk cache. Called on
        entering a stage: stage 1's whole-backbone maps of every view (GBs at 448 px), held beside
        stage 2's, took G-CAM at Lite2 448 px to 14.5 GB and out of memory."""
        self._feature_cache.clear()

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
        # an augmented view of the images is another view (view 0, the image itself, keeps its old key)
        tag = view if not isinstance(dataset, CachedView) else f"{view}@view{dataset.view}"
        key = cache_key(weights, part_tag(cut), cfg.image_size, dataset, tag, probe.shape[-1],
                        precision="bf16" if self.autocast else "float32")
        if key not in self._feature_cache:
            backbone = model.backbone
            part = backbone if cut is None else (lambda x: backbone.forward_bottom(x, cut))  # noqa: E731
            backbone.eval()

            def compute() -> torch.Tensor:  # in chunks kept on disk: a killed extraction resumes
                return extract_in_chunks(self.cache_dir, key, len(dataset), lambda rows: extract_view(
                    part, lambda x: model.view_images(x, view), Subset(dataset, rows), self.device,
                    cfg.eval_batch_size, cfg.num_workers, self.autocast, progress=self.env.is_main,
                    desc=f"features ({part_tag(cut)}, {tag}, images {rows[0]}-{rows[-1]})"))

            tensor = cached_tensor(self.cache_dir, key, compute) if self.env.is_main else None
            self.env.barrier()
            self._feature_cache[key] = tensor if tensor is not None else cached_tensor(self.cache_dir, key, compute)
        return key

    def cached_views(self, stage: Stage) -> int:
        """How many cached views of each image a stage trains on (augmentation from the cache):
        ``cache_views`` for a top-block fine-tune, else 1 (the frozen stage's full maps are big)."""
        return self.config.cache_views if stage.cut is not None else 1
