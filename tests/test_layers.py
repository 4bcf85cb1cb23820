"""GGNN step against the written equations, GCN layer against A H W, semantic decoupling attention."""
import torch

from mlc.models.layers import GatedGraphNetwork, GraphConvolution, SemanticDecoupling


def test_gcn_layer_is_a_h_w():
    torch.manual_seed(0)
    layer = GraphConvolution(4, 3)
    a, h = torch.rand(5, 5), torch.randn(5, 4)
    torch.testing.assert_close(layer(h, a), a @ h @ layer.weight)


def test_ggnn_one_step_matches_the_update_equations():
    torch.manual_seed(0)
    v, s = 4, 3
    a_in, a_out = torch.rand(v, v), torch.rand(v, v)
    net = GatedGraphNetwork(s, a_in, a_out, steps=1)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    h = torch.randn(2, v, s)
    Wz, Wr, W = net.w_z.weight, net.w_r.weight, net.w_h.weight
    Uz, Ur, U = net.u_z.weight, net.u_r.weight, net.u_h.weight
    b = net.message_bias
    expected = torch.empty_like(h)
    for batch in range(2):
        for node in range(v):  # one node at a time, straight from Viel eqs. 2-6
            h_v = h[batch, node]
            msg_in = sum(a_in[node, u] * h[batch, u] for u in range(v))
            msg_out = sum(a_out[node, u] * h[batch, u] for u in range(v))
            a_v = torch.cat([msg_in, msg_out]) + b
            z = torch.sigmoid(Wz @ a_v + Uz @ h_v)
            r = torch.sigmoid(Wr @ a_v + Ur @ h_v)
            h_tilde = torch.tanh(W @ a_v + U @ (r * h_v))
            expected[batch, node] = (1 - z) * h_v + z * h_tilde
    torch.testing.assert_close(net(h), expected)


def test_ggnn_rejects_mismatched_graphs():
    import pytest

    with pytest.raises(ValueError, match="square"):
        GatedGraphNetwork(3, torch.rand(4, 4), torch.rand(4, 3))


def test_semantic_decoupling_attention_sums_to_one_and_pools_features():
    torch.manual_seed(0)
    sd = SemanticDecoupling(feature_dim=6, embedding_dim=5, hidden_dim=8)
    features, embeddings = torch.randn(2, 6, 3, 4), torch.randn(7, 5)
    decoupled, attention = sd(features, embeddings)
    assert decoupled.shape == (2, 7, 6) and attention.shape == (2, 7, 3, 4)
    torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(2, 7))
    assert (attention >= 0).all()
    expected = torch.einsum("bchw,bnhw->bcn", attention, features)
    torch.testing.assert_close(decoupled, expected)
