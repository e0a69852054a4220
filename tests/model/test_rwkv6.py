"""RWKV-6 (Finch) time-mix and its channel-mix: parallel == recurrent, prefill + decode, gradients,
HF-hub names/shapes, the same outputs as the HF-hub Rwkv6SelfAttention's CPU formula
(transcribed below: a token loop over the unchunked recurrence, independent of the wkv6 op), and the
same outputs as the Eagle-and-Finch formulas written element by element (RWKV-LM's RWKV_Tmix_x060 /
RWKV_CMix_x060: ln_x normalises the WKV output itself, eps 1e-5·head_size_divisor²)."""
import pytest
import torch
import torch.nn.functional as F

from blockcheck import build, check_block, check_reference, rel_err

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
    out = F.group_norm(out, num_groups=H, weight=m.ln_x.weight, bias=m.ln_x.bias,
                       eps=m.ln_x.eps).reshape(B, T, H * S)  # o itself: no division by head_size_divisor
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


def _finch_reference(m, x):
    """RWKV-6 time-mix from its published formulas, one token, one head and one channel at a time, float64
    (Peng et al. 2024 §4; RWKV-LM RWKV_Tmix_x060): no wkv6 op, no F.group_norm, no batched matrix products.
        lora_□(z) = μ□ + tanh(z A) B□ (A shared, its columns in 5 blocks of mix_lora: w, k, v, r, g)
        ddlerp_□(x_t, x_{t-1}) = x_t + (x_{t-1} - x_t) ⊙ lora_□(x_t + (x_{t-1} - x_t) ⊙ μx)
        d_t = time_decay + tanh(x_w A_d) B_d,  w_t = exp(-exp(d_t))
        wkv_t = diag(u) k_tᵀ v_t + S_{t-1},  o_t = r_t wkv_t,  S_t = diag(w_t) S_{t-1} + k_tᵀ v_t
        y_t = W_o (GroupNorm_heads(o_t; eps 1e-5·divisor²) ⊙ silu(g_t))"""
    B, T, d = x.shape
    H, K = m.time_faaaa.shape
    ml = m.cfg.mix_lora
    mu = {c: getattr(m, f"time_maa_{c}").reshape(-1) for c in "xwkvrg"}
    W = {c: getattr(m, n).weight for c, n in (("r", "receptance"), ("k", "key"), ("v", "value"), ("g", "gate"))}
    eps = 1e-5 * m.cfg.head_size_divisor ** 2
    y = torch.zeros(B, T, d, dtype=torch.float64)
    for b in range(B):
        S = torch.zeros(H, K, K, dtype=torch.float64)
        prev = torch.zeros(d, dtype=torch.float64)
        for t in range(T):
            xt = x[b, t]
            dx = prev - xt
            z = torch.tanh((xt + dx * mu["x"]) @ m.time_maa_w1)
            xs = {c: xt + dx * (mu[c] + z[i * ml:(i + 1) * ml] @ m.time_maa_w2[i]) for i, c in enumerate("wkvrg")}
            r, k, v = (W[c] @ xs[c] for c in "rkv")
            g = W["g"] @ xs["g"]
            g = g * torch.sigmoid(g)
            dd = m.time_decay.reshape(-1) + torch.tanh(xs["w"] @ m.time_decay_w1) @ m.time_decay_w2
            w = torch.exp(-torch.exp(dd))
            o = torch.zeros(H * K, dtype=torch.float64)
            for h in range(H):
                sl = slice(h * K, (h + 1) * K)
                kv = torch.outer(k[sl], v[sl])
                oh = r[sl] @ (m.time_faaaa[h][:, None] * kv + S[h])
                S[h] = w[sl][:, None] * S[h] + kv
                mean, var = oh.mean(), ((oh - oh.mean()) ** 2).mean()
                o[sl] = (oh - mean) / torch.sqrt(var + eps) * m.ln_x.weight[sl] + m.ln_x.bias[sl]
            y[b, t] = m.output.weight @ (o * g)
            prev = xt
    return y


@pytest.mark.parametrize("args,value_scale", [(SMALL, 1.0), ({**SMALL, "attn_dim": 24}, 1.0), (SMALL, 0.02),
                                              ({"head_size": 4, "mix_lora": 2, "decay_lora": 3,
                                                "head_size_divisor": 2}, 0.05)])
def test_matches_finch_formulas(args, value_scale):
    """Element-by-element reference; value_scale < 1 makes the WKV output small enough that ln_x's eps
    matters (it tells eps 64e-5 on o from the RWKV-5-style o/8 with that eps, i.e. 64e-5·64 on o)."""
    m = randomize(build("rwkv6", args, d_model=16), seed=5)
    with torch.no_grad():
        m.value.weight.mul_(value_scale)
        assert m.ln_x.eps == pytest.approx(1e-5 * m.cfg.head_size_divisor ** 2)
    x = torch.randn(2, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = _finch_reference(m, x)
    check_reference(m, x, ref, 1e-10)


def _cmix6_reference(m, x):
    """RWKV-6 channel-mix written per token (RWKV_CMix_x060): x_k = x_t + (x_{t-1} - x_t) ⊙ μk (likewise r),
    y_t = σ(W_r x_r) ⊙ W_v relu(W_k x_k)²; x_{-1} = 0."""
    B, T, d = x.shape
    y = torch.zeros_like(x)
    for b in range(B):
        prev = torch.zeros(d, dtype=x.dtype)
        for t in range(T):
            dx = prev - x[b, t]
            xk, xr = x[b, t] + dx * m.time_maa_k.reshape(-1), x[b, t] + dx * m.time_maa_r.reshape(-1)
            k = torch.clamp(m.key.weight @ xk, min=0) ** 2
            y[b, t] = 1 / (1 + torch.exp(-(m.receptance.weight @ xr))) * (m.value.weight @ k)
            prev = x[b, t]
    return y


def test_cmix6_matches_reference_and_step():
    m = randomize(build("cmix", {"version": 6, "hidden": 24}, d_model=16), seed=7)
    x = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = _cmix6_reference(m, x)
    check_reference(m, x, ref, 1e-12)


def test_cmix6_init_is_rwkv_lm():
    """RWKV_CMix_x060 at mid depth (ratio_1_to_almost0 = 0.5): time_maa_k = time_maa_r = 1 - (i/d)^0.5;
    default hidden int(3.5·d) // 32 · 32."""
    m = build("cmix", {"version": 6}, d_model=64)
    want = 1 - (torch.arange(64, dtype=torch.float64) / 64) ** 0.5
    assert torch.allclose(m.time_maa_k.view(-1), want) and torch.allclose(m.time_maa_r.view(-1), want)
    assert m.key.weight.shape == (224, 64) and m.value.weight.shape == (64, 224)
