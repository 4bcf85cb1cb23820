"""Label graphs: co-occurrence adjacency for GCN / SSGRL and knowledge graphs for GGNN.

All matrices are indexed [row i, column j] = edge i -> j. The conditional probability
P[i, j] = P(j | i) = n_ij / n_i is asymmetric, so its orientation matters.

GCN adjacency (ML-GCN / G-CAM, Viel eq. 13-14), ``style="paper"``:
    A'_ij  = 1 if P_ij > tau else 0 (strict; no self-loops)
    A''_ij = p * A'_ij / sum_{k != i} A'_ik  (i != j),  A''_ii = 1 - p
Each row sums to 1, and a row with no neighbours keeps only its self-loop with weight 1.

``style="mlgcn_code"`` reproduces the public ML-GCN code instead, which differs from its paper:
the threshold keeps P >= tau, re-weighting divides by COLUMN sums (plus 1e-6), the self-loop is
1 (added after re-weighting), and the model then normalises symmetrically, D^-1/2 A^T D^-1/2
with D = diag(row sums of A). It is offered only to reproduce that code.

Knowledge graph for GGNN (Viel section 3.2): nodes are the dataset's labels followed by the most
frequent other Visual Genome objects; A_in / A_out count over the top R predicates. Without Visual
Genome, ``cooccurrence_knowledge_graph`` uses the label co-occurrence graph instead.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "GraphError",
    "KnowledgeGraph",
    "VG_ALIASES",
    "conditional_probability",
    "cooccurrence_knowledge_graph",
    "count_edges",
    "gcn_adjacency",
    "reweight_adjacency",
    "reweight_knowledge_graph",
    "ssgrl_adjacency",
    "threshold_adjacency",
    "visual_genome_graph",
]

GCN_STYLES = ("paper", "mlgcn_code")

# Dataset label -> Visual Genome object names that count as that label (besides the label itself).
VG_ALIASES: dict[str, tuple[str, ...]] = {
    "aeroplane": ("airplane", "plane"),
    "diningtable": ("table", "dining table"),
    "motorbike": ("motorcycle",),
    "pottedplant": ("plant", "potted plant"),
    "sofa": ("couch",),
    "tvmonitor": ("tv", "television", "monitor"),
    "dining table": ("table",),
    "potted plant": ("plant",),
    "tv": ("television",),
    "couch": ("sofa",),
}


class GraphError(ValueError):
    """A graph input (file or matrix) is malformed; the message names the file and the problem."""


def _square(a: Any, name: str) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square (C, C) matrix; got shape {m.shape}")
    return m


def conditional_probability(counts: Any, cooccurrence: Any) -> np.ndarray:
    """P[i, j] = n_ij / n_i, zero diagonal; a class that never occurs gets a zero row (no nan)."""
    n = np.asarray(counts, dtype=np.float64)
    cooc = _square(cooccurrence, "cooccurrence")
    if n.shape != (cooc.shape[0],):
        raise ValueError(f"counts must have shape ({cooc.shape[0]},) to match cooccurrence; got {n.shape}")
    p = np.zeros_like(cooc)
    np.divide(cooc, n[:, None], out=p, where=n[:, None] > 0)
    np.fill_diagonal(p, 0.0)
    return p


def threshold_adjacency(P: Any, tau: float) -> np.ndarray:
    """Binary A' (float 0/1): 1 where P > tau (strict, as eq. 13), zero diagonal."""
    a = (_square(P, "P") > tau).astype(np.float64)
    np.fill_diagonal(a, 0.0)
    return a


def reweight_adjacency(A_binary: Any, p: float) -> np.ndarray:
    """A'' of eq. 14: neighbours share weight p, self-loop 1 - p; a row with no neighbours keeps 1.

    The fixed self-loop 1 - p bounds how much neighbours mix into a node: this limits over-smoothing.
    """
    a = _square(A_binary, "A_binary").copy()
    np.fill_diagonal(a, 0.0)
    row = a.sum(axis=1, keepdims=True)
    has_neighbours = row[:, 0] > 0
    out = np.zeros_like(a)
    np.divide(p * a, row, out=out, where=row > 0)
    np.fill_diagonal(out, np.where(has_neighbours, 1.0 - p, 1.0))
    return out


