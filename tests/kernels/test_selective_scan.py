"""Mamba-1 selective scan: Triton (interpreted on CPU) and chunked torch against the float64 loop."""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archdsl.kernels.selective_scan import selective_scan, selective_state_update
from archdsl.kernels.selective_scan.chunked import selective_scan_chunked
from archdsl.kernels.selective_scan.naive import selective_scan_naive

CUDA = torch.cuda.is_available()
HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@contextmanager
def env(var, value):
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        yield
    finally:
        os.environ.pop(var) if old is None else os.environ.__setitem__(var, old)


def backend(name):
    return env("ARCHDSL_KERNELS", name)


@contextmanager
def threads_backward():
    """ARCHDSL_SCAN_BWD=threads, with the default (groups) backward made to fail so a test cannot pass
    through it."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss

    def refuse(*args):
        raise AssertionError("the groups backward ran instead of the threads one")
    old, tss.ss_bwd_groups = tss.ss_bwd_groups, refuse
    try:
        with env("ARCHDSL_SCAN_BWD", "threads"):
            yield
    finally:
        tss.ss_bwd_groups = old


@pytest.fixture(params=["serial", "segments"] + (["gluon"] if CUDA else []))
def scan_fwd(request, monkeypatch):
    """Each test once per forward (ARCHDSL_SCAN_FWD; the Gluon one on CUDA only); under `segments` and
    `gluon` the serial forward is made to fail, so a test cannot pass through it. The interpreter's
    segments are CK = 8 steps long, so test sizes run several."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", request.param)
    if request.param != "serial":
        def refuse(*args):
            raise AssertionError(f"the serial forward ran instead of the {request.param} one")
        monkeypatch.setattr(tss, "ss_fwd", refuse)
    return request.param


def make(b, D, N, L, *, G=0, z=False, Dskip=False, bias=False, h0=False, dtype=torch.float32, device="cpu", seed=0):
    """G=0: B, C [B, N, L]; G=-1: time-invariant [D, N]; G>0: [B, G, N, L]."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=device)
    ur = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64, device=device)
    bc = (D, N) if G == -1 else (b, N, L) if G == 0 else (b, G, N, L)
    t = dict(u=r(b, D, L), delta=ur(b, D, L) * 0.5 + 0.01, A=-ur(D, N) * 2 - 0.05, B=r(*bc), C=r(*bc),
             D=r(D) if Dskip else None, z=r(b, D, L) if z else None,
             delta_bias=r(D) * 0.5 if bias else None, initial_state=r(b, D, N) if h0 else None)
    t = {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in t.items()}
    t["delta_softplus"] = bool(bias)
    return t


def run(fn, t, grads=True, **kw):
    """Output, last state and gradients (of a fixed random projection) of every tensor input."""
    if not grads:  # no autograd graph: the float64 references at full size would not fit with one
        with torch.no_grad():
            y, hT = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
                       delta_softplus=t["delta_softplus"], return_last_state=True,
                       initial_state=t["initial_state"], **kw)
        return [y, hT]
    leaves = {k: t[k].detach().clone().requires_grad_() for k in NAMES if t[k] is not None}
    a = {**t, **leaves}
    y, hT = fn(a["u"], a["delta"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"], delta_bias=a["delta_bias"],
               delta_softplus=t["delta_softplus"], return_last_state=True, initial_state=a["initial_state"], **kw)
    if not grads:
        return [y, hT]
    g = torch.Generator().manual_seed(1)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)
    wh = torch.randn(hT.shape, generator=g, dtype=torch.float64).to(y.device)
    loss = (y.double() * wy).sum() + (hT.double() * wh).sum()
    return [y, hT] + list(torch.autograd.grad(loss, list(leaves.values())))


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-6)).item()


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert torch.isfinite(a).all(), i
        assert rel(a, b) < tol, (i, rel(a, b))


shapes = dict(b=st.integers(1, 2), D=st.sampled_from([1, 2, 3, 4, 6]), N=st.sampled_from([1, 3, 5, 8]),
              L=st.sampled_from([1, 2, 7, 8, 9, 13, 17]), gsel=st.integers(0, 2),
              z=st.booleans(), Dskip=st.booleans(), bias=st.booleans(), h0=st.booleans())


def _groups(D, gsel):
    divisors = [g for g in range(1, D + 1) if D % g == 0]
    return [0, 1, divisors[-1] if len(divisors) > 1 else 1][gsel]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**shapes)
def test_triton_matches_naive(scan_fwd, b, D, N, L, gsel, z, Dskip, bias, h0):
    t = make(b, D, N, L, G=_groups(D, gsel), z=z, Dskip=Dskip, bias=bias, h0=h0)
    want = run(selective_scan_naive, {**t, **{k: v.double() for k, v in t.items() if torch.is_tensor(v)}})
    with backend("triton"):
        got = run(selective_scan, t)
    assert_close(got, want, 2e-4)


@pytest.mark.parametrize("tile", [("lanes", 4, 4, 1), ("groups", 4, 2, 4, 1, None), ("groups", 2, 4, 8, 1, 96)],
                         ids=["lanes", "groups2", "groups4"])
@settings(max_examples=10, deadline=None)
@given(**shapes)
def test_triton_tile_forward_matches_naive(tile, b, D, N, L, gsel, z, Dskip, bias, h0):
    """The other forward kernels: channels across lanes, and a channel's states split over 2 or 4
    threads (NS larger than the padded N included), with the shared backward."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    t = make(b, D, N, L, G=_groups(D, gsel), z=z, Dskip=Dskip, bias=bias, h0=h0)
    want = run(selective_scan_naive, {**t, **{k: v.double() for k, v in t.items() if torch.is_tensor(v)}})
    tss.FWD_OVERRIDE = tile
    try:
        with backend("triton"):
            got = run(selective_scan, t)
    finally:
        tss.FWD_OVERRIDE = None
    assert_close(got, want, 2e-4)


