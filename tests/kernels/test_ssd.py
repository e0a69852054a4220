"""Mamba-2 SSD: Triton (interpreted on CPU) and chunked torch against the float64 loop.

Both Triton implementations run every Triton test: `fused` (one program walks all chunks of a
(batch, head)) and `chunked` (parallel chunk kernels and a serial state pass), chosen by
ARCHDSL_SSD_IMPL."""
import os

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from archdsl.kernels.ssd import ssd_scan, ssd_step
from archdsl.kernels.ssd.chunked import ssd_scan_chunked
from archdsl.kernels.ssd.naive import DtRule, ssd_scan_naive
from archdsl.kernels.ssd.varlen import varlen_states

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
IMPLS = ("fused", "chunked")


def make(b, L, H, P, G, N, *, D=None, z=False, bias=False, h0=False, seq=False, limit=False, dtype=torch.float32,
         device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    t = dict(x=r(b, L, H, P), dt=torch.rand(b, L, H, generator=g, dtype=torch.float64) * 0.4 - 0.5,
             A=-torch.rand(H, generator=g, dtype=torch.float64) * 2 - 0.05,
             B=r(b, L, G, N) / N ** 0.5, C=r(b, L, G, N) / N ** 0.5)
    t["D"] = None if D is None else (r(H) if D == 1 else r(H, P))
    t["z"] = r(b, L, H, P) if z else None
    t["dt_bias"] = r(H) * 0.3 if bias else None
    t["initial_states"] = r(b, H, P, N) if h0 else None
    t = {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in t.items()}
    if not bias:  # without softplus, dt itself must be positive
        t["dt"] = t["dt"].abs() + 0.01
    cut = torch.sort(torch.randint(0, L + 1, (b, 2), generator=g), dim=1).values
    pos = torch.arange(L)
    t["seq_idx"] = ((pos >= cut[:, :1]).long() + (pos >= cut[:, 1:]).long()).to(device) if seq else None
    t["dt_softplus"] = bool(bias)
    # dt' lies in about (0.1, 0.75) either way: this clamp holds some tokens at each end
    t["dt_limit"] = (0.3, 0.45) if limit else None
    return t


def run(fn, t, grads=True, **kw):
    """Outputs and gradients (of a fixed random projection) of every tensor input."""
    leaves = {k: t[k].detach().clone().requires_grad_() for k in NAMES if t[k] is not None}
    args = {**t, **leaves}
    y, hT = fn(args["x"], args["dt"], args["A"], args["B"], args["C"], D=args["D"], z=args["z"],
               dt_bias=args["dt_bias"], dt_softplus=t["dt_softplus"], initial_states=args["initial_states"],
               seq_idx=t["seq_idx"], return_final_states=True, dt_limit=t["dt_limit"], **kw)
    if not grads:
        return [y, hT]
    g = torch.Generator(device="cpu").manual_seed(1)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)
    wh = torch.randn(hT.shape, generator=g, dtype=torch.float64).to(y.device)
    loss = (y.double() * wy).sum() + (hT.double() * wh).sum()
    return [y, hT] + list(torch.autograd.grad(loss, list(leaves.values())))


