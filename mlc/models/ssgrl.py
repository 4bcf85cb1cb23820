"""SSGRL (Chen et al. 2019): semantic decoupling + semantic interaction.

Semantic decoupling: label-embedding guided attention gives one feature vector f^c per class.
Semantic interaction: a GGNN over the C classes with A_in = P(j | i) (training-split conditional
probabilities, no threshold) and A_out = its transpose, T steps, node states initialised with f^c.
Output: one linear unit per class over [f^c, h^c_T] (Viel sec. 2.3.2). All of it trains (Viel's code
never unfroze the SI module for 101-layer backbones because of a typo in its name).
"""
from __future__ import annotations

import torch
from torch import nn

from mlc import graph as label_graph
from mlc.models.base import ModelOutput, MultiLabelModel
from mlc.models.layers import GatedGraphNetwork, SemanticDecoupling
from mlc.models.registry import register_model
from mlc.stats import LabelStatistics


@register_model("ssgrl")
class SSGRL(MultiLabelModel):
    colour = "tab:brown"
    summary = "semantic decoupling + interaction"
    # interaction_dim: None = the paper (GGNN over N-dim features); a smaller value projects f^c first,
    # which cuts the GGNN's 9 N^2 weights (15M for N = 1280) for CPU training and small checkpoints.
    # dropout: on the decoupled class features f^c, the same regularisation the other heads get on
    # their pooled features (frozen-feature training overfits without it).
    needs_embeddings = True
    defaults = {"hidden_dim": 1024, "steps": 3, "interaction_dim": None, "dropout": 0.0}

    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        """One paragraph for the model card: what this variant computes, with these hyper-parameters."""
        return (
            "**ssgrl**: semantic-specific graph representation learning (Chen et al. 2019). *Semantic "
            "decoupling*: for every label, an attention map over the feature-map positions, guided by the "
            f"label's word embedding (low-rank bilinear, hidden size {params.get('hidden_dim', '?')}), "
            "pools one feature vector per label. *Semantic interaction*: a gated graph neural network over "
            "the labels, initialised with those vectors"
            + (f" (first projected to {params['interaction_dim']} dimensions)" if params.get("interaction_dim") else "")
            + ", propagates for "
            f"{params.get('steps', '?')} steps along the training split's conditional probabilities "
            "P(j | i) (incoming) and their transpose (outgoing), without a threshold. Each label's logit "
            "is a linear function of its decoupled feature and its final graph state."
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.embeddings is None or self.embeddings.shape[0] != self.num_classes:
            raise ValueError(f"ssgrl needs label embeddings of shape (C={self.num_classes}, E)")
        if "a_in" not in self.graph:
            raise ValueError("ssgrl needs label_stats (training-split counts) or a saved graph")
        n = self.num_features
        self.register_buffer("label_embeddings", torch.from_numpy(self.embeddings), persistent=False)
        self.semantic_decoupling = SemanticDecoupling(n, self.embeddings.shape[1], self.params["hidden_dim"])
        k = self.params["interaction_dim"] or n
        self.interaction_input = nn.Linear(n, k) if k != n else nn.Identity()
        self.semantic_interaction = GatedGraphNetwork(
            k, torch.from_numpy(self.graph["a_in"]), torch.from_numpy(self.graph["a_out"]), steps=self.params["steps"]
        )
        self.class_weight = nn.Parameter(torch.empty(self.num_classes, n + k))
        self.class_bias = nn.Parameter(torch.zeros(self.num_classes))
        self.dropout = nn.Dropout(self.params["dropout"])
        nn.init.normal_(self.class_weight, std=(n + k) ** -0.5)

    def build_graph(self, label_stats):
        if label_stats is None:
            return None
        stats = LabelStatistics.from_dict(label_stats)
        a_in, a_out = label_graph.ssgrl_adjacency(stats.counts, stats.cooccurrence)
        return {"a_in": a_in, "a_out": a_out}

    no_graph_description = "no edges (A_in = A_out = 0): each label's state updated from its own feature"

    @classmethod
    def graph_card(cls, config):
        graph = config.get("graph") or {}
        if "a_in" not in graph:
            return ["Not stored in this checkpoint."]
        return [
            "- source: label co-occurrence in the training split, the conditional probabilities "
            "P(j | i) = n_ij / n_i as edge weights (no threshold, no re-weighting)",
            f"- {len(graph['a_in'])} label nodes, {label_graph.count_edges(graph['a_in'])} directed edges (non-zero P(j | i))",
        ]

    def graph_edges(self):
        """No edges: semantic interaction updates each label's state from its own feature only."""
        no_edges = torch.zeros_like(self.semantic_interaction.a_in)
        return [(self.semantic_interaction, "a_in", no_edges), (self.semantic_interaction, "a_out", no_edges)]

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        decoupled, attention = self.semantic_decoupling(features, self.label_embeddings)  # (B, C, N)
        decoupled = self.dropout(decoupled)
        h_t = self.semantic_interaction(self.interaction_input(decoupled))
        joint = torch.cat([decoupled, h_t], dim=-1)  # (B, C, N + k)
        logits = (joint * self.class_weight).sum(-1) + self.class_bias
        return ModelOutput(logits=logits, attention=attention if explain else None)
