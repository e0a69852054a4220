"""RWKV-6 "Finch" time-mix (`rwkv6`), laid out as the HF-hub Rwkv6SelfAttention (RWKV/v6-Finch-*-HF);
its channel-mix is `cmix` with version=6 (rwkv4.ChannelMix).

x [B, L, d], x₋ the previous token, xx = x₋ - x (Peng et al. 2024, "Eagle and Finch", §4):
    data-dependent token shift (ddlerp):
        m = tanh((x + xx·μx) @ time_maa_w1) → [5, mix_lora] ─time_maa_w2─▶ mw, mk, mv, mr, mg  [d] each
        x_□ = x + xx·(μ□ + m□)                               for □ ∈ w, k, v, r, g
    r, k, v = receptance(x_r), key(x_k), value(x_v);  g = silu(gate(x_g))
    data-dependent decay: w = time_decay + tanh(x_w @ time_decay_w1) @ time_decay_w2,
        per-step decay exp(-exp(w))                   (log-decay -exp(w), the wkv6 op's w)
    o = wkv6(r, k, v, -exp(w), u=time_faaaa, scale=1)   per head: S ← diag(decay)·S + kᵀv,
        o = r·(S + u ⊙ kᵀv)
    y = output(GroupNorm_H(o) · g)    (ln_x, eps 1e-5·head_size_divisor² = 64e-5: RWKV-LM's RWKV_Tmix_x060,
        the HF-hub Rwkv6SelfAttention and ChatRWKV all normalise o itself. RWKV-5 (x052) divided o by
        the divisor before a GroupNorm of eps 1e-5, the same norm; dividing here as well would
        make the effective eps 1e-5·divisor⁴)
Decode state: "shift" [B, d] and "wkv" [B, H, K, K] (float32, float64 for float64 models).
Initialisation: RWKV-LM's v6 recipe at mid depth (a block does not know its layer index).
RWKV-LM zeroes the LoRA down-projections time_maa_w1 / time_decay_w1; we draw them from
U(±1e-4) instead so their up-projections get a gradient at the first step (the LoRA outputs
stay ~1e-6, i.e. practically the published init). RWKV-LM's model-level init_params (orthogonal
projections with gains 1 / 0.1 for key and gate / 0 for output, ln_x.weight ((1+layer)/n_layer)^0.7) needs the
layer index and is not applied: the projections keep nn.Linear's default and ln_x weight 1, bias 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rwkv4 import RATIO_0_TO_1, RATIO_1_TO_ALMOST0, ChannelMix, channel_ramp, state_dtype, token_shift
from .state import writable

__all__ = ["Rwkv6TimeMix", "ChannelMix"]


class Rwkv6TimeMix(nn.Module):
    PACKS = True  # packed sequences (model/packed.py): the token shift and the WKV restart at each sequence
    PADS = True  # left padding: packed (the token-shift state it leaves is the prompt's last token)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, A, m, w = cfg.d_model, cfg.adim, cfg.mix_lora, cfg.decay_lora
        H, K = cfg.heads, cfg.head_size
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.empty(1, 1, d)))
        self.time_maa_w1 = nn.Parameter(torch.empty(d, 5 * m))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, m, d))
        self.time_decay = nn.Parameter(torch.empty(1, 1, A))
        self.time_decay_w1 = nn.Parameter(torch.empty(d, w))
        self.time_decay_w2 = nn.Parameter(torch.empty(w, A))
        self.time_faaaa = nn.Parameter(torch.empty(H, K))
        self.receptance = nn.Linear(d, A, bias=False)
        self.key = nn.Linear(d, A, bias=False)
        self.value = nn.Linear(d, A, bias=False)
        self.gate = nn.Linear(d, A, bias=False)
        self.output = nn.Linear(A, d, bias=False)
        self.ln_x = nn.GroupNorm(H, A, eps=1e-5 * cfg.head_size_divisor ** 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        if self.time_decay.is_meta:
            return
        A = self.cfg.adim
        ramp = channel_ramp(self.cfg.d_model)
        full, half = ramp ** RATIO_1_TO_ALMOST0, ramp ** (0.5 * RATIO_1_TO_ALMOST0)
        for name, value in (("x", 1 - full), ("w", 1 - full), ("k", 1 - full),
                            ("v", 1 - (full + 0.3 * RATIO_0_TO_1)), ("r", 1 - half), ("g", 1 - half)):
            getattr(self, f"time_maa_{name}").copy_(value)
        n = torch.arange(A, dtype=torch.float64)
        self.time_decay.copy_((-6 + 5 * (n / max(A - 1, 1)) ** (0.7 + 1.3 * RATIO_0_TO_1)).view(1, 1, A))
        zigzag = ((n + 1) % 3 - 1) * 0.1
        self.time_faaaa.copy_((RATIO_0_TO_1 * (1 - n / max(A - 1, 1)) + zigzag).view_as(self.time_faaaa))
        for p in (self.time_maa_w1, self.time_decay_w1):
            p.uniform_(-1e-4, 1e-4)
        for p in (self.time_maa_w2, self.time_decay_w2):
            p.uniform_(-1e-2, 1e-2)
        for lin in (self.receptance, self.key, self.value, self.gate, self.output):
            lin.reset_parameters()
        self.ln_x.reset_parameters()

    def _project(self, x, shifted):
        """x, shifted [..., d] → r, k, v, g [..., A] and the log-decay [..., A]."""
        xx = shifted - x
        lead = x.shape[:-1]
        m = torch.tanh((x + xx * self.time_maa_x.view(-1)) @ self.time_maa_w1)
        m = m.view(*lead, 5, -1).movedim(-2, 0)  # [5, ..., mix_lora]
        mw, mk, mv, mr, mg = (m[i] @ self.time_maa_w2[i] for i in range(5))
        xw = x + xx * (self.time_maa_w.view(-1) + mw)
        r = self.receptance(x + xx * (self.time_maa_r.view(-1) + mr))
        k = self.key(x + xx * (self.time_maa_k.view(-1) + mk))
        v = self.value(x + xx * (self.time_maa_v.view(-1) + mv))
        g = F.silu(self.gate(x + xx * (self.time_maa_g.view(-1) + mg)))
        w = self.time_decay.view(-1) + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        return r, k, v, g, -torch.exp(w.to(state_dtype(x.dtype)))

    def _out(self, o, g):
        """o [N, A] from the WKV, g [N, A] → [N, d]."""
        H = self.cfg.heads
        o = o.to(state_dtype(g.dtype))  # normalise in float32 at least, as the HF-hub model does
        # RWKV-6 folds head_size_divisor into ln_x's eps (1e-5·divisor²) and does not divide o
        o = F.group_norm(o, H, self.ln_x.weight.to(o.dtype), self.ln_x.bias.to(o.dtype), self.ln_x.eps)
        return self.output(o.to(g.dtype) * g)

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; with `state`, continues from it and leaves the final state. ctx "packed"
        (model/packed.py): the token shift and the WKV state restart at every sequence's first token."""
        from archdsl.kernels import wkv6

        B, L, _ = x.shape
        H, K = self.cfg.heads, self.cfg.head_size
        packed = ctx.get("packed")
        r, k, v, g, logw = self._project(x, token_shift(x, state, packed))
        heads = [t.reshape(B, L, H, K) for t in (r, k, v, logw)]
        # the log-decay stays in float32 for low-precision models: exp(-exp(w)) near 1 needs it
        o, S = wkv6(*heads, self.time_faaaa.to(r.dtype), scale=1.0,
                    initial_state=state["wkv"] if state is not None else None,
                    output_final_state=state is not None, seq_idx=None if packed is None else packed.runs)
        if state is not None:
            writable(state, self, x, "wkv")  # the Triton op keeps the initial state for its backward
            state["wkv"].copy_(S)
        return self._out(o.reshape(B * L, -1), g.reshape(B * L, -1)).view(B, L, -1)

    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; updates state in place."""
        from archdsl.kernels import wkv6_step

        B = x.shape[0]
        H, K = self.cfg.heads, self.cfg.head_size
        shifted = state["shift"].to(x.dtype, copy=True)
        state["shift"].copy_(x)
        r, k, v, g, logw = self._project(x, shifted)
        # r, k, v, w in the model's dtype, as the parallel pass takes them; the step computes in float32 at least,
        # whatever the state's storage dtype (ssm_state_dtype), and returns o in r's dtype
        o = wkv6_step(state["wkv"], *(t.view(B, H, K) for t in (r, k, v, logw)), self.time_faaaa, scale=1.0)
        return self._out(o.reshape(B, -1), g)

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        H, K = self.cfg.heads, self.cfg.head_size
        return {"shift": torch.zeros(batch, self.cfg.d_model, device=device, dtype=dtype),
                "wkv": torch.zeros(batch, H, K, K, device=device, dtype=state_dtype(dtype))}