def rel(a, b, floor=1e-6):
    """|a - b| / |b|, with |b| taken as at least `floor`."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(floor)).item()


def assert_close(got, want, tol):
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.isfinite(a).all(), f"output {i} not finite"
        assert rel(a, b) < tol, f"output {i}: relative error {rel(a, b):.2e} > {tol}"


def assert_matches_float64(fn, t, tol=2e-5, reduced_tol=1e-3):
    """fn on the float32 inputs t against the naive loop on the same values in float64. The
    gradients of A, D and dt_bias are sums over the whole sequence whose terms cancel, so float32
    rounding shows in them more (seen: 9e-5, and 3.5e-4 on dA of a single head over 17 tokens in
    the fused kernels): they get `reduced_tol`, and their size is taken as at least 0.01 (dA is ~0.7 in
    these tests). Where the terms cancel exactly, the sum is rounding alone: dA of a scan whose
    seq_idx changes at every token is 0 in float64 and 1.1e-7 in float32 (hypothesis found it). dt's gradient
    is a sum over P·N terms of size ~1 too: under a dt_limit that clamps all but one token it is 7e-4 there, with
    7e-8 of rounding (1e-4 of itself; hypothesis found it), so its size is also taken as at least 0.01."""
    t64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    names = ["y", "final"] + [k for k in NAMES if t[k] is not None]
    for name, a, b in zip(names, run(fn, t), run(ssd_scan_naive, t64)):
        limit, floor = (reduced_tol, 1e-2) if name in ("A", "D", "dt_bias") else (tol, 1e-2 if name == "dt" else 1e-6)
        assert torch.isfinite(a).all(), f"{name} not finite"
        assert rel(a, b, floor) < limit, f"{name}: relative error {rel(a, b, floor):.2e} > {limit}"


def scan_of(impl):
    """ssd_scan forced onto `impl`: "torch" (the chunked torch path), or a Triton implementation
    ("fused", "chunked"); the backward runs what the forward chose."""
    env = dict(ARCHDSL_KERNELS="torch") if impl == "torch" else dict(ARCHDSL_KERNELS="triton",
                                                                     ARCHDSL_SSD_IMPL=impl)

    def scan(*a, **k):
        old = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            return ssd_scan(*a, **k)
        finally:
            for name, value in old.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value
    return scan


shapes = st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 2, 7, 17, 31, 40, 67]),
                   st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]), st.sampled_from([3, 5, 16]),
                   st.sampled_from([4, 7, 16]))
options = st.fixed_dictionaries(dict(D=st.sampled_from([None, 1, 2]), z=st.booleans(), bias=st.booleans(),
                                     h0=st.booleans(), seq=st.booleans(), limit=st.booleans()))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=20, deadline=None)
@given(shape=shapes, opts=options)
def test_triton_matches_naive(impl, shape, opts):
    """The chunked kernels take ~0.02 s of the interpreter per (row, head, step): their examples stay under
    b·H·L = 280 (4 s), which still crosses several chunks and groups; the largest draws took 9 s each and
    made this test vary from 74 to 143 s of CI."""
    b, L, (H, G), P, N = shape
    assume(impl != "chunked" or b * H * L <= 280)
    t = make(b, L, H, P, G, N, **opts)
    assert_matches_float64(scan_of(impl), t)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("opts", [dict(D=2, z=True, bias=True, h0=True), dict(seq=True, D=1)])
def test_triton_blocks_of_P(opts, impl, monkeypatch):
    """Head dims split across programs: the per-token gradients are sums of the blocks' parts. The
    chunked kernels each choose their own P block: here three different ones; the group kernels of
    dB and dC walk two P blocks of each head."""
    from archdsl.kernels.ssd import triton_ssd, triton_ssd_chunked
    monkeypatch.setattr(triton_ssd, "FWD_BLOCK_P", 16)
    monkeypatch.setattr(triton_ssd, "BWD_BLOCK_P", 16)
    for name in ("STATE_PASS", "DSTATE_PASS", "STATE_PASS_32", "DSTATE_PASS_32", "STATE_PASS_TF32",
                 "DSTATE_PASS_TF32"):  # several P and N blocks
        monkeypatch.setattr(triton_ssd_chunked, name, (16, 16, 4, 2))
    for name in ("CONFIG", "CONFIG_32", "CONFIG_TF32"):
        monkeypatch.setattr(triton_ssd_chunked, name, {"scan": (64, 32, 4, 2, None), "grads": (64, 16, 4, 2, None),
                                                       "group": (64, 32, 4, 1, None)})
    t = make(2, 45, 4, 40, 2, 12, **opts)
    assert_matches_float64(scan_of(impl), t)


def test_chunked_float32_under_tf32_takes_its_own_choices():
    """Under torch's "high" matmul precision float32 inputs take one TF32 product and the chunked layout's _TF32
    launch choices (their own P and N blocks); the scan is the float64 loop's (the interpreter's products are
    full float32: TF32's rounding is the GPU test's)."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    t = make(2, 45, 4, 40, 2, 12, D=1, z=True, bias=True, h0=True, seq=True)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert triton_ssd_chunked._choices(t["x"]) == (triton_ssd_chunked.CONFIG_TF32,
                                                        triton_ssd_chunked.STATE_PASS_TF32,
                                                        triton_ssd_chunked.DSTATE_PASS_TF32)
        assert_matches_float64(scan_of("chunked"), t)
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("chunk, sub", [(64, 16), (16, 16)])
def test_chunked_sub_blocks(chunk, sub, monkeypatch):
    """The chunked kernels work a chunk through in sub-blocks: four per chunk, and one."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    monkeypatch.setattr(triton_ssd_chunked, "INTERPRET_CHUNK", chunk)
    monkeypatch.setattr(triton_ssd_chunked, "INTERPRET_SUB", sub)
    t = make(2, 100, 3, 5, 3, 7, D=1, z=True, bias=True, h0=True, seq=True)
    assert_matches_float64(scan_of("chunked"), t)


def test_chunked_states_in_16_bit():
    """16-bit inputs: the chunked kernels keep the entering states and their gradients in the input's
    dtype (separate buffers from the float32 chunk states). float16, against the float64 loop to half
    precision."""
    t = make(2, 50, 4, 16, 2, 16, D=1, z=True, bias=True, h0=True, seq=True)
    t64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    t16 = {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    assert_close(run(scan_of("chunked"), t16), run(ssd_scan_naive, t64), 3e-3)


@pytest.mark.parametrize("tma, P, bp", [(("pair", "in"), 24, None), (("pair",), 24, None), (("in",), 24, None),
                                         (("pair", "in"), 6, None), (("pair", "in"), 24, 16)],
                         ids=["both", "pair", "in", "rows-unaligned", "own-blocks"])
def test_chunked_tma_reads_equal_pointer_reads(tma, P, bp, monkeypatch):
    """The chunk scan's tiles read through tensor descriptors (a pair's x and CB, a target's C and entering
    state) give exactly what its masked pointer loads give, outputs and gradients: P 24 reads a block of 32
    columns past the tensor's end (zeros), L 77 a last chunk past the sequence's, seq_idx and z on, in
    float16; P 6 (12-byte rows) cannot take descriptors and reads by pointers. bp: the descriptor launch's
    own P block (CONFIG["scan_tma"]), other than the pointer launch's: the descriptors' blocks follow it. The
    reference is then a pointer launch with that same block (other tiles may round differently)."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    t = make(2, 77, 4, P, 2, 16, D=1, z=True, bias=True, h0=True, seq=True)
    t16 = {k: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    scan = triton_ssd_chunked.CONFIG["scan"]
    if bp is not None:
        monkeypatch.setitem(triton_ssd_chunked.CONFIG, "scan_tma", (64, bp, 4, 2, 128))
        monkeypatch.setitem(triton_ssd_chunked.CONFIG, "scan", (scan[0], bp) + scan[2:])
    monkeypatch.setattr(triton_ssd_chunked, "TMA_MIN_PROGRAMS", 0)
    monkeypatch.setattr(triton_ssd_chunked, "TMA", ())
    want = run(scan_of("chunked"), t16)
    monkeypatch.setitem(triton_ssd_chunked.CONFIG, "scan", scan)
    monkeypatch.setattr(triton_ssd_chunked, "TMA", tma)
    for a, b in zip(run(scan_of("chunked"), t16), want):
        assert torch.equal(a, b)


def as_token_rows(t, pad=3):
    """t's x, B and C as slices of one [b, L, H·P + 2·G·N + pad] buffer (Mamba-2 slices them so from its
    conv's output), the rest as it is."""
    x, B, C = t["x"], t["B"], t["C"]
    b, L = x.shape[:2]
    flat = [v.reshape(b, L, -1) for v in (x, B, C)]
    buf = torch.cat(flat + [torch.full((b, L, pad), float("nan"), dtype=x.dtype)], dim=-1)
    x2, B2, C2, _ = buf.split([f.shape[-1] for f in flat] + [pad], dim=-1)
    return {**t, "x": x2.view(x.shape), "B": B2.view(B.shape), "C": C2.view(C.shape)}


@pytest.mark.parametrize("opts, dtype, tma", [(dict(D=1, z=True, bias=True, h0=True, seq=True), torch.float32, False),
                                              (dict(D=2, bias=True), torch.float32, False),
                                              (dict(D=1, z=True, bias=True, seq=True), torch.float16, True)],
                         ids=["gate", "no-gate", "tma"])
def test_chunked_reads_token_rows_in_place(opts, dtype, tma, monkeypatch):
    """x, B and C sliced from one wider tensor (rows evenly strided) are read where they lie, not copied,
    and give exactly the outputs and gradients of contiguous copies: forward, state passes, chunk kernels,
    the gate's backward and the group kernels all index token rows by their stride (the NaN padding
    between rows would show if a kernel read past a row). Rows that do not lie evenly apart are copied."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    from archdsl.kernels.ssd.triton_ssd_chunked import token_rows
    if tma:  # float16 rows of 2·(H·P + 2·G·N + 5) = 208 bytes: 16-byte units, so descriptors are made
        monkeypatch.setattr(triton_ssd_chunked, "TMA_MIN_PROGRAMS", 0)
    t = make(2, 45, 4, 8, 2, 16, dtype=dtype, **opts)
    strided = as_token_rows(t, pad=5 if tma else 3)
    assert not strided["x"].is_contiguous()
    assert all(token_rows(strided[k]) is strided[k] for k in "xBC")
    assert token_rows(t["x"].transpose(0, 1).contiguous().transpose(0, 1)).is_contiguous()
    assert token_rows(t["B"][:1, :1].expand(2, 45, 2, 16)).is_contiguous()  # one row broadcast: copied
    for a, b in zip(run(scan_of("chunked"), strided), run(scan_of("chunked"), t)):
        assert torch.equal(a, b)


def _keep_states_or_not(t):
    """The chunked scan's outputs and gradients with keep_states=False and True, and the shapes each saves."""
    saved, results = {}, {}
    for keep in (False, True):
        shapes = saved[keep] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda v: (shapes.append(tuple(v.shape)), v)[1], lambda v: v):
            results[keep] = run(scan_of("chunked"), t, keep_states=keep)
    return saved, results


def test_chunked_backward_runs_the_state_pass_again():
    """keep_states=False: the forward saves none of its chunk buffers for the backward -- the entering states
    [B, H, NC, N, P], dt' and s [B, H, NC, Q], C·Bᵀ [B, NC, G, Q, Q] -- which prepares the chunks and runs the
    state pass again from h0: the same bits as keeping them (the default). Without h0 the model's recompute
    test covers it (Mamba-2 passes keep_states=False there)."""
    from archdsl.kernels.ssd.triton_ssd_chunked import INTERPRET_CHUNK
    t = make(2, 45, 4, 8, 2, 16, D=1, z=True, bias=True, h0=True, seq=True)
    NC, Q = -(-45 // INTERPRET_CHUNK), INTERPRET_CHUNK
    buffers = [(2, 4, NC, 16, 8), (2, 4, NC, Q), (2, NC, 2, Q, Q)]
    saved, results = _keep_states_or_not(t)
    assert all(b in saved[True] and b not in saved[False] for b in buffers)
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_chunked_backward_recomputes_the_same_bits_bf16():
    """On the card in bf16, where the forward's C·Bᵀ is prepared in float16 for the scan and the backward
    prepares only the float32 one: the same bits either way."""
    t = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v
         for k, v in make(2, 1000, 8, 64, 2, 128, D=1, z=True, bias=True, h0=True, seq=True).items()}
    t = {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    saved, results = _keep_states_or_not(t)
    assert len(saved[False]) < len(saved[True])
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a, b)


def test_chunked_tma_needs_16_byte_alignment():
    """Tensor descriptors are made only for a 16-byte-aligned base whose rows are whole 16-byte units:
    a tensor stored one element into its buffer, or with 12-byte rows, reads by pointers (None)."""
    from archdsl.kernels.ssd.triton_ssd_chunked import _descriptors
    buf = torch.zeros(2 * 8 * 4 * 16 + 1, dtype=torch.float16)
    aligned, shifted = buf[:-1].view(2, 8, 4, 16), buf[1:].view(2, 8, 4, 16)
    assert _descriptors(True, (aligned, [1, 8, 1, 16])) is not None
    assert _descriptors(True, (shifted, [1, 8, 1, 16])) is None
    assert _descriptors(True, (torch.zeros(2, 8, 4, 6, dtype=torch.float16), [1, 8, 1, 8])) is None
    assert _descriptors(False, (aligned, [1, 8, 1, 16])) is None


