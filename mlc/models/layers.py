"""Graph layers shared by the variants: GCN layer, gated graph network, semantic decoupling."""
from __future__ import annotations

import math

import torch
from torch import nn


class GraphConvolution(nn.Module):
    """One GCN layer ``H' = A H W`` (Kipf & Welling; ML-GCN eq. 2 / Viel eq. 11), no activation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        bound = 1.0 / math.sqrt(out_features)  # ML-GCN's initialisation
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        out = adjacency @ (h @ self.weight)
        return out if self.bias is None else out + self.bias


class GatedGraphNetwork(nn.Module):
    """GGNN propagation (Li et al. 2016, Viel eqs. 2-6) over fixed in/out adjacencies.

    Node states ``h`` are (B, V, s). One step, for every node v:
      a_v = [A_in h, A_out h]_v + b                        (message, 2s)
      z_v = sigmoid(W^z a_v + U^z h_v)                     (update gate)
      r_v = sigmoid(W^r a_v + U^r h_v)                     (reset gate)
      h~_v = tanh(W a_v + U (r_v * h_v))                   (the SSGRL code wrongly uses U^r here)
      h_v = (1 - z_v) * h_v + z_v * h~_v
    with ``(A_in h)_v = sum_u A_in[v, u] h_u``.
    """

    def __init__(self, state_dim: int, a_in: torch.Tensor, a_out: torch.Tensor, steps: int = 3):
        super().__init__()
        if a_in.shape != a_out.shape or a_in.ndim != 2 or a_in.shape[0] != a_in.shape[1]:
            raise ValueError(f"A_in / A_out must be equal square matrices, got {tuple(a_in.shape)} and {tuple(a_out.shape)}")
        self.steps = steps
        self.register_buffer("a_in", a_in.float(), persistent=False)
        self.register_buffer("a_out", a_out.float(), persistent=False)
        s = state_dim
        self.message_bias = nn.Parameter(torch.zeros(2 * s))
        self.w_z, self.w_r, self.w_h = (nn.Linear(2 * s, s, bias=False) for _ in range(3))
        self.u_z, self.u_r, self.u_h = (nn.Linear(s, s, bias=False) for _ in range(3))

    def step(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.cat([self.a_in @ h, self.a_out @ h], dim=-1) + self.message_bias
        z = torch.sigmoid(self.w_z(a) + self.u_z(h))
        r = torch.sigmoid(self.w_r(a) + self.u_r(h))
        h_tilde = torch.tanh(self.w_h(a) + self.u_h(r * h))
        return (1 - z) * h + z * h_tilde

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            h = self.step(h)
        return h


class SemanticDecoupling(nn.Module):
    """SSGRL's label-embedding guided attention (Viel eqs. 7-10).

    For class c and position (h, w):
      a~ = w . tanh(P (tanh(U f_hw * V x_c)) + b) + c0,    a^c = softmax over positions,
      f^c = sum_hw a^c_hw f_hw.
    Returns the decoupled features (B, C, N) and the attention maps (B, C, H, W).
    """

    def __init__(self, feature_dim: int, embedding_dim: int, hidden_dim: int = 1024):
        super().__init__()
        self.u = nn.Linear(feature_dim, hidden_dim, bias=False)
        self.v = nn.Linear(embedding_dim, hidden_dim, bias=False)
        self.p = nn.Linear(hidden_dim, hidden_dim)
        self.w = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, height, width = features.shape
        f = features.flatten(2).transpose(1, 2)  # (B, HW, N)
        joint = torch.tanh(self.u(f).unsqueeze(1) * self.v(embeddings)[None, :, None, :])  # (B, C, HW, d)
        scores = self.w(torch.tanh(self.p(joint))).squeeze(-1)  # (B, C, HW)
        attention = scores.softmax(dim=-1)
        decoupled = attention @ f  # (B, C, N)
        return decoupled, attention.view(b, -1, height, width)
