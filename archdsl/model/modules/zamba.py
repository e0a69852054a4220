"""Zamba2's shared transformer block (the INJECT sublayer), as HF transformers'
Zamba2AttentionDecoderLayer + the per-layer `linear` of Zamba2HybridLayer.

    h [B, L, d] (the residual stream), e [B, L, d] (the original embedding, ctx["emb"])
    z = input_layernorm(concat(h, e))                       RMSNorm over 2d
    a = o_proj(softmax(q·kᵀ·(hd/2)^-½, causal)·v)           q/k/v_proj: Linear(2d, ·), o_proj → d
        q, k, v += linear_{q,k,v}_adapter(z)                 (per use, when attn_lora)
    n = pre_ff_layernorm(a)                                  RMSNorm over d
    m = down_proj(act(g)·u),  [g; u] = gate_up_proj(n) + gate_up_proj_adapter(n)   (adapter per use)
    out = linear(m)                                          per use, Linear(d, d)
No residual inside the block: the layer adds `out` to its mixer's input only.

Sharing (the protocol of modules/__init__.py): `Zamba` is the shared part (both norms,
attention, MLP — the config's params()), built once per group; `Zamba.per_use(cfg)` builds a
`ZambaUse` per occurrence (adapters and `linear` — the config's per_use_params()), and each call
passes it: zamba(h, state, emb=e, use=that_use). Parameter names follow HF (self_attn.q_proj,
feed_forward.gate_up_proj, ...; HF's per-use ModuleLists `gate_up_proj_adapter_list[i]` become
the use's `gate_up_proj_adapter`). init_state gives a fresh cache per call, so each use keeps its
own KV cache: {"k", "v": [B, kv_heads, capacity, hd] (after RoPE), "n": tokens held}.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attn import apply_rope, grown, key_mask, packed_sdpa, pad_state, rope_cos_sin, sdpa
from .state import writable

ACTS = {"gelu": F.gelu, "silu": F.silu}


class RMSNorm(nn.Module):
    """HF Zamba2RMSNorm: computed in float32 (float64 for float64 models), weight applied after."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = x.to(wd)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class ZambaAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d2 = 2 * cfg.d_model
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv, cfg.hdim
        self.q_proj = nn.Linear(d2, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d2, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d2, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.d_model, bias=False)


class ZambaMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.width, bias=False)
        self.down_proj = nn.Linear(cfg.width, cfg.d_model, bias=False)


def _lora(d_in: int, rank: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))


class ZambaUse(nn.Module):
    """What one use of the shared block owns: LoRA adapters and the output `linear`."""

    def __init__(self, cfg):
        super().__init__()
        d, r = cfg.d_model, cfg.lora
        if cfg.attn_lora and (cfg.heads * cfg.hdim != 2 * d or cfg.kv != cfg.heads):
            raise ValueError("zamba: attn_lora needs heads·head_dim == 2·d_model and kv_heads == heads "
                             "(the q/k/v adapters map 2·d_model to 2·d_model, as in HF Zamba2)")
        if r:
            self.gate_up_proj_adapter = _lora(d, r, 2 * cfg.width)
        if cfg.attn_lora:
            self.linear_q_adapter = _lora(2 * d, r, 2 * d)
            self.linear_k_adapter = _lora(2 * d, r, 2 * d)
            self.linear_v_adapter = _lora(2 * d, r, 2 * d)
        self.linear = nn.Linear(d, d, bias=False)


