"""Mamba-1 selective SSM mixer, laid out as HF MambaMixer / JambaMambaMixer / FalconMambaMixer.

    in_proj [2E, d] → (x, z); conv1d (depthwise, K taps) + silu on x; x_proj [R + 2N, E] → (dt, B, C)
    inner_norms: "weighted" RMSNorms dt_layernorm [R], b_layernorm [N], c_layernorm [N] (Jamba),
                 "unweighted" the same without weights (Falcon Mamba)
    dt = dt_proj.weight · dt (+ dt_proj.bias and softplus inside the scan)
    y = selective_scan(x, dt, A = -exp(A_log) [E, N], B, C, D [E], z) ─out_proj─▶ [B, L, d]
    (the "epilogue" fusion: D and the gate z inside the scan; off, y = (y + D·x) · silu(z) after it)

The parallel forward lays the inner tensors out [B, E, L], the steps contiguous, as the conv and the scan
read them (mamba_ssm's layout): in_proj, x_proj, dt_proj and out_proj are batched GEMMs on that layout
(steps_linear), with no transposing copy forward or backward. Those read the weights, and so do the decode
step's fused path (x_proj and out_proj by a Triton GEMV at one row, dt_proj inside the step kernel, in_proj
with the norm folded in: "norm_gemv"); each is taken only for a plain nn.Linear (model/plain.py). A wrapped
or hooked one (a LoRA layer, a forward hook, a quantized Linear) is called as a module, on the token-major
layout, and the step is the unfused one: the same function, its wrapper honoured on every path.

The "recompute" fusion (training, eager): the conv's output u and delta are kept for the backward as
recipes, not tensors (modules/recompute.py), and rebuilt from the conv's input and dt_proj's input, which
the graph keeps anyway: 2·E values a token a layer less, as mamba_ssm's checkpoint_lvl=1.

The decode state: conv window [B, E, K-1] (model dtype) and SSM state [B, E, N] (float32 for 16-bit
models, else the model dtype).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fusions import Fusable
from ..plain import all_plain, plain
from .conv import conv_forward, conv_step
from .recompute import Keep, recompute_block
from .state import writable
from .steps_linear import steps_linear


def rms(x, weight, eps, dim=-1):
    """RMSNorm over `dim` computed in float32 (float64 stays float64), as HF's RMSNorm classes; weight
    broadcast against x (`[F, 1]` for dim=1 of `[B, F, L]`)."""
    dtype = x.dtype
    h = x.float() if dtype != torch.float64 else x
    h = h * torch.rsqrt(h.pow(2).mean(dim, keepdim=True) + eps)
    h = h.to(dtype)
    return h if weight is None else weight * h


def state_dtype(dtype, ssm_dtype=None):
    """A decode cache's SSM state dtype: `ssm_dtype` where given (ArchModel.ssm_state_dtype), else float32
    (float64 in a float64 model). The step kernels compute in float32 whatever the state's dtype, and
    round only what they store (mamba_ssm keeps the state in the model's dtype; vLLM makes it a choice)."""
    if ssm_dtype is not None:
        return ssm_dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def skip_gate(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """The scan's epilogue in torch (the "epilogue" fusion off): (y + D·x) · silu(z), or y + D·x
    without z. y, x, z of one shape ([B, E, L], [B, L, H, P], [B, E], ...), D broadcast against
    them ([E, 1], [H, 1], [E]); computed in float32 (float64 stays float64), returned in y's dtype."""
    wd = torch.float64 if y.dtype == torch.float64 else torch.float32
    out = y.to(wd) + D.to(wd) * x.to(wd)
    if z is not None:
        out = out * F.silu(z.to(wd))
    return out.to(y.dtype)


def fused_step_ok(mod, x):
    """Whether a Mamba mixer's decode step takes its fused Triton path: the "step" fusion on, no
    autograd wanted, not float64, the sublayers whose weights it reads plain (mod.fused_reads_plain(),
    model/plain.py), and the Triton backend chosen for x (CUDA, or the interpreter when forced).
    set_fuse / compile(fuse=) without "step" gives the unfused step."""
    if "step" not in mod.fused or x.dtype == torch.float64 or not mod.fused_reads_plain():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in mod.parameters())):
        return False
    from archdsl.kernels._dispatch import backend_for

    return backend_for(x) == "triton"


