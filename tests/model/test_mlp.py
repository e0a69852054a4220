"""FFN blocks: activations, gated layouts as HF Llama, parameter counts, gradients."""
import pytest
import torch

from blockcheck import build, check_block


@pytest.mark.parametrize("act", ["gelu", "relu", "relu2", "silu", "swiglu", "geglu"])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp(act, bias):
    m = build("mlp", {"act": act, "hidden": 24, "bias": bias})
    check_block(m, length=4, split=2)
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()
    assert hasattr(m, "gate_proj") == (act in ("swiglu", "geglu"))


def test_swiglu_formula():
    m = build("mlp", {"act": "swiglu", "hidden": 24})
    x = torch.randn(3, 16, dtype=torch.float64)
    ref = m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    assert torch.allclose(m(x), ref)