def test_chunk_prep_token_weights():
    """The chunk preparation's token weights for the Gluon state pass (STORE_W) are those the Triton pass forms:
    w = exp(s_end - s_t) dt'_t, 0 past L (L 50 in chunks of 32: a last chunk past the end)."""
    from archdsl.kernels.ssd import triton_ssd_chunked as tc
    t = make(2, 50, 3, 16, 1, 16, bias=True)
    sizes = tc._sizes(t["x"], t["B"], t["C"], None)
    chain = dict(PDL=False)
    dtc, s, w, *_ = tc._prep(t["x"], t["dt"], t["A"], t["B"], t["C"], t["dt_bias"], DtRule(True), sizes, chain,
                             store16=False, store32=True, store_w=True)
    want = torch.exp(torch.clamp(s[..., -1:] - s, max=0.0)) * dtc
    torch.testing.assert_close(w, want, rtol=1e-5, atol=0)
    assert torch.all(w.flatten(2)[..., 50:] == 0)  # past L
    assert tc._prep(t["x"], t["dt"], t["A"], t["B"], t["C"], t["dt_bias"], DtRule(True), sizes, chain, store16=False,
                    store32=True, store_w=False)[2] is None


@pytest.mark.parametrize("L, H, P, G, N, dtype, h0", [(4000, 4, 64, 1, 128, torch.bfloat16, True),
                                                      (256, 4, 128, 2, 64, torch.float16, False)])
def test_gluon_state_pass_compiles_for_sm90(L, H, P, G, N, dtype, h0, monkeypatch, tmp_path):
    """Gluon kernels never run under the interpreter, so CI compiles the Gluon state pass instead: its launcher
    runs on CPU tensors with the launch captured, and tests/kernels/sm90.py compiles it for sm_90."""
    from archdsl.kernels.ssd import gluon_chunked as gc
    if not gc.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    t = make(2, L, H, P, G, N, h0=h0, dtype=dtype)
    sizes = _gluon_sizes(t)
    batch, L, H, P, G, N, Q, NC, BN = sizes
    f32 = dict(dtype=torch.float32)
    w, s = torch.zeros(batch, H, NC, Q, **f32), torch.zeros(batch, H, NC, Q, **f32)
    hin, hT = torch.empty(batch, H, NC, N, P, dtype=dtype), torch.empty(batch, H, P, N, **f32)
    _sm90(monkeypatch).compile_captured(gc, "_state_pass_kernel", lambda: gc.state_pass(
        t["x"], t["B"], w, s, t["initial_states"], hin, hT, sizes, pdl=True), tmp_path)


@pytest.mark.parametrize("L, H, P, G, N, opts", [(4000, 4, 64, 1, 128, dict(D=1)),
                                                   (256, 4, 128, 2, 64, dict(D=2, z=True))])
def test_gluon_chunk_scan_compiles_for_sm90(L, H, P, G, N, opts, monkeypatch, tmp_path):
    """CI compiles the Gluon chunk scan for sm_90 as it does the state pass (bf16; D a head's or a channel's, z
    with y before the gate kept)."""
    from archdsl.kernels.ssd import gluon_chunked as gc
    if not gc.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    t = make(2, L, H, P, G, N, dtype=torch.bfloat16, **opts)
    sizes = _gluon_sizes(t)
    batch, L, H, P, G, N, Q, NC, BN = sizes
    f32 = dict(dtype=torch.float32)
    cb16, sc = torch.zeros(batch, NC, G, Q, Q, dtype=torch.float16), torch.ones(batch, NC, G, Q, **f32)
    dtc, s = torch.zeros(batch, H, NC, Q, **f32), torch.zeros(batch, H, NC, Q, **f32)
    hin = torch.empty(batch, H, NC, N, P, dtype=torch.bfloat16)
    y = torch.empty_like(t["x"])
    ypre = torch.empty_like(y) if t["z"] is not None else None
    _sm90(monkeypatch).compile_captured(gc, "_chunk_scan_kernel", lambda: gc.chunk_scan(
        t["x"], t["C"], cb16, sc, dtc, s, hin, t["D"], t["z"], y, ypre, sizes, pdl=True), tmp_path)


def _gluon_sizes(t):
    """The chunked kernels' sizes of t at the GPU's chunk of 128 (the interpreter's would be smaller)."""
    from archdsl.kernels.ssd import triton_ssd_chunked as tc
    return tc._sizes(t["x"], t["B"], t["C"], 128)


