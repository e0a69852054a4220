"""Plain torch references of the fused decode steps: the unfused modules' arithmetic, in float32
(float64 for float64 inputs), one token at a time. States are updated in place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import needs_grad


def _ct(*ts):
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def conv_step_naive(x, conv_state, weight, bias=None):
    """x [B, D] → silu(depthwise causal conv over [state, x]) [B, D]; state [B, D, K-1] shifted."""
    ct = _ct(x, conv_state)
    window = torch.cat([conv_state.to(ct), x[..., None].to(ct)], dim=-1)
    conv_state.copy_(window[..., 1:])
    y = (window * weight.to(ct)).sum(-1)
    if bias is not None:
        y = y + bias.to(ct)
    return F.silu(y).to(x.dtype)


def mamba2_step_naive(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                      norm_weight, gate, norm_eps, dt_floor):
    batch, H, P, N = ssm_state.shape
    E = H * P
    conv_dim = conv_state.shape[1]
    G = (conv_dim - E) // (2 * N)
    ct = _ct(zxbcdt, ssm_state)
    z, xBC, dt = zxbcdt.to(ct).split([E, conv_dim, H], dim=-1)
    xBC = conv_step_naive(xBC, conv_state, conv_weight, conv_bias)
    x, B, C = xBC.split([E, G * N, G * N], dim=-1)
    x = x.reshape(batch, H, P)
    B, C = (t.reshape(batch, G, N).repeat_interleave(H // G, dim=1) for t in (B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    dt = F.softplus(dt)
    if dt_floor:
        dt = dt.clamp(min=dt_floor)
    decay = torch.exp(dt * -torch.exp(A_log.to(ct)).clamp(max=1e30))  # A floored as ssd_scan's (A_FLOOR)
    # a copy of the state where autograd records: the product keeps it for the backward, and it is written next
    s = ssm_state.to(ct, copy=needs_grad(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                                             norm_weight))
    h = s * decay[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
    ssm_state.copy_(h)
    y = (h * C[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(ct)[:, None] * x
    y = y.reshape(batch, E)
    if gate is not None:
        y = y * F.silu(z)
    if gate == "pre_norm":
        return y
    if gate == "norm":
        g = y.view(batch, G, E // G)
        y = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm_eps)).view(batch, E) * norm_weight.to(ct)
    return y.to(zxbcdt.dtype)


def _rms(x, w, eps):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x if w is None else x * w.to(x.dtype)


def mamba_ssm_step_naive(state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z, inner_norms,
                         dt_norm_weight, b_norm_weight, c_norm_weight, inner_norm_eps):
    E, N = state.shape[1:]
    R = dt_proj_weight.shape[1]
    ct = _ct(u, state)
    dt, B, C = x_dbl.to(ct).split([R, N, N], dim=-1)
    if inner_norms != "none":
        w = inner_norms == "weighted"
        dt = _rms(dt, dt_norm_weight if w else None, inner_norm_eps)
        B = _rms(B, b_norm_weight if w else None, inner_norm_eps)
        C = _rms(C, c_norm_weight if w else None, inner_norm_eps)
    dt = dt @ dt_proj_weight.to(ct).T
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    dt = F.softplus(dt)
    uu = u.to(ct)
    # a copy of the state where autograd records: the product keeps it for the backward, and it is written next
    s = state.to(ct, copy=needs_grad(state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z,
                                           dt_norm_weight, b_norm_weight, c_norm_weight))
    h = s * torch.exp(dt[..., None] * -torch.exp(A_log.to(ct))) + (dt * uu)[..., None] * B[:, None, :]
    state.copy_(h)
    y = (h * C[:, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(ct) * uu
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype)
