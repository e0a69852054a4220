"""Mamba-2 mixer: parallel == recurrent, prefill + decode, gradients; the gated norm as HF."""
import pytest
import torch
import torch.nn.functional as F

from blockcheck import build, check_block

SMALL = {"d_state": 8, "headdim": 8, "chunk_size": 4}


@pytest.mark.parametrize("args", [
    SMALL,
    {**SMALL, "ngroups": 2},
    {**SMALL, "gated_norm": False, "d_conv": 2},
    {**SMALL, "bias": True, "conv_bias": False, "ngroups": 4},
])
@pytest.mark.parametrize("length,split", [(1, 1), (9, 4), (12, 8)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(build("mamba2", args), length=length, split=split)


def test_gated_norm_groups_as_hf():
    m = build("mamba2", {**SMALL, "ngroups": 2})
    with torch.no_grad():
        m.norm.weight.uniform_()
    y, z = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 5, 32, dtype=torch.float64)
    h = (y * F.silu(z)).view(2, 5, 2, 16)
    ref = m.norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + m.cfg.norm_eps)).view(2, 5, 32)
    assert torch.allclose(m.norm(y, z), ref)


def test_params_and_names():
    m = build("mamba2", {**SMALL, "ngroups": 2})
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()
    assert m.in_proj.weight.shape == (32 + (32 + 2 * 2 * 8) + 4, 16)
    assert {n for n, _ in m.named_parameters()} == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias",
                                                    "A_log", "D", "norm.weight", "out_proj.weight"}
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 5, dtype=torch.float64)))