def _mlgcn_code_adjacency(counts: Any, cooccurrence: Any, tau: float, p: float) -> np.ndarray:
    """ML-GCN's ``gen_A`` followed by ``gen_adj``, operation for operation (see module docstring)."""
    # = ML-GCN's off-diagonal co-occurrence / nums, but with a zero row where n_i = 0 (the code divides by 0)
    adj = conditional_probability(counts, cooccurrence)
    adj[adj < tau] = 0
    adj[adj >= tau] = 1
    adj = adj * p / (adj.sum(0, keepdims=True) + 1e-6)
    adj = adj + np.identity(adj.shape[0])
    d = np.diag(adj.sum(1) ** -0.5)  # row sums >= 1 thanks to the identity
    return (adj @ d).T @ d


def gcn_adjacency(
    counts: Any, cooccurrence: Any, tau: float = 0.4, p: float = 0.25, style: str = "paper"
) -> np.ndarray:
    """The (C, C) propagation matrix for H' = A H W: the papers' A'' or the ML-GCN code's."""
    if style == "paper":
        return reweight_adjacency(threshold_adjacency(conditional_probability(counts, cooccurrence), tau), p)
    if style == "mlgcn_code":
        return _mlgcn_code_adjacency(counts, cooccurrence, tau, p)
    raise ValueError(f"unknown GCN adjacency style {style!r}; expected one of {GCN_STYLES}")


def ssgrl_adjacency(counts: Any, cooccurrence: Any) -> tuple[np.ndarray, np.ndarray]:
    """SSGRL's (A_in, A_out) = (P, P^T): raw conditional probabilities, no threshold."""
    p = conditional_probability(counts, cooccurrence)
    return p, p.T.copy()


def count_edges(A: Any) -> int:
    """Number of directed off-diagonal edges (non-zero entries) of an adjacency matrix."""
    a = _square(A, "A")
    return int(np.count_nonzero(a) - np.count_nonzero(np.diag(a)))


