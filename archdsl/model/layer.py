"""A layer of the model: optional INJECT, then pre-norm + residual MIXER and FFN sublayers.

    h ─(+ pending)─▶ x = norm(h) ─mixer─▶ Δ₁ ;  h += Δ₁ ─▶ x = ffn_norm(h) ─ffn─▶ Δ₂ ; pending = Δ₂

Each residual add is kept "pending" and done by the next norm, so that on CUDA the add and the
RMSNorm run as one kernel (archdsl.kernels.add_rmsnorm; without the "add_norm" fusion they run
apart). With the spec's residual_fp32, a 16-bit model's residual stream h is float32 (mamba_ssm's
residual_in_fp32): the sublayers' outputs are added to it in float32, and the norms hand the
sublayers their input in the model's dtype. With an INJECT block (Zamba2, HF semantics) the mixer
reads norm(h + inject(h, emb)) while the residual stream skips the injection.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.base import FFN, INJECT, MIXER
from .fusions import Fusable
from .plain import plain


class Norm(nn.Module, Fusable):
    """RMSNorm (weight, computed in float32 as HF) or LayerNorm (weight and bias)."""

    FUSES = ("add_norm",)

    def __init__(self, kind: str, d: int, eps: float):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if kind == "layernorm" else None
        self.fuse = True

    def out_dtype(self, x) -> torch.dtype:
        """The norm's output dtype: x's, or the weight's (the model's) where x is the float32 residual
        stream of a 16-bit model."""
        w = self.weight.dtype
        return w if x.dtype == torch.float32 and w in (torch.bfloat16, torch.float16) else x.dtype

    def forward(self, x):
        dtype = self.out_dtype(x)
        if self.kind == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps).to(dtype)
        h = x if x.dtype == torch.float64 else x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def add_norm(self, h, delta):
        """(h + delta, norm(h + delta)), h, delta [..., d] (delta may be None); with the "add_norm" fusion,
        RMSNorm and the add run as one Triton kernel forward and one backward (on CUDA, or the CPU under the
        interpreter with ARCHDSL_KERNELS=triton), where the norm is plain (model/plain.py: no hook or wrapper that
        a call would run). Unfused, the torch ops run: on the H200 their training step at [8192, 2560] bf16 took
        ~7x the kernels' time (docs/benchmarks.md)."""
        if ("add_norm" in self.fused and self.kind == "rmsnorm" and h.dtype != torch.float64 and plain(self, Norm)
                and _triton(h)):
            from archdsl.kernels import add_rmsnorm

            out, h = add_rmsnorm(h, delta, self.weight, self.eps, self.out_dtype(h))  # h keeps the stream's dtype
            return h, out
        if delta is not None:
            h = h + delta
        return h, self(h)


def _triton(x: torch.Tensor) -> bool:
    from archdsl.kernels._dispatch import backend_for

    return backend_for(x) == "triton"


class Layer(nn.Module):
    """One graph node. `blocks` maps role → module (a shared group's module is the same object in
    every layer of the group); `inject_use` is the per-use module of a shared INJECT block."""

    def __init__(self, index: int, blocks: dict, norm: str, d: int, eps: float, inject_use=None):
        super().__init__()
        self.index = index
        self.inject = blocks.get(INJECT)
        self.inject_use = inject_use
        self.mixer = blocks.get(MIXER)
        self.ffn = blocks.get(FFN)
        self.norm = Norm(norm, d, eps) if self.mixer is not None else None
        self.ffn_norm = Norm(norm, d, eps) if self.ffn is not None else None
        self.aux_loss = None

    def blocks(self):
        """(role, module) of the layer's blocks, in the order they run."""
        return [(role, m) for role, m in ((INJECT, self.inject), (MIXER, self.mixer), (FFN, self.ffn)) if m is not None]

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        """Each block's decode state by role. `max_len` / `static` matter to caches that grow
        (attention, zamba); fixed-size states (SSM, conv, shift) ignore them. `ssm_dtype` (None: the
        default) is the Mamba / Mamba-2 SSM states' dtype; the other blocks ignore it."""
        return {role: m.init_state(batch, device, dtype, max_len=max_len, static=static, ssm_dtype=ssm_dtype)
                for role, m in self.blocks()}

    def forward(self, h, delta, states=None, emb=None, step=False, packed=None):
        """h [B, L, d] (or [B, d] with step=True), the pending residual delta (or None) →
        (h, delta) for the next layer. packed: model/packed.py's Packed, passed to every block as ctx."""
        states = states or {}
        call = (lambda m, x, s, **kw: m.step(x, s, **kw)) if step else (lambda m, x, s, **kw: m(x, s, **kw))
        if packed is not None:
            call = (lambda m, x, s, _call=call, **kw: _call(m, x, s, packed=packed, **kw))
        if self.mixer is not None:
            if self.inject is not None:
                if delta is not None:
                    h, delta = h + delta, None
                inj = call(self.inject, h.to(emb.dtype), states.get(INJECT), emb=emb, use=self.inject_use)
                delta = call(self.mixer, self.norm(h + inj), states.get(MIXER), emb=emb)
            elif (step and hasattr(self.mixer, "folds_norm") and plain(self.norm, Norm)
                  and self.mixer.folds_norm(self.norm, h)):
                h, delta = self.mixer.step_with_norm(h, delta, self.norm, states[MIXER])  # "norm_gemv"
            else:
                h, x = self.norm.add_norm(h, delta)
                delta = call(self.mixer, x, states.get(MIXER), emb=emb)
        if self.ffn is not None:
            h, x = self.ffn_norm.add_norm(h, delta)
            delta = call(self.ffn, x, states.get(FFN), emb=emb)
            if not step:
                self.aux_loss = getattr(self.ffn, "aux_loss", None)
        return h, delta
