"""Mamba-1 mixer: parallel == recurrent, prefill + decode, gradients; HF-style init and shapes."""
import pytest
import torch

from blockcheck import build, check_block


@pytest.mark.parametrize("args", [
    {"d_state": 4},
    {"d_state": 4, "inner_norms": "weighted", "dt_rank": 3},
    {"d_state": 3, "inner_norms": "unweighted", "d_conv": 2, "bias": True, "conv_bias": False},
    {"d_state": 5, "expand": 1, "d_conv": 3},
])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (13, 13)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(build("mamba", args), length=length, split=split)


def test_init_and_names():
    m = build("mamba", {"d_state": 4, "inner_norms": "weighted"}, d_model=16)
    assert torch.allclose(m.A_log[3], torch.log(torch.arange(1, 5, dtype=torch.float64)))
    assert (m.D == 1).all()
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert (dt >= 1e-4).all() and (dt <= 0.1 + 1e-9).all()
    names = {n for n, _ in m.named_parameters()}
    assert {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
            "A_log", "D", "out_proj.weight", "dt_layernorm", "b_layernorm", "c_layernorm"} == names
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_falcon_norms_have_no_weights():
    m = build("mamba", {"inner_norms": "unweighted"})
    assert not any("layernorm" in n for n, _ in m.named_parameters())
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_state_is_constant_size():
    m = build("mamba", {"d_state": 4})
    s = m.init_state(3, torch.device("cpu"), torch.bfloat16)
    assert s["conv"].shape == (3, 32, 3) and s["conv"].dtype == torch.bfloat16
    assert s["ssm"].shape == (3, 32, 4) and s["ssm"].dtype == torch.float32
    nbytes = sum(t.numel() * t.element_size() for t in s.values())
    assert nbytes == m.cfg.cache_bytes(3, 10**6, 2)
