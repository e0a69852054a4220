"""RWKV-4 time-mix (`rwkv4`) and the RWKV channel-mix (`cmix`, versions 4 and 6), laid out as
transformers' RwkvSelfAttention / RwkvFeedForward so that HF weights load by name.

Time-mix, x [B, L, d], x₋ = x shifted one token (the previous token; zeros or the state at t=0):
    k = key(x·μk + x₋·(1-μk)),  v = value(x·μv + x₋·(1-μv)),  r = σ(receptance(x·μr + x₋·(1-μr)))
    y = output(r · wkv4(time_decay, time_first, k, v))         (per-step decay exp(-exp(time_decay)))
Channel-mix (version 4: the same lerp; version 6: x + (x₋ - x)·μ, the Finch form):
    y = σ(receptance(x_r)) · value(relu(key(x_k))²)
Decode state: "shift" [B, d] (the previous token) and, for the time-mix, the WKV state
num / den / max [B, A] (float32, float64 for float64 models; HF's running-max form).
Initialisation: RWKV-LM's v4 recipe (time_mix ramps over channels, decay speeds -5…3,
time_first = ln 0.3 + zigzag) at mid depth, since a block does not know its layer index;
projections keep nn.Linear's default so every parameter gets a gradient from step one.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .state import writable

RATIO_0_TO_1 = 0.5  # layer_id / (n_layer - 1) of RWKV-LM's init, taken at mid depth
RATIO_1_TO_ALMOST0 = 0.5  # 1 - layer_id / n_layer


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states are float32, or float64 in a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_shift(x: torch.Tensor, state: dict | None, packed=None) -> torch.Tensor:
    """x [B, L, d] → the previous token of each position; position 0 reads state["shift"] (or
    zeros), and the state is left holding x[:, -1]. packed (model/packed.py's Packed): every sequence's
    first token reads zeros, as the first of a row does."""
    first = state["shift"].to(x.dtype)[:, None] if state is not None else x.new_zeros(x.shape[0], 1, x.shape[2])
    shifted = torch.cat([first, x[:, :-1]], dim=1)
    if packed is not None:
        shifted = shifted.masked_fill((packed.pos == 0)[..., None], 0)
    if state is not None and x.shape[1]:
        state["shift"].copy_(x[:, -1])
    return shifted


def channel_ramp(d: int) -> torch.Tensor:
    """i / d for channel i: the [1, 1, d] ramp RWKV-LM raises to per-layer powers."""
    return (torch.arange(d, dtype=torch.float64) / d).view(1, 1, d)


def _wkv_state(state: dict) -> tuple:
    """(num, den, max) for the wkv4 op. An empty state (den = 0) gets max = -1e38 whatever its
    buffer holds, so a cache reset by zeroing its tensors stays exact (a max of 0 would make
    e^(k+u-max) underflow for very negative keys)."""
    mx = torch.where(state["den"] > 0, state["max"], torch.full_like(state["max"], -1e38))
    return state["num"], state["den"], mx


class Rwkv4TimeMix(nn.Module):
    """RWKV-4 time-mix; parameter names and shapes of transformers' RwkvSelfAttention."""
    PACKS = True  # packed sequences (model/packed.py): the shift and the WKV restart at each sequence
    PADS = True  # left padding: the pads and the prompt as two packed sequences (the WKV restarts at the prompt)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, A = cfg.d_model, cfg.adim
        self.time_decay = nn.Parameter(torch.empty(A))
        self.time_first = nn.Parameter(torch.empty(A))
        self.time_mix_key = nn.Parameter(torch.empty(1, 1, d))
        self.time_mix_value = nn.Parameter(torch.empty(1, 1, d))
        self.time_mix_receptance = nn.Parameter(torch.empty(1, 1, d))
        self.key = nn.Linear(d, A, bias=False)
        self.value = nn.Linear(d, A, bias=False)
        self.receptance = nn.Linear(d, A, bias=False)
        self.output = nn.Linear(A, d, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        d, A = self.cfg.d_model, self.cfg.adim
        if self.time_decay.is_meta:
            return
        h = torch.arange(A, dtype=torch.float64)
        self.time_decay.copy_(-5 + 8 * (h / max(A - 1, 1)) ** (0.7 + 1.3 * RATIO_0_TO_1))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first.copy_(math.log(0.3) + zigzag)
        ramp = channel_ramp(d)
        self.time_mix_key.copy_(ramp ** RATIO_1_TO_ALMOST0)
        self.time_mix_value.copy_(ramp ** RATIO_1_TO_ALMOST0 + 0.3 * RATIO_0_TO_1)
        self.time_mix_receptance.copy_(ramp ** (0.5 * RATIO_1_TO_ALMOST0))
        for lin in (self.key, self.value, self.receptance, self.output):
            lin.reset_parameters()

    def _rkv(self, x, shifted):
        def mix(mu):  # μ [1, 1, d] as HF stores it; flattened so a [B, d] step broadcasts too
            mu = mu.view(-1)
            return x * mu + shifted * (1 - mu)
        k = self.key(mix(self.time_mix_key))
        v = self.value(mix(self.time_mix_value))
        r = torch.sigmoid(self.receptance(mix(self.time_mix_receptance)))
        return r, k, v

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; with `state`, continues from it and leaves the final state. ctx "packed"
        (model/packed.py): the token shift reads zeros at each sequence's start and the WKV restarts fresh at each
        sequence's first token (wkv4's seq_idx). Left padding (a fresh state) is that too, the pads and the
        prompt two sequences of a row: the WKV restarts fresh at the prompt's first token, so the prompt's outputs
        and the state left are those of the prompt alone; the pads' own outputs (finite: the pads' k, v are real
        numbers) are set to zero, and so get no gradient. (k = -inf at the pads, which this replaces, gave the
        same forward but 0/0 at the pads, whose NaN the backward carried into every parameter.)"""
        from archdsl.kernels import wkv4

        packed = ctx.get("packed")
        r, k, v = self._rkv(x, token_shift(x, state, packed))
        runs = None if packed is None else packed.runs
        wkv, new = wkv4(self.time_decay, self.time_first, k, v, _wkv_state(state) if state is not None else None,
                        seq_idx=runs)
        if packed is not None and packed.keep is not None:
            wkv = torch.where(packed.keep[..., None], wkv, 0.0)
        if state is not None:
            writable(state, self, x, "num", "den", "max")
            for name, t in zip(("num", "den", "max"), new):
                state[name].copy_(t)
        return self.output(r * wkv.to(r.dtype))

    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; updates state in place."""
        from archdsl.kernels import wkv4_step

        shifted = state["shift"].to(x.dtype, copy=True)
        state["shift"].copy_(x)
        r, k, v = self._rkv(x, shifted)
        wkv, new = wkv4_step(self.time_decay, self.time_first, k, v, _wkv_state(state))
        writable(state, self, x, "num", "den", "max")
        for name, t in zip(("num", "den", "max"), new):
            state[name].copy_(t)
        return self.output(r * wkv.to(r.dtype))

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        A, st = self.cfg.adim, state_dtype(dtype)
        z = torch.zeros(batch, A, device=device, dtype=st)
        return {"shift": torch.zeros(batch, self.cfg.d_model, device=device, dtype=dtype),
                "num": z, "den": z.clone(), "max": torch.full_like(z, -1e38)}


