"""A Linear on the steps-contiguous layout [B, F, L] of the Mamba-1 mixer, with no transposing copy.

`steps_linear(t, W, b)`          t [B, K, L] → W · t[b] + b   [B, N, L] contiguous
`steps_linear(t, W, b, tokens=True)`        → (W · t[b] + b)ᵀ [B, L, N] contiguous
`steps_linear(t, W, b, parts=2)`            → (W₁ · t[b] + b₁, W₂ · t[b] + b₂), each [B, N/2, L] contiguous

t may be any view whose last two dims have a unit stride between them: the steps-contiguous [B, K, L]
(x_proj and dt_proj read u and dt so) or x.mT of a token-major x [B, L, K] (in_proj). F.linear and
torch.matmul fold the batch into the rows and so copy such a t into [B·L, K] (a transposing copy, ~4× the
time of a plain one on the H200), and the backward copies the gradient back; here every product is one
batched GEMM (cuBLAS reads a transposed or batch-broadcast operand in place):

    forward   out[b]   = W · t[b]                     one bmm (a part), W broadcast over the batch
    backward  dt[b]    = Wᵀ · g[b]                    in t's layout: [B, K, L] contiguous, or (g[b]ᵀ · W)ᵀ
              dW       = Σ_b g[b] · t[b]ᵀ             see below
              db       = Σ_{b,l} g[b, :, l]

g is the output's gradient as [B, N, L] (a view of [B, L, N] with tokens=True).

Under torch.autocast the products run in autocast's dtype for t's device (bf16 or fp16; float64 operands are
left alone, as autocast leaves them), t and W cast to it as bmm's autocast would; the backward, which autograd
runs outside autocast, computes in that same dtype from what the forward saved and returns each input's gradient
in that input's own dtype.

dW has two forms, picked by which moves fewer bytes:
- bmm over batch chunks (≤ 256 MiB each), the [B, N, K] products summed in fp32: B·N·K elements written
  and read back;
- g and t as [F, B·L] rows, then one GEMM: free for an operand that is token-major underneath (x.mT of
  [B, L, F]), a copy of B·L·F elements for a steps-contiguous one.
The rows win when N·K > ROWS_RATIO · L · (the copied F's). On the H200 (mamba-2.8b's projections, bf16):
in_proj's dW at B16 L512 1.41 → 0.74 ms and out_proj's 0.58 → 0.39; at B4 L2048 (ratio 1.25) the bmm
stays 5-8% ahead, and at 2.5 the rows are 3-23% ahead. One GEMM also rounds once, not once a batch.
"""
from __future__ import annotations

import torch

_CHUNK_BYTES = 1 << 28  # the [chunk, N, K] products of dW's batched GEMM
ROWS_RATIO = 2  # dW by one GEMM over [F, B·L] rows when N·K > ROWS_RATIO · L · (copied F's)


def _unit_pair(t: torch.Tensor) -> torch.Tensor:
    """t as bmm reads it in place: one of its last two dims of stride 1 (else a contiguous copy)."""
    return t if 1 in (t.stride(-1), t.stride(-2)) else t.contiguous()


