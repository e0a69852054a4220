"""Mamba-2 (SSD) mixer, laid out as HF Mamba2Mixer (Bamba, Zamba2, NemotronH use the same).

    in_proj [E + conv_dim + H, d] → z [E], xBC [conv_dim = E + 2·G·N], dt [H]   (one GEMM)
    conv1d (depthwise over xBC, K taps) + silu → x [B, L, H, P], B, C [B, L, G, N]
    y = ssd_scan(x, dt, A = -exp(A_log) [H], B, C, D [H], dt_bias [H], dt_softplus)
    gated_norm: y = norm(y · silu(z)) per group of E/G channels, weight [E] (HF MambaRMSNormGated);
    else the gate z goes into the scan's epilogue: y = y · silu(z)
    (the "epilogue" fusion: D and that gate inside the scan; off, they are applied after it in torch)
    ─out_proj─▶ [B, L, d]

The "recompute" fusion (training, eager): the conv's output is kept for the backward as a recipe, the
scan keeps no chunk buffers and out_proj not the gated norm's output (_inner): mamba_ssm's split-conv
path recomputes all three.

The fast paths that read out_proj's weight (the recompute fusion's gated_rmsnorm_linear, the fused decode
step) are taken only for a plain nn.Linear out_proj and a plain gated norm (model/plain.py): a wrapped or
hooked one (a LoRA layer, a forward hook, a quantized Linear) is called as a module, its wrapper honoured.

The decode state: conv window [B, conv_dim, K-1] (model dtype), SSM state [B, H, P, N] (float32 for
16-bit models, else the model dtype).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..fusions import Fusable
from ..plain import plain
from .conv import conv_forward, conv_step
from .mamba import FoldsNorm, fused_step_ok, gemv_rows, init_dt_bias, skip_gate, state_dtype
from .recompute import recompute_block
from .state import writable


class GatedRMSNorm(nn.Module):
    """HF MambaRMSNormGated: norm(x · silu(z)) over groups of E / G channels, times weight [E]."""

    def __init__(self, dim, groups, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps

    def forward(self, x, z):
        """x, z [..., dim] → [..., dim]: one Triton kernel each way on CUDA (kernels/gated_rmsnorm)."""
        from archdsl.kernels import gated_rmsnorm

        return gated_rmsnorm(x, z, self.weight, self.eps, self.groups)


class Mamba2(nn.Module, Fusable, FoldsNorm):
    FUSES = ("epilogue", "step", "norm_gemv", "pdl", "recompute")
    PACKS = True  # packed sequences (model/packed.py): the conv and the scan take their seq_idx
    PADS = True  # left padding: packed, and the conv's input zero at the pads (the conv state it leaves)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, E, H, G, N, K = cfg.d_model, cfg.inner, cfg.nheads, cfg.ngroups, cfg.d_state, cfg.d_conv
        self.E, self.H, self.P, self.G, self.N, self.K = E, H, E // H, G, N, K
        self.conv_dim = cfg.conv_dim
        self.in_proj = nn.Linear(d, cfg.proj_dim, bias=cfg.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, K, groups=self.conv_dim, padding=K - 1,
                                bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(E, G, cfg.norm_eps) if cfg.gated_norm else None
        self.out_proj = nn.Linear(E, d, bias=cfg.bias)
        self.fuse = True  # "epilogue"; "step": one Triton kernel between in_proj and out_proj (set_fuse)
        self.reset_parameters()

    def reset_parameters(self):
        if self.A_log.device.type == "meta":
            return
        with torch.no_grad():
            self.dt_bias.copy_(init_dt_bias(self.H, self.cfg.dt_min, self.cfg.dt_max))
            self.A_log.copy_(torch.log(torch.arange(1, self.H + 1, dtype=torch.float32)))
            self.D.fill_(1.0)

    def _f(self, p):
        return p if p.dtype == torch.float64 else p.float()

    def _split(self, zxbcdt):
        return zxbcdt.split([self.E, self.conv_dim, self.H], dim=-1)

    def fused_reads_plain(self) -> bool:
        """Whether the modules whose weights the fused decode step reads are plain: out_proj and the gated norm
        (model/plain.py)."""
        return plain(self.out_proj) and (self.norm is None or plain(self.norm, GatedRMSNorm))

    def _dt_limit(self):
        """The scan's dt_limit: dt' = max(softplus(dt + dt_bias), dt_floor) inside the kernels (HF's
        time_step_limit[0]; Zamba2's time_step_min), None without a floor."""
        return (self.cfg.dt_floor, float("inf")) if self.cfg.dt_floor else None

    def _out(self, y, z, lean=False):
        """The gated norm (or none) and out_proj; lean: without keeping the norm's output for the backward
        (gated_rmsnorm_linear writes it again there), where the norm and out_proj are plain (model/plain.py)."""
        if self.norm is not None and lean and self.fused_reads_plain():
            from archdsl.kernels import gated_rmsnorm_linear
            n = self.norm
            return gated_rmsnorm_linear(y, z, n.weight, self.out_proj.weight, self.out_proj.bias, n.eps, n.groups)
        if self.norm is not None:
            y = self.norm(y, z)
        return self.out_proj(y)

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; a given state is continued and left after the last token. ctx "packed"
        (model/packed.py): the conv and the scan restart at every sequence's first token."""
        z, xBC, dt = self._split(self.in_proj(x))
        packed = ctx.get("packed")
        if packed is not None:
            xBC = packed.zero_pads(xBC, dim=1)
        with recompute_block(self, x, state) as rc:
            return self._inner(z, xBC, dt, state, rc, None if packed is None else packed.runs)

    def _inner(self, z, xBC, dt, state, rc, seq=None):
        """in_proj's parts z [B, L, E], xBC [B, L, conv_dim], dt [B, L, H] → out_proj's output [B, L, d];
        `rc` keeps the conv's output as a recipe (the "recompute" fusion): the scan reads x, B and C as
        slices of it in place, so what it saves for the backward is rebuilt there from in_proj's output,
        which the gated norm's z keeps anyway (E + 2·G·N values a token a layer less); the scan keeps
        no chunk buffers (keep_states=False: H·P·N / chunk + 2·H + G·chunk values a token less), and
        out_proj not the gated norm's output (gated_rmsnorm_linear: E values a token less). seq [B, L]: the
        packed sequences' runs, for the conv and the scan. mamba2-2.7b,
        B4 L2048 bf16 on the H200, against mamba_ssm in one process: training step peak 38.73 vs 38.66 GiB
        (each with the other model's weights), 0.87x its time (docs/benchmarks.md, forty-second run)."""
        from archdsl.kernels import ssd_scan

        Bsz, L, _ = z.shape
        w, b = self.conv1d.weight[:, 0], self.conv1d.bias
        xd, wd, bd = xBC.detach(), w.detach(), None if b is None else b.detach()  # rc runs no recipe with a state
        # channels-last: the conv reads in_proj's slice in place and writes [B, L, conv_dim], so that the
        # heads' reshapes below are views (no transposed copies in or out)
        xBC = rc.keep(conv_forward(xBC.transpose(1, 2), w, b, None if state is None else state["conv"], seq).transpose(1, 2),
                      lambda: conv_forward(xd.transpose(1, 2), wd, bd, seq_idx=seq).transpose(1, 2))
        u, B, C = xBC.split([self.E, self.G * self.N, self.G * self.N], dim=-1)
        gate = None if self.norm is not None else z.reshape(Bsz, L, self.H, self.P)
        u = u.reshape(Bsz, L, self.H, self.P)
        # the D skip and gate in the scan kernel, with autograd too since its backward takes the gate first
        # (H200, B4 L2048 d2560 bf16, 2026-11-29: layer forward+backward 6.12 ms vs 8.11 off, forward 1.89
        # vs 2.85; before that change the backward with z lost, 11.4 vs 10.0, and the fusion ran at inference)
        epi = "epilogue" in self.fused
        out = ssd_scan(u, dt.contiguous(), -torch.exp(self._f(self.A_log)),
                       B.reshape(Bsz, L, self.G, self.N), C.reshape(Bsz, L, self.G, self.N),
                       chunk_size=self.cfg.chunk_size, D=self._f(self.D) if epi else None, z=gate if epi else None,
                       dt_bias=self._f(self.dt_bias), dt_softplus=True, dt_limit=self._dt_limit(), seq_idx=seq,
                       initial_states=None if state is None else state["ssm"],
                       return_final_states=state is not None, keep_states=not rc.active)
        if state is not None:
            out, final = out
            writable(state, self, dt, "ssm")  # the Triton scan keeps the initial states for its backward
            state["ssm"].copy_(final)
        if not epi:
            out = skip_gate(out, u, self._f(self.D)[:, None], gate)
        return self._out(out.reshape(Bsz, L, self.E), z, lean=rc.active)

    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; updates state in place."""
        from archdsl.kernels import ssd_step

        if fused_step_ok(self, x):
            return self._step_fused(x, state)
        Bsz = x.shape[0]
        z, xBC, dt = self._split(self.in_proj(x))
        xBC = conv_step(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, state["conv"])
        u, B, C = xBC.split([self.E, self.G * self.N, self.G * self.N], dim=-1)
        gate = None if self.norm is not None else z.reshape(Bsz, self.H, self.P)
        u = u.reshape(Bsz, self.H, self.P)
        epi = "epilogue" in self.fused
        y = ssd_step(state["ssm"], u, dt, -torch.exp(self._f(self.A_log)), B.reshape(Bsz, self.G, self.N),
                     C.reshape(Bsz, self.G, self.N), D=self._f(self.D) if epi else None, z=gate if epi else None,
                     dt_bias=self._f(self.dt_bias), dt_softplus=True, dt_limit=self._dt_limit())
        if not epi:
            y = skip_gate(y, u, self._f(self.D)[:, None], gate)
        return self._out(y.reshape(Bsz, self.E), z)

    def _step_fused(self, x, state, zxbcdt=None):
        """in_proj → the fused step (conv update and silu; SSD step, D, gate; gated norm) → out_proj. With
        "norm_gemv" the gated norm runs inside out_proj's GEMV; zxbcdt: in_proj's output, given. The kernels'
        unchecked entry points: this step made their arguments (the public ops' checks cost more host time a
        layer than the launches' own arguments), and its callers chose Triton for x (fused_step_ok), which they
        are not asked again (each ask reads the environment)."""
        from archdsl.kernels.fused_step.op import mamba2_step_unchecked
        from archdsl.kernels.norm_gemv.op import gemv_unchecked, rms_linear_unchecked

        norm, cfg, out_proj, conv = self.norm, self.cfg, self.out_proj, self.conv1d
        pdl = "pdl" in self.fused
        fold = norm is not None and "norm_gemv" in self.fused and x.shape[0] <= gemv_rows()
        y = mamba2_step_unchecked(self.in_proj(x) if zxbcdt is None else zxbcdt, state["conv"], conv.weight[:, 0],
                                  conv.bias, state["ssm"], self.A_log, self.D, self.dt_bias,
                                  None if norm is None else norm.weight,
                                  "silu" if norm is None else "pre_norm" if fold else "norm",
                                  cfg.norm_eps, cfg.dt_floor, pdl, triton=True)
        if fold:
            return rms_linear_unchecked(y, out_proj.weight, norm.weight, norm.eps, None, self.G, out_proj.bias, pdl,
                                        triton=True)[0]
        return gemv_unchecked(y, out_proj.weight, out_proj.bias, pdl, triton=True)

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        return {"conv": torch.zeros(batch, self.conv_dim, self.K - 1, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.H, self.P, self.N, device=device, dtype=state_dtype(dtype, ssm_dtype))}
