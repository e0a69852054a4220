"""Host helpers for the launchers, in plain Python.

`triton.cdiv` and `triton.next_power_of_2` are Triton constexpr functions: called from the host they first
unwrap their arguments through Triton's machinery, a few microseconds a call, and a launcher makes several
(the chunked SSD forward made 13 a call). These compute the same values directly.
"""
from __future__ import annotations

import torch

from ._checks import expect_integer, expect_same_device, expect_shape


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for b > 0, as triton.cdiv."""
    return (a + b - 1) // b


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (0 for n <= 0), as triton.next_power_of_2. While torch.compile
    traces, a size may be a symbol (dynamic shapes): doubling until past it guards on the power-of-two
    bounds around it, where bit_length would fix the graph to its value."""
    if not torch.compiler.is_compiling():
        return 1 << (n - 1).bit_length() if n > 0 else 0
    p = 1 if n > 0 else 0
    while 0 < p < n:
        p *= 2
    return p


@torch.compiler.assume_constant_result
def fp32_dot() -> str:
    """How the kernels take a product of float32 tiles (tl.dot's input_precision), as
    torch.set_float32_matmul_precision asks: "highest" (torch's default) -> "tf32x3", three TF32 products whose
    sum keeps float32's digits; "high" or "medium" -> "tf32", one product (~1e-3 of a result's norm, as
    mamba_ssm's and cuBLAS's TF32 products). H200, float32 SSD scan B1 L16384 H32 P64 N128 with D, z and 16
    packed sequences, one process, with the tiles of the time: forward 16.6 ms with full float32 products
    ("ieee"), 2.5 with "tf32x3", 1.4 with "tf32" (mamba_ssm 0.75); y's error against float64 9.1e-7, 9.7e-7
    and 1.5e-3 (mamba_ssm 1.5e-3). A constant to torch.compile, which cannot trace the getter (fullgraph fails)
    and recompiles where the precision changes."""
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def sm_count(device: torch.device) -> int:
    """The multiprocessors of a CUDA device (4 elsewhere: the interpreter's stand-in), for grids of a few
    programs a multiprocessor that each walk many rows."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def row_warps(block: int) -> int:
    """num_warps for a program that holds one row of `block` elements: 8 elements a thread, 1 to 16 warps."""
    return min(16, max(1, block // 256))


def dense(t: torch.Tensor | None) -> torch.Tensor | None:
    """t as the kernels index it: contiguous (a strided view is copied); None stays None."""
    return None if t is None else t.contiguous()


def unit_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """t as kernels that take its leading strides index it: as it is when its last dimension is contiguous
    (rows of a wider tensor, as a layer's projections slice them, are not copied), else a contiguous copy;
    None stays None."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def seq_runs(seq_idx: torch.Tensor) -> torch.Tensor:
    """seq_idx [B, L] of any integers as the kernels read it: runs of equal values numbered 0, 1, 2, ...
    (from 1 when the first token's seq_idx is not 0: an initial state belongs to seq_idx 0), int32.
    Kernels compare the seq_idx of tokens far apart; numbered runs make equal mean unbroken, and fit 32 bits."""
    return seq_starts(seq_idx).cumsum(1, dtype=torch.int32)


def seq_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: where a sequence starts and the state restarts from zero (seq_idx changes; the first token
    too when its seq_idx is not 0, since an initial state belongs to seq_idx 0)."""
    s = seq_idx.long()
    return torch.cat([s[:, :1] != 0, s[:, 1:] != s[:, :-1]], dim=1)


def on_device(plans: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Small int32 plans made on the host, on `device` in one copy (views of one buffer); as they are where
    they already are. A kernel's plan made on the host from offsets read there costs a few microseconds an op, where
    the same ops launched on the card cost the host tens (0.47 ms for wkv6's varlen pieces on an H100's host)."""
    if all(p.device == device for p in plans):
        return plans
    flat = torch.cat([p.to(torch.int32) for p in plans]).to(device, non_blocking=True)
    return list(flat.split([p.numel() for p in plans]))


def packing(seq_idx, cu_seqlens, x, cu_seqlens_cpu=None, runs=True):
    """The packing of x [B, L, ...] as (seq_idx [B, L], the offsets or None).

    cu_seqlens [n + 1] int32 or int64 (flash-attention's, mamba_ssm's and fla's varlen form: 0, each later
    sequence's first token, L; a batch of 1) is checked (0 first, L last, increasing: no empty sequence) and
    stands for seq_idx [1, L] (0, 1, 2, ... a sequence); a seq_idx given too must say the same packing. Its
    offsets come back as a list, read from cu_seqlens_cpu where given (fla's host copy, trusted to hold the
    same offsets where cu_seqlens is on a GPU: comparing them would wait for it), else from cu_seqlens (one wait for
    the device).
    runs=False: the caller reads the offsets only, so seq_idx comes back as given (None) where it is not given
    (no ops on the device for it). Without cu_seqlens: (seq_idx as given, None)."""
    if cu_seqlens is None:
        if cu_seqlens_cpu is not None:
            raise ValueError("cu_seqlens_cpu: given without cu_seqlens (it is the host copy of cu_seqlens)")
        return seq_idx, None
    batch, L = x.shape[:2]
    expect_shape("cu_seqlens", cu_seqlens, (None,))
    expect_integer(cu_seqlens=cu_seqlens)
    expect_same_device(x=x, cu_seqlens=cu_seqlens)
    if cu_seqlens_cpu is not None:
        expect_shape("cu_seqlens_cpu", cu_seqlens_cpu, tuple(cu_seqlens.shape))
        expect_integer(cu_seqlens_cpu=cu_seqlens_cpu)
    if (cu_seqlens if cu_seqlens_cpu is None else cu_seqlens_cpu).is_meta:
        raise ValueError("cu_seqlens: on the meta device it holds no offsets to read (the sequences' lengths "
                         "decide the work)")
    cu = (cu_seqlens if cu_seqlens_cpu is None else cu_seqlens_cpu).tolist()
    if cu_seqlens_cpu is not None and cu_seqlens.device.type == "cpu" and cu != cu_seqlens.tolist():  # (no wait)
        raise ValueError(f"cu_seqlens_cpu: expected cu_seqlens' offsets {cu_seqlens.tolist()[:8]}"
                         f"{' ...' if len(cu) > 8 else ''}, got {cu[:8]}{' ...' if len(cu) > 8 else ''}")
    if batch != 1 or len(cu) < 2 or cu[0] != 0 or cu[-1] != L or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens: expected 0, then increasing offsets, then L={L}, for a batch of 1 "
                         f"(the input has batch {batch}); got {cu[:8]}{' ...' if len(cu) > 8 else ''}")
    if seq_idx is None and not runs:
        return None, cu
    firsts = cu_seqlens[1:-1].long()
    from_cu = torch.zeros(L, dtype=torch.long, device=x.device).index_add_(0, firsts, torch.ones_like(firsts))
    from_cu = from_cu.cumsum(0)[None]  # [1, L]: 0, 1, 2, ... a sequence
    if seq_idx is not None and not torch.equal(seq_starts(seq_idx), seq_starts(from_cu)):
        raise ValueError("cu_seqlens: its sequences are not seq_idx's (they must say the same packing)")
    return from_cu, cu


def pool_rows(idx: torch.Tensor, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A decode step's rows that step a state of a pool of `pool` (continuous batching): (the rows [n], the states
    they name [n], int64). A negative index is a pad row, and one past the pool is left alone as a pad too, as the
    Triton steps leave it (expect_slots refuses it on the CPU)."""
    live = ((idx >= 0) & (idx < pool)).nonzero().squeeze(1)
    return live, idx[live].long()