def _sm90(monkeypatch):
    """tests/kernels/sm90.py, imported."""
    monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(__file__)))
    import sm90
    return sm90


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_chunked_cb_past_float16_range(dtype, tol, monkeypatch):
    """bf16 inputs keep C·Bᵀ in float16, each row scaled by a power of two: entries past float16's
    largest number (|CB| ~ 9e4 here) neither overflow nor lose bits. Also forced for float16 inputs. x and
    dt are scaled down so that CB ∘ dt' (rounded to the inputs' dtype for the tensor cores) and y stay in
    range; the float64 loop runs on the 16-bit values."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    monkeypatch.setattr(triton_ssd_chunked, "_cb16", lambda x: x.element_size() == 2)
    t = make(2, 50, 4, 16, 2, 16)
    t.update(B=t["B"] * 300, C=t["C"] * 300, x=t["x"] / 300, dt=t["dt"] * 0.1)
    t16 = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    t64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t16.items()}
    want = run(ssd_scan_naive, t64, grads=False)
    assert_close(run(scan_of("chunked"), t16, grads=False), want, tol)
    # without gradients only the float16 copy is written
    y, hT = scan_of("chunked")(t16["x"], t16["dt"], t16["A"], t16["B"], t16["C"], return_final_states=True)
    assert_close([y, hT], want, tol)


@pytest.mark.parametrize("env", ["auto", None])
def test_default_is_chunked_with_and_without_grad(env, monkeypatch):
    """Unset (and auto off CUDA, where nothing is timed): chunked, for a forward alone and with
    gradients, the faster of the two on the H200."""
    from archdsl.kernels.ssd import op
    if env:
        monkeypatch.setenv("ARCHDSL_SSD_IMPL", env)
    else:
        monkeypatch.delenv("ARCHDSL_SSD_IMPL", raising=False)
    t = make(1, 5, 2, 4, 1, 4)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"]) + (None,) * 5 + (False, None)
    assert op._triton_impl(args) == "chunked"
    args = (t["x"].requires_grad_(),) + args[1:]
    assert op._triton_impl(args) == "chunked"


def test_default_is_fused_when_chunked_states_would_be_large(monkeypatch):
    from archdsl.kernels.ssd import op
    monkeypatch.delenv("ARCHDSL_SSD_IMPL", raising=False)
    t = make(1, 40, 2, 4, 1, 4)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"]) + (None,) * 5 + (False, None)
    assert op._triton_impl(args) == "chunked"
    monkeypatch.setattr(op, "CHUNKED_STATE_BYTES", op.chunked_state_bytes(t["x"], t["B"]) - 1)
    assert op._triton_impl(args) == "fused"


@settings(max_examples=20, deadline=None)
@given(shapes, options, st.sampled_from([1, 4, 16]))
def test_chunked_matches_naive(shape, opts, chunk):
    b, L, (H, G), P, N = shape
    t = make(b, L, H, P, G, N, dtype=torch.float64, **opts)
    got = run(lambda *a, **k: ssd_scan_chunked(*a, chunk_size=chunk, **k), t)
    assert_close(got, run(ssd_scan_naive, t), 1e-8)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunked"])
@pytest.mark.parametrize("opts", [dict(), dict(seq=True, h0=True, D=1)])
def test_a_growing_state_is_scanned_as_written(impl, opts):
    """dt·A > 0 (a positive A, or a negative dt without softplus): no model has it, but every path computes the
    same recurrence, h_t = exp(dt_t A) h_t-1 + dt_t x_t B_t, across chunks of 16, with its gradients (no path
    caps a decay at 1)."""
    t = make(1, 40, 2, 5, 1, 4, **opts)
    t["A"] = t["A"].abs() * 0.1
    t["dt"][:, ::3] *= -1  # without softplus (make's default here), some steps shrink: still as written
    assert_matches_float64(lambda *a, **k: scan_of(impl)(*a, chunk_size=16, **k), t)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunked"])
def test_dt_limit_as_mamba_ssm(impl):
    """dt_limit clamps dt' after the softplus, with torch.clamp's gradient: (0, inf), mamba_ssm's default, turns
    the negative dt of a scan without softplus into 0 (no decay, no input), which None leaves as written. Every
    path against the float64 loop, and that loop against the clamp written out."""
    t = make(1, 40, 2, 5, 1, 4, D=1, h0=True, seq=True)
    t["dt"][:, ::3] *= -1
    t["dt_limit"] = (0.0, float("inf"))
    assert_matches_float64(lambda *a, **k: scan_of(impl)(*a, chunk_size=16, **k), t)
    clamped = {**t, "dt": t["dt"].clamp(min=0.0), "dt_limit": None}
    assert_close(run(ssd_scan_naive, t, grads=False), run(ssd_scan_naive, clamped, grads=False), 1e-12)
    ddt = run(ssd_scan_naive, t)[3]  # after y, the final state and dx
    assert torch.all(ddt[:, ::3] == 0) and torch.all(ddt[:, 1::3] != 0)


def test_chunked_compiles_once_for_every_length():
    """The torch path has no loop over chunks, so torch.compile's graph for one length with dynamic shapes
    serves every other: 17 tokens compile a static graph, 51 a dynamic one (torch.compile's own rule), and
    67 (9 chunks of 8, not 7) reuses it. Packed, with an initial state; eager's outputs and final states."""
    from torch._dynamo.testing import CompileCounter
    counter = CompileCounter()
    chunked = lambda *a, **k: ssd_scan_chunked(*a, chunk_size=8, **k)
    scan = torch.compile(chunked, backend=counter)
    frames = []
    for L in (17, 51, 67):
        t = make(2, L, 4, 5, 2, 3, D=1, z=True, h0=True, seq=True, seed=L)
        assert_close(run(scan, t, grads=False), run(chunked, t, grads=False), 1e-6)
        frames.append(counter.frame_count)
    assert frames == [1, 2, 2]


@pytest.mark.parametrize("impl", ["torch", "triton", "triton-chunked"])
def test_split_scan_equals_whole(impl, monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", impl.split("-")[0])
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", "chunked" if impl.endswith("chunked") else "fused")
    t = make(2, 45, 2, 5, 1, 7, D=2, z=True, bias=True, h0=True, limit=True)
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=t["dt_limit"])
    y, h = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=16, z=t["z"],
                    initial_states=t["initial_states"], return_final_states=True, **kw)
    part = lambda k, s: t[k][:, s]
    y1, h1 = ssd_scan(*(part(k, slice(0, 20)) for k in ("x", "dt")), t["A"],
                      *(part(k, slice(0, 20)) for k in ("B", "C")), chunk_size=16, z=part("z", slice(0, 20)),
                      initial_states=t["initial_states"], return_final_states=True, **kw)
    y2, h2 = ssd_scan(*(part(k, slice(20, None)) for k in ("x", "dt")), t["A"],
                      *(part(k, slice(20, None)) for k in ("B", "C")), chunk_size=16,
                      z=part("z", slice(20, None)), initial_states=h1, return_final_states=True, **kw)
    assert_close([torch.cat([y1, y2], 1), h2], [y, h], 1e-5)


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("impl", ["torch", "triton", "triton-chunked"])
def test_step_matches_scan(impl, D, monkeypatch):
    """ssd_step token by token equals the scan; D per head [H] and per channel [H, P] (mamba_ssm's D_has_hdim:
    each head reads its own row)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", impl.split("-")[0])
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", "chunked" if impl.endswith("chunked") else "fused")
    t = make(2, 19, 4, 5, 2, 6, D=D, z=True, bias=True, h0=True, limit=True)
    y, h = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                    dt_softplus=True, initial_states=t["initial_states"], return_final_states=True,
                    dt_limit=t["dt_limit"])
    state = t["initial_states"].clone()
    ys = [ssd_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], D=t["D"],
                   z=t["z"][:, i], dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=t["dt_limit"])
          for i in range(19)]
    assert_close([torch.stack(ys, 1), state], [y, h], 1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_step_takes_a_decay_of_zero_as_the_scan(impl, monkeypatch):
    """A = -inf (A_log = inf) with dt' = 0 (dt_limit's lower bound): the scan floors A at -1e30 (decay exp(0) = 1),
    and so does the step, whose decay was 0 · -inf = NaN, for good in the state."""
    monkeypatch.setenv("ARCHDSL_KERNELS", impl)
    x, dt = torch.randn(1, 2, 1, 1), torch.tensor([[[-1.0], [0.5]]])
    A, B, h0, limit = torch.tensor([-float("inf")]), torch.ones(1, 2, 1, 1), torch.ones(1, 1, 1, 1), (0.0, float("inf"))
    C = B.clone()
    y, h = ssd_scan(x, dt, A, B, C, initial_states=h0, dt_limit=limit, return_final_states=True)
    state = h0.clone()
    ys = [ssd_step(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], dt_limit=limit) for i in range(2)]
    assert torch.isfinite(y).all()
    assert_close([torch.stack(ys, 1), state], [y, h], 1e-6)


def test_the_naive_twin_takes_the_op_s_arguments():
    """ssd_scan_naive has ssd_scan's signature, chunk_size included (positional D after it had been taken for D),
    and takes L = 0 as the op does."""
    t = make(2, 7, 4, 3, 2, 5, D=1)
    want = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 4, t["D"])
    assert_close([ssd_scan_naive(t["x"], t["dt"], t["A"], t["B"], t["C"], 4, t["D"])], [want], 1e-5)
    y, h = ssd_scan_naive(t["x"][:, :0], t["dt"][:, :0], t["A"], t["B"][:, :0], t["C"][:, :0],
                          return_final_states=True)
    assert y.shape == (2, 0, 4, 3) and torch.equal(h, torch.zeros(2, 4, 3, 5, dtype=torch.float64))


@pytest.mark.parametrize("impl", ["naive", "torch", "fused", "chunked"])
@pytest.mark.parametrize("h0", [False, True])
def test_no_tokens(impl, h0, monkeypatch):
    """L = 0, as wkv6 and wkv4 take T = 0: an empty y in x's dtype, in x's graph, the initial states as the final
    ones (a copy, float32; zeros without them) and no sequence's state for return_varlen_states; no kernel launched.
    cu_seqlens (no empty sequence) cannot say L = 0."""
    if impl == "naive":
        monkeypatch.setenv("ARCHDSL_KERNELS", "naive")
    scan = ssd_scan if impl == "naive" else scan_of(impl)
    t = make(2, 0, 4, 3, 2, 5, D=1, z=True, bias=True, h0=h0, seq=True)
    x = t["x"].requires_grad_()
    h = t["initial_states"].requires_grad_() if h0 else None
    y, final, states = scan(x, t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                            dt_softplus=True, initial_states=h, seq_idx=t["seq_idx"], return_final_states=True,
                            return_varlen_states=True)
    assert scan(x, t["dt"], t["A"], t["B"], t["C"]).shape == (2, 0, 4, 3)
    with pytest.raises(ValueError, match="cu_seqlens: expected 0, then increasing offsets, then L=0"):
        scan(x[:1], t["dt"][:1], t["A"], t["B"][:1], t["C"][:1], cu_seqlens=torch.tensor([0, 0]))
    assert y.shape == (2, 0, 4, 3) and y.dtype == x.dtype and states.shape == (0, 4, 3, 5)
    assert final.shape == (2, 4, 3, 5) and final.dtype == torch.float32
    assert torch.equal(final, h if h0 else torch.zeros(2, 4, 3, 5)) and (not h0 or final.data_ptr() != h.data_ptr())
    wf = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    dx, *dh = torch.autograd.grad(y.sum() + (final * wf).sum(), [x] + ([h] if h0 else []))
    assert torch.equal(dx, torch.zeros(2, 0, 4, 3)) and (not h0 or torch.equal(dh[0], wf))


@pytest.mark.parametrize("x_dtype", [torch.float64, torch.float32])
def test_step_of_a_float64_state_is_exact(x_dtype, monkeypatch):
    """A float64 state takes the torch step on the Triton backend, with float32 x too (only x's dtype was read: the
    Triton step computed that in float32 and wrote the rounded state back), as wkv6_step's does: y and the new state
    equal the torch path's to the bit."""
    t = make(2, 1, 4, 3, 2, 5, D=2, z=True, bias=True, h0=True, dtype=torch.float64)
    args = [t["x"][:, 0].to(x_dtype), t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0]]
    out = {}
    for name in ("torch", "triton"):
        monkeypatch.setenv("ARCHDSL_KERNELS", name)
        state = t["initial_states"].clone()
        out[name] = (ssd_step(state, *args, D=t["D"], z=t["z"][:, 0], dt_bias=t["dt_bias"], dt_softplus=True), state)
    assert torch.equal(out["triton"][0], out["torch"][0]) and torch.equal(out["triton"][1], out["torch"][1])


