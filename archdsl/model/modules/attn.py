"""Causal multi-head / grouped-query attention, laid out as HF Llama (q_proj, k_proj, v_proj, o_proj).

    x [B, L, d] ─q_proj─▶ [B, H, L, hd], k_proj / v_proj ─▶ [B, Hkv, L, hd]
    RoPE (rotate_half convention, HF Llama) on q and k when cfg.rope
    causal softmax(q·kᵀ/√hd) (keys within `window` when set) ─o_proj─▶ [B, L, d]

The parallel path is F.scaled_dot_product_attention. The decode cache holds keys and values
after RoPE: [B, Hkv, capacity, hd]. Without a window the capacity grows by doubling (or is
fixed by `max_len`); with a window it is a ring of `window` slots written at pos % window —
attention over a set of keys does not care about their order once RoPE is applied.
`static=True` (CUDA graphs) keeps everything in tensors: the position lives in state["pos"]
and a step attends over the whole buffer with a mask, so no shape depends on the position.
A left-padded prefill (model/packed.py) leaves each row's pad count in state["start"]: the steps
after it mask those keys and count RoPE positions from the prompt's first token.
A forward over a cache that already holds tokens (a chunked prefill, a chat's next turn), dynamic or static,
is one SDPA call of the chunk over the cached keys and its own, masked by position (causal, the pads, the
window), with the outputs of stepping its tokens one by one (_continue). CUDA graphs capture the step only.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..fusions import Fusable
from ..plain import all_plain
from .state import writable


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin at integer positions `pos`, as HF's rotary embedding (in float32, float64 for float64 models):
    [L, hd] for pos [L] (or [hd] for a 0-dim pos), [B, 1, L, hd] for pos [B, L] (a position a row: packed
    sequences), to broadcast over the heads of q, k [B, H, L, hd]."""
    wd = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=wd) / head_dim))
    freqs = pos.to(wd)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    if pos.dim() == 2:
        emb = emb[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def key_mask(start: torch.Tensor, n, slots: int, ring: int) -> torch.Tensor:
    """[B, 1, 1, slots] bool: which of a cache's first `slots` slots hold a key a row's query at position n
    (an int or a 0-dim tensor) may see, slot s holding the latest position ≡ s mod `ring` up to n: those at
    or after the row's first prompt token, start [B] (its pad count; 0 without padding)."""
    s = torch.arange(slots, device=start.device)
    at = n - torch.remainder(n - s, ring)  # the position slot s holds; negative: not yet written
    return (at[None, :] >= start[:, None]).view(-1, 1, 1, slots)


def grown(cap: int, need: int, limit: int | None) -> int:
    """The new capacity of a KV buffer of `cap` positions that must hold `need`: doubled (at least 16), but no more
    than `limit` (None: no bound), the most it will ever hold, unless `need` is more."""
    cap = max(need, 2 * cap, 16)
    return cap if limit is None else min(cap, max(need, limit))


def pad_state(state: dict, packed) -> None:
    """After a prefill: a left-padded one's pad counts into the cache (state["start"]) for the steps."""
    if packed is not None and packed.keep is not None:
        state["start"].copy_(packed.pads())
        state["padded"] = True


def sdpa(q, k, v, *, mask=None, causal=False, scale=None, gqa=False, fixed_shape=True):
    """F.scaled_dot_product_attention, q [B, H, Lq, hd], k, v [B, Hkv, Lk, hd] → [B, H, Lq, hd].

    fixed_shape=False (an eager decode step over a growing cache, an inference prefill) keeps the
    call off cuDNN's backend: it builds an execution plan for every new key length, 2.1 ms of CPU
    time per call for llama-1.3b on the H200 (50 ms per decode step over 24 layers, against 1.2 ms
    with the plan cached; torch.profiler, 2026-11-28). Flash and memory-efficient attention have no
    per-shape set-up. Training and CUDA-graph steps have fixed shapes and keep torch's choice."""
    call = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                                  enable_gqa=gqa)
    if fixed_shape or q.device.type != "cuda":
        return call()
    with sdpa_kernel(_NO_PLAN_BACKENDS):
        return call()


