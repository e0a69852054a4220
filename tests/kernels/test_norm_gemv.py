"""Decode GEMV with its RMSNorm folded in: the Triton kernel (interpreted on CPU) == the naive twin
(add, norm, Linear as separate torch ops) over random widths, groups, batch rows, residual and bias;
bfloat16 at Mamba-2 1.3B's sizes on the GPU. The plain GEMV (no norm) == F.linear the same ways."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archdsl.kernels import rms_linear
from archdsl.kernels.norm_gemv import gemv
from archdsl.kernels.norm_gemv import triton_norm_gemv, triton_rows
from archdsl.kernels.norm_gemv.naive import rms_linear_naive
from archdsl.kernels.norm_gemv.op import GEMV_ROWS, MAX_ROWS, SPLITK_MAX_K, SPLITK_MAX_N, SPLITK_ROWS

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _needs_triton(monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")


def _inputs(batch, K, R, groups, residual, bias, dtype, x_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=t(batch, K).to(DEV, x_dtype or dtype), weight=(t(R, K) / K ** 0.5).to(DEV, dtype),
                norm_weight=(1 + 0.2 * t(K)).to(DEV, dtype), groups=groups,
                residual=t(batch, K).to(DEV, dtype) if residual else None,
                bias=t(R).to(DEV, dtype) if bias else None)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), kg=st.sampled_from([1, 5, 12, 32, 40]), groups=st.sampled_from([1, 2, 3]),
       R=st.integers(1, 50),
       residual=st.booleans(), bias=st.booleans(), block=st.sampled_from([(4, 16), (8, 64), (16, 1024)]))
def test_triton_matches_naive(batch, kg, groups, R, residual, bias, block):
    """K = groups · kg channels, not a power of two in general; the K loop crosses several blocks.
    The kernel is called directly: no backend choice is involved."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    a = _inputs(batch, groups * kg, R, groups, residual, bias, torch.float32)
    y, h = triton_norm_gemv.rms_linear_triton(a["x"], a["weight"], a["norm_weight"], 1e-5, a["residual"],
                                              groups, a["bias"], block_r=block[0], block_k=block[1])
    ref_y, ref_h = rms_linear_naive(a["x"], a["weight"], a["norm_weight"], 1e-5, a["residual"], groups, a["bias"])
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=0)



@settings(max_examples=12, deadline=None)
@given(K=st.sampled_from([1, 5, 40, 96]), R=st.integers(1, 70), norm=st.booleans(), residual=st.booleans(),
       bias=st.booleans())
def test_streaming_kernel_matches_naive(K, R, norm, residual, bias):
    """One row, one group: the streaming kernel (a few programs, each walking row blocks pid, pid + NPROG,
    ...; 16 programs of 2 rows under the interpreter, so past 32 rows a program takes several blocks)."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    a = _inputs(1, K, R, 1, residual, bias, torch.float32)
    nw = a["norm_weight"] if norm else None
    y, h = triton_norm_gemv.rms_linear_triton(a["x"], a["weight"], nw, 1e-5, a["residual"], 1, a["bias"])
    if norm:
        ref_y, ref_h = rms_linear_naive(a["x"], a["weight"], nw, 1e-5, a["residual"], 1, a["bias"])
    else:
        ref_h = a["x"] + a["residual"] if residual else a["x"]
        ref_y = torch.nn.functional.linear(ref_h, a["weight"], a["bias"])
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=0)


@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 3), K=st.sampled_from([1, 5, 40, 96]), R=st.integers(1, 50), bias=st.booleans(),
       block=st.sampled_from([(4, 16), (16, 1024)]))
def test_plain_gemv_matches_linear(batch, K, R, bias, block):
    """No norm weight: y = x Wᵀ + b, the K loop across several blocks; the kernel called directly."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    a = _inputs(batch, K, R, 1, False, bias, torch.float32)
    y, h = triton_norm_gemv.rms_linear_triton(a["x"], a["weight"], None, 1.0, None, 1, a["bias"],
                                              block_r=block[0], block_k=block[1])
    torch.testing.assert_close(y, torch.nn.functional.linear(a["x"], a["weight"], a["bias"]), rtol=1e-4, atol=1e-5)
    assert h is a["x"] or torch.equal(h, a["x"])


@settings(max_examples=10, deadline=None)
@given(batch=st.sampled_from([1, 2, 3, 7, 16, 19]), K=st.sampled_from([1, 5, 40, 96, 300]), R=st.integers(1, 70),
       bias=st.booleans(),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), x32=st.booleans(),
       block=st.sampled_from([(16, 16, 16), (32, 32, 64), (16, 64, 128)]))
