"""MoE: routing as Jamba (softmax, top-k weights not renormalised), the balancing loss, the
gathered decode form, shared experts, parameter counts."""
import pytest
import torch
import torch.nn.functional as F

from blockcheck import build, check_block


@pytest.mark.parametrize("args", [
    {"experts": 4, "top_k": 2, "hidden": 12},
    {"experts": 3, "top_k": 1, "hidden": 8, "act": "relu2", "bias": True},
    {"experts": 4, "top_k": 2, "hidden": 8, "shared_hidden": 10, "router": "sigmoid", "router_bias": True},
])
def test_moe(args):
    m = build("moe", args)
    check_block(m, length=6, split=2, batch=3)
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_matches_dense_reference_and_gathered():
    m = build("moe", {"experts": 4, "top_k": 2, "hidden": 12})
    x = torch.randn(10, 16, dtype=torch.float64)
    with torch.no_grad():
        probs = F.softmax(m.router(x), -1)
        w, idx = probs.topk(2, -1)
        ref = torch.zeros_like(x)
        for t in range(10):
            for j in range(2):
                ref[t] += w[t, j] * m.experts.expert(idx[t, j].item(), x[t:t + 1])[0]
        assert torch.allclose(m(x[None])[0], ref)
        assert torch.allclose(m.experts.gathered(x, idx, w), ref)


def test_balancing_loss():
    m = build("moe", {"experts": 4, "top_k": 2, "hidden": 12, "aux_loss_coef": 1.0})
    x = torch.randn(2, 50, 16, dtype=torch.float64)
    m(x)
    probs = F.softmax(m.router(x.view(-1, 16)), -1)
    _, idx = probs.topk(2, -1)
    f = F.one_hot(idx, 4).sum(1).double().mean(0)
    assert torch.allclose(m.aux_loss, 4 * (f * probs.mean(0)).sum())
