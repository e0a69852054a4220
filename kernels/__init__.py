"""archdsl.kernels — the recurrences of non-Transformer models, one op per folder.

Every op has a naive sequential reference (`naive.py`, float64-capable), a chunked
PyTorch path (the CPU path) and Triton forward + backward kernels (the CUDA path),
all with one signature; see _dispatch for how one is chosen.
"""
# The folder sits at the repository's top level; with the repository root on sys.path
# (`python -m ...` run there, or Python started in the root) it is also importable as a bare
# `kernels`, the name of the Hugging Face hub package that transformers (5.25 and later)
# imports as it loads. Only as archdsl.kernels does this file load anything, so the bare
# import shadows the hub package with an empty module and transformers fails with "cannot
# import name 'CUDAProperties' from 'kernels'" (docs/interop.md): tests/conftest.py imports
# the hub package first; scripts run from another directory or with `python -P`.
if __name__ == "archdsl.kernels":
    from ._dispatch import interpreting
    if interpreting():
        from ._interpreter import fix_bf16
        fix_bf16()
    from .conv1d import causal_conv1d, causal_conv1d_update
    from .selective_scan import selective_scan, selective_state_update
    from .ssd import ssd_scan, ssd_step
    from .wkv4 import wkv4, wkv4_step
    from .wkv6 import wkv6, wkv6_step
    from .rmsnorm import add_rmsnorm
    from .gated_rmsnorm import gated_rmsnorm, gated_rmsnorm_linear
    from .norm_gemv import gemv, rms_linear
    from .compat import (causal_conv1d_fn, causal_conv1d_varlen_states, chunk_rwkv6, fused_recurrent_rwkv6,
                         mamba_chunk_scan_combined, selective_scan_fn)

__all__ = [
    "causal_conv1d", "causal_conv1d_update",
    "selective_scan", "selective_state_update",
    "ssd_scan", "ssd_step",
    "wkv4", "wkv4_step",
    "wkv6", "wkv6_step",
    "add_rmsnorm", "gated_rmsnorm", "gated_rmsnorm_linear", "rms_linear", "gemv",
    # the peers' names, orders and defaults (compat.py)
    "selective_scan_fn", "mamba_chunk_scan_combined", "causal_conv1d_fn", "causal_conv1d_varlen_states",
    "chunk_rwkv6", "fused_recurrent_rwkv6",
]