@pytest.mark.parametrize("impl", ["torch", "fused", "chunked"])
def test_seq_idx_isolates_sequences(impl):
    scan = scan_of(impl)
    t = make(1, 30, 2, 4, 1, 5, seq=False)
    seq = torch.tensor([[0] * 12 + [1] * 18])
    y = scan(t["x"], t["dt"], t["A"], t["B"], t["C"], seq_idx=seq)
    y2 = scan(*(t[k][:, 12:] for k in ("x", "dt")), t["A"], *(t[k][:, 12:] for k in ("B", "C")))
    assert_close([y[:, 12:]], [y2], 1e-6)


@pytest.mark.parametrize("impl", ["torch", "fused", "chunked"])
@settings(max_examples=15, deadline=None)
@given(seq=st.lists(st.sampled_from([-3, 0, 1, 2, 7, 2**40]), min_size=23, max_size=23))
@example(seq=[-3, 0, 1, -3, 0, -3, 0, -3, 0, -3, 0, 1, -3, 0, -3, 0, -3, 0, -3, 0, -3, 0, -3])  # a new sequence every token
def test_seq_idx_of_any_integers(impl, seq):
    """Any integers, in any order: the state restarts wherever seq_idx changes and the initial state
    continues only into a first run of 0s (the naive loop's definition, run on seq_idx as given)."""
    t = make(1, 23, 2, 4, 1, 5, h0=True)
    t["seq_idx"] = torch.tensor([seq])
    assert_matches_float64(scan_of(impl), t)


def _each_alone_final(t, seq):
    """Each run of equal seq_idx scanned alone by the float64 loop (a row's first run from initial_states when
    its seq_idx is 0): their final states, row after row [sequences, H, P, N]."""
    states = []
    for b, row in enumerate(seq.tolist()):
        cuts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1]] + [len(row)]
        for a, e in zip(cuts, cuts[1:]):
            h0 = t["initial_states"]
            part = {k: t[k][b:b + 1, a:e].double() for k in ("x", "dt", "B", "C")}
            _, h = ssd_scan_naive(part["x"], part["dt"], t["A"].double(), part["B"], part["C"],
                                  dt_bias=None if t["dt_bias"] is None else t["dt_bias"].double(),
                                  dt_softplus=t["dt_bias"] is not None,
                                  initial_states=h0[b:b + 1].double() if h0 is not None and a == 0 and row[0] == 0
                                  else None, return_final_states=True)
            states.append(h[0])
    return torch.stack(states)


@pytest.mark.parametrize("impl", ["torch", "chunked"])
@settings(max_examples=12, deadline=None)
@given(seq=st.lists(st.sampled_from([-3, 0, 0, 1, 2]), min_size=1, max_size=19), h0=st.booleans(),
       bias=st.booleans())
def test_varlen_states_are_each_sequence_alone(impl, seq, h0, bias):
    """return_varlen_states: every sequence's last state (float64 values, float32 inputs), as each scanned alone;
    the row's last one is the final state, and y is the scan's without it."""
    L = len(seq)
    t = make(2, L, 4, 3, 2, 5, bias=bias, h0=h0)
    seq_idx = torch.tensor([seq, [0] * L])
    kw = dict(dt_bias=t["dt_bias"], dt_softplus=bias, initial_states=t["initial_states"], seq_idx=seq_idx)
    scan = scan_of(impl)
    y, final, states = scan(t["x"], t["dt"], t["A"], t["B"], t["C"], return_final_states=True,
                            return_varlen_states=True, **kw)
    assert_close([states], [_each_alone_final(t, seq_idx)], 2e-5)
    rows_last = torch.tensor([len({*[i for i in range(1, L) if seq[i] != seq[i - 1]]}), -1])
    assert_close([states[rows_last]], [final], 2e-5)
    assert torch.equal(y, scan(t["x"], t["dt"], t["A"], t["B"], t["C"], **kw))


@settings(max_examples=15, deadline=None)
@given(seq=st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=1, max_size=23), h0=st.booleans(),
       chunk=st.sampled_from([1, 2, 3, 5, 16]))
def test_varlen_states_any_chunk(seq, h0, chunk):
    """varlen_states cut into chunks of any size (sequences over many chunks, a last chunk part padding) gives
    each sequence's last state alone, float64."""
    L = len(seq)
    t = make(2, L, 4, 3, 2, 5, bias=True, h0=h0, dtype=torch.float64)
    seq_idx = torch.tensor([seq, sorted(seq)])
    got = varlen_states(t["x"], t["dt"], t["A"], t["B"], seq_idx, t["dt_bias"], DtRule(softplus=True),
                        t["initial_states"], chunk=chunk)
    assert_close([got], [_each_alone_final(t, seq_idx)], 1e-12)


@settings(max_examples=15, deadline=None)
@given(shape=shapes, runs=st.lists(st.integers(1, 19), min_size=1, max_size=6), h0=st.booleans(),
       limit=st.booleans(), data=st.data())
def test_varlen_states_kernels_are_their_twin(shape, runs, h0, limit, data):
    """The Triton kernels (interpreted: pieces of 16 tokens, blocks of 8) == the torch twin in float64: any batch
    (1 too), sequences of any length, several in a block or a piece, one over many, each row's first continuing
    initial_states or not; where an input needs a gradient, the twin itself runs."""
    from archdsl.kernels.ssd.triton_varlen import varlen_states_triton
    b, _, (H, G), P, N = shape
    L = sum(runs)
    t = make(b, L, H, P, G, N, bias=True, h0=h0, limit=limit)
    first = data.draw(st.sampled_from([0, 1]))
    seq_idx = torch.repeat_interleave(torch.arange(len(runs)) + first, torch.tensor(runs))[None].repeat(b, 1)
    rule = DtRule.of(True, t["dt_limit"])
    args = [t[k] for k in ("x", "dt", "A", "B")] + [seq_idx, t["dt_bias"], rule, t["initial_states"]]
    want = varlen_states(*(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
    assert_close([varlen_states_triton(*args)], [want], 2e-5)
    x = t["x"].clone().requires_grad_()
    assert varlen_states_triton(x, *args[1:]).grad_fn is not None


@pytest.mark.parametrize("impl, tol", [("torch", 1e-12), ("chunked", 2e-5)])
def test_varlen_states_gradients_and_cu_seqlens(impl, tol):
    """cu_seqlens (batch 1) stands for seq_idx, with return_varlen_states alone too; gradients of every input
    through the states match the float64 reference's (on the Triton path too, whose kernels give way to the torch
    twin where an input needs a gradient)."""
    t = make(1, 19, 2, 3, 1, 4, bias=True, h0=True, dtype=torch.float64)
    cu = torch.tensor([0, 4, 5, 19])
    seq_idx = torch.tensor([[0] * 4 + [1] + [2] * 14])
    names = ["x", "dt", "A", "B", "dt_bias", "initial_states"]

    def states(fn, **packing):
        leaves = {k: t[k].clone().requires_grad_() for k in names}
        y, h = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], t["C"], dt_bias=leaves["dt_bias"],
                  dt_softplus=True, initial_states=leaves["initial_states"], return_varlen_states=True, **packing)
        w = torch.randn(h.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return [h, *torch.autograd.grad((h * w).sum() + y.sum(), list(leaves.values()))]

    with_cu = states(scan_of(impl), cu_seqlens=cu)
    assert_close(with_cu, states(scan_of(impl), seq_idx=seq_idx), tol)
    assert_close(with_cu, states(scan_of(impl), seq_idx=seq_idx, cu_seqlens=cu), tol)
    assert_close(with_cu, states(scan_of("torch"), seq_idx=seq_idx), tol)
    assert_close(with_cu[:1], [_each_alone_final(t, seq_idx)], tol)


@pytest.mark.parametrize("kw, msg", [
    (dict(return_varlen_states=True), "return_varlen_states: needs seq_idx or cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 3, 8])), "cu_seqlens: expected 0, then increasing offsets, then L=8"),
    (dict(cu_seqlens=torch.tensor([0, 3, 7])), "then L=8"), (dict(cu_seqlens=torch.tensor([0.0, 8.0])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), seq_idx=torch.zeros(1, 8, dtype=torch.long)), "not seq_idx's"),
])
def test_varlen_bad_input(kw, msg):
    t = make(1, 8, 2, 3, 1, 4)
    with pytest.raises(ValueError, match=msg):
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], **kw)
    t2 = make(2, 8, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="for a batch of 1"):
        ssd_scan(t2["x"], t2["dt"], t2["A"], t2["B"], t2["C"], cu_seqlens=torch.tensor([0, 8]))