_NO_PLAN_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _varlen_attn():
    """torch's varlen flash attention (torch.nn.attention.varlen.varlen_attn) where it takes a window, else None.
    Where it also takes `enable_gqa` (after torch 2.11) the key heads are shared in the kernel; before, we repeat
    them (H/Hkv times the K and V bytes, still far below the L² mask)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "window_size" in inspect.signature(varlen_attn).parameters else None


def packed_sdpa(q, k, v, packed, window: int | None = None, scale=None, fixed_shape=True):
    """Attention of packed rows (model/packed.py), q [B, H, L, hd], k, v [B, Hkv, L, hd] → [B, H, L, hd]: each
    token sees the keys of its own sequence up to itself (within `window`). On CUDA in 16 bits (head_dim a
    multiple of 8, at most 256), torch's varlen flash attention over the B·L tokens as one batch of sequences,
    no mask; elsewhere SDPA with the packed dense mask ([B, L, L] bool)."""
    B, H, L, hd = q.shape
    varlen = _varlen_attn() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
    if varlen is not None and hd % 8 == 0 and hd <= 256:
        cu, longest = packed.cu_seqlens()
        kw = {"scale": scale, "window_size": (-1 if window is None else window - 1, 0)}
        if H != k.shape[1]:
            if "enable_gqa" in inspect.signature(varlen).parameters:
                kw["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
        flat = lambda t: t.transpose(1, 2).reshape(B * L, t.shape[1], hd)
        o = varlen(flat(q), flat(k), flat(v), cu, cu, longest, longest, **kw)
        return o.view(B, L, H, hd).transpose(1, 2)
    return sdpa(q, k, v, mask=packed.attn_mask(window), scale=scale, gqa=H != k.shape[1], fixed_shape=fixed_shape)


class Attention(nn.Module, Fusable):
    FUSES = ("qkv",)
    PACKS = True  # packed sequences (model/packed.py): ctx "packed" masks keys and sets the positions
    PADS = True  # left padding (model/packed.py): packed, and the pad counts kept for the steps (state["start"])

    def __init__(self, cfg, in_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        d_in = in_dim or cfg.d_model
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv, cfg.hdim
        self.q_proj = nn.Linear(d_in, self.heads * self.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(d_in, self.kv_heads * self.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(d_in, self.kv_heads * self.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, out_dim or cfg.d_model, bias=cfg.out_bias)
        self.fuse = True  # "qkv": one GEMM for q, k, v at inference (compile(fuse=...))
        self._pack()

    # --- projections -------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        """.to() / .cuda() / to_empty() convert each parameter on its own: pack them again."""
        super()._apply(fn, recurse)
        self._pack()
        return self

    @torch.no_grad()
    def _pack(self):
        """Lay the q, k, v weights (and biases) back to back in one storage, so that one GEMM
        can read them through a view (`_packed`). The Parameters stay the same objects. Left alone where a
        projection is not a plain nn.Linear (model/plain.py: a LoRA layer, a quantized Linear), which the
        fused GEMM does not take."""
        if not all_plain(self, "q_proj", "k_proj", "v_proj"):
            return
        for name in ("weight", "bias"):
            ps = [getattr(m, name) for m in (self.q_proj, self.k_proj, self.v_proj)]
            if ps[0] is None or type(ps[0].data) is not torch.Tensor:  # FSDP's DTensors: left alone
                continue
            if ps[0].device.type == "meta":  # no storage to share (and torch.cat on meta imports dynamo)
                continue
            buf = torch.cat([p.data for p in ps])
            at = 0
            for p in ps:
                p.data = buf[at:at + p.shape[0]]
                at += p.shape[0]

    def _packed(self, name):
        """The q, k, v `name` tensors as one [(H + 2·Hkv)·hd, ...] view when they still lie back to
        back in one storage, else None. A view, never a copy, so it can never go stale (an
        optimizer that updates in place without bumping version counters, as fused AdamW does,
        is seen at once). None while torch.compile traces, which cannot read storages (the three GEMMs
        then, one graph: the packing saves launches, which a compiled graph has few of anyway)."""
        ps = [getattr(m, name) for m in (self.q_proj, self.k_proj, self.v_proj)]
        if torch.compiler.is_compiling() or ps[0] is None:
            return None
        if any(type(p.data) is not torch.Tensor or not p.is_contiguous() for p in ps):
            return None
        store = ps[0].untyped_storage()
        if any(p.untyped_storage().data_ptr() != store.data_ptr() for p in ps[1:]):
            return None
        off = ps[0].storage_offset()
        for a, b in zip(ps, ps[1:]):
            if b.storage_offset() != a.storage_offset() + a.numel():
                return None
        rows = sum(p.shape[0] for p in ps)
        return ps[0].new_empty(0).set_(store, off, (rows, *ps[0].shape[1:]))

    def _qkv(self, x):
        """q [..., H·hd], k, v [..., Hkv·hd]; at inference one GEMM over the packed weights
        (the "qkv" fusion on, no autograd, the three projections plain nn.Linears: model/plain.py); training,
        and a wrapped or hooked projection (a LoRA layer, a forward hook), the three modules."""
        if "qkv" in self.fused and not torch.is_grad_enabled() and all_plain(self, "q_proj", "k_proj", "v_proj"):
            w = self._packed("weight")
            bias = self._packed("bias") if self.cfg.bias else None
            if w is not None and (bias is not None or not self.cfg.bias):
                out = F.linear(x, w, bias)
                q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
                return out.split([q, kv, kv], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _rope(self, q, k, pos):
        """RoPE on the first rope_fraction·head_dim channels (HF partial_rotary_factor)."""
        if not self.cfg.rope:
            return q, k
        rot = int(self.head_dim * getattr(self.cfg, "rope_fraction", 1.0)) // 2 * 2
        cos, sin = rope_cos_sin(pos, rot, self.cfg.rope_theta, q.dtype)
        if rot == self.head_dim:
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return (torch.cat([apply_rope(q[..., :rot], cos, sin), q[..., rot:]], dim=-1),
                torch.cat([apply_rope(k[..., :rot], cos, sin), k[..., rot:]], dim=-1))

    # --- cache -------------------------------------------------------------------------
    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        w = self.cfg.window
        cap = max_len if max_len else 0
        if w is not None:
            cap = min(cap, w) if cap else 0
        if static:
            if not max_len:
                raise ValueError("a static attention cache needs max_len")
        shape = (batch, self.kv_heads, cap, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype),
                "pos": torch.zeros((), device=device, dtype=torch.long), "n": 0, "static": static,
                "start": torch.zeros(batch, device=device, dtype=torch.long), "padded": False, "limit": None}

    def _ensure(self, state, need):
        """Grow a dynamic cache to hold `need` positions, doubling, never past state["limit"] (the most positions
        it will hold, where known: Cache.bound) unless `need` is more; a window's ring up to its `window` slots
        (position p in slot p % window: below the window, the slots a smaller ring (max_len) has filled stay in
        place)."""
        k = state["k"]
        if k.shape[2] >= need:
            return
        if state["static"]:
            raise RuntimeError(f"attention cache full: capacity {k.shape[2]}, position {need - 1}")
        cap = grown(k.shape[2], need, state.get("limit"))
        if self.cfg.window is not None:
            cap = min(cap, self.cfg.window)
        for name in ("k", "v"):
            old = state[name]
            new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
            new[:, :, :old.shape[2]] = old
            state[name] = new

    # --- parallel ----------------------------------------------------------------------
    def _project(self, x):
        """x [B, L, d] → q [B, H, L, hd], k, v [B, Hkv, L, hd] (before RoPE)."""
        Bsz, L, _ = x.shape
        q, k, v = self._qkv(x)
        return (q.view(Bsz, L, self.heads, self.head_dim).transpose(1, 2),
                k.view(Bsz, L, self.kv_heads, self.head_dim).transpose(1, 2),
                v.view(Bsz, L, self.kv_heads, self.head_dim).transpose(1, 2))

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; with a fresh `state`, leaves the keys and values in it. ctx "packed"
        (model/packed.py): each token attends within its own sequence, RoPE from its start; with left padding
        and a fresh state, the pad counts are kept for the steps (state["start"]). With a state already holding
        tokens (a chunked prefill, a chat's next turn), one attention call over the cached keys and the chunk's
        own (_continue)."""
        packed = ctx.get("packed")
        if state is not None and state["n"] > 0:
            return self._continue(x, state)
        Bsz, L, _ = x.shape
        q, k, v = self._project(x)
        q, k = self._rope(q, k, torch.arange(L, device=x.device) if packed is None else packed.pos)
        w = self.cfg.window
        gqa = self.heads != self.kv_heads
        fixed = torch.is_grad_enabled()  # inference prefills come in every length
        if packed is not None:
            o = packed_sdpa(q, k, v, packed, w, fixed_shape=fixed)
        elif w is None or w >= L:
            o = sdpa(q, k, v, causal=True, gqa=gqa, fixed_shape=fixed)
        else:
            i = torch.arange(L, device=x.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < w)
            o = sdpa(q, k, v, mask=mask, gqa=gqa, fixed_shape=fixed)
        if state is not None:
            self._store_prefill(state, k, v, L)
            pad_state(state, packed)
        return self.o_proj(o.transpose(1, 2).reshape(Bsz, L, -1))

    def _continue(self, x, state):
        """x [B, L, d] → [B, L, d] after a cache that holds tokens: the L tokens at the cache's next positions,
        in one attention call, as L steps would give them; appends their keys and values.

        Queries at positions p0 + i (i < L; p0 = state["n"], or the position tensor state["pos"] of a static
        cache, so that no shape depends on it). A key at position j is seen by the query at p when
          j <= p (causal),   j >= start[b] (not one of row b's pads),   j > p - window (with a window).
        Keys: a dynamic cache without a window takes the chunk's into its buffer first (grown by doubling) and
        attends over its first n + L slots. A ring (a window's, or a static cache's max_len slots) is read
        before it is written, the chunk's own keys after its slots ([B, Hkv, slots + L, hd]: its first keys may
        still see ones the chunk's last will overwrite); the chunk's last min(L, ring) keys are then stored at
        their slots, position p in slot p % ring. Slot s of a ring whose latest position is m holds position
        m - ((m - s) mod ring); one never written comes out negative, below every start."""
        Bsz, L, _ = x.shape
        dev, w, static = x.device, self.cfg.window, state["static"]
        q, k, v = self._project(x)
        n, start = state["n"], state["start"]
        p0 = state["pos"] if static else n
        at_q = p0 + torch.arange(L, device=dev)  # [L] the chunk's positions
        padded = static or state["padded"]  # as step: a static cache counts from each row's start (0 unpadded)
        q, k = self._rope(q, k, at_q - start[:, None] if padded else at_q)
        writable(state, self, x, "k", "v")  # the earlier calls' attention saved the buffers
        k, v = k.to(state["k"].dtype), v.to(state["v"].dtype)  # as a step reads them back (autocast's k, v)
        ring = None
        if not static and w is None:
            self._ensure(state, n + L)
            state["k"][:, :, n:n + L] = k
            state["v"][:, :, n:n + L] = v
            keys, vals = state["k"][:, :, :n + L], state["v"][:, :, :n + L]
            at_k = torch.arange(n + L, device=dev)
        else:
            ring = state["k"].shape[2] if static else w
            old = ring if static else min(n, w)  # the slots written (a static ring's all, masked by position)
            s = torch.arange(old, device=dev)
            at_old = (p0 - 1) - torch.remainder(p0 - 1 - s, ring)
            keys = torch.cat([state["k"][:, :, :old], k], dim=2)
            vals = torch.cat([state["v"][:, :, :old], v], dim=2)
            at_k = torch.cat([at_old, at_q])
        mask = at_k[None, :] <= at_q[:, None]  # [L, S]
        if w is not None:
            mask = mask & (at_k[None, :] > at_q[:, None] - w)
        if padded:
            mask = mask & (at_k[None, None, :] >= start[:, None, None])  # [B, L, S]
            mask = mask[:, None]  # [B, 1, L, S]
        o = sdpa(q, keys, vals, mask=mask, gqa=self.heads != self.kv_heads, fixed_shape=torch.is_grad_enabled())
        if ring is not None:
            keep = min(L, ring)
            if not static:
                self._ensure(state, min(n + L, w))  # a dynamic ring grows up to the window
            slots = torch.remainder(at_q[L - keep:], ring)
            state["k"].index_copy_(2, slots, k[:, :, L - keep:])
            state["v"].index_copy_(2, slots, v[:, :, L - keep:])
        state["n"] = n + L
        state["pos"].add_(L)
        return self.o_proj(o.transpose(1, 2).reshape(Bsz, L, -1))

    def _store_prefill(self, state, k, v, L):
        w = self.cfg.window
        if w is None:
            self._ensure(state, L)
            state["k"][:, :, :L].copy_(k)
            state["v"][:, :, :L].copy_(v)
        else:
            keep = min(L, w)
            self._ensure(state, keep)  # a dynamic ring grows up to the window (a static one has room: ArchModel)
            slots = torch.arange(L - keep, L, device=k.device) % state["k"].shape[2]
            # in the cache's dtype: under torch.autocast k, v come in its dtype, and index_copy_ does not cast
            state["k"].index_copy_(2, slots, k[:, :, L - keep:].to(state["k"].dtype))
            state["v"].index_copy_(2, slots, v[:, :, L - keep:].to(state["v"].dtype))
        state["n"] = L
        state["pos"].fill_(L)

    # --- recurrent ---------------------------------------------------------------------
    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; appends this token's key and value to the cache."""
        Bsz = x.shape[0]
        q, k, v = self._qkv(x)
        q = q.view(Bsz, self.heads, 1, self.head_dim)
        k = k.view(Bsz, self.kv_heads, 1, self.head_dim)
        v = v.view(Bsz, self.kv_heads, 1, self.head_dim)
        pos, start = state["pos"], state["start"]
        # a static cache always counts from each row's start (0 without padding): one graph serves both
        padded = state["static"] or state["padded"]
        q, k = self._rope(q, k, (pos - start).view(Bsz, 1) if padded else pos.view(1))
        w = self.cfg.window
        writable(state, self, x, "k", "v")  # the earlier steps' attention saved the buffers
        if state["static"]:
            cap = state["k"].shape[2]
            slot = (pos % cap).view(1)
            state["k"].index_copy_(2, slot, k.to(state["k"].dtype))  # autocast's k, v: index_copy_ does not cast
            state["v"].index_copy_(2, slot, v.to(state["v"].dtype))
            keys, vals, mask = state["k"], state["v"], key_mask(start, pos, cap, cap)
            state["n"] += 1  # eager steps: a chunk after them continues the cache (a graph's replays: Cache.advance)
        else:
            n = state["n"]
            if w is None:
                self._ensure(state, n + 1)
                slot, used = n, n + 1
            else:
                slot, used = n % w, min(n + 1, w)
                self._ensure(state, used)
            state["k"][:, :, slot:slot + 1] = k
            state["v"][:, :, slot:slot + 1] = v
            keys, vals = state["k"][:, :, :used], state["v"][:, :, :used]
            mask = key_mask(start, n, used, w or used) if padded else None
            state["n"] = n + 1
        state["pos"].add_(1)
        o = sdpa(q, keys, vals, mask=mask, gqa=self.heads != self.kv_heads, fixed_shape=state["static"])
        return self.o_proj(o.reshape(Bsz, -1))
