"""wkv4: HF's CPU formula, the O(T²) reference, the time loop and Triton (interpreted) agree."""
import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archdsl.kernels.wkv4 import wkv4, wkv4_step
from archdsl.kernels.wkv4.chunked import wkv4_torch
from archdsl.kernels.wkv4.naive import wkv4_naive

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def triton_wkv4(*a):
    from archdsl.kernels.wkv4.triton_wkv4 import wkv4_triton
    return wkv4_triton(*a)


def make(B, T, C, seed, dtype=torch.float64, device="cpu", kscale=3.0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [rnd(C), rnd(C), kscale * rnd(B, T, C), rnd(B, T, C)]
    state = (rnd(B, C), torch.rand(B, C, generator=g, dtype=torch.float64) + 0.5, rnd(B, C))
    return [x.to(device=device, dtype=dtype) for x in xs], tuple(s.to(device) for s in state)


def canonical(state):
    """(num/den, max + log den): equal for equal states whatever max each path chose."""
    num, den, mx = (s.double() for s in state)
    return num / den, mx + den.log()


def run(fn, xs, state, seed=1):
    """Outputs, state and gradients; the state is used by a second wkv4 call, as a model does."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    st_in = tuple(s.detach().clone().requires_grad_() for s in state) if state is not None else None
    y, s = fn(*xs, st_in)
    g = torch.Generator().manual_seed(seed)
    rnd = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)
    y2, _ = wkv4_torch(xs[0].double(), xs[1].double(), xs[2][:, :3].double() * 0.5, xs[3][:, :3].double(),
                       tuple(x.double() for x in s))
    loss = (y.double() * rnd(y)).sum() + (y2 * rnd(y2)).sum()
    grads = torch.autograd.grad(loss, xs + (list(st_in) if st_in else []))
    return [y, *canonical(s), *grads]


def close(got, want, rtol, what=""):
    for i, (a, b) in enumerate(zip(got, want)):
        err = (a.double() - b.double()).abs().max().item() / max(b.double().abs().max().item(), 1e-2)
        assert err < rtol, f"{what} item {i}: rel err {err:.2e}"


cases = st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 5, 13, 31]), st.sampled_from([1, 7, 16, 40]),
                  st.booleans(), st.integers(0, 10_000))


def test_matches_transformers_cpu_formula():
    modeling = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")
    (w, u, k, v), state = make(2, 17, 24, 0, dtype=torch.float32)
    want_y, want_s = modeling.rwkv_linear_attention_cpu(w, u, k, v, state=list(state), return_state=True)
    for fn in (wkv4, wkv4_naive, triton_wkv4):
        y, s = fn(w, u, k, v, state)
        close([y, *canonical(s)], [want_y, *canonical(want_s)], 1e-5, fn.__name__)
    want_y, want_s = modeling.rwkv_linear_attention_cpu(w, u, k, v, return_state=True)
    y, s = wkv4(w, u, k, v)
    close([y, *s[:2]], [want_y, *want_s[:2]], 1e-6, "fresh state")


@settings(max_examples=12, deadline=None)
@given(cases, st.sampled_from([None, 1, 4, 16]))
def test_torch_loop_matches_reference(case, chunk):
    """The time loop (chunk 1) and chunks of 4 or 16 tokens (T 5, 13, 31 cross chunk boundaries)."""
    B, T, C, with_state, seed = case
    xs, state = make(B, T, C, seed)
    state = state if with_state else None
    close(run(lambda *a: wkv4_torch(*a, chunk=chunk), xs, state), run(wkv4_naive, xs, state), 1e-9, "torch")


def test_torch_chunks_take_any_decay():
    """A decay rate past float32's exp range (w' = -exp(100) = -inf) gives what the time loop gives: the
    history forgotten, no NaN."""
    (w, u, k, v), state = make(2, 9, 3, 0, dtype=torch.float32)
    w = torch.tensor([100.0, 0.0, -100.0])
    want, want_s = wkv4_torch(w, u, k, v, state, chunk=1)
    got, got_s = wkv4_torch(w, u, k, v, state, chunk=4)
    assert torch.isfinite(got).all()
    close([got, *canonical(got_s)], [want, *canonical(want_s)], 1e-5, "huge decay")
    ref, ref_s = wkv4_naive(w, u, k, v, state)  # the reference too: 0 · w' at t = 0 was NaN
    close([ref, *canonical(ref_s)], [want, *canonical(want_s)], 1e-5, "huge decay, naive")


@contextlib.contextmanager
def pieces_of(n):
    """The Triton sweeps cut along T into pieces of n tokens or more (PIECE_MIN; at the tests' sizes it is one
    piece otherwise), as many as the interpreter's stand-in card asks (up to 16 at these sizes)."""
    from archdsl.kernels.wkv4 import triton_wkv4 as tw
    old, tw.PIECE_MIN = tw.PIECE_MIN, n
    try:
        yield
    finally:
        tw.PIECE_MIN = old


