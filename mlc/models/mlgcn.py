"""ML-GCN (Chen et al. 2019) and G-CAM (ICMR 2021): a GCN over label embeddings produces the classifiers.

Two GCN layers map the (C, E) label embeddings to classifiers W (C, N) through the re-weighted
adjacency A'' (``mlc.graph.gcn_adjacency``); logits = pooled features . W^T + b (Viel eq. 12).
G-CAM has the same network; it differs in training (``mlc.losses.attention_consistency_loss``).
"""
from __future__ import annotations

import torch
from torch import nn

from mlc import graph as label_graph
from mlc.explain import class_activation_maps, rescale
from mlc.losses import GCAMLoss
from mlc.models.base import ModelOutput, MultiLabelModel
from mlc.models.layers import GraphConvolution
from mlc.models.registry import register_model
from mlc.stats import LabelStatistics


@register_model("mlgcn")
class MLGCN(MultiLabelModel):
    has_cam = True
    needs_embeddings = True
    colour = "tab:blue"
    summary = "GCN-produced classifiers"
    defaults = {"tau": 0.4, "p": 0.25, "adjacency_style": "paper", "hidden_dim": None, "negative_slope": 0.2, "dropout": 0.0}

    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        """One paragraph for the model card: what this variant computes, with these hyper-parameters."""
        return (
            f"**{cls.model_name}**: ML-GCN (Chen et al. 2019). A two-layer graph convolutional network maps the "
            "label word embeddings through the re-weighted label co-occurrence graph A'' "
            "(embedding size -> N/2 -> N, LeakyReLU between the layers) to one N-dimensional classifier "
            f"per label; a label's logit is the dot product of the globally {pooling}-pooled image feature with its "
            "classifier (plus a bias). Labels that co-occur get related classifiers through the graph."
        )

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

    no_graph_description = "A = I: each label's classifier from its own word embedding"

    @classmethod
    def graph_card(cls, config):
        graph, params = config.get("graph") or {}, config.get("params") or {}
        if "adjacency" not in graph:
            return ["Not stored in this checkpoint."]
        how = ("the papers' re-weighting: self-loop 1 - p, neighbours share p"
               if params.get("adjacency_style", "paper") == "paper"
               else "the public ML-GCN code's re-weighting and symmetric normalisation")
        return [
            f"- source: label co-occurrence in the training split, P(j | i) = n_ij / n_i, thresholded at "
            f"tau = {params.get('tau', 'n/a')} and re-weighted with p = {params.get('p', 'n/a')} ({how})",
            f"- {len(graph['adjacency'])} label nodes, {label_graph.count_edges(graph['adjacency'])} directed edges",
        ]

    def graph_edges(self):
        """A = I: each label's classifier from its own embedding alone."""
        return [(self, "adjacency", torch.eye(self.num_classes))]

    def randomization_parameters(self):
        """The GCN's output layer, which produces the classifiers W (the sanity check's "classifier")."""
        return [(f"gc2.{n}", p) for n, p in self.gc2.named_parameters()]

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
    """ML-GCN classifiers trained with CAM attention consistency under flip and scale.

    The loss (``mlc.losses.GCAMLoss``) compares the CAMs of the image with those of its mirror and
    of a rescaled copy. The second scale is a ratio of the input size (the paper's 192 px at 224,
    so 384 px at 448); ``scale_size`` pins it to an absolute size instead, and the legacy
    ``scales: [224, 192]`` of older checkpoints means that absolute size.
    """

    trained_for_consistency = True
    colour = "tab:orange"
    summary = "ML-GCN trained for CAM flip and scale consistency"
    defaults = {
        **MLGCN.defaults, "consistency_weight": 0.4, "flip": True, "scale_ratio": 192 / 224, "scale_size": None,
        "consistency_reduction": "sum", "scales": None,
    }

    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        if params.get("scale_size") or params.get("scales"):
            size = params.get("scale_size") or (params.get("scales") or [None, "?"])[1]
            second = f"a second scale of {size} px whatever the input size"
        elif params.get("scale_ratio"):
            second = f"a second scale of {float(params['scale_ratio']):.3g} x the input size (192 px at 224)"
        else:
            second = "no second scale"
        summed = params.get("consistency_reduction", "sum") != "mean"
        return super().describe(params, pooling) + (
            " **G-CAM** (ICMR 2021) keeps this network and changes the training: an attention "
            "consistency loss asks the class activation maps of an image and of its transformed copy "
            f"(horizontal flip{'' if params.get('flip', True) else ' off'}; {second}) to agree once mapped "
            "back, with loss = (1 - lambda) BCE + lambda L_A, L_A the "
            + ("sum of the flip and scale terms as in the paper" if summed else "mean of the flip and scale terms")
            + f", lambda = {params.get('consistency_weight', '?')}. Inference is the single-branch ML-GCN forward pass."
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        legacy = self.params.get("scales")
        if legacy and self.params.get("scale_size") is None and len(legacy) > 1:
            self.params["scale_size"] = int(legacy[1])
        self.params["scales"] = None
        ratio = self.params["scale_ratio"]
        if ratio is not None and not 0 < float(ratio) <= 4:
            raise ValueError(f"gcam: scale_ratio must be in (0, 4] or null, got {ratio!r}")
        self.consistency = GCAMLoss(float(self.params["consistency_weight"]),
                                    reduction=self.params["consistency_reduction"])

    def scaled_size(self, size: int) -> int | None:
        """Side of the rescaled view for inputs of ``size`` px (None: no scale branch)."""
        if self.params["scale_size"]:
            return int(self.params["scale_size"])
        ratio = self.params["scale_ratio"]
        return None if ratio is None else max(32, int(round(size * float(ratio))))

    def training_views(self) -> tuple[str, ...]:
        views = ("image",) + (("flipped",) if self.params["flip"] else ())
        return views + (("scaled",) if self.scaled_size(self.image_size) else ())

    def view_images(self, images: torch.Tensor, view: str) -> torch.Tensor:
        if view == "flipped":
            return images.flip(-1)
        if view == "scaled":
            return rescale(images, self.scaled_size(images.shape[-1]))
        return super().view_images(images, view)

    def training_loss(self, features, targets, difficult_as_positive=True):
        self.consistency.difficult_as_positive = difficult_as_positive
        loss, logits, _ = self.consistency(self, features["image"], targets, features.get("flipped"), features.get("scaled"))
        return loss, logits