class ChannelMix(nn.Module):
    """RWKV channel-mix. Version 4: transformers' RwkvFeedForward (time_mix_key,
    time_mix_receptance); version 6: the Finch RWKV6FeedForward (time_maa_k, time_maa_r)."""
    PACKS = True  # packed sequences (model/packed.py): the token shift reads zeros at every sequence's start
    PADS = True  # left padding too: the token shift reads zeros at the prompt's first token

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_model, cfg.width
        self.v6 = cfg.version == 6
        names = ("time_maa_k", "time_maa_r") if self.v6 else ("time_mix_key", "time_mix_receptance")
        self._mu_names = names
        for name in names:
            setattr(self, name, nn.Parameter(torch.empty(1, 1, d)))
        self.key = nn.Linear(d, h, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(h, d, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        mu_k, mu_r = (getattr(self, n) for n in self._mu_names)
        if mu_k.is_meta:
            return
        ramp = channel_ramp(self.cfg.d_model) ** RATIO_1_TO_ALMOST0
        # v4 weights x by μ; v6 weights the previous token by μ, so its μ is 1 - (v4's μ)
        mu_k.copy_(1 - ramp if self.v6 else ramp)
        mu_r.copy_(1 - ramp if self.v6 else ramp)
        for lin in (self.key, self.receptance, self.value):
            lin.reset_parameters()

    def _mix(self, x, shifted):
        mu_k, mu_r = (getattr(self, n).view(-1) for n in self._mu_names)
        if self.v6:
            xx = shifted - x
            xk, xr = x + xx * mu_k, x + xx * mu_r
        else:
            xk, xr = x * mu_k + shifted * (1 - mu_k), x * mu_r + shifted * (1 - mu_r)
        k = torch.relu(self.key(xk)).square()
        return torch.sigmoid(self.receptance(xr)) * self.value(k)

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; with `state`, continues from it and leaves the last token in it.
        ctx "packed" (model/packed.py): each sequence shifts in zeros at its first token."""
        return self._mix(x, token_shift(x, state, ctx.get("packed")))

    def step(self, x, state, **ctx):
        shifted = state["shift"].to(x.dtype, copy=True)
        state["shift"].copy_(x)
        return self._mix(x, shifted)

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        return {"shift": torch.zeros(batch, self.cfg.d_model, device=device, dtype=dtype)}