@settings(max_examples=20, deadline=None)
@given(**{**shapes, "L": st.sampled_from([1, 2, 7, 8, 9, 13, 16, 17, 31])}, lanes_fwd=st.booleans())
def test_triton_threads_backward_matches_naive(b, D, N, L, gsel, z, Dskip, bias, h0, lanes_fwd):
    """ARCHDSL_SCAN_BWD=threads: every gradient, after either forward kernel (both store the same checkpoints)."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    t = make(b, D, N, L, G=_groups(D, gsel), z=z, Dskip=Dskip, bias=bias, h0=h0)
    want = run(selective_scan_naive, {**t, **{k: v.double() for k, v in t.items() if torch.is_tensor(v)}})
    tss.FWD_OVERRIDE = ("lanes", 4, 4, 1) if lanes_fwd else None
    try:
        with backend("triton"), threads_backward():
            got = run(selective_scan, t)
    finally:
        tss.FWD_OVERRIDE = None
    assert_close(got, want, 2e-4)


@pytest.mark.parametrize("bwd", ["groups", "threads"])
@pytest.mark.parametrize("G,scan_fwd", [(-1, "serial"), (0, "serial"), (3, "serial"), (3, "segments")],
                         indirect=["scan_fwd"])
def test_triton_backward_blocks_and_groups(G, scan_fwd, bwd):
    """Several channel blocks per group (dB/dC summed over them), time-invariant B/C, three chunks."""
    t = make(2, 12, 5, 23, G=G, z=True, Dskip=True, bias=True, h0=True)
    want = run(selective_scan_naive, {k: v.double() if torch.is_tensor(v) else v for k, v in t.items()})
    with backend("triton"), (threads_backward() if bwd == "threads" else env("ARCHDSL_SCAN_BWD", "groups")):
        assert_close(run(selective_scan, t), want, 2e-4)


@settings(max_examples=20, deadline=None)
@given(**shapes, chunk=st.sampled_from([1, 3, 4, 16]))
def test_chunked_matches_naive(b, D, N, L, gsel, z, Dskip, bias, h0, chunk):
    t = make(b, D, N, L, G=_groups(D, gsel), z=z, Dskip=Dskip, bias=bias, h0=h0, dtype=torch.float64)
    assert_close(run(selective_scan_chunked, t, chunk_size=chunk), run(selective_scan_naive, t), 1e-10)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_time_invariant_bc(name, scan_fwd):
    t = make(2, 3, 4, 9, G=-1, z=True, Dskip=True)
    want = run(selective_scan_naive, {k: v.double() if torch.is_tensor(v) else v for k, v in t.items()})
    with backend(name):
        assert_close(run(selective_scan, t), want, 2e-4)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_split_scan_continues_from_state(name, scan_fwd):
    t = make(2, 4, 5, 21, G=2, z=True, Dskip=True, bias=True, h0=True)
    cut = 10
    with backend(name):
        y, hT = run(selective_scan, t, grads=False)
        part = lambda k, sl: t[k][..., sl] if t[k] is not None and t[k].dim() >= 3 and k != "initial_state" else t[k]
        first = {**t, **{k: part(k, slice(0, cut)) for k in NAMES}}
        y1, h1 = run(selective_scan, first, grads=False)
        second = {**t, **{k: part(k, slice(cut, None)) for k in NAMES}, "initial_state": h1}
        y2, h2 = run(selective_scan, second, grads=False)
    assert_close([torch.cat([y1, y2], -1), h2], [y, hT], 1e-5)


def _bc(layout, b, D, N, L, seed):
    """B or C in one of its layouts: -1 time-invariant [D, N], 0 shared [b, N, L], G > 0 grouped [b, G, N, L]."""
    g = torch.Generator().manual_seed(seed)
    shape = (D, N) if layout == -1 else (b, N, L) if layout == 0 else (b, layout, N, L)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


LAYOUTS = st.sampled_from([-1, 0, 1, 2, 6])


@settings(max_examples=25, deadline=None)
@given(lb=LAYOUTS, lc=LAYOUTS, L=st.sampled_from([1, 5, 9]), chunk=st.sampled_from([1, 4, 16]))
def test_b_and_c_in_different_layouts(lb, lc, L, chunk):
    """B and C each in its own layout (time-invariant, shared, grouped by any G dividing D): the chunked path
    == the naive loop, outputs, last state and gradients."""
    t = make(2, 6, 3, L, z=True, Dskip=True, bias=True, h0=True, dtype=torch.float64)
    t["B"], t["C"] = _bc(lb, 2, 6, 3, L, 1), _bc(lc, 2, 6, 3, L, 2)
    assert_close(run(selective_scan_chunked, t, chunk_size=chunk), run(selective_scan_naive, t), 1e-10)


@pytest.mark.parametrize("lb, lc", [(0, 2), (1, 2), (2, 3), (-1, 0), (3, -1)])
def test_triton_b_and_c_in_different_layouts(lb, lc, scan_fwd):
    t = make(1, 6, 3, 9, z=True, bias=True, h0=True)
    t["B"], t["C"] = (_bc(lay, 1, 6, 3, 9, i).float() for i, lay in ((1, lb), (2, lc)))
    want = run(selective_scan_naive, {k: v.double() if torch.is_tensor(v) else v for k, v in t.items()})
    with backend("triton"):
        assert_close(run(selective_scan, t), want, 2e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA, reason="needs CUDA")])])
@pytest.mark.parametrize("name", ["triton", "torch"])
@pytest.mark.parametrize("gb, gc", [(0, 4), (4, 0), (2, 4), (4, 2), (3, 2)])
def test_step_with_b_and_c_of_different_groups(name, gb, gc, device):
    """selective_state_update with B and C grouped differently (B [b, N] or [b, G_B, N], C [b, G_C, N]): each
    channel reads its own group of each, as the scan does."""
    t = make(2, 12, 5, 4, z=True, Dskip=True, bias=True, h0=True, device=device)
    t["B"], t["C"] = (_bc(lay, 2, 12, 5, 4, i).float().to(device) for i, lay in ((1, gb), (2, gc)))
    y, hT = run(selective_scan_naive, {k: v.double() if torch.is_tensor(v) else v for k, v in t.items()},
                grads=False)
    with backend(name):
        state = t["initial_state"].clone()
        ys = [selective_state_update(state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i],
                                     t["C"][..., i], D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"],
                                     dt_softplus=True) for i in range(4)]
    assert_close([torch.stack(ys, -1), state], [y, hT], 1e-5)


@pytest.mark.parametrize("name", ["triton", "torch"])
@pytest.mark.parametrize("G", [0, 2])
def test_step_matches_scan(name, G, scan_fwd):
    t = make(2, 4, 3, 6, G=G, z=True, Dskip=True, bias=True, h0=True)
    with backend(name):
        y, hT = run(selective_scan, t, grads=False)
        state = t["initial_state"].clone()
        ys = [selective_state_update(state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i],
                                     t["C"][..., i], D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"],
                                     dt_softplus=True) for i in range(6)]
    assert_close([torch.stack(ys, -1), state], [y, hT], 1e-5)


@pytest.mark.parametrize("L", [1, 13, 31])
def test_segments_match_one_segment_and_serial(L):
    """S segments of CK steps == one segment of all L steps == the serial forward: outputs, last
    state and the backward's checkpoints, with every option on."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    from archdsl.kernels.selective_scan.triton_selective_scan_segments import ss_fwd_segments
    t = make(2, 6, 5, L, G=3, z=True, Dskip=True, bias=True, h0=True)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], t["initial_state"], True, True)
    with backend("triton"):
        many = ss_fwd_segments(*args, seg=tss.CK)
        one = ss_fwd_segments(*args, seg=-(-L // tss.CK) * tss.CK)
        serial = tss.ss_fwd(*args)
    assert -(-L // tss.CK) == many[2].shape[2]  # L=31: four segments, four checkpoints
    assert_close(many, one, 1e-5)
    assert_close(many, serial, 1e-5)


def test_bad_input():
    t = make(2, 4, 3, 5)
    u, dl, A, B, C = (t[k] for k in ("u", "delta", "A", "B", "C"))
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, dl[:, :, :4], A, B, C)
    with pytest.raises(ValueError, match="A"):
        selective_scan(u, dl, A[:3], B, C)
    with pytest.raises(ValueError, match="B"):
        selective_scan(u, dl, A, B[:, :2], C)
    with pytest.raises(ValueError, match="groups"):
        selective_scan(u, dl, A, torch.randn(2, 3, 3, 5), C)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(u, dl, A, B, C, initial_state=torch.randn(2, 4, 2))
    with pytest.raises(ValueError, match="C"):
        selective_state_update(torch.zeros(2, 4, 3), u[..., 0], dl[..., 0], A, B[..., 0], C[:, :2, 0])
    with pytest.raises(ValueError, match="x"):
        selective_state_update(torch.zeros(2, 4, 3), u[:1, :, 0], dl[..., 0], A, B[..., 0], C[..., 0])
    with pytest.raises(ValueError, match="B: groups G=0 must divide D=4"):
        selective_state_update(torch.zeros(2, 4, 3), u[..., 0], dl[..., 0], A, torch.zeros(2, 0, 3), C[..., 0])
    with pytest.raises(ValueError, match="C: groups G=0 must divide D=4"):
        selective_scan(u, dl, A, B, torch.zeros(2, 0, 3, 5))


def test_no_channels_with_b_and_c_constant_in_time():
    """D = 0 with B, C [D, N]: their groups are the channels, none; empty outputs, as the naive loop gives."""
    args = (torch.randn(1, 0, 4), torch.rand(1, 0, 4), -torch.rand(0, 2), torch.randn(0, 2), torch.randn(0, 2))
    for got, want in zip(selective_scan(*args, return_last_state=True),
                         selective_scan_naive(*args, return_last_state=True)):
        assert got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("G", [-1, 0, 2])
def test_no_channels_outputs_are_in_the_graph(name, G):
    """D = 0 (the Triton path hands empty work to torch): out and the last state are in autograd's graph, as the
    naive loop's, so a loss of them has its backward, and every input's gradient is the loop's (out was a fresh
    tensor, cut off from the inputs: autograd refused its backward)."""
    t = make(2, 0, 3, 5, G=G, z=True, Dskip=True, bias=True, h0=True)
    with backend(name):
        got = run(selective_scan, t)
    assert_close(got, run(selective_scan_naive, t), 1e-12)


@pytest.mark.parametrize("name", ["naive", "torch", "triton"])
@pytest.mark.parametrize("h0", [False, True])
def test_no_steps(name, h0):
    """L = 0, as wkv6 and wkv4 take T = 0: an empty out in u's dtype, in u's graph, and the initial state as the last
    one (a copy, float32; zeros without one), with seq_idx too; no kernel launched."""
    t = make(2, 3, 4, 0, z=True, Dskip=True, bias=True, h0=h0)
    u = t["u"].requires_grad_()
    h = t["initial_state"].requires_grad_() if h0 else None
    with backend(name):
        y, last = selective_scan(u, t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                 delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True,
                                 initial_state=h, seq_idx=torch.zeros(2, 0, dtype=torch.int32))
        assert selective_scan(u, t["delta"], t["A"], t["B"], t["C"]).shape == (2, 3, 0)
    assert y.shape == (2, 3, 0) and y.dtype == u.dtype and last.shape == (2, 3, 4) and last.dtype == torch.float32
    assert torch.equal(last, h if h0 else torch.zeros(2, 3, 4)) and (not h0 or last.data_ptr() != h.data_ptr())
    wl = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    du, *dh = torch.autograd.grad(y.sum() + (last * wl).sum(), [u] + ([h] if h0 else []))
    assert torch.equal(du, torch.zeros(2, 3, 0)) and (not h0 or torch.equal(dh[0], wl))


@pytest.mark.parametrize("heads", [False, True])
def test_step_of_a_float64_state_is_exact(heads):
    """A float64 state (with float64 or float32 x) takes the torch step on the Triton backend too, as wkv6_step's
    does: y and the new state equal the torch path's to the bit (the Triton step computed in float32 and wrote the
    rounded state back), in the head form as well."""
    t = make(2, 6, 3, 1, z=True, Dskip=True, bias=True, h0=True, dtype=torch.float64)
    args = [t["u"][..., 0], t["delta"][..., 0], t["A"], t["B"][..., 0], t["C"][..., 0], t["D"], t["z"][..., 0],
            t["delta_bias"]]
    state0 = t["initial_state"]
    if heads:  # 2 heads of 3 channels, one group
        args = [a.view(2, 2, 3) for a in args[:2]] + [args[2].view(2, 3, 3), args[3][:, None], args[4][:, None],
                                                      args[5].view(2, 3), args[6].view(2, 2, 3), args[7].view(2, 3)]
        state0 = state0.view(2, 2, 3, 3)
    for x in (args[0], args[0].float()):
        out = {}
        for name in ("torch", "triton"):
            state = state0.clone()
            with backend(name):
                out[name] = (selective_state_update(state, x, *args[1:], dt_softplus=True), state)
        assert torch.equal(out["triton"][0], out["torch"][0]) and torch.equal(out["triton"][1], out["torch"][1])


# ------------------------------------------------------------------ seq_idx: packed sequences
SEQ = st.lists(st.sampled_from([-3, 0, 0, 1, 2, 7]), min_size=1, max_size=19)


def _double(t):
    return {k: v.double() if torch.is_tensor(v) else v for k, v in t.items()}


@settings(max_examples=25, deadline=None)
@given(seq=SEQ, gsel=st.integers(0, 2), h0=st.booleans())
def test_seq_idx_is_each_sequence_alone(seq, gsel, h0):
    """The naive loop with seq_idx, in float64, equals each run of equal seq_idx scanned alone from a zero state
    (the first run from initial_state when its seq_idx is 0); the last state is the last run's."""
    L = len(seq)
    t = _double(make(2, 4, 3, L, G=_groups(4, gsel), z=True, Dskip=True, bias=True, h0=h0))
    seq_idx = torch.tensor([seq, [0] * L])
    y, hT = run(selective_scan_naive, t, grads=False, seq_idx=seq_idx)
    cuts = [0] + [i for i in range(1, L) if seq[i] != seq[i - 1]] + [L]
    for a, b in zip(cuts, cuts[1:]):
        part = {k: v[:1, ..., a:b] if torch.is_tensor(v) and v.dim() >= 3 and k != "initial_state" else v
                for k, v in t.items()}
        part["initial_state"] = t["initial_state"][:1] if h0 and a == 0 and seq[0] == 0 else None
        ya, ha = run(selective_scan_naive, part, grads=False)
        assert_close([ya], [y[:1, :, a:b]], 1e-12)
    assert_close([ha], [hT[:1]], 1e-12)
    assert_close([y[1:], hT[1:]], run(selective_scan_naive, {k: v[1:] if torch.is_tensor(v) and v.dim() >= 3 and
                                                              k != "delta_bias" else v for k, v in t.items()},
                                      grads=False), 1e-12)


@pytest.mark.parametrize("impl", ["torch", "triton groups", "triton threads", "triton lanes"])
@settings(max_examples=12, deadline=None)
@given(seq=SEQ, gsel=st.integers(0, 2), h0=st.booleans(), z=st.booleans())
def test_seq_idx_matches_naive(impl, seq, gsel, h0, z):
    """Chunked torch and the interpreted Triton kernels (serial groups or lanes forward, groups or threads
    backward) with seq_idx against the float64 loop: output, last state and every gradient. The Triton
    interpreter's checkpoint chunks are 8 steps, so a restart falls inside, on and across their edges."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    L = len(seq)
    t = make(2, 4, 3, L, G=_groups(4, gsel), z=z, Dskip=True, bias=True, h0=h0)
    seq_idx = torch.tensor([seq, list(range(L))])  # the second row restarts at every token
    want = run(selective_scan_naive, _double(t), seq_idx=seq_idx)
    tss.FWD_OVERRIDE = ("lanes", 4, 4, 1) if impl == "triton lanes" else None
    try:
        with backend(impl.split()[0]), env("ARCHDSL_SCAN_BWD", "threads" if impl == "triton threads" else "groups"):
            got = run(selective_scan, t, seq_idx=seq_idx)
    finally:
        tss.FWD_OVERRIDE = None
    assert_close(got, want, 2e-4)


def test_seq_idx_bad_input_and_forced_kernels():
    t = make(2, 4, 3, 5)
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="seq_idx"):
        selective_scan(*args, seq_idx=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_idx"):
        selective_scan(*args, seq_idx=torch.zeros(2, 5))
    with backend("triton"), env("ARCHDSL_SCAN_FWD", "segments"), pytest.raises(ValueError, match="segments.*seq_idx"):
        selective_scan(*args, seq_idx=torch.zeros(2, 5, dtype=torch.long))


def test_an_unknown_backward_choice_is_refused():
    """ARCHDSL_SCAN_BWD other than gluon, groups or threads (a typo) is a ValueError before the forward runs,
    not the default backward run unsaid; without a gradient wanted the variable is not read."""
    t = make(2, 4, 3, 5)
    args = [t[k].float().requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    with backend("triton"), env("ARCHDSL_SCAN_BWD", "thread"):
        with pytest.raises(ValueError, match="ARCHDSL_SCAN_BWD='thread': expected one of gluon, groups, threads"):
            selective_scan(*args)
        with torch.no_grad():
            selective_scan(*args)


@pytest.mark.parametrize("seq", [False, True])
def test_an_unknown_forward_choice_names_every_forward(seq):
    """ARCHDSL_SCAN_FWD other than gluon, serial, segments or auto is a ValueError listing all four, gluon with its
    need for CUDA, off CUDA and with seq_idx too (it listed only the forwards the call could run: serial, segments,
    auto on the CPU)."""
    t = make(2, 4, 3, 5)
    args = [t[k].float() for k in ("u", "delta", "A", "B", "C")]
    seq_idx = torch.zeros(2, 5, dtype=torch.long) if seq else None
    with backend("triton"), env("ARCHDSL_SCAN_FWD", "bogus"), pytest.raises(
            ValueError, match=r"ARCHDSL_SCAN_FWD='bogus': expected one of gluon \(CUDA only\), serial, segments, auto"):
        selective_scan(*args, seq_idx=seq_idx)


@pytest.mark.parametrize("L", [1, 31, 32, 33, 100])
def test_start_words_hold_one_bit_a_step(L):
    """The Gluon kernels read sequence starts as bits: bit t % 32 of word t // 32, one spare word a row."""
    from archdsl.kernels.selective_scan.gluon_selective_scan import start_words
    starts = torch.rand(3, L, generator=torch.Generator().manual_seed(L)) < 0.4
    words = start_words(starts.to(torch.int8), L)
    assert words.dtype == torch.int32 and words.shape == (3, -(-L // 32) + 1)
    bits = (words.long()[:, :, None] >> torch.arange(32)) & 1
    assert torch.equal(bits.view(3, -1)[:, :L].bool(), starts) and not bits.view(3, -1)[:, L:].any()


# ------------------------------------------------------------------ GPU, full size (H200)
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _ref64(t, grads, chunk=16, seq_idx=None):
    """The float64 chunked scan of case t. Without gradients a batch row at a time, each made float64 alone, as
    xdist workers share one card: at B4 D5120 L4096 (on the CPU) the whole batch's peak above its inputs is 4.1 GB,
    a row at a time 0.1 GB."""
    if grads:
        return run(selective_scan_chunked, _double(t), grads=True, chunk_size=chunk, seq_idx=seq_idx)
    batched = {"u", "delta", "z", "initial_state"} | ({"B", "C"} if t["B"].dim() > 2 else set())
    rows = [run(selective_scan_chunked, {k: v[i:i + 1].double() if k in batched and v is not None else
                                         v.double() if torch.is_tensor(v) else v for k, v in t.items()},
                grads=False, chunk_size=chunk, seq_idx=None if seq_idx is None else seq_idx[i:i + 1])
            for i in range(t["u"].shape[0])]
    return [torch.cat(parts) for parts in zip(*rows)]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("L", [4096, 16384])
def test_gpu_full_size_forward(dtype, tol, L, scan_fwd):
    """A Mamba-1 layer of mamba-2.8b: B=4, D=5120, N=16."""
    t = make(4, 5120, 16, L, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    assert_close(run(selective_scan, t, grads=False), _ref64(t, grads=False), tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("L, D, grads", [(4096, 5120, False), (16383, 5120, False), (2048, 768, True),
                                         (1023, 5120, True)])
@pytest.mark.parametrize("kernels", ["default", "triton"])
def test_gpu_seq_idx(kernels, dtype, tol, L, D, grads, monkeypatch):
    """Packed sequences on the card, the default kernels (Gluon where they take the case) or the Triton ones
    (serial forward, groups backward): a row cut into 13 sequences of random lengths beside a row of one,
    against the float64 chunked path with the same seq_idx; at full size the forward, at a Mamba-130m layer's
    width and at D5120 (persistent programs) every gradient too; odd L included."""
    if kernels == "triton":
        monkeypatch.setenv("ARCHDSL_SCAN_FWD", "serial")
        monkeypatch.setenv("ARCHDSL_SCAN_BWD", "groups")
    t = make(2, D, 16, L, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    cuts = torch.randperm(L - 1, generator=torch.Generator().manual_seed(0))[:12] + 1
    seq_idx = torch.zeros(2, L, dtype=torch.long)
    seq_idx[0, cuts] = 1
    seq_idx = seq_idx.cumsum(1).cuda()
    ref = _ref64(t, grads, seq_idx=seq_idx)
    assert_close(run(selective_scan, t, grads=grads, seq_idx=seq_idx), ref, tol)


def test_step_reads_rows_of_wider_tensors():
    """x, dt, z, B and C sliced from wider projections (rows at a stride, the last dimension contiguous), as a
    Mamba layer's decode step has them: read in place at their strides, the same y and state as contiguous
    copies give."""
    g = torch.Generator().manual_seed(0)
    batch, dim, N = 3, 40, 16
    xz, dt_w, x_dbl = (torch.randn(batch, w, generator=g) for w in (2 * dim, dim + 7, 5 + 2 * N))
    x, z, dt, B, C = xz[:, :dim], xz[:, dim:], dt_w[:, 7:], x_dbl[:, 5:5 + N], x_dbl[:, 5 + N:]
    A, D, bias = -torch.rand(dim, N, generator=g), torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    state = torch.randn(batch, dim, N, generator=g)
    got_state, want_state = state.clone(), state.clone()
    with backend("triton"):
        got = selective_state_update(got_state, x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True)
        want = selective_state_update(want_state, *(t.contiguous() for t in (x, dt, A, B, C)), D=D, z=z.contiguous(),
                                      dt_bias=bias, dt_softplus=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_state, want_state, rtol=0, atol=0)


@pytest.mark.skipif(CUDA, reason="the Gluon forward runs on CUDA")
def test_gluon_forward_off_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", "gluon")
    t = make(1, 4, 2, 5)
    with backend("triton"), pytest.raises(ValueError, match="ARCHDSL_SCAN_FWD=gluon: .* CUDA tensors only"):
        run(selective_scan, t, grads=False)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("L, D, N", [(4096, 5120, 16), (1000, 5100, 16), (333, 200, 5), (70, 48, 1), (300, 64, 32),
                                     (4093, 256, 16), (1001, 200, 8)])
def test_gpu_gluon_forward(dtype, tol, L, D, N, monkeypatch):
    """The Gluon forward (ARCHDSL_SCAN_FWD=gluon) against float64: a Mamba-1 layer of mamba-2.8b (no masks);
    L, D off its tile (masked) and N below, off and at the top of its power-of-two padding; L not a multiple
    of 8 with 128 channels or more (shifted tiles); then gradients through its checkpoints, B/C in two
    groups."""
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", "gluon")
    t = make(4, D, N, L, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    assert_close(run(selective_scan, t, grads=False), _ref64(t, grads=False), tol)
    del t
    t = make(2, 512, N, 2048, G=2, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), 3e-2 if dtype == torch.bfloat16 else tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L, D, N, store_ck", [(4096, 512, 16, True), (1000, 200, 16, True), (333, 50, 5, False),
                                              (197, 64, 8, True), (1001, 300, 16, True)])
@pytest.mark.parametrize("programs", ["a chain each", "a third of the chains"])
def test_gpu_gluon_forward_segments_change_nothing(L, D, N, store_ck, programs, monkeypatch):
    """The forward's chains cut into 64-step units taken by persistent programs (the default where one program a
    chain would load the schedulers unevenly; forced here), as many as the chains or fewer (as `_programs`
    gives where the chains are many): y, the last state and the checkpoints are bit for bit those of one
    program a chain, with an initial state, masked channels and L off the tile."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan.triton_selective_scan import CK
    t = make(4, D, N, L, z=True, Dskip=True, bias=True, h0=True, dtype=torch.bfloat16, device="cuda")
    args = (t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None], t["D"].float(), t["z"],
            t["delta_bias"].float(), t["initial_state"], True, store_ck)
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: False)
    whole = gss.ss_fwd_gluon(*args, CK=CK)
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: True)
    monkeypatch.setattr(gss, "MIN_SEG", 64)
    monkeypatch.setattr(gss, "UNITS", 10**6)
    if programs != "a chain each":
        monkeypatch.setattr(gss, "_programs", lambda nchain, sms: max(1, nchain // 3))
    assert _same_outputs(gss.ss_fwd_gluon(*args, CK=CK), whole)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L, D, N, G, h0", [
    (4093, 512, 16, 1, False), (1001, 200, 16, 1, True), (4094, 512, 8, 2, True), (333, 1000, 5, 1, True),
    (100, 128, 32, 1, False), (7, 256, 16, 1, True), (2047, 256, 1, 1, False), (63, 256, 16, 1, True)])
@pytest.mark.parametrize("persist", [False, True])
@pytest.mark.parametrize("store_ck", [False, True])
def test_gpu_gluon_forward_shifted_tiles_change_nothing(L, D, N, G, h0, persist, store_ck, monkeypatch):
    """Where L is not a multiple of 8, the forward's programs take channels 8 apart and shift their tiles onto
    16-byte boundaries (`_shift`): y, the last state and the checkpoints (each stored from inside its tile)
    are bit for bit those of the tiles laid along the steps, with masked channels, an initial state, B/C in
    groups, and persistent programs. At L 63 a chain is 5 tiles of 16 steps by the longest row, cut into 2
    units of 4, and the rows that start 0 or 1 step past 8 · k (4 tiles) have an empty last unit."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    assert gss._shift(2, D, L, max(G, 1), 32 // min(2, N))
    _gluon_forward_same_either_way(monkeypatch, "_shift", gss._shift, L, D, N, G, h0, store_ck, persist)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L, D, N, G, h0", [
    (4096, 512, 16, 1, True), (1000, 200, 5, 1, False), (4093, 256, 16, 1, True), (2048, 512, 32, 2, False),
    (1000, 64, 1, 1, True)])
@pytest.mark.parametrize("store_ck", [False, True])
@pytest.mark.parametrize("persist", [False, True])
def test_gpu_gluon_forward_async_copies_change_nothing(L, D, N, G, h0, store_ck, persist, monkeypatch):
    """u, delta, z and B/C copied into shared memory asynchronously (`_async_io`, wherever rows are aligned or
    shifted onto 16-byte boundaries) or through registers: y, the last state and the checkpoints are bit for
    bit the same, with masked channels, an initial state, B/C in groups, and persistent programs."""
    wherever = lambda tensors, ql, shift: ql >= 8 or shift  # noqa: E731
    _gluon_forward_same_either_way(monkeypatch, "_async_io", wherever, L, D, N, G, h0, store_ck, persist)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L", [2047, 4093])
def test_gpu_gluon_forward_default_units_change_nothing(L, monkeypatch):
    """The launcher's own rules at B4 D5120 N16 (a layer of mamba-2.8b) for an H200's 132 SMs, on any card:
    persistent programs, fewer than the chains, units of MIN_SEG steps, shifted tiles. At L 2047 the rows that
    start 0 or 1 step past 8 · k end with an empty unit. y, the last state and the checkpoints: bit for bit
    those of one program a chain."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan.triton_selective_scan import CK
    monkeypatch.setattr(gss, "_sms", lambda device: 132)
    t = make(4, 5120, 16, L, z=True, Dskip=True, bias=True, h0=True, dtype=torch.bfloat16, device="cuda")
    args = (t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None], t["D"].float(), t["z"],
            t["delta_bias"].float(), t["initial_state"], True, True)
    assert gss._persist(4 * 5120 // 16, 132) and gss._programs(4 * 5120 // 16, 132) < 4 * 5120 // 16
    assert gss._shift(4, 5120, L, 1, 16)
    cut = gss.ss_fwd_gluon(*args, CK=CK)
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: False)
    assert _same_outputs(cut, gss.ss_fwd_gluon(*args, CK=CK))


def _same_outputs(got, want) -> bool:
    """A forward's outputs (y, last state, checkpoints or None) bit for bit the same."""
    return all(g is w if w is None else torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _gluon_forward_same_either_way(monkeypatch, rule, on, L, D, N, G, h0, store_ck, persist):
    """The Gluon forward's outputs (y, last state, checkpoints) with its launcher's `rule` replaced by `on`, then
    by one that says no, bit for bit the same: B2 bf16 with z, D and delta_bias; B/C in G groups (0: one);
    persistent programs in 64-step units or one program a chain."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan.triton_selective_scan import CK
    t = make(2, D, N, L, G=G, z=True, Dskip=True, bias=True, h0=h0, dtype=torch.bfloat16, device="cuda")
    B4, C4 = (t[k] if G else t[k][:, None] for k in ("B", "C"))
    args = (t["u"], t["delta"], t["A"].float(), B4, C4, t["D"].float(), t["z"], t["delta_bias"].float(),
            t["initial_state"], True, store_ck)
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: persist)
    monkeypatch.setattr(gss, "MIN_SEG", 64)
    monkeypatch.setattr(gss, rule, on)
    yes = gss.ss_fwd_gluon(*args, CK=CK)
    monkeypatch.setattr(gss, rule, lambda *a: False)
    assert _same_outputs(yes, gss.ss_fwd_gluon(*args, CK=CK))


@pytest.mark.gpu
@gpu
def test_gpu_gluon_forward_is_the_default_where_it_fits(monkeypatch):
    """Unset ARCHDSL_SCAN_FWD on CUDA: the Gluon forward where it takes the case (G = 1, N = 16), the Triton
    one where it does not (8 channels a B/C group, time-invariant B and C, N = 64); both right. Forcing
    the Gluon one on a case it does not take is a clear error."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.delenv("ARCHDSL_SCAN_FWD", raising=False)
    ran = []
    for name, mod in (("gluon", gss), ("serial", tss)):
        real = getattr(mod, "ss_fwd_gluon" if name == "gluon" else "ss_fwd")
        monkeypatch.setattr(mod, real.__name__, lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    for kw, want in ((dict(N=16, G=0), "gluon"), (dict(N=16, G=8), "serial"), (dict(N=16, G=-1), "serial"),
                     (dict(N=64, G=0), "serial")):
        ran.clear()
        t = make(2, 64, kw["N"], 100, G=kw["G"], z=True, Dskip=True, bias=True, h0=True, device="cuda")
        assert_close(run(selective_scan, t, grads=False), _ref64(t, grads=False), 1e-4)
        assert ran == [want], (kw, ran)
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", "gluon")
    with pytest.raises(ValueError, match="Gluon forward needs a multiple of 16 channels a B/C group \\(got 8\\)"):
        run(selective_scan, make(2, 64, 16, 100, G=8, device="cuda"), grads=False)


@pytest.mark.skipif(CUDA, reason="the GPU runs the Gluon forward itself")
@pytest.mark.parametrize("L, D, N, opts, store_ck, persist", [
    (4096, 64, 16, dict(z=True, Dskip=True, bias=True), True, False), (1000, 50, 5, dict(h0=True), False, False),
    (40, 32, 1, dict(z=True), False, False), (64, 32, 32, dict(bias=True), True, False),
    (4096, 64, 16, dict(z=True, Dskip=True, bias=True, h0=True), True, True), (1000, 50, 5, dict(h0=True), False, True),
    (999, 64, 16, dict(z=True), False, False), (999, 256, 16, dict(z=True, Dskip=True, bias=True), False, False),
    (998, 200, 5, dict(h0=True), False, True), (4096, 64, 16, dict(z=True), False, True),
    (999, 256, 16, dict(z=True, Dskip=True, bias=True), True, True)],
    ids=["even-train", "masked", "N1", "N32-train", "persistent-train", "persistent-masked", "odd-L", "shifted",
         "shifted-persistent", "persistent-inference", "shifted-train"])
def test_gluon_forward_compiles_for_sm90(L, D, N, opts, store_ck, persist, monkeypatch, tmp_path):
    """Gluon kernels never run under the interpreter, so CI compiles them instead: the Gluon forward's
    launcher runs on CPU tensors with its kernel launch captured, and each launch is compiled for sm_90
    by tests/kernels/sm90.py (bf16 inputs, as a model calls it); one program a chain, or persistent programs
    taking units of chains; tiles copied asynchronously (`ASYNC`, under the register cap FWD_MAXNREG where
    N <= 16) or through registers (odd L with few channels, or with checkpoints)."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: persist)

    def call(gss, t):
        gss.ss_fwd_gluon(t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None], t["D"], t["z"],
                         t["delta_bias"], t["initial_state"], True, store_ck, CK=64)
    _compile_gluon_launch("_ss_fwd_rows_kernel", call, make(2, D, N, L, **opts), monkeypatch, tmp_path)


def _compile_gluon_launch(name, call, t, monkeypatch, tmp_path):
    """Run call(gluon_selective_scan, t) on t in bf16 (A, D, delta_bias in float32) with the launches of the
    kernel `name` captured; there must be one, and it must compile for sm_90."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    if not gss.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    monkeypatch.syspath_prepend(HERE)
    import sm90
    sm90.compile_captured(gss, name, lambda: call(gss, {
        k: v.to(torch.bfloat16) if torch.is_tensor(v) and k not in ("A", "D", "delta_bias") else v
        for k, v in t.items()}), tmp_path)


@pytest.mark.parametrize("L", [4096, 4104, 1000, 4094, 998, 999, 4093])
def test_gluon_launches_claim_no_more_alignment_than_L_has(L, monkeypatch):
    """QL tells the Gluon kernels a power of two that L is a multiple of, so that rows of L steps move in wide
    accesses; claiming more than L has would misalign them. The forward takes 16, 8 or 1 (its threads move 8
    steps), the backward 16, 2 or 1 (2 steps): the largest that divides L."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    if not gss.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    seen = {}
    for name in ("_ss_fwd_rows_kernel", "_ss_bwd_rows_kernel"):
        monkeypatch.setattr(gss, name, type("Capture", (), {
            "__getitem__": lambda self, grid, name=name: lambda *a, **kw: seen.__setitem__(name, kw["QL"])})())
    t = make(1, 64, 16, L)
    gss.ss_fwd_gluon(t["u"], t["delta"], t["A"], t["B"][:, None], t["C"][:, None], None, None, None, None, False,
                     False, CK=64)
    gss.ss_bwd_gluon(t["u"], t["delta"], t["A"], t["B"][:, None], t["C"][:, None], None, None, None,
                     torch.zeros(1, 64, -(-L // 64), 16), torch.zeros_like(t["u"]), None, False, CK=64)
    largest = lambda allowed: max(q for q in allowed if L % q == 0)
    assert seen == {"_ss_fwd_rows_kernel": largest((16, 8, 1)), "_ss_bwd_rows_kernel": largest((16, 2, 1))}


@pytest.mark.parametrize("b, D, L, G, store_ck, want", [
    (1, 128, 999, 1, False, True), (2, 256, 1002, 2, False, True), (1, 128, 999, 1, True, True),
    (1, 129, 999, 1, False, False), (1, 64, 999, 1, False, False), (1, 256, 1000, 1, False, False),
    (2, 384, 999, 2, False, False)],
    ids=["odd-L", "groups", "training", "reads-past-the-end", "too-few-channels", "aligned", "group-split"])
def test_gluon_forward_shifts_tiles_only_where_it_may(b, D, L, G, store_ck, want, monkeypatch):
    """The forward's shifted tiles (`SHIFT`: programs of channels 8 apart) only where L is not a multiple of 8
    (storing checkpoints or not), with 8 · 16 channels a program sharing a B/C group,
    and where the last row ends a 16-byte group (a group read whole must stay in the tensor); then the
    programs cover the channels in blocks of 128."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    if not gss.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    seen = {}
    monkeypatch.setattr(gss, "_ss_fwd_rows_kernel", type("Capture", (), {
        "__getitem__": lambda self, grid: lambda *a, **kw: seen.update(shift=kw["SHIFT"], grid=grid)})())
    t = make(b, D, 16, L, G=G)
    gss.ss_fwd_gluon(t["u"], t["delta"], t["A"], t["B"], t["C"], None, None, None, None, False, store_ck, CK=64)
    chains = b * (8 * -(-D // 128) if want else -(-D // 16))
    assert seen == {"shift": want, "grid": (chains,)}


@pytest.mark.parametrize("opts", [dict(), dict(z=True, Dskip=True, bias=True, h0=True)], ids=["plain", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gluon_fakes_give_what_the_triton_launchers_give(opts, dtype):
    """Under torch.compile the Gluon launchers are custom ops, and the graph is built from their fake twins: the
    outputs' shapes, dtypes and strides (checkpoints stored or not; absent gradients None) must be those of the
    Triton launchers with the same contract, run here."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    t = make(2, 8, 5, 19, G=2, **opts)
    t = {k: v.to(dtype) if torch.is_tensor(v) and k not in ("A", "D", "delta_bias") else v for k, v in t.items()}
    fwd = [t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]
    layout = lambda outs: [None if o is None else (tuple(o.shape), o.dtype, o.stride()) for o in outs]
    with torch.no_grad():
        for store_ck in (False, True):
            want = tss.ss_fwd(*fwd, t["delta_softplus"], store_ck)
            with FakeTensorMode() as mode, _compiling():
                got = gss.ss_fwd_gluon(*_fake(mode, fwd), t["delta_softplus"], store_ck, CK=tss.CK)
            assert layout(got) == layout(want)
        bwd = [*fwd[:8], want[2], torch.randn_like(t["u"]), torch.randn_like(want[1])]
        want = tss.ss_bwd_groups(*bwd, t["delta_softplus"])
        with FakeTensorMode() as mode, _compiling():
            got = gss.ss_bwd_gluon(*_fake(mode, bwd), t["delta_softplus"], CK=tss.CK)
        assert layout(got) == layout(want)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_gluon_under_torch_compile_is_one_graph(dtype):
    """Under torch.compile (Inductor, fullgraph=True: a graph break fails it) the Gluon forward and backward give
    what they give eagerly, outputs and gradients; torch.library.opcheck passes for both custom ops."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    t = make(2, 256, 16, 300, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")

    def scan(u, delta, A, B, C, D, z, bias, h0):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                              return_last_state=True, initial_state=h0)

    def go(fn):
        leaves = [t[k].detach().clone().requires_grad_() for k in NAMES]
        y, hT = fn(*leaves)
        gen = torch.Generator(device="cuda").manual_seed(1)
        loss = sum((o.float() * torch.randn(o.shape, device="cuda", generator=gen)).sum() for o in (y, hT))
        return [y.detach(), hT.detach(), *torch.autograd.grad(loss, leaves)]

    with env("ARCHDSL_SCAN_FWD", "gluon"), env("ARCHDSL_SCAN_BWD", "gluon"):
        want = go(scan)
        torch._dynamo.reset()
        got = go(torch.compile(scan, fullgraph=True, backend="inductor"))
    # bf16: dB and dC are float32 atomic sums rounded to bf16, so two backwards differ by an ulp (rtol 1e-2)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"result {i}: {m}")
    u, delta, A, B, C, D, z, bias, h0 = (t[k] for k in NAMES)
    fwd = (u, delta, A.float(), B[:, None], C[:, None], D.float(), z, bias.float(), h0.float())
    y, hT, ck = torch.ops.archdsl.selective_scan_fwd_gluon(*fwd, True, True, tss.CK)
    torch.library.opcheck(torch.ops.archdsl.selective_scan_fwd_gluon.default, (*fwd, True, True, tss.CK))
    # the backward's dB and dC are float32 atomic sums in no fixed order: opcheck's runs of it differ in the last
    # bits (float32's default rtol 1.3e-6 failed once on the H200), so it compares them with the tolerance above
    torch.library.opcheck(torch.ops.archdsl.selective_scan_bwd_gluon.default,
                          (*fwd[:8], ck, torch.randn_like(y), torch.randn_like(hT), True, tss.CK), **tol)
    starts = (torch.arange(300, device="cuda") % 37 == 5).to(torch.int8).expand(2, 300).contiguous()
    torch.library.opcheck(torch.ops.archdsl.selective_scan_fwd_gluon.default, (*fwd, True, True, tss.CK, starts))
    torch.library.opcheck(torch.ops.archdsl.selective_scan_bwd_gluon.default,
                          (*fwd[:8], ck, torch.randn_like(y), torch.randn_like(hT), True, tss.CK, starts), **tol)


def _fake(mode, tensors):
    return [mode.from_tensor(a) if a is not None else None for a in tensors]


@contextmanager
def _compiling():
    """torch.compiler.is_compiling() true, as while Dynamo traces."""
    real = torch.compiler.is_compiling
    torch.compiler.is_compiling = lambda: True
    try:
        yield
    finally:
        torch.compiler.is_compiling = real


@pytest.mark.skipif(CUDA, reason="the Gluon backward runs on CUDA")
def test_gluon_backward_off_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ARCHDSL_SCAN_BWD", "gluon")
    t = make(1, 4, 2, 5)
    with backend("triton"), pytest.raises(ValueError, match="ARCHDSL_SCAN_BWD=gluon: .* CUDA tensors only"):
        run(selective_scan, t)


def test_persistent_rules_pick_what_the_h200_measured_faster():
    """The launchers' rules for persistent programs, on the H200's 132 SMs at B4 N16 (8-channel backward
    programs, 16-channel forward ones): the version measured faster at each channel count
    (benchmarks/scan_balance.py, docs/benchmarks.md), except where the two were within 1%."""
    pytest.importorskip("triton")
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    bwd = {2048: False, 2304: True, 2560: True, 2816: True, 3168: False, 4608: True, 5120: True, 6336: False,
           7168: True}
    assert {d: gss._persist_bwd(4 * d // 8, 132) for d in bwd} == bwd
    fwd = {1024: False, 2048: False, 2560: True, 3072: True, 3168: True, 3456: False, 3584: False, 4096: False,
           4608: True, 5120: True, 6144: False, 6336: False, 7168: True, 8192: False}
    assert {d: gss._persist(4 * d // 16, 132) for d in fwd} == fwd
    # the persistent forward's programs: 2 a scheduler (fewer than the chains from D4608), 3 at D7168
    assert [gss._programs(4 * d // 16, 132) for d in (2560, 4608, 5120, 7168)] == [640, 1056, 1056, 1584]


@pytest.mark.skipif(CUDA, reason="the GPU runs the Gluon backward itself")
@pytest.mark.parametrize("L, D, N, opts, dhT, persist", [
    (4096, 64, 16, dict(z=True, Dskip=True, bias=True), False, False), (1000, 50, 5, dict(h0=True), True, False),
    (70, 32, 8, dict(z=True), True, False), (4096, 64, 16, dict(z=True, Dskip=True, bias=True), True, True),
    (1000, 50, 5, dict(h0=True), False, True), (999, 64, 16, dict(z=True), False, False)],
    ids=["even", "masked", "N8", "persistent", "persistent-masked", "odd-L"])
def test_gluon_backward_compiles_for_sm90(L, D, N, opts, dhT, persist, monkeypatch, tmp_path):
    _gluon_backward_compiles(L, D, N, opts, dhT, persist, None, monkeypatch, tmp_path)


@pytest.mark.skipif(CUDA, reason="the GPU runs the Gluon kernels themselves")
@pytest.mark.parametrize("L, D, N, store_ck, persist", [(4096, 64, 16, True, False), (999, 256, 16, False, True),
                                                          (1000, 50, 5, True, True)])
def test_gluon_restarts_compile_for_sm90(L, D, N, store_ck, persist, monkeypatch, tmp_path):
    """Packed sequences (seq_idx's starts as bits): the Gluon forward (odd L unshifted) and backward compile."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    monkeypatch.setattr(gss, "_persist", lambda nchain, sms: persist)
    starts = (torch.arange(L) % 37 == 5).to(torch.int8).expand(2, L)

    def call(gss, t):
        gss.ss_fwd_gluon(t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None], t["D"], t["z"],
                         t["delta_bias"], t["initial_state"], True, store_ck, CK=64, starts=starts)
    opts = dict(z=True, Dskip=True, bias=True, h0=True)
    _compile_gluon_launch("_ss_fwd_rows_kernel", call, make(2, D, N, L, **opts), monkeypatch, tmp_path)
    _gluon_backward_compiles(L, D, N, opts, True, persist, starts, monkeypatch, tmp_path)


def _gluon_backward_compiles(L, D, N, opts, dhT, persist, starts, monkeypatch, tmp_path):
    """As for the forward: the Gluon backward's launcher runs on CPU tensors with its launch captured, and
    the launch is compiled for sm_90 (bf16 inputs); one program a chain, or persistent programs."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    monkeypatch.setattr(gss, "_persist_bwd", lambda nchain, sms: persist)
    def call(gss, t):
        gss.ss_bwd_gluon(t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None], t["D"], t["z"],
                         t["delta_bias"], torch.zeros(2, D, -(-L // 64), N), torch.zeros_like(t["u"]),
                         torch.zeros(2, D, N) if dhT else None, True, CK=64, starts=starts)
    _compile_gluon_launch("_ss_bwd_rows_kernel", call, make(2, D, N, L, **opts), monkeypatch, tmp_path)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("units", [1, 10**6])
@pytest.mark.parametrize("L, D, N, dhT, Dskip", [(2048, 512, 16, True, True), (1000, 200, 16, False, True),
                                                 (1000, 200, 16, False, False), (333, 50, 5, True, True)])
def test_gpu_gluon_backward_segments_change_nothing(L, D, N, dhT, Dskip, units, monkeypatch):
    """The backward's chains run by persistent programs (the default where one program a chain would leave
    the last wave short or the schedulers uneven; forced here), whole (units 1) or cut into one-chunk units
    whose d(state), dA, dD and d delta_bias sums cross from unit to unit through memory. Against one program
    a chain: dz bit for bit; the rest to float32 rounding, since the two compilations may fuse a multiply and
    an add in different places (measured on the H200: 1-ulp differences in d(state), only with D and no
    last-state gradient, the same in every run). A stale or raced state would be off by far more: at most
    0.1% of du, d delta differ, by one bf16 rounding step. dB, dC are atomic sums in any order. L off the
    checkpoint chunk, D off the 8 channels a program."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan.triton_selective_scan import CK
    t = make(4, D, N, L, z=True, Dskip=Dskip, bias=True, h0=True, dtype=torch.bfloat16, device="cuda")
    u, delta, A, B4, C4 = t["u"], t["delta"], t["A"].float(), t["B"][:, None], t["C"][:, None]
    D_, z, bias = t["D"].float() if Dskip else None, t["z"], t["delta_bias"].float()
    _, _, ck = gss.ss_fwd_gluon(u, delta, A, B4, C4, D_, z, bias, t["initial_state"], True, True, CK=CK)
    dy = torch.randn_like(u)
    dhT_ = torch.randn(4, D, N, device="cuda") if dhT else None

    def grads(persist):
        monkeypatch.setattr(gss, "_persist_bwd", lambda nchain, sms: persist)
        return gss.ss_bwd_gluon(u, delta, A, B4, C4, D_, z, bias, ck, dy, dhT_, True, CK=CK)
    monkeypatch.setattr(gss, "BWD_UNITS", units)
    whole, cut = grads(False), grads(True)
    names = ("du", "d delta", "dA", "dB", "dC", "dD", "dz", "d delta_bias", "dh0")
    for name, got, want in zip(names, cut, whole):
        if want is None:
            assert got is None, name
        elif name == "dz":
            assert torch.equal(got, want)
        elif want.dtype == torch.bfloat16:
            scale = want.float().abs().max().item()
            torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-3 * scale, msg=name)
            if name in ("du", "d delta"):
                assert (got != want).float().mean().item() <= 1e-3, name
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=name)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("L, D, N, G", [(2048, 512, 16, 2), (1000, 200, 16, 1), (333, 50, 5, 1), (300, 64, 8, 4),
                                        (999, 256, 16, 2)])
def test_gpu_gluon_backward(dtype, tol, L, D, N, G, monkeypatch):
    """The Gluon backward (ARCHDSL_SCAN_BWD=gluon) against float64 after the default forward: B/C in groups;
    L off its sub-tile and checkpoint chunk, D off its 16 channels (masked), N below and at its padding; odd L
    with enough channels that the forward shifts its tiles and stores the checkpoints from inside them."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    assert gss._shift(2, D, L, G, gss._tile_for(N)[3]) == (L == 999)  # that case alone
    monkeypatch.setenv("ARCHDSL_SCAN_BWD", "gluon")
    t = make(2, D, N, L, G=G if G > 1 else 0, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), tol)


@pytest.mark.gpu
@gpu
def test_gpu_gluon_backward_is_the_default_where_it_fits(monkeypatch):
    """Unset ARCHDSL_SCAN_BWD on CUDA: the Gluon backward where it takes the case (N 16, G 1), the Triton groups
    one where it does not (4 channels a B/C group, N 4, N 32); all right. Forcing it on a case it does not
    take is a clear error."""
    from archdsl.kernels.selective_scan import gluon_selective_scan as gss
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.delenv("ARCHDSL_SCAN_BWD", raising=False)
    ran = []
    for name, mod, fn in (("gluon", gss, "ss_bwd_gluon"), ("groups", tss, "ss_bwd_groups")):
        real = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    for kw, want in ((dict(N=16, G=0), "gluon"), (dict(N=16, G=16), "groups"), (dict(N=4, G=0), "groups"),
                     (dict(N=32, G=0), "groups")):
        ran.clear()
        t = make(2, 64, kw["N"], 100, G=kw["G"], z=True, Dskip=True, bias=True, h0=True, device="cuda")
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), 1e-4)
        assert ran == [want], (kw, ran)
    monkeypatch.setenv("ARCHDSL_SCAN_BWD", "gluon")
    with pytest.raises(ValueError, match="Gluon backward needs a multiple of 8 channels a B/C group \\(got 4\\)"):
        run(selective_scan, make(2, 64, 16, 100, G=16, device="cuda"))


def _gpu_tiles():
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    return [c for c in tss._FWD_CONFIGS if c[0] == "groups"]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", _gpu_tiles(), ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_gpu_groups_forward_tiles(tile, dtype, tol, monkeypatch):
    """Each tile of the Triton states-over-threads forward, chosen by hand rather than timed: full size
    (B=4, D=5120, N=16, L=4096) against float64, then gradients through its checkpoints."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", "serial")  # on CUDA the default is the Gluon forward
    tss.FWD_OVERRIDE = tile
    try:
        t = make(4, 5120, 16, 4096, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
        assert_close(run(selective_scan, t, grads=False), _ref64(t, grads=False), tol)
        del t
        t = make(2, 512, 16, 2048, G=2, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), 1.5 * tol)
    finally:
        tss.FWD_OVERRIDE = None


def _bwd_tiles():
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    return tss._BWD_GROUPS_CONFIGS


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", _bwd_tiles(), ids=str)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_groups_backward_tiles(tile, dtype, tol, monkeypatch):
    """Each tile of the groups backward, chosen by hand rather than timed: gradients against float64."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.setattr(tss, "_BWD_GROUPS_CONFIGS", [tile])
    tss._best.clear()
    try:
        t = make(2, 512, 16, 2048, G=2, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), tol)
    finally:
        tss._best.clear()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tile", _gpu_tiles()[:1], ids=str)
@pytest.mark.parametrize("fwd", ["serial", "gluon"])
def test_gpu_without_z_d_bias(tile, fwd, monkeypatch):
    """The plain scan (no D, z, delta_bias or softplus: how a Mamba layer calls it with the epilogue
    fusion off), forward and gradients, against float64, after either forward."""
    from archdsl.kernels.selective_scan import triton_selective_scan as tss
    monkeypatch.setenv("ARCHDSL_SCAN_FWD", fwd)
    tss.FWD_OVERRIDE = tile
    try:
        t = make(2, 512, 16, 2048, G=2, h0=True, device="cuda")
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), 1e-4)
    finally:
        tss.FWD_OVERRIDE = None


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bwd", ["gluon", "groups", "threads"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_gradients(dtype, tol, bwd, scan_fwd):
    t = make(2, 512, 16, 2048, G=2, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    with env("ARCHDSL_SCAN_BWD", bwd):
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=32), tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_gradients_full_size(dtype, tol, scan_fwd):
    """The Gluon and groups backwards at a Mamba-1 layer of mamba-2.8b (B=4, L=4096, N=16): against the
    float64 chunked reference on 128 channels (autograd through the reference at D=5120 would not fit),
    and at the full D=5120 against the threads backward (gradients finite, all agree)."""
    t = make(4, 128, 16, 4096, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    for bwd in ("gluon", "groups"):
        with env("ARCHDSL_SCAN_BWD", bwd):
            assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=16), tol)
    del t
    t = make(4, 5120, 16, 4096, z=True, Dskip=True, bias=True, h0=True, dtype=dtype, device="cuda")
    with env("ARCHDSL_SCAN_BWD", "threads"):
        want = run(selective_scan, t)
    for bwd in ("gluon", "groups"):
        with env("ARCHDSL_SCAN_BWD", bwd):
            assert_close(run(selective_scan, t), want, tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bwd", ["gluon", "groups", "threads"])
def test_gpu_128k_tokens_with_gradients(bwd, scan_fwd):
    t = make(1, 8, 16, 131072, z=True, Dskip=True, bias=True, h0=True, device="cuda")
    with env("ARCHDSL_SCAN_BWD", bwd):
        assert_close(run(selective_scan, t), _ref64(t, grads=True, chunk=64), 1e-3)


@pytest.mark.big_memory
@pytest.mark.gpu
@gpu
def test_gpu_1m_tokens(scan_fwd):
    """Forward against the float64 reference; gradients finite (the reference cannot keep 1M steps of autograd)."""
    t = make(1, 16, 16, 1 << 20, z=True, Dskip=True, bias=True, h0=True, device="cuda")
    got = run(selective_scan, t)
    assert_close(got[:2], _ref64(t, grads=False, chunk=256), 1e-3)
    assert all(torch.isfinite(g).all() for g in got[2:])


@pytest.mark.gpu
@gpu
def test_gpu_step_matches_scan_bf16(scan_fwd):
    L = 4096
    t = make(2, 256, 16, L, z=True, Dskip=True, bias=True, h0=True, dtype=torch.bfloat16, device="cuda")
    y, hT = run(selective_scan, t, grads=False)
    state = t["initial_state"].float().clone()
    ys = [selective_state_update(state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i], t["C"][..., i],
                                 D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"], dt_softplus=True)
          for i in range(L)]
    assert_close([torch.stack(ys, -1), state], [y, hT], 2e-2)
