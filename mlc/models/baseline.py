"""Baseline: CNN features, global pooling (max, as Viel), one linear layer."""
from __future__ import annotations

import torch
from torch import nn

from mlc.explain import class_activation_maps
from mlc.models.base import ModelOutput, MultiLabelModel
from mlc.models.registry import register_model


@register_model("baseline")
class Baseline(MultiLabelModel):
    has_cam = True
    is_reference = True
    summary = "CNN + linear"
    colour = "tab:gray"
    defaults = {"dropout": 0.0}

    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        """One paragraph for the model card: what this variant computes, with these hyper-parameters."""
        pooled = f"globally {pooling}-pooled"
        return (
            f"**baseline**: the backbone's last feature map is {pooled} and one linear layer gives one "
            "logit per label. Labels are predicted independently: no label graph, no label embeddings. "
            "It is the reference the graph variants have to beat."
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout = nn.Dropout(self.params["dropout"])
        self.fc = nn.Linear(self.num_features, self.num_classes)

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc.weight, self.fc.bias

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        logits = self.fc(self.dropout(self.pool(features)))
        cams = class_activation_maps(features, self.fc.weight) if explain else None
        return ModelOutput(logits=logits, cams=cams)