@pytest.mark.parametrize("bad, msg", [
    (dict(x=torch.zeros(2, 8, 4)), "x"), (dict(dt=torch.zeros(2, 8, 3)), "dt"), (dict(A=torch.zeros(5)), "A"),
    (dict(B=torch.zeros(2, 8, 3, 6), C=torch.zeros(2, 8, 3, 6)), "B"), (dict(C=torch.zeros(2, 8, 2, 5)), "C"),
    (dict(D=torch.zeros(4, 3)), "D"), (dict(z=torch.zeros(2, 8, 4)), "z"), (dict(dt_bias=torch.zeros(3)), "dt_bias"),
    (dict(initial_states=torch.zeros(2, 4, 5, 7)), "initial_states"), (dict(seq_idx=torch.zeros(2, 8)), "seq_idx"),
    (dict(seq_idx=torch.zeros(2, 7, dtype=torch.long)), "seq_idx"), (dict(chunk_size=0), "chunk_size"),
    (dict(keep_states="no"), "keep_states"), (dict(dt_limit=(1.0, 0.5)), "dt_limit"),
    (dict(dt_limit=0.5), "dt_limit"), (dict(dt_limit=(0.0, float("nan"))), "dt_limit"),
    (dict(dt_limit=(True, 2)), "dt_limit"), (dict(dt_limit=(0, 1, 2)), "dt_limit"),
    (dict(dt_limit=(0, 10 ** 400)), "dt_limit"), (dict(dt_limit=(0.0, torch.tensor(1.0))), "dt_limit"),
])
def test_bad_input_raises(bad, msg):
    args = dict(x=torch.zeros(2, 8, 4, 5), dt=torch.zeros(2, 8, 4), A=torch.zeros(4), B=torch.zeros(2, 8, 2, 6),
                C=torch.zeros(2, 8, 2, 6))
    args.update(bad)
    with pytest.raises(ValueError, match=msg):
        ssd_scan(**args)


def test_dt_limit_of_numpy_numbers():
    """numpy's scalars are numbers too (a config read with numpy gives them): float32 as float64."""
    import numpy as np
    t = make(1, 9, 2, 3, 1, 4, bias=True)
    for lo in (np.float32(0.4), np.float64(0.4), 0.4):
        y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], dt_bias=t["dt_bias"], dt_softplus=True,
                     dt_limit=(lo, np.inf))
        torch.testing.assert_close(y, ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], dt_bias=t["dt_bias"],
                                               dt_softplus=True, dt_limit=(float(lo), float("inf"))))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunk_size_of_a_numpy_integer(backend, monkeypatch):
    """numpy's integers are ints too, as mamba_ssm takes them: they were refused as not an int."""
    import numpy as np
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    t = make(1, 9, 2, 3, 1, 4)
    args = t["x"].float(), t["dt"].float(), t["A"].float(), t["B"].float(), t["C"].float()
    torch.testing.assert_close(ssd_scan(*args, chunk_size=np.int64(4)), ssd_scan(*args, chunk_size=4))
    with pytest.raises(ValueError, match="chunk_size: expected a positive int, got"):
        ssd_scan(*args, chunk_size=np.int64(0))


def test_step_traces_with_dt_limit_symbols():
    """torch.compile(dynamic=True) traces dt_limit's floats as symbols: the check passes (lo, hi) in one graph
    (fullgraph; its message was built first, and Dynamo cannot repr a symbol), and (inf, inf) still raises."""
    g = torch.Generator().manual_seed(0)
    state, x, dt = (torch.randn(*s, generator=g) for s in ((2, 4, 3, 5), (2, 4, 3), (2, 4)))
    A, B, C = -torch.rand(4, generator=g), torch.randn(2, 1, 5, generator=g), torch.randn(2, 1, 5, generator=g)
    torch._dynamo.reset()
    traced = torch.compile(ssd_step, backend="eager", dynamic=True, fullgraph=True)
    for limit in ((0.0, float("inf")), (0.1, 2.0)):
        s1, s2 = state.clone(), state.clone()
        torch.testing.assert_close(traced(s1, x, dt, A, B, C, dt_limit=limit),
                                   ssd_step(s2, x, dt, A, B, C, dt_limit=limit))
        torch.testing.assert_close(s1, s2)
    for limit in ((float("inf"),) * 2, (-float("inf"),) * 2, (1.0, 0.5)):  # each after a graph of finite numbers
        with pytest.raises(ValueError, match=r"dt_limit: expected None or \(lo, hi\)"):
            torch.compile(ssd_step, backend="eager", dynamic=True)(state, x, dt, A, B, C, dt_limit=limit)


def test_bad_step_input_raises():
    with pytest.raises(ValueError, match="state"):
        ssd_step(torch.zeros(2, 4, 5), torch.zeros(2, 4, 5), torch.zeros(2, 4), torch.zeros(4),
                 torch.zeros(2, 1, 6), torch.zeros(2, 1, 6))
    with pytest.raises(ValueError, match="C"):
        ssd_step(torch.zeros(2, 4, 5, 6), torch.zeros(2, 4, 5), torch.zeros(2, 4), torch.zeros(4),
                 torch.zeros(2, 1, 6), torch.zeros(2, 2, 6))


def test_torch_path_keeps_float32_digits_under_strong_decay():
    """dt·A summing to thousands within a chunk: the decays come from float64 sums of the log-decays, not from a
    difference of float32 cumulative sums (which left A's gradient 4e-3 off at dt ~ 10)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 512, 4, 8, generator=g, dtype=torch.float64)
    dt = torch.rand(1, 512, 4, generator=g, dtype=torch.float64) * 20
    A = -torch.rand(4, generator=g, dtype=torch.float64) * 8
    B, C = (torch.randn(1, 512, 1, 8, generator=g, dtype=torch.float64) for _ in range(2))
    ins = [t.requires_grad_() for t in (x, dt, A, B, C)]
    want = ssd_scan_naive(*ins)
    gy = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * gy).sum(), ins)
    ins32 = [t.detach().float().requires_grad_() for t in ins]
    got = ssd_scan_chunked(*ins32, chunk_size=256)
    grads = torch.autograd.grad((got * gy.float()).sum(), ins32)
    for a, b in zip((got, *grads), (want, *want_grads)):
        assert ((a.double() - b).norm() / b.norm()).item() < 2e-6


def test_a_chunk_longer_than_the_sequence_is_not_padded_out():
    """The torch path's chunk is at most the sequence's length rounded up to a power of two: a chunk_size of 2^20
    on 3 tokens is one chunk of 4 (padded to 2^20 it would ask for terabytes)."""
    g = torch.Generator().manual_seed(0)
    x, B, C = (torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    dt, A = torch.rand(1, 3, 2, generator=g, dtype=torch.float64), -torch.rand(2, generator=g, dtype=torch.float64)
    y, h = ssd_scan_chunked(x, dt, A, B[:, :, :1], C[:, :, :1], chunk_size=1 << 20, return_final_states=True)
    y2, h2 = ssd_scan_naive(x, dt, A, B[:, :, :1], C[:, :, :1], return_final_states=True)
    torch.testing.assert_close((y, h), (y2, h2))


def test_chunked_refuses_int32_overflow_within_a_chunk():
    """The chunked kernels' offsets within a chunk are int32: a chunk past 2^31 elements is refused
    before any launch (meta tensors: nothing is allocated)."""
    from archdsl.kernels.ssd.triton_ssd_chunked import chunked_fwd
    x = torch.empty(1, 256, 1 << 16, 1 << 9, device="meta")
    B = torch.empty(1, 256, 1, 16, device="meta")
    with pytest.raises(ValueError, match=r"x: token rows of 33554432 elements \(B: 16, C: 16\) over a chunk of 128"):
        chunked_fwd(x, None, None, B, B, None, None, None, DtRule(), None, None, for_backward=False, chunk=128)


# ---------------------------------------------------------------- full sizes on the GPU
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def reference(t, chunk=128):
    """chunked torch in float64 on the GPU: the naive loop is too slow at these sizes."""
    t64 = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()}
    return run(lambda *a, **k: ssd_scan_chunked(*a, chunk_size=chunk, **k), t64)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, tol, L", [(torch.bfloat16, 3e-2, 4096), (torch.float32, 1e-4, 1000),
                                           (torch.bfloat16, 3e-2, 1000), (torch.float16, 1e-2, 4096)])
def test_gpu_full_size(dtype, tol, L, impl, monkeypatch):
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    t = make(4, L, 32, 64, 1, 128, D=1, bias=True, h0=True, z=L == 1000, seq=L == 1000, limit=L == 1000, dtype=dtype,
             device=DEV)
    got = run(ssd_scan, t)
    want = reference(t)
    for name, a, b in zip(["y", "final"] + [k for k in NAMES if t[k] is not None], got, want):
        print(f"{name}: {rel(a, b):.2e}")
    assert_close(got, want, tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl", IMPLS)
def test_gpu_float32_products_follow_torch(impl, monkeypatch):
    """float32 inputs: the products keep float32's digits by default (torch's "highest"), and take TF32 once
    torch.set_float32_matmul_precision("high") allows it (mamba_ssm's precision), output and gradients."""
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    t = make(2, 2048, 8, 64, 1, 128, D=1, bias=True, z=True, seq=True, dtype=torch.float32, device=DEV)
    want = reference(t)
    errors = {}
    for precision in ("highest", "high"):
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            errors[precision] = max(rel(a, b) for a, b in zip(run(ssd_scan, t), want))
        finally:
            torch.set_float32_matmul_precision(old)
    assert errors["highest"] < 2e-5 < errors["high"] < 1e-2, errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-3)])
