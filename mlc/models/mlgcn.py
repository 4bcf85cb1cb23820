"""ML-GCN (Chen et al. 2019) and G-CAM (ICMR 2021): a GCN over label embeddings produces the classifiers.

Two GCN layers map the (C, E) label embeddings to classifiers W (C, N) through the re-weighted
adjacency A'' (``mlc.graph.gcn_adjacency``); logits = pooled features . W^T + b (Viel eq. 12).
G-CAM has the same network; it differs in training (``mlc.losses.attention_consistency_loss``).
"""
from __future__ import annotations

import torch
from torch import nn

from mlc import graph as label_graph
from mlc.explain import class_activation_maps
from mlc.models.base import ModelOutput, MultiLabelModel
from mlc.models.layers import GraphConvolution
from mlc.models.registry import register_model
from mlc.stats import LabelStatistics


@register_model("mlgcn")
class MLGCN(MultiLabelModel):
    has_cam = True
    defaults = {"tau": 0.4, "p": 0.25, "adjacency_style": "paper", "hidden_dim": None, "negative_slope": 0.2, "dropout": 0.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.embeddings is None or self.embeddings.shape[0] != self.num_classes:
            raise ValueError(f"{self.model_name} needs label embeddings of shape (C={self.num_classes}, E)")
        if "adjacency" not in self.graph:
            raise ValueError(f"{self.model_name} needs label_stats (training-split counts) or a saved graph")
        hidden = self.params["hidden_dim"] or self.num_features // 2  # [E -> N/2 -> N]
        self.register_buffer("label_embeddings", torch.from_numpy(self.embeddings), persistent=False)
        self.register_buffer("adjacency", torch.from_numpy(self.graph["adjacency"]), persistent=False)
        self.gc1 = GraphConvolution(self.embeddings.shape[1], hidden)
        self.gc2 = GraphConvolution(hidden, self.num_features)
        self.act = nn.LeakyReLU(self.params["negative_slope"])
        self.bias = nn.Parameter(torch.zeros(self.num_classes))
        self.dropout = nn.Dropout(self.params["dropout"])  # on pooled features; regularises frozen-feature training

    def build_graph(self, label_stats):
        if label_stats is None:
            return None
        stats, params = LabelStatistics.from_dict(label_stats), self.params
        adjacency = label_graph.gcn_adjacency(
            stats.counts, stats.cooccurrence, tau=params["tau"], p=params["p"], style=params["adjacency_style"]
        )
        return {"adjacency": adjacency}

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.gc1(self.label_embeddings, self.adjacency))
        return self.gc2(h, self.adjacency), self.bias  # no activation after the last layer

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        weights, bias = self.classifier()
        logits = self.dropout(self.pool(features)) @ weights.t() + bias
        cams = class_activation_maps(features, weights) if explain else None
        return ModelOutput(logits=logits, cams=cams)


@register_model("gcam")
class GCAM(MLGCN):
    """ML-GCN classifiers trained with CAM attention consistency under flip and scale."""

    defaults = {**MLGCN.defaults, "consistency_weight": 0.4, "scales": [224, 192], "flip": True}
