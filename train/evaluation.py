"""Scoring a split with the model being trained or a saved one, and the run's final evaluation
(eval.json, eval_scores.npz, diagnostics) of the selected model on the evaluation split.

A part of ``train.engine.Trainer`` (a mixin): its methods read the trainer's state as ``self``."""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlc.calibration import calibrate, decision_report
from mlc.diagnostics import diagnose
from mlc.formats import EVAL_FORMAT
from mlc.metrics import evaluate
from mlc.models import MultiLabelModel, load_model
from mlc.models.base import write_calibration
from train.constants import SELECTION_SCORES
from train.stages import History


class Evaluation:
    """Scoring splits, the run's metrics files, and the final evaluation of the selected model."""

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
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"{self.config.variant} predict {split}", unit="batch", leave=False,
                       disable=not self.env.is_main or len(loader) < 2)
            for images, _ in bar:
                images = self.to_device({"images": images})["images"]
                scores.append(model(images).float().cpu())
        local = (indices, torch.cat(scores).numpy() if scores else np.zeros((0, len(dataset.classes))))
        merged = np.zeros((len(dataset), len(dataset.classes)), dtype=np.float64)
        for idx, part in self.env.all_gather_object(local):
            merged[idx] = part  # DistributedSampler pads by repeating indices: same rows, same values
        return merged, dataset.labels.astype(np.int64)

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
            "format_version": EVAL_FORMAT, "model_name": cfg.variant, "dataset": cfg.dataset, "split": cfg.eval_split, "seed": cfg.seed,
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
                                                 cfg.eval_batch_size, cfg.num_workers, seed=cfg.seed, progress=True)
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


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of float32 logits (as the forward pass computes it), as float64."""
    return torch.from_numpy(np.asarray(logits, dtype=np.float32)).sigmoid().numpy().astype(np.float64)
