"""Losses: multi-label BCE and G-CAM's attention consistency (flip and scale)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mlc.explain import class_activation_maps, map_transform


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor, difficult_as_positive: bool = True) -> torch.Tensor:
    """BCE over (B, C); targets in {1, 0, -1}: -1 (VOC difficult) counts as positive, or is ignored."""
    if difficult_as_positive:
        return F.binary_cross_entropy_with_logits(logits, (targets != 0).to(logits.dtype))
    mask = (targets >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0).to(logits.dtype), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def attention_consistency_loss(maps: torch.Tensor, maps_of_transformed: torch.Tensor, transform: str = "flip") -> torch.Tensor:
    """L_A = mean over classes and positions of (T(Q(I)) - Q(T(I)))^2.

    ``maps`` are CAMs of the image, ``maps_of_transformed`` CAMs of the transformed image;
    ``transform`` is "flip" (mirror the maps) or "scale" (resize the maps to the other's size).
    """
    mapped = map_transform(maps, transform, like=maps_of_transformed)
    return (mapped - maps_of_transformed).pow(2).mean()


@dataclass
class GCAMLoss:
    """(1 - lambda) BCE + lambda L_A, with L_A the SUM of the flip and scale branches present.

    G-CAM (eq. 5) adds the two consistency terms, so each carries the full lambda; ``reduction=
    "mean"`` averages them instead (each gets lambda / 2), the form this project used before.
    """

    weight: float = 0.4
    difficult_as_positive: bool = True
    reduction: str = "sum"  # "sum" (paper) | "mean"

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"G-CAM consistency reduction must be 'sum' or 'mean', got {self.reduction!r}")

    def __call__(
        self,
        model,
        features: torch.Tensor,
        targets: torch.Tensor,
        flipped_features: torch.Tensor | None = None,
        scaled_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (loss, logits of the untransformed branch, detached parts for logging).

        The parts stay tensors on the device: reading them (``.item()``) is the caller's choice,
        so a training step does not wait for the GPU.
        """
        out = model.forward_head(features, explain=True)
        logits, cams = out.logits, out.cams
        bce = multilabel_bce(logits.float(), targets, self.difficult_as_positive)
        weights = model.classifier()[0] if flipped_features is not None or scaled_features is not None else None
        terms = []
        if flipped_features is not None:
            terms.append(attention_consistency_loss(cams, class_activation_maps(flipped_features, weights), "flip"))
        if scaled_features is not None:
            terms.append(attention_consistency_loss(cams, class_activation_maps(scaled_features, weights), "scale"))
        if not terms:
            return bce, logits, {"bce": bce.detach()}
        stacked = torch.stack([t.float() for t in terms])
        consistency = stacked.sum() if self.reduction == "sum" else stacked.mean()
        loss = (1 - self.weight) * bce + self.weight * consistency
        return loss, logits, {"bce": bce.detach(), "consistency": consistency.detach()}