class Zamba(nn.Module):
    """The shared part of Zamba2's transformer block; every call names its use (`use=`)."""

    PACKS = True  # packed sequences: attention within each (model/packed.py)
    PADS = True  # left padding: packed, and the pad counts kept for the steps (state["start"], as attn's)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(2 * cfg.d_model, cfg.norm_eps)
        self.self_attn = ZambaAttention(cfg)
        self.pre_ff_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = ZambaMLP(cfg)
        self.act = ACTS[cfg.act]

    @staticmethod
    def per_use(cfg) -> ZambaUse:
        return ZambaUse(cfg)

    # --- pieces --------------------------------------------------------------------------
    def _qkv(self, z, use):
        at = self.self_attn
        q, k, v = at.q_proj(z), at.k_proj(z), at.v_proj(z)
        if self.cfg.attn_lora:
            q, k, v = q + use.linear_q_adapter(z), k + use.linear_k_adapter(z), v + use.linear_v_adapter(z)
        return q, k, v

    def _ffn(self, a, use):
        """Attention output a [..., d] → this use's output [..., d]."""
        n = self.pre_ff_layernorm(a)
        gu = self.feed_forward.gate_up_proj(n)
        if self.cfg.lora:
            gu = gu + use.gate_up_proj_adapter(n)
        g, u = gu.chunk(2, dim=-1)
        return use.linear(self.feed_forward.down_proj(self.act(g) * u))

    @staticmethod
    def _ctx(ctx):
        for name in ("emb", "use"):
            if ctx.get(name) is None:
                raise ValueError(f"zamba: the inject block needs ctx `{name}` (the original embedding / its per-use module)")
        return ctx["emb"], ctx["use"]

    # --- parallel ------------------------------------------------------------------------
    def forward(self, x, state=None, **ctx):
        """x [B, L, d], ctx emb [B, L, d] and use → [B, L, d]; with `state`, attends over its
        cache too and appends this chunk's keys and values."""
        emb, use = self._ctx(ctx)
        at = self.self_attn
        Bsz, L, _ = x.shape
        z = self.input_layernorm(torch.cat([x, emb.to(x.dtype)], dim=-1))
        q, k, v = self._qkv(z, use)
        q = q.view(Bsz, L, at.heads, at.head_dim).transpose(1, 2)
        k = k.view(Bsz, L, at.kv_heads, at.head_dim).transpose(1, 2)
        v = v.view(Bsz, L, at.kv_heads, at.head_dim).transpose(1, 2)
        if state is not None and state["static"] and L == 1:  # one decode token, fixed buffers
            return self._ffn(at.o_proj(self._static_step(q, k, v, state).reshape(Bsz, -1))[:, None], use)
        if state is not None and state["static"] and state["n"] > 0:  # a chunk after the cache's tokens
            return self._ffn(at.o_proj(self._static_chunk(q, k, v, state).transpose(1, 2).reshape(Bsz, L, -1)), use)
        n0 = state["n"] if state is not None else 0
        packed = ctx.get("packed")  # model/packed.py: attention within each sequence
        padded = state is not None and state["padded"]  # after a left-padded prefill: positions from the prompt
        if packed is not None:
            pos = packed.pos
        else:
            pos = torch.arange(n0, n0 + L, device=x.device)
            if padded:
                pos = pos - state["start"][:, None]  # [B, L]
        q, k = self._rope(q, k, pos)
        scale, fixed = (at.head_dim / 2) ** -0.5, torch.is_grad_enabled()  # inference prefills come in every length
        if packed is not None:
            o = packed_sdpa(q, k, v, packed, scale=scale, fixed_shape=fixed)
        else:
            k_all, v_all, mask, causal = k, v, None, L > 1
            if n0:
                keys, vals = state["k"][:, :, :n0], state["v"][:, :, :n0]
                k_all, v_all = torch.cat([keys, k], dim=2), torch.cat([vals, v], dim=2)
                i = torch.arange(L, device=x.device)[:, None] + n0
                mask, causal = torch.arange(n0 + L, device=x.device)[None, :] <= i, False
                if padded:
                    mask = mask & key_mask(state["start"], n0 + L - 1, n0 + L, n0 + L)  # no pad key
            o = sdpa(q, k_all, v_all, mask=mask, causal=causal, scale=scale, gqa=at.heads != at.kv_heads,
                     fixed_shape=fixed)
        if state is not None:
            self._append(state, k, v)
            pad_state(state, packed)
        return self._ffn(at.o_proj(o.transpose(1, 2).reshape(Bsz, L, -1)), use)

    def _static_step(self, q, k, v, state):
        """q, k, v [B, heads|kv, 1, hd] of one token → attention output [B, heads, 1, hd], with the
        position in a tensor and the buffers never reallocated, so a CUDA graph can replay it."""
        at = self.self_attn
        pos, start = state["pos"], state["start"]
        q, k = self._rope(q, k, (pos - start).view(-1, 1))  # from each row's prompt (start 0 without padding)
        writable(state, self, q, "k", "v")  # the earlier steps' attention saved the buffers
        slot = pos.view(1).clone()  # index_copy_'s backward reads its index; pos moves on below
        state["k"].index_copy_(2, slot, k.to(state["k"].dtype))  # autocast's k, v: index_copy_ does not cast
        state["v"].index_copy_(2, slot, v.to(state["v"].dtype))
        cap = state["k"].shape[2]
        valid = key_mask(start, pos, cap, cap)
        pos.add_(1)
        state["n"] += 1
        return sdpa(q, state["k"], state["v"], mask=valid, scale=(at.head_dim / 2) ** -0.5,
                    gqa=at.heads != at.kv_heads)

    def _static_chunk(self, q, k, v, state):
        """q, k, v [B, heads|kv, L, hd] of L tokens after a static cache's first ones → [B, heads, L, hd], in one
        attention call, as L steps give it: the chunk's keys written at their positions' slots, the query at
        position p seeing the slots j <= p at or after its row's start (its pad count)."""
        at = self.self_attn
        L, cap, n = q.shape[2], state["k"].shape[2], state["n"]
        if n + L > cap:
            raise RuntimeError(f"zamba cache full: capacity {cap}, need {n + L}")
        pos, start = state["pos"], state["start"]
        at_q = pos + torch.arange(L, device=q.device)  # [L]
        q, k = self._rope(q, k, at_q[None, :] - start[:, None])  # from each row's prompt (start 0 unpadded)
        writable(state, self, q, "k", "v")
        state["k"].index_copy_(2, at_q, k.to(state["k"].dtype))
        state["v"].index_copy_(2, at_q, v.to(state["v"].dtype))
        j = torch.arange(cap, device=q.device)
        mask = (j[None, None, :] <= at_q[None, :, None]) & (j[None, None, :] >= start[:, None, None])  # [B, L, cap]
        pos.add_(L)
        state["n"] = n + L
        return sdpa(q, state["k"], state["v"], mask=mask[:, None], scale=(at.head_dim / 2) ** -0.5,
                    gqa=at.heads != at.kv_heads)

    def _rope(self, q, k, pos):
        if not self.cfg.rope:
            return q, k
        cos, sin = rope_cos_sin(pos, q.shape[-1], self.cfg.rope_theta, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    @staticmethod
    def _append(state, k, v):
        """Write k, v [B, kv, L, hd] after the cache's n tokens, growing its capacity by doubling, never past
        state["limit"] unless n + L is more (attention's `grown`; a static cache only fills, and refuses to outgrow
        its max_len)."""
        n, L = state["n"], k.shape[2]
        if state["k"].shape[2] < n + L:
            if state["static"]:
                raise RuntimeError(f"zamba cache full: capacity {state['k'].shape[2]}, need {n + L}")
            cap = grown(state["k"].shape[2], n + L, state.get("limit"))
            for name in ("k", "v"):
                old = state[name]
                new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
                new[:, :, :n] = old[:, :, :n]
                state[name] = new
        state["k"][:, :, n:n + L] = k
        state["v"][:, :, n:n + L] = v
        state["n"] = n + L
        state["pos"].fill_(n + L)

    # --- recurrent -----------------------------------------------------------------------
    def step(self, x, state, **ctx):
        """x [B, d], ctx emb [B, d] → [B, d]; appends this token to the KV cache."""
        emb, use = self._ctx(ctx)
        return self.forward(x[:, None], state, emb=emb[:, None], use=use)[:, 0]

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        """KV cache [B, kv_heads, capacity, head_dim]: allocated at max_len if given (as attention's), growing by
        doubling past it; with `static` allocated at max_len once and addressed through the position tensor (CUDA
        graphs)."""
        at = self.self_attn
        if static and not max_len:
            raise ValueError("a static zamba cache needs max_len")
        shape = (batch, at.kv_heads, max_len or 0, at.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype),
                "pos": torch.zeros((), device=device, dtype=torch.long), "n": 0, "static": static,
                "start": torch.zeros(batch, device=device, dtype=torch.long), "padded": False, "limit": None}