@dataclass
class KnowledgeGraph:
    """A directed graph over ``nodes`` for GGNN; the first C nodes are the dataset's labels."""

    nodes: list[str]
    a_in: np.ndarray  # (V, V) float32
    a_out: np.ndarray  # (V, V) float32

    def __post_init__(self) -> None:
        self.nodes = [str(n) for n in self.nodes]
        self.a_in = np.asarray(self.a_in, dtype=np.float32)
        self.a_out = np.asarray(self.a_out, dtype=np.float32)
        v = len(self.nodes)
        if self.a_in.shape != (v, v) or self.a_out.shape != (v, v):
            raise GraphError(
                f"knowledge graph with {v} nodes needs a_in and a_out of shape ({v}, {v}); "
                f"got {self.a_in.shape} and {self.a_out.shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, so the graph can be saved with the model."""
        return {"nodes": list(self.nodes), "a_in": self.a_in.tolist(), "a_out": self.a_out.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "KnowledgeGraph":
        """Inverse of ``to_dict``; raises GraphError naming a missing key."""
        missing = [k for k in ("nodes", "a_in", "a_out") if k not in data]
        if missing:
            raise GraphError(f"knowledge graph is missing key(s): {', '.join(missing)}")
        return cls(nodes=list(data["nodes"]), a_in=np.asarray(data["a_in"]), a_out=np.asarray(data["a_out"]))


@lru_cache(maxsize=1 << 18)  # VG repeats a few hundred thousand names millions of times
def _norm(name: str) -> str:
    """Visual Genome names vary in case and spacing ("Table ", "tv  monitor"); compare them normalised."""
    return " ".join(name.replace("_", " ").lower().split())


def _entity_name(entity: Any, where: str) -> str:
    """An object's name: ``{"name": str}`` or the first of ``{"names": [str, ...]}`` ("" if empty)."""
    if isinstance(entity, dict):
        if isinstance(entity.get("name"), str):
            return _norm(entity["name"])
        names = entity.get("names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return _norm(names[0]) if names else ""
    raise GraphError(f"{where}: subject/object must be an object with 'name' or 'names'; got {entity!r:.80}")


def _read_relationships(path: Path) -> list[tuple[str, str, str]]:
    """All (subject, predicate, object) triples of a VG ``relationships.json``, names normalised."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise GraphError(f"{path}: cannot read Visual Genome relationships ({e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraphError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise GraphError(f"{path}: expected a list of images, got {type(data).__name__}")
    triples = []
    for k, image in enumerate(data):
        if not isinstance(image, dict) or not isinstance(image.get("relationships"), list):
            raise GraphError(f"{path}: image #{k} must be an object with a 'relationships' list")
        where = f"{path}: image {image.get('image_id', f'#{k}')}"
        for rel in image["relationships"]:
            if not isinstance(rel, dict) or not isinstance(rel.get("predicate"), str):
                raise GraphError(f"{where}: each relationship needs a string 'predicate'; got {rel!r:.80}")
            subj = _entity_name(rel.get("subject"), where)
            obj = _entity_name(rel.get("object"), where)
            pred = _norm(rel["predicate"])
            if subj and obj and pred:
                triples.append((subj, pred, obj))
    return triples


def visual_genome_graph(
    relationships_json: str | Path,
    classes: Sequence[str],
    num_nodes: int = 100,
    num_predicates: int = 100,
    aliases: Mapping[str, str | Sequence[str]] | None = None,
) -> KnowledgeGraph:
    """GGNN knowledge graph from Visual Genome ``relationships.json`` (Viel section 3.2).

    Nodes: the C labels (named by the class; a VG object matches a label by its own name or an
    alias, ``VG_ALIASES`` by default), then the most frequent other objects up to ``num_nodes``.
    For each of the ``num_predicates`` most frequent predicates r, A_in_r[i, j] = 1 if i -r-> j
    occurs and A_out_r = A_in_r^T; A_in / A_out are their average, scaled to max 1 (equal to the
    number of predicates linking i -> j divided by the largest such number). Relations of an
    object with itself ("man next to man") are left out: GGNN's update already sees its own state.
    A label that never occurs in VG becomes an isolated node, with a warning.
    """
    path = Path(relationships_json)
    classes = [str(c) for c in classes]
    if num_nodes < len(classes):
        raise ValueError(f"num_nodes={num_nodes} is smaller than the number of labels ({len(classes)})")
    aliases = VG_ALIASES if aliases is None else aliases
    triples = _read_relationships(path)

    node_of: dict[str, int] = {}
    for i, c in enumerate(classes):
        node_of.setdefault(_norm(c), i)
    for i, c in enumerate(classes):
        extra = aliases.get(c, ())
        for name in [extra] if isinstance(extra, str) else extra:
            node_of.setdefault(_norm(name), i)

    objects = Counter(name for s, _, o in triples for name in (s, o))
    seen_labels = {node_of[name] for name in objects if name in node_of}
    absent = [c for i, c in enumerate(classes) if i not in seen_labels]
    if absent:
        warnings.warn(f"{path}: label(s) not found in Visual Genome, left as isolated nodes: {', '.join(absent)}")
    others = sorted((name for name in objects if name not in node_of), key=lambda n: (-objects[n], n))
    nodes = classes + others[: num_nodes - len(classes)]
    for i, name in enumerate(nodes[len(classes) :], start=len(classes)):
        node_of[name] = i

    predicates = Counter(p for _, p, _ in triples)
    top = {p for p, _ in sorted(predicates.items(), key=lambda kv: (-kv[1], kv[0]))[:num_predicates]}
    edges = {
        (node_of[s], p, node_of[o])
        for s, p, o in triples
        if p in top and s in node_of and o in node_of and node_of[s] != node_of[o]
    }
    a_in = np.zeros((len(nodes), len(nodes)), dtype=np.float64)
    for i, _, j in edges:
        a_in[i, j] += 1.0
    if a_in.max(initial=0.0) > 0:
        a_in /= a_in.max()
    return KnowledgeGraph(nodes=nodes, a_in=a_in, a_out=a_in.T)


def cooccurrence_knowledge_graph(counts: Any, cooccurrence: Any, classes: Sequence[str]) -> KnowledgeGraph:
    """Fallback without Visual Genome: nodes = labels, a_in = P(j | i), a_out = P^T (as SSGRL)."""
    a_in, a_out = ssgrl_adjacency(counts, cooccurrence)
    if a_in.shape[0] != len(classes):
        raise ValueError(f"{len(classes)} classes but statistics for {a_in.shape[0]}")
    return KnowledgeGraph(nodes=list(classes), a_in=a_in, a_out=a_out)


def reweight_knowledge_graph(kg: KnowledgeGraph, tau: float = 0.1, p: float = 0.1) -> KnowledgeGraph:
    """Threshold + re-weight A_in and A_out separately ("GGNN + A''", tau = p = 0.1 in Viel)."""
    return KnowledgeGraph(
        nodes=list(kg.nodes),
        a_in=reweight_adjacency(threshold_adjacency(kg.a_in, tau), p),
        a_out=reweight_adjacency(threshold_adjacency(kg.a_out, tau), p),
    )