@settings(max_examples=12, deadline=None)
@given(cases, st.sampled_from([64, 1, 3]))
def test_triton_matches_reference(case, piece):
    """The interpreted kernels, in one piece or cut into pieces of 1 or 3 tokens and more: outputs, final state and
    every gradient."""
    B, T, C, with_state, seed = case
    xs, state = make(B, T, C, seed)
    state = state if with_state else None
    with pieces_of(piece):
        got = run(triton_wkv4, [x.float() for x in xs], state)
    close(got, run(wkv4_naive, xs, state), 2e-4, f"triton, pieces of {piece}")



def read_state(fn, xs, state, seed=2):
    """Gradients of a loss that reads the outgoing num, den and max themselves (not only through another wkv4)."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    st_in = tuple(s.detach().clone().requires_grad_() for s in state) if state is not None else None
    y, s = fn(*xs, st_in)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)).sum() for t in (y, *s))
    return torch.autograd.grad(loss, xs + (list(st_in) if st_in else []))


@settings(max_examples=12, deadline=None)
@given(cases, st.sampled_from([64, 2]), st.booleans())
def test_a_loss_on_the_state_itself_gets_the_reference_gradient(case, piece, packed):
    """num, den and max are each the function the reference computes: max moves with the winning logit (a token
    of the last sequence, or the incoming state), so a loss reading them gets d/dmax through it. The sweeps alone
    took the gradient as acting on num·e^max and den·e^max: dw 2.81 against 1.33 (found by review)."""
    B, T, C, with_state, seed = case
    xs, state = make(B, T, C, seed)
    state = state if with_state else None
    seq = packing(B, T, seed) if packed else None
    with pieces_of(piece):
        got = read_state(lambda *a: triton_wkv4(*a, seq), [x.float() for x in xs], state)
    close(got, read_state(lambda *a: wkv4_naive(*a, seq_idx=seq), xs, state), 2e-4, f"pieces of {piece}")
    close(read_state(lambda *a: wkv4_torch(*a, seq_idx=seq), xs, state),
          read_state(lambda *a: wkv4_naive(*a, seq_idx=seq), xs, state), 1e-9, "torch")

@pytest.mark.parametrize("piece", [1, 2, 3, 5])
def test_pieces_equal_one_piece(piece):
    """Every sweep cut into pieces (the forward, both backward sweeps and their passes over the pieces) == the same
    kernels in one piece, to float32 rounding: outputs, final state, every gradient; with an incoming state, a row
    whose first sequence is not 0 (a restart at t = 0), and sequences starting inside pieces and on their edges (T
    23 gives 12, 8, 6 and 4 pieces of 2, 3, 4 and 6 tokens)."""
    xs, state = make(2, 23, 16, 5)
    xs = [x.float() for x in xs]
    seq = torch.tensor([[0] * 4 + [1] * 7 + [2] * 12, [3] * 9 + [4] * 2 + [5] * 12])
    for s in (None, seq):
        with pieces_of(64):
            want = run(lambda *a: triton_wkv4(*a, s), xs, state)
        with pieces_of(piece):
            got = run(lambda *a: triton_wkv4(*a, s), xs, state)
        close(got, want, 2e-5, f"pieces of {piece}, seq_idx {s is not None}")


def test_pieces_fill_the_card_and_no_more(monkeypatch):
    """The cut along T: as many pieces as give PROGRAMS_PER_SM programs a multiprocessor (8 for the backward's
    sweeps, one wave of 16 for the forward's), of PIECE_MIN tokens at least; none where B·C's programs fill half of
    8 a multiprocessor already. An H100's 132 multiprocessors, C2048 (16 blocks)."""
    from archdsl.kernels.wkv4 import triton_wkv4 as tw
    monkeypatch.setattr(tw, "sm_count", lambda device: 132)
    cut = lambda B, T, sweep: tw._pieces(B, T, 2048, 128, torch.device("cuda"), sweep)
    for (B, T), fwd, bwd in (((1, 4096), (64, 64), (64, 64)), ((4, 4096), (33, 125), (17, 241)),
                             ((4, 16384), (33, 497), (17, 964)), ((16, 4096), (8, 512), (5, 820)),
                             ((32, 2048), (4, 512), (3, 683)), ((64, 1024), (1, 1024), (1, 1024))):
        assert (cut(B, T, "fwd"), cut(B, T, "bwd")) == (fwd, bwd), (B, T)
    for sweep in ("fwd", "bwd"):
        assert cut(4, 100, sweep) == (1, 100) and cut(4, 1, sweep) == (1, 1) and cut(4, 0, sweep) == (1, 1)


def packing(B, T, seed):
    """seq_idx [B, T]: up to four sequences a row, the first one's number 0 or not (the state then restarts at 0)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (B, T), generator=g).sort(1).values


def each_alone(xs, state, seq):
    """wkv4_naive over each sequence of each row alone (the incoming state for a row's first sequence when its
    number is 0): the outputs laid back in place and each row's last state."""
    w, u, k, v = xs
    B, T, _ = k.shape
    y, last = torch.empty_like(k), []
    for b in range(B):
        cuts = [0] + [t for t in range(1, T) if seq[b, t] != seq[b, t - 1]] + [T]
        for a, e in zip(cuts, cuts[1:]):
            s_in = tuple(s[b:b + 1] for s in state) if state is not None and a == 0 and seq[b, 0] == 0 else None
            y[b:b + 1, a:e], s = wkv4_naive(w, u, k[b:b + 1, a:e], v[b:b + 1, a:e], s_in)
        last.append(s)
    return y, tuple(torch.cat(x) for x in zip(*last))


@settings(max_examples=12, deadline=None)
@given(cases)
def test_packed_reference_equals_each_sequence_alone(case):
    B, T, C, with_state, seed = case
    xs, state = make(B, T, C, seed)
    state, seq = state if with_state else None, packing(B, T, seed)
    y, s = wkv4_naive(*xs, state, seq)
    want_y, want_s = each_alone(xs, state, seq)
    close([y, *canonical(s)], [want_y, *canonical(want_s)], 1e-12, "naive packed")


@settings(max_examples=12, deadline=None)
@given(cases, st.sampled_from(["loop", "chunks of 4", "chunks of 16", "triton", "triton, pieces of 2"]))
def test_packed_paths_match_the_reference(case, path):
    """seq_idx on the torch time loop, its chunks (restarts inside a chunk and on its edges) and the Triton kernels
    (interpreted, float32; in one piece, or in pieces of 2 tokens and more, a sequence starting in a
    piece or on its edge): outputs, final state and every gradient, against the packed reference."""
    B, T, C, with_state, seed = case
    xs, state = make(B, T, C, seed)
    state, seq = state if with_state else None, packing(B, T, seed)
    if path.startswith("triton"):
        with pieces_of(2 if "pieces" in path else 64):
            got = run(lambda *a: triton_wkv4(*a, seq), [x.float() for x in xs], state)
        tol = 2e-4
    else:
        chunk = {"loop": 1, "chunks of 4": 4, "chunks of 16": 16}[path]
        got, tol = run(lambda *a: wkv4_torch(*a, chunk=chunk, seq_idx=seq), xs, state), 1e-9
    close(got, run(lambda *a: wkv4_naive(*a, seq_idx=seq), xs, state), tol, path)


def test_packed_op_takes_any_integers_and_checks_them(monkeypatch):
    """The op with seq_idx on each backend; any integers (runs of equal values are the sequences); a seq_idx of
    the wrong shape, dtype or device is a ValueError naming it."""
    (w, u, k, v), state = make(2, 9, 5, 3, dtype=torch.float32)
    seq = torch.tensor([[7, 7, 7, -2, -2, 5, 5, 5, 5], [0, 0, 0, 0, 0, 0, 0, 1, 1]])
    want_y, want_s = each_alone([w, u, k, v], state, seq)
    for backend in ("torch", "triton", "naive"):
        monkeypatch.setenv("ARCHDSL_KERNELS", backend)
        y, s = wkv4(w, u, k, v, state, seq_idx=seq)
        close([y, *canonical(s)], [want_y, *canonical(want_s)], 1e-5, backend)
    for bad, what in ((seq[:, :5], r"seq_idx.*\[2, 9\]"), (seq.float(), "seq_idx"), (seq.bool(), "seq_idx")):
        with pytest.raises(ValueError, match=what):
            wkv4(w, u, k, v, state, seq_idx=bad)


@pytest.mark.parametrize("fn", [wkv4_torch, triton_wkv4])
def test_large_keys_stay_finite_in_bf16(fn):
    (w, u, k, v), _ = make(1, 64, 16, 2, dtype=torch.bfloat16, kscale=60.0)
    y, s = fn(w, u, k, v, None)
    ref, _ = wkv4_naive(*(x.double() for x in (w, u, k, v)))
    assert torch.isfinite(y).all() and all(torch.isfinite(x).all() for x in s)
    close([y], [ref], 2e-2, "bf16")


@pytest.mark.parametrize("fn", [wkv4_torch, triton_wkv4])
def test_split_scan_equals_full(fn):
    (w, u, k, v), state = make(2, 30, 20, 4, dtype=torch.float32)
    y, s = fn(w, u, k, v, state)
    y1, s1 = fn(w, u, k[:, :11], v[:, :11], state)
    y2, s2 = fn(w, u, k[:, 11:], v[:, 11:], s1)
    close([torch.cat([y1, y2], 1), *canonical(s2)], [y, *canonical(s)], 1e-5)


def test_step_matches_parallel():
    (w, u, k, v), state = make(2, 19, 9, 5)
    y, s = wkv4(w, u, k, v, state)
    steps, cur = [], state
    for t in range(19):
        o, cur = wkv4_step(w, u, k[:, t], v[:, t], cur)
        steps.append(o)
    close([torch.stack(steps, 1), *canonical(cur)], [y, *canonical(s)], 1e-12)


@pytest.mark.parametrize("dtype,state_dtype,C", [(torch.float32, torch.float32, 40), (torch.bfloat16, torch.float32, 300),
                                                 (torch.float32, torch.bfloat16, 40)])
def test_triton_step_equals_the_torch_step(dtype, state_dtype, C, monkeypatch):
    """The Triton step kernel against the torch step: wkv in k's dtype, the new state float32, from a fresh state
    (max -1e38) and a running one, given as a tuple or as HF's [B, C, 3] tensor (strided views), k and v as rows
    of a wider tensor."""
    (w, u, k, v), state = make(3, 2, C, 9, dtype=torch.float32)
    k, v = k.to(dtype), v.to(dtype)
    fresh = (torch.zeros(3, C), torch.zeros(3, C), torch.full((3, C), -1e38))
    for start in (fresh, state, torch.stack(state, -1)):
        start = start.to(state_dtype) if isinstance(start, torch.Tensor) else tuple(s.to(state_dtype) for s in start)
        got, want = [], []
        for backend, out in (("triton", got), ("torch", want)):
            monkeypatch.setenv("ARCHDSL_KERNELS", backend)
            cur = start
            for t in range(2):
                y, cur = wkv4_step(w, u, k[:, t], v[:, t], cur)
                out += [y, *canonical(cur)]
            assert y.dtype == dtype and cur[0].dtype == torch.float32
        close(got, want, 1e-6)


def test_triton_step_gives_way_to_the_torch_step_for_gradients(monkeypatch):
    """The Triton step has no backward: with an input that requires grad the torch step runs (and differentiates),
    without one (or under torch.no_grad) the Triton kernel does."""
    from archdsl.kernels.wkv4 import triton_wkv4_step
    real, ran = triton_wkv4_step.wkv4_step_triton, []
    monkeypatch.setattr(triton_wkv4_step, "wkv4_step_triton", lambda *a: ran.append(1) or real(*a))
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    (w, u, k, v), state = make(2, 1, 8, 3, dtype=torch.float32)
    state = tuple(s.float() for s in state)
    wkv4_step(w, u, k[:, 0], v[:, 0], state)
    with torch.no_grad():
        wkv4_step(w, u, k[:, 0].requires_grad_(), v[:, 0], state)
    assert len(ran) == 2
    kg = k[:, 0].clone().requires_grad_()
    y, new = wkv4_step(w, u, kg, v[:, 0], state)
    (y.sum() + new[0].sum()).backward()
    assert len(ran) == 2 and kg.grad is not None and torch.isfinite(kg.grad).all()


def test_state_as_hf_tensor_layout():
    (w, u, k, v), state = make(1, 6, 8, 6)
    y, _ = wkv4(w, u, k, v, torch.stack(state, -1))
    close([y], [wkv4(w, u, k, v, state)[0]], 1e-14)


def test_bad_inputs_raise_value_error():
    (w, u, k, v), state = make(1, 4, 8, 0)
    with pytest.raises(ValueError, match="v"):
        wkv4(w, u, k, v[:, :3])
    with pytest.raises(ValueError, match="w"):
        wkv4(w[:3], u, k, v)
    with pytest.raises(ValueError, match="state"):
        wkv4(w, u, k, v, state[:2])
    with pytest.raises(ValueError, match="state"):
        wkv4_step(w, u, k[:, 0], v[:, 0], None)


# ---------------------------------------------------------------- GPU
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-4)])
def test_gpu_full_size_vs_float64(dtype, tol):
    xs, state = make(4, 4096, 2048, 0, dtype=dtype, device="cuda")
    want = run(wkv4_torch, [x.double() for x in xs], state)
    close(run(triton_wkv4, xs, state), want, tol, f"full {dtype}")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-4)])