def test_gpu_varlen_states_full_size(dtype, tol):
    """return_varlen_states on the card, one row of 16384 tokens packing 16 sequences, H32 P64 N128 with
    cu_seqlens, and two rows of 8192 with seq_idx and initial states: the kernel's states against the torch
    twin's in float64 on the same inputs; in float32 also against each sequence scanned alone (its final
    state); the gradients of x through the states finite."""
    t = make(1, 16384, 32, 64, 1, 128, bias=True, dtype=dtype, device=DEV)
    cuts = torch.randperm(16383, generator=torch.Generator().manual_seed(0))[:15].sort().values + 1
    cu = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), 16384)]).to(DEV)
    x = t["x"].requires_grad_()
    _, states = ssd_scan(x, t["dt"], t["A"], t["B"], t["C"], dt_bias=t["dt_bias"], dt_softplus=True,
                         cu_seqlens=cu, return_varlen_states=True)
    seq_idx = torch.repeat_interleave(torch.arange(16, device=DEV), cu.diff())[None]
    twin = varlen_states(*(t[k].detach().double() for k in ("x", "dt", "A", "B")), seq_idx,
                         t["dt_bias"].double(), DtRule(softplus=True))
    assert rel(states, twin) < tol, rel(states, twin)
    if dtype == torch.float32:
        alone = torch.cat([ssd_scan(t["x"][:, a:e].detach(), t["dt"][:, a:e], t["A"], t["B"][:, a:e],
                                    t["C"][:, a:e], dt_bias=t["dt_bias"], dt_softplus=True,
                                    return_final_states=True)[1] for a, e in zip(cu.tolist(), cu.tolist()[1:])])
        assert rel(states, alone) < tol, rel(states, alone)
    assert torch.autograd.grad(states.sum(), x)[0].isfinite().all()
    rows = {k: v.detach().reshape(2, 8192, *v.shape[2:]) for k, v in t.items() if k in ("x", "dt", "B", "C")}
    h0 = torch.randn(2, 32, 64, 128, device=DEV, generator=torch.Generator(DEV).manual_seed(1))
    seq2 = seq_idx.view(2, 8192)
    _, got = ssd_scan(rows["x"], rows["dt"], t["A"], rows["B"], rows["C"], dt_bias=t["dt_bias"], dt_softplus=True,
                      seq_idx=seq2, initial_states=h0, return_varlen_states=True)
    want = varlen_states(*(rows[k].double() for k in ("x", "dt")), t["A"].double(), rows["B"].double(), seq2,
                         t["dt_bias"].double(), DtRule(softplus=True), h0.double())
    assert got.shape[0] == 17 and rel(got, want) < tol, rel(got, want)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl, gluon", [("fused", False), ("chunked", False), ("chunked", True)])
def test_gpu_growing_state(impl, gluon, monkeypatch):
    """dt·A > 0 at full size on the card, bf16, through each path (the Gluon pass and scan included): the
    float64 result, no decay capped at 1. A positive A of ~1e-3 grows the state by ~e^1 over the 4096 steps."""
    from archdsl.kernels.ssd import gluon_chunked as gc
    from archdsl.kernels.ssd import triton_ssd_chunked as tc
    t = make(2, 4096, 8, 64, 1, 128, D=1, bias=True, h0=True, dtype=torch.bfloat16, device=DEV)
    t["A"] = t["A"].abs() * 1e-3
    if impl == "chunked":
        monkeypatch.setattr(tc, "GLUON_PASS", gluon)
        monkeypatch.setattr(tc, "GLUON_SCAN", gluon)
        if gluon:
            monkeypatch.setattr(tc, "TMA_MIN_PROGRAMS", 0)
            sizes = tc._sizes(t["x"], t["B"], t["C"], None)
            assert gc.fits_pass(t["x"], t["B"], None, sizes) and gc.fits_scan(t["x"], t["C"], None, sizes, True)
    got = run(scan_of(impl), t)
    want = reference(t)
    assert want[1].abs().max() > 1.5 * reference({**t, "A": -t["A"]})[1].abs().max()  # it did grow
    assert_close(got, want, 3e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bc", [1e-3, 1e3])
def test_gpu_cb_scaling_bf16(bc):
    """bf16 inputs whose C·Bᵀ lies far outside float16's range (|CB| ~ 1e-6 and ~ 1e6; the chunked
    kernels keep it in float16, each row scaled by a power of two) give the float64 result: an
    unscaled float16 buffer would flush the first to zero and overflow on the second."""
    t = make(2, 4096, 8, 64, 1, 128, D=None, bias=True, dtype=torch.bfloat16, device=DEV)
    t.update(B=t["B"] * bc, C=t["C"] * bc, x=t["x"] / bc ** 2)
    got = run(scan_of("chunked"), t)
    want = reference(t)
    for name, a, b in zip(["y", "final"] + [k for k in NAMES if t[k] is not None], got, want):
        print(f"{name}: {rel(a, b):.2e}")
    assert_close(got, want, 3e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("P", [64, 48])
def test_gpu_chunked_tma_reads(P, monkeypatch):
    """On the card the chunk scan's descriptor reads (TMA) give exactly the pointer reads' outputs and
    gradients, and the float64 result: bf16 with z, seq_idx and a last chunk past the sequence; P 48 reads
    16 columns past each row (zeros)."""
    from archdsl.kernels.ssd import triton_ssd_chunked
    t = make(2, 4000, 8, P, 1, 128, D=1, z=True, bias=True, h0=True, seq=True, dtype=torch.bfloat16, device=DEV)
    monkeypatch.setattr(triton_ssd_chunked, "TMA_MIN_PROGRAMS", 0)
    monkeypatch.setattr(triton_ssd_chunked, "TMA", ())
    want = run(scan_of("chunked"), t)
    monkeypatch.setattr(triton_ssd_chunked, "TMA", ("pair", "in"))
    got = run(scan_of("chunked"), t)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert_close(got, reference(t), 3e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L, H, P, G, N, dtype, opts", [
    (4000, 8, 64, 1, 128, torch.bfloat16, dict(D=1, z=True, bias=True, h0=True)),
    (4096, 32, 64, 1, 128, torch.bfloat16, dict(D=1, bias=True)),
    (1000, 4, 128, 2, 64, torch.float16, dict(bias=True, h0=True)),
    (1000, 4, 128, 2, 64, torch.bfloat16, dict(D=2, bias=True, h0=True)),
    (77, 2, 64, 1, 128, torch.bfloat16, dict(bias=True))])
def test_gpu_gluon_kernels(L, H, P, G, N, dtype, opts, monkeypatch):
    """The Gluon state pass and chunk scan, each alone and both, give the Triton kernels' outputs and gradients
    (to the tensor cores' summation order) and the float64 result: a last chunk past L, h0, z, P 128 in two
    programs, G 2, N 64, one chunk. (The scan is Gluon's for bf16 only.)"""
    from archdsl.kernels.ssd import gluon_chunked as gc
    from archdsl.kernels.ssd import triton_ssd_chunked as tc
    t = make(2, L, H, P, G, N, dtype=dtype, device=DEV, **opts)
    sizes = tc._sizes(t["x"], t["B"], t["C"], None)
    assert gc.fits_pass(t["x"], t["B"], None, sizes)
    assert gc.fits_scan(t["x"], t["C"], None, sizes, tc._cb16(t["x"])) == (dtype == torch.bfloat16)
    monkeypatch.setattr(tc, "TMA_MIN_PROGRAMS", 0)  # as a graph capture or a long sequence takes them
    outs = {}
    for gpass, gscan in [(False, False), (True, False), (False, True), (True, True)]:
        monkeypatch.setattr(tc, "GLUON_PASS", gpass)
        monkeypatch.setattr(tc, "GLUON_SCAN", gscan)
        outs[gpass, gscan] = run(scan_of("chunked"), t)
    want = outs.pop((False, False))
    for key, got in outs.items():
        for name, a, b in zip(["y", "final"] + [k for k in NAMES if t[k] is not None], got, want):
            print(f"Gluon pass, scan {key}: {name} {rel(a, b):.2e} from the Triton kernels")
        assert_close(got, want, 1e-2 if dtype == torch.bfloat16 else 2e-3)
        assert_close(got, reference(t), 3e-2 if dtype == torch.bfloat16 else 1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("P, G, N", [(128, 2, 64), (64, 2, 128), (128, 1, 128), (64, 1, 64)])
def test_gpu_gluon_scan_on_other_heads(P, G, N, monkeypatch):
    """The Gluon chunk scan on heads besides Mamba-2's usual one (P 128 in two programs, G 2, N 64) takes them and
    gives the Triton scan's y and final state."""
    from archdsl.kernels.ssd import gluon_chunked as gc
    from archdsl.kernels.ssd import triton_ssd_chunked as tc
    t = make(2, 1000, 4, P, G, N, D=2, bias=True, h0=True, dtype=torch.bfloat16, device=DEV)
    monkeypatch.setattr(tc, "TMA_MIN_PROGRAMS", 0)
    monkeypatch.setattr(tc, "GLUON_SCAN", False)
    want = run(scan_of("chunked"), t)
    monkeypatch.setattr(tc, "GLUON_SCAN", True)
    taken = []
    fits = gc.fits_scan
    monkeypatch.setattr(gc, "fits_scan", lambda *a: taken.append(fits(*a)) or taken[-1])
    got = run(scan_of("chunked"), t)
    assert taken == [True]
    assert_close(got, want, 1e-2)


@pytest.mark.gpu
@gpu
def test_gpu_captured_scan_takes_descriptors(monkeypatch):
    """A chunk scan too small for descriptors when called (B1 L512 H8: 32 programs) takes them when captured
    into a CUDA graph (the Triton scan's or, on sm_90, the Gluon kernels'), and the replays give the eager call's
    y and final state bit for bit."""
    from archdsl.kernels.ssd import gluon_chunked, triton_ssd_chunked
    made = []
    for module, name in ((triton_ssd_chunked, "_descriptors"), (gluon_chunked, "_desc")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real: made.append(real(*a)) or made[-1])
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", "chunked")
    t = make(1, 512, 8, 64, 1, 128, D=1, z=True, bias=True, dtype=torch.bfloat16, device=DEV)

    def fwd():
        return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                        dt_softplus=True, return_final_states=True)

    want = fwd()
    assert not made  # called plainly: pointer reads
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fwd()  # warm-up off the default stream, as torch's graph recipe does
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = fwd()
    assert made and all(d is not None for d in made)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl", IMPLS)
def test_gpu_step_matches_scan_bf16(impl, monkeypatch):
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    t = make(2, 4096, 8, 64, 1, 128, D=1, z=True, bias=True, dtype=torch.bfloat16, device=DEV)
    y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                 dt_softplus=True)
    state = torch.zeros(2, 8, 64, 128, device=DEV, dtype=torch.float32)
    ys = [ssd_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], D=t["D"],
                   z=t["z"][:, i], dt_bias=t["dt_bias"], dt_softplus=True) for i in range(4096)]
    want = reference(t)[0]
    print("step", rel(torch.stack(ys, 1), want), "scan", rel(y, want))
    assert_close([torch.stack(ys, 1), y], [want, want], 2e-2)


