"""The two stages of a run (frozen backbone, then all layers or the top blocks) and the per-epoch history."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