def test_gpu_packed_full_size_vs_float64(dtype, tol):
    """seq_idx at full size on the card's kernels: rows of 8 random sequences and one whole row (B4 T4096 C2048)
    against the float64 torch chunks with the same seq_idx: outputs, final state and every gradient."""
    xs, state = make(4, 4096, 2048, 3, dtype=dtype, device="cuda")
    cuts = torch.randint(1, 4096, (3, 7), generator=torch.Generator().manual_seed(0)).sort(1).values
    seq = torch.zeros(4, 4096, dtype=torch.long)
    for b in range(3):
        seq[b, cuts[b]] = 1
    seq = seq.cumsum(1).cuda()
    want = run(lambda *a: wkv4_torch(*a, seq_idx=seq), [x.double() for x in xs], state)
    close(run(lambda *a: triton_wkv4(*a, seq), xs, state), want, tol, f"packed {dtype}")


@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
def test_no_tokens(backend, monkeypatch):
    """T = 0, as ssd_scan, selective_scan and causal_conv1d take L = 0: an empty wkv in k's dtype and graph, the state
    a copy of the one given (it was the caller's own tensors on the torch and Triton paths), or a fresh one, and its
    gradient passed through; no kernel launched."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(5, generator=g), torch.randn(5, generator=g)
    k, v = (torch.randn(2, 0, 5, generator=g).requires_grad_() for _ in range(2))
    state = tuple(torch.randn(2, 5, generator=g).requires_grad_() for _ in range(3))
    out, new = wkv4(w, u, k, v, state)
    assert out.shape == (2, 0, 5) and out.dtype == k.dtype and out.requires_grad
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(new, state))
    grads = torch.autograd.grad(out.sum() + sum((s * (i + 1)).sum() for i, s in enumerate(new)), [k, *state])
    assert grads[0].shape == (2, 0, 5) and all(torch.equal(gs, torch.full((2, 5), i + 1.0))
                                               for i, gs in enumerate(grads[1:]))
    _, fresh = wkv4(w, u, k, v)
    assert [float(s[0, 0]) for s in fresh] == [0.0, 0.0, float(torch.tensor(-1e38))]


@pytest.mark.big_memory
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("T", [131072, 1 << 20])
def test_gpu_long_sequences(T):
    xs, _ = make(1, T, 64, 1, dtype=torch.bfloat16, device="cuda")
    y, s = triton_wkv4(*xs, None)
    assert torch.isfinite(y).all() and all(torch.isfinite(x).all() for x in s)
    y32, s32 = triton_wkv4(*(x.float() for x in xs), None)  # fp32 Triton == float64 loop on the tail
    tail = 2048
    _, s_pre = triton_wkv4(xs[0].float(), xs[1].float(), xs[2][:, :-tail].float(), xs[3][:, :-tail].float(), None)
    ref, _ = wkv4_torch(*(x.double() for x in xs[:2]), xs[2][:, -tail:].double(), xs[3][:, -tail:].double(),
                        tuple(x.double() for x in s_pre))
    close([y32[:, -tail:]], [ref], 1e-4, "tail fp32")
    close([y], [y32], 3e-2, "bf16 vs fp32")


@cuda
@pytest.mark.gpu
def test_gpu_step_matches_scan_bf16():
    """The Triton step token by token (the decode path) equals the Triton scan over 1024 tokens, bf16 inputs, from
    a running state: outputs and the final state."""
    (w, u, k, v), state = make(4, 1024, 2048, 2, dtype=torch.bfloat16, device="cuda")
    w, u = w.float(), u.float()
    state = tuple(s.float() for s in state)
    y, s = wkv4(w, u, k, v, state)
    steps, cur = [], state
    for t in range(k.shape[1]):
        o, cur = wkv4_step(w, u, k[:, t], v[:, t], cur)
        steps.append(o)
    close([torch.stack(steps, 1), *canonical(cur)], [y, *canonical(s)], 1e-2, "step bf16")