def test_rows_gemm_matches_linear(batch, K, R, bias, dtype, x32, block):
    """The split-K GEMM (16-bit weights, a few rows; 19 pads to 32): == F.linear on x rounded to the weight's
    dtype, the products summed in float32 and rounded once; K split into several programs (block = BN, BK, K
    split)."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    a = _inputs(batch, K, R, 1, False, bias, dtype, x_dtype=torch.float32 if x32 else None)
    y = triton_rows.rows_gemm_triton(a["x"], a["weight"], a["bias"], block_n=block[0], block_k=block[1],
                                     k_split=block[2])
    ref = torch.nn.functional.linear(a["x"].to(dtype).double(), a["weight"].double(),
                                     None if a["bias"] is None else a["bias"].double())
    assert y.dtype == dtype and y.shape == (batch, R)
    torch.testing.assert_close(y.double(), ref.to(dtype).double(), rtol=1e-2, atol=1e-2)


def test_plain_gemv_op(monkeypatch):
    """gemv: the kernel up to GEMV_ROWS rows; the split-K GEMM for 16-bit weights up to SPLITK_ROWS rows and
    SPLITK_MAX_N outputs and SPLITK_MAX_K inputs; else F.linear (bit for bit); bad input named."""
    _needs_triton(monkeypatch)
    for batch in (1, GEMV_ROWS + 1):
        a = _inputs(batch, 48, 24, 1, False, True, torch.float32)
        y = gemv(a["x"], a["weight"], a["bias"])
        ref = torch.nn.functional.linear(a["x"], a["weight"], a["bias"])
        assert torch.equal(y, ref) if batch > GEMV_ROWS else torch.allclose(y, ref, rtol=1e-4, atol=1e-5)
    for batch, K, R in ((GEMV_ROWS + 1, 48, 24), (SPLITK_ROWS, 48, 24), (SPLITK_ROWS + 1, 48, 24),
                        (2, 48, SPLITK_MAX_N + 1), (2, SPLITK_MAX_K + 1, 4)):
        a = _inputs(batch, K, R, 1, False, True, torch.bfloat16)
        y = gemv(a["x"], a["weight"], a["bias"])
        ref = torch.nn.functional.linear(a["x"], a["weight"], a["bias"])
        split = batch <= SPLITK_ROWS and R <= SPLITK_MAX_N and K <= SPLITK_MAX_K
        assert torch.allclose(y, ref, rtol=1e-2, atol=1e-2) if split else torch.equal(y, ref)
    with pytest.raises(ValueError, match="weight"):
        gemv(a["x"], a["weight"][:, :8])
    with pytest.raises(ValueError, match="bias"):
        gemv(a["x"], a["weight"], a["bias"][:3])

def test_float32_input_rounded_to_half_weights(monkeypatch):
    """Mamba-2's out_proj case: the gated output in float32, the weight in 16 bits: the kernel agrees
    with the separate ops up to their rounding of the normalised vector to 16 bits."""
    _needs_triton(monkeypatch)
    a = _inputs(2, 48, 24, 2, False, True, torch.float16, x_dtype=torch.float32)
    y, h = rms_linear(**a)
    ref, _ = rms_linear_naive(**a)
    assert y.dtype == torch.float16 and h is a["x"]
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-3, atol=2e-3)


def test_many_rows_and_float64_take_the_torch_path(monkeypatch):
    _needs_triton(monkeypatch)
    a = _inputs(MAX_ROWS + 1, 32, 8, 1, True, False, torch.float32)
    y, h = rms_linear(**a)
    ref_y, ref_h = rms_linear_naive(**a)
    assert torch.equal(y, ref_y) and torch.equal(h, ref_h)
    b = _inputs(2, 32, 8, 4, True, True, torch.float64)
    assert torch.equal(rms_linear(**b)[0], rms_linear_naive(**b)[0])


def test_argument_errors():
    a = _inputs(2, 16, 8, 1, True, True, torch.float32)
    with pytest.raises(ValueError, match="weight"):
        rms_linear(a["x"], a["weight"][:, :8], a["norm_weight"])
    with pytest.raises(ValueError, match="norm_weight"):
        rms_linear(a["x"], a["weight"], a["norm_weight"][:4])
    with pytest.raises(ValueError, match="residual"):
        rms_linear(a["x"], a["weight"], a["norm_weight"], residual=a["residual"][:1])
    with pytest.raises(ValueError, match="groups"):
        rms_linear(a["x"], a["weight"], a["norm_weight"], groups=3)
    with pytest.raises(ValueError, match="bias"):
        rms_linear(a["x"], a["weight"], a["norm_weight"], bias=a["bias"][:2])
    with pytest.raises(ValueError, match="x"):
        rms_linear(a["x"][0], a["weight"], a["norm_weight"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("K, R, groups, residual", [(2048, 8512, 1, True), (4096, 2048, 1, False),
                                                   (4096, 2048, 8, False), (2560, 10576, 1, True)])
@pytest.mark.parametrize("batch", [1, MAX_ROWS + 1])
def test_gpu_bf16_mamba2_sizes(K, R, groups, residual, batch):
    """Mamba-2 1.3B's in_proj (after add + RMSNorm) and out_proj (after the gated norm, x float32), and 2.7B's
    in_proj; at one row and one group the streaming kernel."""
    a = _inputs(batch, K, R, groups, residual, False, torch.bfloat16, x_dtype=None if residual else torch.float32)
    y, h = rms_linear(**a)
    a64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    ref, _ = rms_linear_naive(**a64)
    assert (y.double() - ref).abs().max().item() <= 2e-2 * ref.abs().max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("K, R", [(5120, 192), (5120, 2560)])
@pytest.mark.parametrize("batch", [1, 2, 5, SPLITK_ROWS])
def test_gpu_bf16_plain_gemv_mamba_sizes(K, R, batch):
    """mamba-2.8b's x_proj and out_proj at one row (the GEMV) and a few (the split-K GEMM), bf16, against float64."""
    a = _inputs(batch, K, R, 1, False, True, torch.bfloat16)
    y = gemv(a["x"], a["weight"], a["bias"])
    ref = torch.nn.functional.linear(a["x"].double(), a["weight"].double(), a["bias"].double())
    assert (y.double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
