"""Zamba2's shared transformer block: parallel == recurrent (KV cache), prefill + decode, gradients
to shared and per-use parameters, one shared set per group in a compiled model, and the same
output as transformers' Zamba2AttentionDecoderLayer + the hybrid layer's `linear`."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import archdsl

from blockcheck import build, check_block, rel_err

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_util import transformers  # noqa: E402


class OneUse(nn.Module):
    """A shared block and one of its uses as a plain block (what blockcheck drives); the original
    embedding is a fixed random tensor the test slices like the input."""

    def __init__(self, shared, use, emb):
        super().__init__()
        self.cfg, self.shared, self.use, self.emb = shared.cfg, shared, use, emb

    def _e(self, x):
        return self.emb[:, :x.shape[1]] if x.dim() == 3 else self.emb[:, self.t]

    def forward(self, x, state=None, **ctx):
        n = state["n"] if state is not None else 0
        self.t = n + x.shape[1]
        return self.shared(x, state, emb=self.emb[:, n:n + x.shape[1]], use=self.use)

    def step(self, x, state, **ctx):
        return self.shared.step(x, state, emb=self.emb[:, state["n"]], use=self.use)

    def init_state(self, batch, device, dtype):
        return self.shared.init_state(batch, device, dtype)


def one_use(args, d_model=16, length=32, seed=0):
    shared = build("zamba", args, d_model=d_model, seed=seed)
    use = type(shared).per_use(shared.cfg).double()
    emb = torch.randn(2, length, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 7))
    return OneUse(shared, use, emb)


CASES = [
    {"heads": 4, "lora": 4, "hidden": 24},
    {"heads": 4, "lora": 0},
    {"heads": 4, "lora": 3, "attn_lora": True, "act": "silu"},
    {"heads": 4, "kv_heads": 2, "lora": 2, "rope": True},
    {"heads": 2, "head_dim": 6, "lora": 2, "rope": True, "rope_theta": 100.0},
]


@pytest.mark.parametrize("args", CASES)
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (12, 12)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(one_use(args), length=length, split=split)


@pytest.mark.parametrize("args", CASES)
def test_counts_and_names(args):
    m = one_use(args)
    cfg = m.cfg
    assert sum(p.numel() for p in m.shared.parameters()) == cfg.params()
    assert sum(p.numel() for p in m.use.parameters()) == cfg.per_use_params()
    names = {n for n, _ in m.shared.named_parameters()}
    assert names == {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                     "self_attn.v_proj.weight", "self_attn.o_proj.weight", "pre_ff_layernorm.weight",
                     "feed_forward.gate_up_proj.weight", "feed_forward.down_proj.weight"}
    assert m.shared.input_layernorm.weight.shape == (2 * cfg.d_model,)


def test_needs_emb_and_use():
    m = one_use(CASES[0])
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="emb"):
        m.shared(x, None, use=m.use)
    with pytest.raises(ValueError, match="use"):
        m.shared(x, None, emb=x)


def test_compiled_model_shares_one_set():
    import archdsl

    spec = archdsl.parse("6×mamba2(headdim=8, d_state=4), zamba(shared, lora=4, heads=4) at 1 3 5", d_model=16, vocab_size=32)
    model = archdsl.compile(spec, dtype=torch.float64)
    uses = [layer for layer in model.layers if layer.inject is not None]
    assert len(uses) == 3
    assert all(layer.inject is uses[0].inject for layer in uses)
    shared_ids = {id(p) for p in uses[0].inject.parameters()}
    use_ids = [{id(p) for p in layer.inject_use.parameters()} for layer in uses]
    assert not (use_ids[0] & use_ids[1]) and not (use_ids[0] & shared_ids)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params() == archdsl.analyze(spec).params
    ids = torch.randint(0, spec.vocab_size, (1, 6))
    with torch.no_grad():  # the whole model decodes what it computes in parallel
        full = model(ids)
        cache = model.init_cache(1)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(6)], dim=1)
        assert rel_err(steps, full) < 1e-9
    model(ids).square().mean().backward()
    grads = [p.grad for p in uses[0].inject.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def _hf_block(cfg, n_uses, use_index, attn_adapter, rope=False):
    tf = transformers()
    from transformers.models.zamba2.modeling_zamba2 import Zamba2AttentionDecoderLayer

    d = cfg.d_model
    hybrid = list(range(0, 2 * n_uses, 2))
    config = tf.Zamba2Config(hidden_size=d, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv,
                             intermediate_size=cfg.width, adapter_rank=cfg.lora, num_mem_blocks=1,
                             use_shared_attention_adapter=attn_adapter, use_mem_rope=rope,
                             rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, rms_norm_eps=cfg.norm_eps,
                             hidden_act=cfg.act, num_hidden_layers=2 * n_uses,
                             layers_block_type=["hybrid" if i in hybrid else "mamba" for i in range(2 * n_uses)])
    config._attn_implementation = "eager"
    hf = Zamba2AttentionDecoderLayer(config, block_id=0).double()
    return hf, hybrid[use_index], config


@pytest.mark.parametrize("attn_adapter,rope", [(False, False), (True, False), (False, True)])
def test_matches_transformers_zamba2(attn_adapter, rope):
    """Weights copied by name (HF's per-use list entry i → the use's module), same output."""
    args = {"heads": 4, "lora": 3, "hidden": 40, "attn_lora": attn_adapter, "rope": rope, "rope_theta": 50.0}
    m = one_use(args, length=9)
    hf, layer_idx, config = _hf_block(m.cfg, n_uses=3, use_index=1, attn_adapter=attn_adapter, rope=rope)
    with torch.no_grad():
        for p in m.parameters():  # RMSNorm weights start at 1: move everything
            p.add_(0.1 * torch.randn_like(p))
        hf_sd = {}
        for name, p in m.shared.named_parameters():
            hf_sd[name] = p
        for name, p in m.use.named_parameters():
            if name.startswith("gate_up_proj_adapter"):
                hf_sd["feed_forward.gate_up_proj_adapter_list.1" + name[len("gate_up_proj_adapter"):]] = p
            elif name.startswith("linear_") and "_adapter" in name:
                which, rest = name.split("_adapter", 1)
                hf_sd[f"self_attn.{which}_adapter_list.1{rest}"] = p
        missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
        assert not unexpected
        assert all("adapter_list.0" in k or "adapter_list.2" in k for k in missing), missing
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        e = m.emb[:, :9]
        mask = torch.full((9, 9), float("-inf"), dtype=torch.float64).triu(1)[None, None]
        pos = None
        if rope:
            from transformers.models.zamba2.modeling_zamba2 import Zamba2RotaryEmbedding

            pos = Zamba2RotaryEmbedding(config)(x, torch.arange(9)[None])
        ref = m.use.linear(hf(x, original_hidden_states=e, layer_idx=layer_idx, attention_mask=mask,
                              position_embeddings=pos))
        assert rel_err(m(x), ref) < 1e-5  # HF normalises and softmaxes in float32


def test_static_cache_from_zero_and_after_reset():
    """The fixed-buffer cache (what a CUDA graph replays): decoding from position 0, and after a
    prefill and a reset, equals the parallel pass."""
    spec = archdsl.parse("3×mamba2, zamba(shared, heads=4, lora=4) at 0 2", d_model=32, vocab_size=64)
    model = archdsl.compile(spec, dtype=torch.float64)
    x = torch.randint(0, 64, (2, 10))
    full = model(x)
    cache = model.init_cache(2, max_len=12, static=True)
    steps = torch.stack([model.step(x[:, t], cache) for t in range(10)], 1)
    assert torch.allclose(steps, full, rtol=1e-9, atol=1e-12)
    cache.reset()
    model(x[:, :4], cache)
    steps = torch.stack([model.step(x[:, t], cache) for t in range(4, 10)], 1)
    assert torch.allclose(steps, full[:, 4:], rtol=1e-9, atol=1e-12)
