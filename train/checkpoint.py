"""Saving and restoring a run: the per-epoch checkpoint (read with ``weights_only``), the
selected model, and clearing what an earlier run left in the folder.

A part of ``train.engine.Trainer`` (a mixin): its methods read the trainer's state as ``self``."""
from __future__ import annotations

import shutil
import sys
from typing import Any

import numpy as np
import torch

from train.constants import CHECKPOINT, RUN_OUTPUTS
from train.stages import History


class Checkpointing:
    """Saving and restoring a run's state, and clearing what an earlier run left."""

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
