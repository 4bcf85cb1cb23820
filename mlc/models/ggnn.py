"""GGNN classifier over a knowledge graph (Marino et al. 2017, in Viel's variant, sec. 2.2).

pooled features -> linear -> |V| node scores h0 -> repeated to s dims -> GGNN for T steps over
A_in / A_out -> linear over concat(h0, flatten(h_T)) -> C logits. The graph is Visual Genome's
(``mlc.graph.visual_genome_graph``) when given, else the training split's co-occurrence graph;
both re-weighted with tau = p = 0.1 (Viel's "GGNN + A''").
"""
from __future__ import annotations

import torch
from torch import nn

from mlc import graph as label_graph
from mlc.models.base import ModelOutput, MultiLabelModel
from mlc.models.layers import GatedGraphNetwork
from mlc.models.registry import register_model
from mlc.stats import LabelStatistics


@register_model("ggnn")
class GGNNClassifier(MultiLabelModel):
    uses_knowledge_graph = True
    summary = "gated graph network over a knowledge graph"
    colour = "tab:purple"
    defaults = {"state_dim": 10, "steps": 3, "graph_tau": 0.1, "graph_p": 0.1, "dropout": 0.0}

    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        """One paragraph for the model card: what this variant computes, with these hyper-parameters."""
        pooled = f"globally {pooling}-pooled"
        return (
            "**ggnn**: a gated graph neural network over a knowledge graph (Marino et al. 2017, in Viel's "
            f"variant). The {pooled} image features are mapped by a linear layer to one score per graph "
            f"node; each score is repeated into a {params.get('state_dim', '?')}-dimensional node state and "
            f"propagated for {params.get('steps', '?')} steps along incoming and outgoing edges (A_in, "
            "A_out) with GRU-style gated updates. A linear layer over the initial node scores and the "
            "flattened final node states gives the label logits. The graph comes from Visual Genome "
            "relationships when available, otherwise from the training split's label co-occurrence; "
            "see *Label graph* below."
        )

    def __init__(self, *args, knowledge_graph=None, **kwargs):
        """``knowledge_graph``: a ``mlc.graph.KnowledgeGraph`` (e.g. Visual Genome) whose first C nodes are the labels."""
        self._knowledge_graph = knowledge_graph
        super().__init__(*args, **kwargs)
        if "a_in" not in self.graph:
            raise ValueError("ggnn needs label_stats (training-split counts), a knowledge graph, or a saved graph")
        num_nodes = self.graph["a_in"].shape[0]
        s = self.params["state_dim"]
        self.dropout = nn.Dropout(self.params["dropout"])  # on pooled features
        self.to_nodes = nn.Linear(self.num_features, num_nodes)
        self.ggnn = GatedGraphNetwork(
            s, torch.from_numpy(self.graph["a_in"]), torch.from_numpy(self.graph["a_out"]), steps=self.params["steps"]
        )
        self.output = nn.Linear(num_nodes + num_nodes * s, self.num_classes)

    def build_graph(self, label_stats):
        kg = self._knowledge_graph
        source = "visual_genome"
        if kg is not None:
            kg = label_graph.KnowledgeGraph.from_dict(kg) if isinstance(kg, dict) else kg
        elif label_stats is not None:
            stats = LabelStatistics.from_dict(label_stats)
            kg = label_graph.cooccurrence_knowledge_graph(stats.counts, stats.cooccurrence, self.classes)
            source = "cooccurrence"
        else:
            return None
        kg = label_graph.reweight_knowledge_graph(kg, tau=self.params["graph_tau"], p=self.params["graph_p"])
        return {"nodes": list(kg.nodes), "a_in": kg.a_in, "a_out": kg.a_out, "source": source}

    no_graph_description = "no edges (A_in = A_out = 0): each node updated from itself"

    @classmethod
    def graph_card(cls, config):
        graph, params = config.get("graph") or {}, config.get("params") or {}
        if "a_in" not in graph:
            return ["Not stored in this checkpoint."]
        source = {"visual_genome": "Visual Genome relationships", "cooccurrence":
                  "label co-occurrence in the training split (P(j | i))"}.get(graph.get("source"), "n/a")
        return [
            f"- source: {source}, thresholded at tau = {params.get('graph_tau', 'n/a')} and re-weighted "
            f"with p = {params.get('graph_p', 'n/a')}",
            f"- {len(graph['a_in'])} nodes ({len(config.get('classes') or [])} of them the labels), "
            f"{label_graph.count_edges(graph['a_in'])} directed edges",
        ]

    def graph_edges(self):
        """No edges: every node state is updated from itself only."""
        no_edges = torch.zeros_like(self.ggnn.a_in)
        return [(self.ggnn, "a_in", no_edges), (self.ggnn, "a_out", no_edges)]

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        h0 = self.to_nodes(self.dropout(self.pool(features)))  # (B, V)
        h = h0.unsqueeze(-1).expand(-1, -1, self.params["state_dim"]).contiguous()
        h_t = self.ggnn(h)
        return ModelOutput(logits=self.output(torch.cat([h0, h_t.flatten(1)], dim=1)))
