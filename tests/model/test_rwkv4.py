"""RWKV-4 time-mix and the channel-mix (cmix): parallel == recurrent, prefill + decode, gradients,
HF names and shapes, and the same outputs as transformers' RwkvSelfAttention / RwkvFeedForward
given the same weights (the semantics a checkpoint import relies on)."""
import sys
from pathlib import Path

import pytest
import torch

from blockcheck import build, check_block, rel_err

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_util import transformers  # noqa: E402


def randomize(mod, seed=0, scale=0.5):
    """Move every parameter off its structured init so that a comparison tests something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return mod


@pytest.mark.parametrize("args", [{}, {"attn_dim": 24}])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (13, 13)])
def test_time_mix_parallel_equals_recurrent(args, length, split):
    check_block(randomize(build("rwkv4", args)), length=length, split=split)


@pytest.mark.parametrize("args", [{}, {"hidden": 40}, {"version": 6}, {"version": 6, "hidden": 24}])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3)])
def test_cmix_parallel_equals_recurrent(args, length, split):
    check_block(randomize(build("cmix", args)), length=length, split=split)


def test_names_shapes_counts():
    m = build("rwkv4", {"attn_dim": 24}, d_model=16)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {"time_decay": (24,), "time_first": (24,), "time_mix_key": (1, 1, 16),
                      "time_mix_value": (1, 1, 16), "time_mix_receptance": (1, 1, 16), "key.weight": (24, 16),
                      "value.weight": (24, 16), "receptance.weight": (24, 16), "output.weight": (16, 24)}
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()
    c4, c6 = build("cmix", {}, d_model=16), build("cmix", {"version": 6}, d_model=64)
    assert {n for n, _ in c4.named_parameters()} == {"time_mix_key", "time_mix_receptance", "key.weight",
                                                     "receptance.weight", "value.weight"}
    assert {n for n, _ in c6.named_parameters()} == {"time_maa_k", "time_maa_r", "key.weight",
                                                     "receptance.weight", "value.weight"}
    assert c4.key.weight.shape == (64, 16) and c6.key.weight.shape == (224, 64)  # 4·d; int(3.5·d)//32·32
    for c in (c4, c6):
        assert sum(p.numel() for p in c.parameters()) == c.cfg.params()


def test_init_is_rwkv_lm():
    m = build("rwkv4", {}, d_model=16)
    assert (m.time_mix_key >= 0).all() and (m.time_mix_key <= 1).all() and m.time_mix_key[0, 0, 0] == 0
    assert torch.allclose(m.time_first[0], torch.log(torch.tensor(0.3, dtype=torch.float64)))  # zigzag 0 there
    assert m.time_decay[0].item() == -5 and abs(m.time_decay[-1].item() - 3) < 1e-12


def _hf_pair(d=16, A=24, hidden=40, layers=2):
    tf = transformers()
    from transformers.models.rwkv.modeling_rwkv import RwkvFeedForward, RwkvSelfAttention

    config = tf.RwkvConfig(hidden_size=d, attention_hidden_size=A, intermediate_size=hidden, num_hidden_layers=layers)
    return config, RwkvSelfAttention(config, layer_id=1).double(), RwkvFeedForward(config, layer_id=1).double()


def _hf_state(config, B):
    d, L = config.hidden_size, config.num_hidden_layers
    st = [torch.zeros(B, d, L, dtype=torch.float64) for _ in range(4)] + [torch.full((B, d, L), -1e38, dtype=torch.float64)]
    return st


HF_TOL = 1e-6  # transformers' CPU WKV rounds the keys to float32 (`key[:, t].float()`)


def test_matches_transformers_rwkv():
    """Same weights (copied by name, no renaming) → same outputs as HF, whole sequence and as a
    prefill continued by single tokens through HF's state."""
    d = 16
    config, hf_att, hf_ffn = _hf_pair(d=d, A=d)
    ours = randomize(build("rwkv4", {}, d_model=d), seed=3)
    cm = randomize(build("cmix", {"hidden": 40}, d_model=d), seed=4)
    hf_att.load_state_dict(ours.state_dict())
    hf_ffn.load_state_dict(cm.state_dict())
    x = torch.randn(2, 9, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_err(ours(x), hf_att(x)[0]) < HF_TOL
        assert rel_err(cm(x), hf_ffn(x)[0]) < 1e-9
        # HF's single-token path broadcasts the [B, d] shift state against [B, 1, d] (right for
        # batch 1 only), so the decoding comparison runs at batch 1
        x = x[:1]
        st, mine, cst = _hf_state(config, 1), ours.init_state(1, x.device, x.dtype), cm.init_state(1, x.device, x.dtype)
        a = hf_att(x[:, :5], state=st, use_cache=True)[0]
        f = hf_ffn(x[:, :5], state=st)[0]
        b, g = ours(x[:, :5], mine), cm(x[:, :5], cst)
        assert rel_err(b, a) < HF_TOL and rel_err(g, f) < 1e-9
        for t in range(5, 9):
            a = hf_att(x[:, t:t + 1], state=st, use_cache=True)[0][:, 0]
            f = hf_ffn(x[:, t:t + 1], state=st)[0][:, 0]
            assert rel_err(ours.step(x[:, t], mine), a) < HF_TOL
            assert rel_err(cm.step(x[:, t], cst), f) < 1e-9


def test_attn_dim_matches_transformers():
    config, hf_att, _ = _hf_pair(d=16, A=24)
    ours = randomize(build("rwkv4", {"attn_dim": 24}, d_model=16), seed=6)
    hf_att.load_state_dict(ours.state_dict())
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(ours(x), hf_att(x)[0]) < HF_TOL


def test_zeroed_state_is_a_fresh_state():
    """A cache reset by zeroing its tensors (max = 0, not -1e38) still decodes exactly, even with
    keys so negative that e^(k+u) underflows against a max of 0."""
    m = build("rwkv4", {}, d_model=8)
    with torch.no_grad():
        m.key.weight.mul_(0).add_(-0.0)
        m.time_first.fill_(-800.0)
        x = torch.randn(1, 4, 8, dtype=torch.float64)
        fresh, zeroed = m.init_state(1, x.device, x.dtype), m.init_state(1, x.device, x.dtype)
        for t in zeroed.values():
            t.zero_()
        a, b = m(x, fresh), m(x, zeroed)
        assert torch.isfinite(b).all() and torch.equal(a, b)