def init_dt_bias(n, dt_min, dt_max, floor=1e-4):
    """mamba_ssm's dt init: dt log-uniform in [dt_min, dt_max], bias = softplus⁻¹(dt)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def gemv_rows() -> int:
    """Up to how many rows the decode GEMVs with a folded norm run (kernels/norm_gemv)."""
    from archdsl.kernels.norm_gemv.op import MAX_ROWS
    return MAX_ROWS


class FoldsNorm:
    """A Mamba / Mamba-2 mixer whose decode step can take the layer's residual add and RMSNorm inside
    in_proj's GEMV ("norm_gemv"; archdsl/model/layer.py asks folds_norm, then calls step_with_norm).
    The mixer's _step_fused(x, state, proj) takes in_proj's output when given."""

    def folds_norm(self, norm, h) -> bool:
        """Whether a decode step of residual stream h [B, d] can fold the layer's `norm` into in_proj:
        "norm_gemv" and the fused step on, an RMSNorm, a few rows, in_proj a plain nn.Linear (the Layer asks
        whether its norm is plain)."""
        return ("norm_gemv" in self.fused and norm.kind == "rmsnorm" and h.shape[0] <= gemv_rows()
                and plain(self.in_proj) and fused_step_ok(self, h))

    def step_with_norm(self, h, delta, norm, state):
        """One decode token from the residual stream: h, delta [B, d] → (h + delta, mixer output
        [B, d]), norm(h + delta) computed inside in_proj's GEMV (one kernel for add, norm, GEMV). Called where
        folds_norm said so, so Triton is chosen for h (fused_step_ok) and the GEMV is not asked it again."""
        from archdsl.kernels.norm_gemv.op import rms_linear_unchecked

        lin = self.in_proj
        proj, h = rms_linear_unchecked(h, lin.weight, norm.weight, norm.eps, delta, 1, lin.bias, "pdl" in self.fused,
                                       triton=True)
        return h, self._step_fused(h, state, proj)


class Mamba(nn.Module, Fusable, FoldsNorm):
    FUSES = ("epilogue", "step", "norm_gemv", "pdl", "recompute")
    PACKS = True  # packed sequences (model/packed.py): the conv and the scan take their seq_idx
    PADS = True  # left padding: the conv's and the scan's inputs zero at the pads

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, E, N, R, K = cfg.d_model, cfg.inner, cfg.d_state, cfg.rank, cfg.d_conv
        self.E, self.N, self.R, self.K = E, N, R, K
        self.in_proj = nn.Linear(d, 2 * E, bias=cfg.bias)
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d, bias=cfg.bias)
        if cfg.inner_norms == "weighted":
            self.dt_layernorm = nn.Parameter(torch.ones(R))
            self.b_layernorm = nn.Parameter(torch.ones(N))
            self.c_layernorm = nn.Parameter(torch.ones(N))
        self.fuse = True  # "epilogue"; "step": two Triton kernels around the x_proj GEMM (set_fuse)
        self.reset_parameters()

    def reset_parameters(self):
        if self.A_log.device.type == "meta":
            return
        cfg = self.cfg
        with torch.no_grad():
            std = self.R ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(init_dt_bias(self.E, cfg.dt_min, cfg.dt_max))
            A = torch.arange(1, self.N + 1, dtype=torch.float32).repeat(self.E, 1)
            self.A_log.copy_(torch.log(A))
            self.D.fill_(1.0)

    # --- shared pieces -----------------------------------------------------------------
    def fused_reads_plain(self) -> bool:
        """Whether the Linears whose weights the fused decode step reads are plain (model/plain.py)."""
        return all_plain(self, "x_proj", "dt_proj", "out_proj")

    @staticmethod
    def _steps(lin, t, parts=1):
        """lin on t [B, K, L] (steps contiguous) → [B, N, L] contiguous (or `parts` of them, as steps_linear):
        steps_linear over its weights where lin is a plain nn.Linear, else a call of lin on the token-major
        t.mT, so that a wrapper or hook runs (model/plain.py)."""
        if plain(lin):
            return steps_linear(t, lin.weight, lin.bias, parts=parts)
        out = lin(t.mT).mT
        return tuple(p.contiguous() for p in out.chunk(parts, dim=1)) if parts > 1 else out.contiguous()

    def _ssm_params(self, xc, dim=-1, rc=Keep()):
        """xc's E features along `dim` → dt (E of them, before softplus), B, C (N each) along the same dim, and
        the dt bias the scan adds (None where dt holds it). xc [..., E] (decode) goes through the Linear modules;
        xc [B, E, L] with dim=1 (the parallel forward) through steps_linear, so that dt, B, C have the steps
        contiguous, as the scan reads them; `rc` keeps dt as a recipe. dt_proj's bias goes to the scan, but
        where dt_proj is not a plain nn.Linear: that is called, its bias and all."""
        lin = (lambda m, t: m(t)) if dim == -1 else self._steps
        dt, B, C = lin(self.x_proj, xc).split([self.R, self.N, self.N], dim=dim)
        mode, eps = self.cfg.inner_norms, self.cfg.inner_norm_eps
        if mode != "none":
            def norm(t, name):
                w = getattr(self, name) if mode == "weighted" else None
                return rms(t, w if w is None or dim == -1 else w[:, None], eps, dim)
            dt, B, C = norm(dt, "dt_layernorm"), norm(B, "b_layernorm"), norm(C, "c_layernorm")
        if not plain(self.dt_proj):
            return lin(self.dt_proj, dt), B, C, None
        bias = self._f(self.dt_proj.bias)
        if dim == -1:
            return F.linear(dt, self.dt_proj.weight), B, C, bias
        low, w = dt.detach(), self.dt_proj.weight.detach()
        return rc.keep(steps_linear(dt, self.dt_proj.weight), lambda: steps_linear(low, w)), B, C, bias

    def _A(self):
        A_log = self.A_log if self.A_log.dtype == torch.float64 else self.A_log.float()
        return -torch.exp(A_log)

    def _f(self, p):
        return p if p.dtype == torch.float64 else p.float()

    # --- parallel ----------------------------------------------------------------------
    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; a given state is continued and left after the last token. ctx "packed"
        (model/packed.py): packed sequences restart the conv and the scan at every sequence's first token (their
        seq_idx); left padding zeroes the conv's and the scan's inputs at the pads instead, which from a zero
        state is exact and keeps the scan on its fastest kernels (the Gluon ones take no restarts)."""
        xi, z = self._steps(self.in_proj, x.mT, parts=2)  # [B, E, L] each, dense
        w, b = self.conv1d.weight[:, 0], self.conv1d.bias
        packed = ctx.get("packed")
        if packed is not None:
            xi = packed.zero_pads(xi)
        with recompute_block(self, x, state) as rc:
            return self._inner(xi, z, w, b, state, rc, packed)

    def _inner(self, xi, z, w, b, state, rc, packed=None):
        """in_proj's halves xi, z [B, E, L] → out_proj's output [B, L, d]; `rc` keeps u and dt as recipes."""
        from archdsl.kernels import selective_scan

        seq = packed.runs if packed is not None and packed.keep is None else None  # packed, not left padding
        xd, wd, bd = xi.detach(), w.detach(), None if b is None else b.detach()  # rc runs no recipe with a state
        u = rc.keep(conv_forward(xi, w, b, None if state is None else state["conv"], seq),
                    lambda: conv_forward(xd, wd, bd, seq_idx=seq))
        if packed is not None:
            u = packed.zero_pads(u)  # left padding: from a zero state, a zero input leaves it zero
        dt, B, C, dt_bias = self._ssm_params(u, dim=1, rc=rc)
        epi = "epilogue" in self.fused
        kw = dict(D=self._f(self.D) if epi else None, z=z if epi else None,
                  delta_bias=dt_bias, delta_softplus=True, seq_idx=seq)
        if state is None:
            y = selective_scan(u, dt, self._A(), B, C, **kw)
        else:
            y, last = selective_scan(u, dt, self._A(), B, C, return_last_state=True, initial_state=state["ssm"], **kw)
            writable(state, self, u, "ssm")
            state["ssm"].copy_(last)
        if not epi:
            y = skip_gate(y, u, self._f(self.D)[:, None], z)
        if not plain(self.out_proj):
            return self.out_proj(y.mT)
        return steps_linear(y, self.out_proj.weight, self.out_proj.bias, tokens=True)

    # --- recurrent ---------------------------------------------------------------------
    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; updates state in place."""
        from archdsl.kernels.selective_scan.op import selective_state_update_unchecked as state_update

        if fused_step_ok(self, x):
            return self._step_fused(x, state)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = conv_step(u, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"])
        dt, B, C, dt_bias = self._ssm_params(u)
        epi = "epilogue" in self.fused
        y = state_update(state["ssm"], u, dt, self._A(), B, C, D=self._f(self.D) if epi else None,
                         z=z if epi else None, dt_bias=dt_bias, dt_softplus=True)
        if not epi:
            y = skip_gate(y, u, self._f(self.D), z)
        return self.out_proj(y)

    def _step_fused(self, x, state, xz=None):
        """in_proj → conv update + silu (one kernel) → x_proj → inner norms, dt_proj, softplus,
        state update, D, gate (one kernel) → out_proj; x_proj and out_proj by a Triton GEMV at one row, by a
        split-K GEMM at a few (kernels/norm_gemv).
        xz: in_proj's output, given ("norm_gemv"); "pdl": the Triton kernels launched with PDL. The kernels'
        unchecked entry points, as Mamba2._step_fused: this step made their arguments, and its callers chose
        Triton for x (fused_step_ok)."""
        from archdsl.kernels.fused_step.op import mamba_conv_step_unchecked, mamba_ssm_step_unchecked
        from archdsl.kernels.norm_gemv.op import gemv_unchecked

        pdl, cfg, conv = "pdl" in self.fused, self.cfg, self.conv1d
        u, z = (self.in_proj(x) if xz is None else xz).chunk(2, dim=-1)
        u = mamba_conv_step_unchecked(u, state["conv"], conv.weight[:, 0], conv.bias, pdl, triton=True)
        w = cfg.inner_norms == "weighted"
        y = mamba_ssm_step_unchecked(state["ssm"], u, gemv_unchecked(u, self.x_proj.weight, None, pdl, triton=True),
                                     self.dt_proj.weight, self.A_log, self.dt_proj.bias, self.D, z, cfg.inner_norms,
                                     self.dt_layernorm if w else None, self.b_layernorm if w else None,
                                     self.c_layernorm if w else None, cfg.inner_norm_eps, pdl, triton=True)
        return gemv_unchecked(y, self.out_proj.weight, self.out_proj.bias, pdl, triton=True)

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        return {"conv": torch.zeros(batch, self.E, self.K - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.E, self.N, device=device, dtype=state_dtype(dtype, ssm_dtype))}