def _token_major(x: torch.Tensor) -> bool:
    """Whether x [B, F, L] is x'.mT of a token-major x' [B, L, F] (its features of a step adjacent)."""
    return x.stride(-2) == 1 and x.shape[-1] > 1


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [B, F, L] as [F, B·L]: a view where x is token-major underneath, else a copy of its rows of L."""
    B, F, L = x.shape
    if _token_major(x):
        return x.mT.reshape(B * L, F).mT
    return x.permute(1, 0, 2).reshape(F, B * L)


def _weight_grad(g: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out [N, K] (contiguous rows) = Σ_b g[b] · t[b]ᵀ for g [B, N, L], t [B, K, L]; by one GEMM over rows
    where that moves fewer bytes, else by batched GEMMs accumulated over the batch in fp32 (float64 stays
    float64)."""
    B, N, K, L = g.shape[0], g.shape[1], t.shape[1], g.shape[2]
    if B == 1:
        return torch.mm(g[0], t[0].mT, out=out)
    copied = (0 if _token_major(g) else N) + (0 if _token_major(t) else K)
    if N * K > ROWS_RATIO * L * copied:
        return torch.mm(_rows(g), _rows(t).mT, out=out)
    acc_dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
    step = max(1, min(B, _CHUNK_BYTES // max(1, N * K * g.element_size())))
    acc = None
    for i in range(0, B, step):
        part = torch.bmm(g[i:i + step], t[i:i + step].mT).sum(0, dtype=acc_dtype)
        acc = part if acc is None else acc.add_(part)
    return out.copy_(acc)


def _autocast_dtype(*xs: torch.Tensor | None) -> torch.dtype | None:
    """The dtype autocast would run bmm in for these operands (its lower-precision dtype for their device), or
    None: no autocast there (none at all on the meta device), or an operand in float64, which autocast leaves
    alone."""
    from archdsl.kernels._dispatch import autocast_dtype  # here: archdsl.kernels imports torch._dynamo

    if any(x is not None and x.dtype == torch.float64 for x in xs):
        return None
    return autocast_dtype(xs[0].device.type)


class _StepsLinear(torch.autograd.Function):
    """W's rows in `parts` equal blocks W_p, each its own output: out_p = W_p · t[b] (+ b_p)."""

    @staticmethod
    def forward(ctx, t, weight, bias, tokens, parts):
        ctx.dtypes = t.dtype, weight.dtype, None if bias is None else bias.dtype
        ct = _autocast_dtype(t, weight, bias)
        if ct is not None:  # under autocast: the products in its dtype, as bmm's own would be, and the backward too
            t, weight = t.to(ct), weight.to(ct)
            bias = None if bias is None else bias.to(ct)
        t = _unit_pair(t)
        B = t.shape[0]
        outs = []
        for w, b in zip(weight.chunk(parts), [None] * parts if bias is None else bias.chunk(parts)):
            if tokens:  # [B, L, N] = t[b]ᵀ · Wᵀ
                wt = w.mT.expand(B, *w.mT.shape)
                outs.append(torch.bmm(t.mT, wt) if b is None else torch.baddbmm(b.expand(B, t.shape[2], -1), t.mT, wt))
            else:  # [B, N, L] = W · t[b]
                we = w.expand(B, *w.shape)
                outs.append(torch.bmm(we, t) if b is None else torch.baddbmm(b[:, None].expand(B, -1, t.shape[2]), we, t))
        ctx.save_for_backward(t, weight)
        ctx.tokens, ctx.has_bias, ctx.parts = tokens, bias is not None, parts
        return tuple(outs) if parts > 1 else outs[0]

    @staticmethod
    def backward(ctx, *grads):
        t, weight = ctx.saved_tensors  # in the forward's compute dtype (autocast's, where it ran under autocast)
        gs = [_unit_pair((g.mT if ctx.tokens else g).to(t.dtype)) for g in grads]  # each [B, N_p, L]
        ws = weight.chunk(ctx.parts)
        B, n = t.shape[0], ws[0].shape[0]
        t_dtype, w_dtype, b_dtype = ctx.dtypes  # each input's gradient in its own dtype
        dt = dW = db = None
        if ctx.needs_input_grad[0]:
            for w, g in zip(ws, gs):
                if t.stride(-1) == 1:  # t [B, K, L] steps-contiguous: Σ_p W_pᵀ · g_p[b]
                    wt = w.mT.expand(B, *w.mT.shape)
                    dt = torch.bmm(wt, g) if dt is None else torch.baddbmm(dt, wt, g)
                else:  # t = x.mT of a token-major x: (Σ_p g_p[b]ᵀ · W_p)ᵀ, so dx comes out [B, L, K] contiguous
                    we = w.expand(B, *w.shape)
                    dt = torch.bmm(g.mT, we) if dt is None else torch.baddbmm(dt, g.mT, we)
            dt = (dt if t.stride(-1) == 1 else dt.mT).to(t_dtype)
        if ctx.needs_input_grad[1]:
            dW = torch.empty_like(weight)
            for p, g in enumerate(gs):
                _weight_grad(g, t, dW[p * n:(p + 1) * n])
            dW = dW.to(w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
            db = torch.cat([g.sum((0, 2), dtype=acc) for g in gs]).to(b_dtype)
        return dt, dW, db, None, None


def steps_linear(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 tokens: bool = False, parts: int = 1):
    """t [B, K, L], weight [N, K], bias [N] or None → W · t + b as [B, N, L] (contiguous), or with
    tokens=True its transpose [B, L, N] (contiguous). parts > 1: a tuple of `parts` outputs, one for each
    equal block of W's rows, each contiguous on its own (in_proj's x and z halves: a consumer that needs
    one dense, as the scan needs z, then reads it in place)."""
    if parts < 1 or weight.shape[0] % parts:
        raise ValueError(f"steps_linear: weight's {weight.shape[0]} rows do not split into {parts} equal parts")
    return _StepsLinear.apply(t, weight, bias, tokens, parts)
