"""RWKV-6 (Finch) time-mix and its channel-mix: parallel == recurrent, prefill + decode, gradients,
HF-hub names/shapes, and the same outputs as the HF-hub Rwkv6SelfAttention's CPU formula
(transcribed below: a token loop over the unchunked recurrence, independent of the wkv6 op)."""
import pytest
import torch
import torch.nn.functional as F

from blockcheck import build, check_block, rel_err

SMALL = {"head_size": 8, "mix_lora": 4, "decay_lora": 6}


def randomize(mod, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mod


@pytest.mark.parametrize("args", [SMALL, {**SMALL, "attn_dim": 24}, {"head_size": 16, "mix_lora": 2, "decay_lora": 3,
                                                                      "head_size_divisor": 1}])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (19, 11)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(randomize(build("rwkv6", args)), length=length, split=split)


@pytest.mark.parametrize("length,split", [(1, 1), (7, 3)])
def test_cmix6_parallel_equals_recurrent(length, split):
    check_block(randomize(build("cmix", {"version": 6})), length=length, split=split)


def test_names_shapes_counts():
    m = build("rwkv6", {**SMALL, "attn_dim": 24}, d_model=16)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    expect = {f"time_maa_{c}": (1, 1, 16) for c in "xwkvrg"}
    expect.update({"time_maa_w1": (16, 20), "time_maa_w2": (5, 4, 16), "time_decay": (1, 1, 24),
                   "time_decay_w1": (16, 6), "time_decay_w2": (6, 24), "time_faaaa": (3, 8),
                   "receptance.weight": (24, 16), "key.weight": (24, 16), "value.weight": (24, 16),
                   "gate.weight": (24, 16), "output.weight": (16, 24), "ln_x.weight": (24,), "ln_x.bias": (24,)})
    assert shapes == expect
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()
    assert m.ln_x.eps == pytest.approx(1e-5 * 64)


def test_init_is_rwkv_lm():
    m = build("rwkv6", SMALL, d_model=16)
    A = m.cfg.adim
    n = torch.arange(A, dtype=torch.float64)
    assert torch.allclose(m.time_decay.view(-1), -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * 0.5))
    assert (m.time_maa_x.view(-1)[0] == 1) and (m.time_maa_x >= 0).all() and (m.time_maa_x <= 1).all()
    assert m.time_maa_w1.abs().max() <= 1e-4 and m.time_maa_w1.abs().max() > 0


def hub_reference(m, x, state=None):
    """The HF-hub RWKV/v6-Finch `Rwkv6SelfAttention.forward` (CPU path), written out."""
    B, T, C = x.shape
    H, S = m.time_faaaa.shape
    if state is None:
        shift, wkv = x.new_zeros(B, C), x.new_zeros(B, H, S, S)
    else:
        shift, wkv = state
    shifted = torch.cat([shift[:, None], x[:, :-1]], dim=1)
    xx = shifted - x
    xxx = x + xx * m.time_maa_x
    xxx = torch.tanh(xxx @ m.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
    xxx = torch.bmm(xxx, m.time_maa_w2).view(5, B, T, -1)
    mw, mk, mv, mr, mg = xxx.unbind(dim=0)
    time_decay = x + xx * (m.time_maa_w + mw)
    key = m.key(x + xx * (m.time_maa_k + mk))
    value = m.value(x + xx * (m.time_maa_v + mv))
    receptance = m.receptance(x + xx * (m.time_maa_r + mr))
    gate = F.silu(m.gate(x + xx * (m.time_maa_g + mg)))
    time_decay = m.time_decay + torch.tanh(time_decay @ m.time_decay_w1) @ m.time_decay_w2
    # rwkv6_linear_attention_cpu
    k = key.view(B, T, H, S).transpose(1, 2).transpose(-2, -1)
    v = value.view(B, T, H, S).transpose(1, 2)
    r = receptance.view(B, T, H, S).transpose(1, 2)
    w = torch.exp(-torch.exp(time_decay)).view(B, T, H, S).permute(0, 2, 3, 1)
    u = m.time_faaaa.reshape(H, -1, 1)
    out = x.new_zeros(B, T, H, S)
    for t in range(T):
        kv = k[:, :, :, t:t + 1] @ v[:, :, t:t + 1, :]
        out[:, t] = (r[:, :, t:t + 1, :] @ (u * kv + wkv)).squeeze(2)
        wkv = kv + w[:, :, :, t:t + 1] * wkv
    out = out.reshape(B * T, H * S)
    out = F.group_norm(out / m.cfg.head_size_divisor, num_groups=H, weight=m.ln_x.weight, bias=m.ln_x.bias,
                       eps=m.ln_x.eps).reshape(B, T, H * S)
    return m.output(out * gate), (x[:, -1], wkv)


@pytest.mark.parametrize("args", [SMALL, {**SMALL, "attn_dim": 24}])
def test_matches_hub_formula(args):
    m = randomize(build("rwkv6", args, d_model=16), seed=2)
    x = torch.randn(2, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, (shift, wkv) = hub_reference(m, x[:, :6])
        st = m.init_state(2, x.device, x.dtype)
        assert rel_err(m(x[:, :6], st), ref) < 1e-9
        assert torch.allclose(st["wkv"], wkv, rtol=1e-9, atol=1e-12) and torch.equal(st["shift"], shift)
        ref2, _ = hub_reference(m, x[:, 6:], (shift, wkv))
        assert rel_err(m(x[:, 6:], st), ref2) < 1e-9


def test_cmix6_formula():
    m = randomize(build("cmix", {"version": 6}, d_model=16), seed=4)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        xx = torch.cat([x.new_zeros(2, 1, 16), x[:, :-1]], dim=1) - x
        k = torch.relu(m.key(x + xx * m.time_maa_k)).square()
        ref = torch.sigmoid(m.receptance(x + xx * m.time_maa_r)) * m.value(k)
        assert rel_err(m(x), ref) < 1e-12
