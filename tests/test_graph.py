"""Tests for mlc.graph on hand-computed examples: both GCN re-weighting styles and a VG fixture."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlc.graph import (
    GraphError,
    KnowledgeGraph,
    conditional_probability,
    cooccurrence_knowledge_graph,
    count_edges,
    gcn_adjacency,
    reweight_adjacency,
    reweight_knowledge_graph,
    ssgrl_adjacency,
    threshold_adjacency,
    visual_genome_graph,
)

# Four labels a, b, c, d. Image counts n_i and co-occurrences n_ij (diagonal = n_i, as mlc.stats):
#   n = [4, 2, 5, 1]; n_ab = 1, n_ac = 2, n_ad = 0, n_bc = 2, n_bd = 0, n_cd = 1
CLASSES = ["a", "b", "c", "d"]
COUNTS = np.array([4, 2, 5, 1])
COOC = np.array(
    [
        [4, 1, 2, 0],
        [1, 2, 2, 0],
        [2, 2, 5, 1],
        [0, 0, 1, 1],
    ]
)
# P[i, j] = n_ij / n_i, zero diagonal:
#   a: 1/4, 2/4, 0/4        -> [0,   .25, .5, 0 ]
#   b: 1/2, 2/2, 0/2        -> [.5,  0,   1,  0 ]
#   c: 2/5, 2/5, 1/5        -> [.4,  .4,  0,  .2]
#   d: 0/1, 0/1, 1/1        -> [0,   0,   1,  0 ]
P = np.array(
    [
        [0.0, 0.25, 0.5, 0.0],
        [0.5, 0.0, 1.0, 0.0],
        [0.4, 0.4, 0.0, 0.2],
        [0.0, 0.0, 1.0, 0.0],
    ]
)


def test_conditional_probability_and_ssgrl() -> None:
    np.testing.assert_array_equal(conditional_probability(COUNTS, COOC), P)
    a_in, a_out = ssgrl_adjacency(COUNTS, COOC)
    np.testing.assert_array_equal(a_in, P)
    np.testing.assert_array_equal(a_out, P.T)


def test_paper_style_by_hand() -> None:
    # tau = 0.4, strict: row c has P = 0.4 exactly (twice), so c gets no neighbour.
    a1 = np.array(
        [
            [0, 0, 1, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 0],
            [0, 0, 1, 0],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(threshold_adjacency(P, 0.4), a1)
    # p = 0.25: neighbours share 0.25 (b has two: 0.125 each), self-loop 0.75; c keeps only 1.
    a2 = np.array(
        [
            [0.75, 0.0, 0.25, 0.0],
            [0.125, 0.75, 0.125, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.25, 0.75],
        ]
    )
    np.testing.assert_array_equal(reweight_adjacency(a1, 0.25), a2)
    np.testing.assert_array_equal(gcn_adjacency(COUNTS, COOC, tau=0.4, p=0.25, style="paper"), a2)
    np.testing.assert_allclose(a2.sum(axis=1), 1.0)
    assert count_edges(a1) == 4 and count_edges(a2) == 4
    # tau = 0.25: a->c, b->a, b->c, c->a, c->b, d->c (a->b is exactly 0.25, not > 0.25)
    assert count_edges(threshold_adjacency(P, 0.25)) == 6


def test_mlgcn_code_style_by_hand() -> None:
    # Step 1, threshold with >= 0.4: row c now keeps its two P = 0.4 entries.
    #   a: [0,0,1,0]  b: [1,0,1,0]  c: [1,1,0,0]  d: [0,0,1,0]
    # Step 2, divide by COLUMN sums + 1e-6 (col a: 2, col b: 1, col c: 3, col d: 0), times p = 0.25.
    e = 1e-6
    x1, x2, x3 = 0.25 / (1 + e), 0.25 / (2 + e), 0.25 / (3 + e)
    # Step 3, add the identity:
    #   A = [[1, 0, x3, 0], [x2, 1, x3, 0], [x2, x1, 1, 0], [0, 0, x3, 1]]
    # Step 4, gen_adj: s = row sums, result[i, j] = A[j, i] / sqrt(s_i s_j)  (D^-1/2 A^T D^-1/2)
    s0, s1, s2, s3 = 1 + x3, 1 + x2 + x3, 1 + x2 + x1, 1 + x3
    r = math.sqrt
    expected = np.array(
        [
            [1 / s0, x2 / r(s0 * s1), x2 / r(s0 * s2), 0.0],
            [0.0, 1 / s1, x1 / r(s1 * s2), 0.0],
            [x3 / r(s2 * s0), x3 / r(s2 * s1), 1 / s2, x3 / r(s2 * s3)],
            [0.0, 0.0, 0.0, 1 / s3],
        ]
    )
    got = gcn_adjacency(COUNTS, COOC, tau=0.4, p=0.25, style="mlgcn_code")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_never_occurring_class_and_isolated_row() -> None:
    # x occurs alone (no neighbours), y never co-occurs with x, z never occurs at all.
    counts = np.array([3, 1, 0])
    cooc = np.diag(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero RuntimeWarning
        p = conditional_probability(counts, cooc)
        paper = gcn_adjacency(counts, cooc, style="paper")
        code = gcn_adjacency(counts, cooc, style="mlgcn_code")
        a_in, _ = ssgrl_adjacency(counts, cooc)
    np.testing.assert_array_equal(p, np.zeros((3, 3)))
    np.testing.assert_array_equal(a_in, np.zeros((3, 3)))
    np.testing.assert_array_equal(paper, np.eye(3))  # every row keeps only its self-loop, weight 1
    np.testing.assert_allclose(code, np.eye(3), rtol=0, atol=1e-12)


def test_tau_is_strict_in_paper_style() -> None:
    p = np.array([[0.0, 0.3], [0.3000001, 0.0]])
    np.testing.assert_array_equal(threshold_adjacency(p, 0.3), [[0, 0], [1, 0]])
    # the ML-GCN code keeps P == tau
    counts, cooc = np.array([10, 10]), np.array([[10, 3], [3, 10]])
    assert count_edges(gcn_adjacency(counts, cooc, tau=0.3, style="paper")) == 0
    assert count_edges(gcn_adjacency(counts, cooc, tau=0.3, style="mlgcn_code")) == 2


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="style"):
        gcn_adjacency(COUNTS, COOC, style="nope")
    with pytest.raises(ValueError, match="counts"):
        conditional_probability([1, 2], COOC)


def test_cooccurrence_knowledge_graph_and_round_trip() -> None:
    kg = cooccurrence_knowledge_graph(COUNTS, COOC, CLASSES)
    assert kg.nodes == CLASSES
    np.testing.assert_array_equal(kg.a_in, P.astype(np.float32))
    np.testing.assert_array_equal(kg.a_out, P.T.astype(np.float32))
    back = KnowledgeGraph.from_dict(json.loads(json.dumps(kg.to_dict())))
    assert back.nodes == CLASSES
    np.testing.assert_array_equal(back.a_in, kg.a_in)
    np.testing.assert_array_equal(back.a_out, kg.a_out)
    assert back.a_in.dtype == np.float32
    with pytest.raises(GraphError, match="a_out"):
        KnowledgeGraph.from_dict({"nodes": ["a"], "a_in": [[0.0]]})


# --- Visual Genome ---------------------------------------------------------------------------

def _rel(subject: dict, predicate: str, obj: dict) -> dict:
    return {"predicate": predicate, "subject": subject, "object": obj}


def _n(name: str) -> dict:
    return {"name": name}


# Real format: a list of images with "relationships"; names given as "name" or as a "names" list
# (only the first counts: "mug" below is never a node). "Table " and "ON" test normalisation,
# "dining table" the alias list of diningtable (table, dining table).
VG_FIXTURE = [
    {
        "image_id": 1,
        "relationships": [
            _rel({"names": ["plate"]}, "on", _n("Table ")),  # 1
            _rel(_n("person"), "near", _n("table")),  # 2
            _rel(_n("man"), "on", _n("chair")),  # 3
        ],
    },
    {
        "image_id": 2,
        "relationships": [
            _rel({"names": ["cup", "mug"]}, "ON", {"names": ["dining table"]}),  # 4
            _rel(_n("person"), "has", _n("cup")),  # 5
            _rel(_n("man"), "near", _n("person")),  # 6
        ],
    },
    {"image_id": 3, "relationships": []},
    {
        "image_id": 4,
        "relationships": [
            _rel(_n("person"), "holding", {"names": ["cup"]}),  # 7
            _rel(_n("plate"), "on", _n("table")),  # 8
            _rel(_n("man"), "near", _n("man")),  # 9  (self relation: no edge)
            _rel(_n("cup"), "near", _n("table")),  # 10
            _rel(_n("plate"), "on", _n("table")),  # 11
            _rel(_n("man"), "wearing", _n("hat")),  # 12
        ],
    },
]
# Predicate counts: on 5 (1,3,4,8,11), near 4 (2,6,9,10), has 1, holding 1, wearing 1.
# Other objects: man 5 (3,6,9,9,12), cup 4 (4,5,7,10), plate 3 (1,8,11), chair 1, hat 1.
VG_CLASSES = ["diningtable", "person", "tvmonitor"]  # tvmonitor never occurs -> isolated node


@pytest.fixture
def vg_file(tmp_path: Path) -> Path:
    path = tmp_path / "relationships.json"
    path.write_text(json.dumps(VG_FIXTURE))
    return path


def _vg(path: Path, **kw) -> KnowledgeGraph:
    with pytest.warns(UserWarning, match="tvmonitor"):
        return visual_genome_graph(path, VG_CLASSES, **kw)


def test_vg_graph_all_predicates(vg_file: Path) -> None:
    kg = _vg(vg_file, num_nodes=6)
    # labels first, in class order; then others by frequency: man (5), cup (4), plate (3)
    assert kg.nodes == ["diningtable", "person", "tvmonitor", "man", "cup", "plate"]
    # Edges (node indices): plate->table (5,0) on; cup->table (4,0) on + near; person->table (1,0)
    # near; man->person (3,1) near; person->cup (1,4) has + holding. man->chair, man->hat: not nodes.
    # Average over R = 5 predicates: .2, .4, .2, .2, .4; scaled to max 1: .5, 1, .5, .5, 1.
    a_in = np.zeros((6, 6), dtype=np.float32)
    a_in[5, 0] = 0.5
    a_in[4, 0] = 1.0
    a_in[1, 0] = 0.5
    a_in[3, 1] = 0.5
    a_in[1, 4] = 1.0
    np.testing.assert_array_equal(kg.a_in, a_in)
    np.testing.assert_array_equal(kg.a_out, a_in.T)  # A_out[i, j] = 1 if j -r-> i
    assert kg.a_in.dtype == np.float32


def test_vg_graph_top_predicates(vg_file: Path) -> None:
    kg = _vg(vg_file, num_nodes=6, num_predicates=2)
    # Only "on" and "near": person->cup (has, holding) disappears; the max is still cup->table (2).
    a_in = np.zeros((6, 6), dtype=np.float32)
    a_in[5, 0] = 0.5
    a_in[4, 0] = 1.0
    a_in[1, 0] = 0.5
    a_in[3, 1] = 0.5
    np.testing.assert_array_equal(kg.a_in, a_in)
    np.testing.assert_array_equal(kg.a_out, a_in.T)


def test_vg_graph_node_truncation_and_aliases(vg_file: Path) -> None:
    kg = _vg(vg_file, num_nodes=4)
    assert kg.nodes == ["diningtable", "person", "tvmonitor", "man"]
    a_in = np.zeros((4, 4), dtype=np.float32)
    a_in[1, 0] = 1.0  # person -near-> table
    a_in[3, 1] = 1.0  # man -near-> person
    np.testing.assert_array_equal(kg.a_in, a_in)
    # without the default aliases, "table" is an ordinary object and diningtable is isolated
    with pytest.warns(UserWarning, match="diningtable"):
        plain = visual_genome_graph(vg_file, VG_CLASSES, num_nodes=5, aliases={})
    # table (1,2,8,10,11) and man both occur 5 times: ties are broken by name
    assert plain.nodes == ["diningtable", "person", "tvmonitor", "man", "table"]
    with pytest.raises(ValueError, match="num_nodes"):
        visual_genome_graph(vg_file, VG_CLASSES, num_nodes=2)


def test_reweight_knowledge_graph(vg_file: Path) -> None:
    kg = reweight_knowledge_graph(_vg(vg_file, num_nodes=6), tau=0.1, p=0.1)
    # a_in edges (all > 0.1): 1->0, 1->4, 3->1, 4->0, 5->0; rows 0 and 2 have none.
    a_in = np.diag([1.0, 0.9, 1.0, 0.9, 0.9, 0.9])
    a_in[1, 0] = a_in[1, 4] = 0.05
    a_in[3, 1] = a_in[4, 0] = a_in[5, 0] = 0.1
    # a_out edges: 0->1, 0->4, 0->5, 1->3, 4->1; rows 2, 3, 5 have none.
    a_out = np.diag([0.9, 0.9, 1.0, 1.0, 0.9, 1.0])
    a_out[0, 1] = a_out[0, 4] = a_out[0, 5] = 0.1 / 3
    a_out[1, 3] = a_out[4, 1] = 0.1
    np.testing.assert_allclose(kg.a_in, a_in, rtol=1e-6, atol=0)
    np.testing.assert_allclose(kg.a_out, a_out, rtol=1e-6, atol=0)
    assert kg.nodes[:3] == VG_CLASSES


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"relationships": []}), "list of images"),
        (json.dumps([{"image_id": 7}]), "relationships"),
        (json.dumps([{"image_id": 7, "relationships": [_rel({"id": 1}, "on", _n("x"))]}]), "image 7"),
        (json.dumps([{"image_id": 7, "relationships": [{"subject": _n("a"), "object": _n("b")}]}]), "predicate"),
    ],
)
def test_vg_malformed(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "broken_relationships.json"
    path.write_text(content)
    with pytest.raises(GraphError, match=match) as info:
        visual_genome_graph(path, VG_CLASSES)
    assert "broken_relationships.json" in str(info.value)


def test_vg_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="missing.json"):
        visual_genome_graph(tmp_path / "missing.json", VG_CLASSES)