@pytest.mark.big_memory
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("L, grads", [(131072, True), (1 << 20, False)])
def test_gpu_long_sequences(L, grads, impl, monkeypatch):
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    t = make(1, L, 2, 64, 1, 128, D=1, bias=True, h0=True, dtype=torch.bfloat16, device=DEV)
    got = run(ssd_scan, t, grads=grads)
    want = reference(t, chunk=256) if grads else run(
        lambda *a, **k: ssd_scan_chunked(*a, chunk_size=256, **k),
        {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in t.items()},
        grads=False)
    print(L, [f"{rel(a, b):.2e}" for a, b in zip(got, want)])
    assert_close(got, want, 3e-2)
    if not grads:  # the backward still runs and stays finite at 1M tokens
        leaves = [t[k].detach().requires_grad_() for k in ("x", "dt", "A", "B", "C")]
        y = ssd_scan(*leaves, D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(y.float().square().sum(), leaves))


@pytest.mark.skipif(CUDA or os.environ.get("TRITON_INTERPRET") != "1", reason="Triton's interpreter only")
@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_interpreted_bf16_gives_the_float32_result(impl, monkeypatch):
    """Triton's interpreter multiplies bfloat16 dot operands as their raw bits (triton 3.9); archdsl.kernels
    corrects that when imported interpreted (kernels/_interpreter.py, not the tests' conftest), so a user's
    bf16 scan on the CPU is the float32 scan to bf16 rounding (it was ~1e10 off)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    g = torch.Generator().manual_seed(0)
    x, B, C = (torch.randn(1, 40, *s, generator=g) for s in ((2, 16), (1, 16), (1, 16)))
    dt, A = torch.rand(1, 40, 2, generator=g) * 0.5, -torch.rand(2, generator=g)
    want = ssd_scan(x, dt, A, B, C)
    got = ssd_scan(*(t.bfloat16() for t in (x, dt)), A, B.bfloat16(), C.bfloat16())
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()).item() < 2e-2


@pytest.mark.parametrize("impl", ("torch",) + IMPLS)
def test_a_of_minus_infinity_is_a_decay_of_zero(impl):
    """A = -inf (A_log = inf) resets the state at every token, as the float64 loop says: y_t = C_t·(dt_t x_t ⊗ B_t) + D x_t.
    The chunked forms took it as exp(-inf - (-inf)) = NaN; A is now clamped to -1e30, which decays to 0 as well.
    The gradients are finite too (the loop's dt and A gradients are -inf·0 = NaN), A's 0 at the clamped head."""
    t = make(2, 7, 2, 3, 1, 4, D=1, h0=True, bias=True)
    t["A"] = torch.tensor([float("-inf"), -0.5])
    for dtype in (torch.float32, torch.float16):
        t16 = {**t, "A": t["A"].to(dtype)}
        y, h, *grads = run(scan_of(impl), t16)
        want = run(ssd_scan_naive, {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                    for k, v in t16.items()}, grads=False)
        assert_close([y, h], want, 2e-5)
        assert all(torch.isfinite(g).all() for g in grads) and grads[NAMES.index("A")][0] == 0
    x, dt, B, C = t["x"][:, :, :1], t["dt"][:, :, :1].abs() + 0.01, t["B"], t["C"]
    y = scan_of(impl)(x, dt, t["A"][:1], B, C)
    assert_close([y], [torch.einsum("blgn,blgn->bl", C, B)[..., None, None] * dt[..., None] * x], 2e-5)


def test_torch_path_returns_contiguous_copies():
    """The torch path's y and final state are their own contiguous tensors, not views of its chunk-padded
    buffers (a kept final state would keep every chunk's state alive; y.view failed past batch 1)."""
    t = make(2, 5, 2, 3, 1, 4)
    y, h = scan_of("torch")(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=4, return_final_states=True)
    for out in (y, h):
        assert out.is_contiguous() and out.untyped_storage().nbytes() == out.numel() * out.element_size()


def test_fused_final_state_under_decay_past_float32_digits():
    """A chunk whose dt·A sums to ~-3e4: the fused kernel's chunk total is the cumsum's last entry, so the last
    token reaches the final state with weight exp(0) = 1 exactly (a separate tl.sum left it 0.4% off)."""
    g = torch.Generator().manual_seed(0)
    x, B, C = (torch.ones(1, 20, 1, 1) for _ in range(3))
    dt = torch.rand(1, 20, 1, generator=g) * 3 + 0.1
    for impl in IMPLS:
        _, h = scan_of(impl)(x, dt, torch.tensor([-1000.0]), B, C, return_final_states=True)
        torch.testing.assert_close(h.flatten(), dt[0, -1], rtol=1e-6, atol=0)
