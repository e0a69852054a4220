"""wkv6: chunked torch and Triton (interpreted on CPU) against the naive loop; GPU checks marked gpu."""
import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archdsl.kernels._host import seq_runs
from archdsl.kernels.wkv6 import triton_wkv6_chunked, wkv6, wkv6_step
from archdsl.kernels.wkv6.chunked import wkv6_chunked
from archdsl.kernels.wkv6.naive import wkv6_naive

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NAMES = ("r", "k", "v", "w", "u", "h0")


def make(B, T, H, K, V, seed, dtype=torch.float64, device="cpu", decay=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    xs = [rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V), decay * F.logsigmoid(rnd(B, T, H, K)),
          rnd(H, K), rnd(B, H, K, V)]
    return [x.to(device=device, dtype=dtype) for x in xs]


def triton_wkv6(*a, **kw):
    from archdsl.kernels.wkv6.triton_wkv6 import wkv6_triton
    return wkv6_triton(*a, **kw)


def triton_chunked(*a, **kw):
    from archdsl.kernels.wkv6.triton_wkv6_chunked import wkv6_triton_chunked
    return wkv6_triton_chunked(*a, **kw)


IMPLS = {"chunked": wkv6_chunked, "triton": triton_wkv6, "triton_chunked": triton_chunked}


def run(fn, xs, with_h0, seed=1, seq=None):
    """Outputs, final state and gradients of every differentiable input for a random loss (seq: the runs
    of packed sequences, passed on as seq_idx)."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    h0 = xs[5] if with_h0 else None
    packed = {} if seq is None else {"seq_idx": seq.to(xs[0].device)}
    o, ht = fn(*xs[:5], xs[0].shape[-1] ** -0.5, h0, True, **packed)
    g = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
    loss = loss + (ht.double() * torch.randn(ht.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
    grads = torch.autograd.grad(loss, xs[:6] if with_h0 else xs[:5])
    return [o, ht, *grads]


def reference(xs, with_h0, seed=1, seq=None):
    """run(wkv6_chunked, xs in float64, ...), a batch row at a time: the same loss, one row's autograd graph in memory
    at once rather than the batch's (the full-size GPU tests share the card between workers)."""
    xs = [x.detach().double() for x in xs]
    (B, T, H, _), V = xs[0].shape, xs[2].shape[-1]
    g = torch.Generator().manual_seed(seed)  # run's draws: the loss weights of o, then of ht
    wo = torch.randn(B, T, H, V, generator=g, dtype=torch.float64).to(xs[0].device)
    wh = torch.randn(B, H, xs[0].shape[-1], V, generator=g, dtype=torch.float64).to(xs[0].device)
    rows = []
    for b in range(B):
        x = [t[b:b + 1].clone().requires_grad_() for t in xs[:4]] + [xs[4].clone().requires_grad_()]
        x += [xs[5][b:b + 1].clone().requires_grad_()] if with_h0 else []
        packed = {} if seq is None else {"seq_idx": seq[b:b + 1].to(x[0].device)}
        o, ht = wkv6_chunked(*x[:5], x[0].shape[-1] ** -0.5, x[5] if with_h0 else None, True, **packed)
        loss = (o * wo[b:b + 1]).sum() + (ht * wh[b:b + 1]).sum()
        rows.append([o.detach(), ht.detach(), *torch.autograd.grad(loss, x)])
    out = [torch.cat(col) for col in zip(*rows)]
    out[6] = sum(row[6] for row in rows)  # du: u is shared by the rows
    return out


def close(got, want, rtol, what="", floor=1e-2):
    """Each item's largest error against its largest entry, or against `floor` where the entries are smaller.
    dL/dw is a sum of terms of size ~1 (r·dr-like products of unit inputs) that cancel: where they cancel
    exactly it is 0 in float64 and float32 rounding alone in float32 (hypothesis found 3.8e-6 at T=1 without
    h0, where nothing depends on w), so its floor is 1."""
    for i, (a, b) in enumerate(zip(got, want)):
        name = (['o', 'ht'] + list(NAMES))[i]
        scale = max(b.double().abs().max().item(), 1.0 if name == "w" else floor)
        err = (a.double() - b.double()).abs().max().item() / scale
        assert err < rtol, f"{what} item {i} ({name}): rel err {err:.2e}"


shapes = st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 7, 16, 17, 31, 37]), st.integers(1, 2),
                   st.sampled_from([4, 16, 20, 33]), st.sampled_from([5, 16, 24]), st.booleans(),
                   st.integers(0, 10_000))


@settings(max_examples=12, deadline=None)
@given(shapes)
def test_chunked_matches_naive(case):
    B, T, H, K, V, with_h0, seed = case
    xs = make(B, T, H, K, V, seed)
    close(run(wkv6_chunked, xs, with_h0), run(wkv6_naive, xs, with_h0), 1e-10, "chunked")


@settings(max_examples=10, deadline=None)
@given(shapes)
def test_triton_matches_naive(case):
    B, T, H, K, V, with_h0, seed = case
    xs = make(B, T, H, K, V, seed)
    want = run(wkv6_naive, xs, with_h0)
    # float32 against float64: the decay's gradient sums products over the whole sequence; a random
    # example reached 2.9e-4 of its largest entry (seen 2026-11-29), so 5e-4. Where w has no effect (T=1,
    # no h0: dw is 0) the kernels' dw is a difference of sums that cancel, and float32 leaves ~50 eps of
    # those O(1) terms (5.7e-6 at B1 T1 H2 K33 V16): errors are measured against entries of at least 0.1
    close(run(triton_wkv6, [x.float() for x in xs], with_h0), want, 5e-4, "triton", floor=0.1)


# T = 131 spans three 64-token chunks of triton_chunked and ends inside its third sub-chunk
fixed = [(1, 1, 1, 16, 16, True), (2, 37, 2, 20, 24, False), (1, 131, 1, 33, 5, True), (2, 64, 1, 16, 16, True),
         (1, 67, 2, 24, 40, False)]


@pytest.mark.parametrize("impl", ["triton", "triton_chunked"])
@pytest.mark.parametrize("case", fixed, ids=str)
def test_triton_fixed_shapes_match_naive(impl, case):
    B, T, H, K, V, with_h0 = case
    xs = make(B, T, H, K, V, T)
    close(run(IMPLS[impl], [x.float() for x in xs], with_h0), run(wkv6_naive, xs, with_h0), 2e-4, impl)


@pytest.mark.parametrize("impl", ["triton", "triton_chunked"])
def test_triton_bf16_matches_naive(impl):
    """bfloat16 inputs take the kernels' bf16 dot operands (float32 ones take ieee)."""
    xs = make(1, 70, 2, 16, 16, 11)
    got = run(IMPLS[impl], [x.bfloat16() for x in xs[:5]] + [xs[5].float()], True)
    close(got, run(wkv6_naive, [x.bfloat16().double() for x in xs[:5]] + [xs[5]], True), 3e-2, impl)


@settings(max_examples=6, deadline=None)
@given(shapes, st.sampled_from([0, 64, 113]))
@example(case=(2, 1, 2, 20, 24, False, 6), extra=0)  # one token, no h0: dL/dw is 0, rounding alone in float32
def test_triton_chunked_matches_naive(case, extra):
    B, T, H, K, V, with_h0, seed = case
    xs = make(B, T + extra, H, K, V, seed)
    close(run(triton_chunked, [x.float() for x in xs], with_h0), run(wkv6_naive, xs, with_h0), 2e-4, "chunked")


@pytest.mark.parametrize("impl", ["chunked", "triton", "triton_chunked"])
@pytest.mark.parametrize("decay", [4.0, 20.0, 60.0])
def test_fast_decay_never_overflows(impl, decay):
    """Per-step log-decays down to -60 and below: a chunk-wide exp(-cumsum) would be inf. At 4 the
    16-token sub-chunks of the Triton kernels fall on both sides of FAST_SPAN (factored dots or the
    column loop); at 20 and 60 all take the column loop."""
    xs = make(1, 70, 2, 16, 16, 3, decay=decay)
    assert xs[3].min() < -3 * decay
    got = run(IMPLS[impl], [x.float() for x in xs], True)
    assert all(torch.isfinite(t).all() for t in got)
    close(got, run(wkv6_naive, xs, True), 2e-4, impl)


@pytest.mark.parametrize("impl", ["chunked", "chunked64", "triton", "triton_chunked"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_log_decay_of_minus_infinity_forgets_everything(impl, packed):
    """w = -inf (exp(w) = 0: the state is forgotten, as a hard reset) in a few channels, whole tokens, and runs of
    tokens, as the naive loop reads it: finite outputs, states and gradients, and the same values (dL/dw is 0
    at a -inf). Without the clamp to the decay's floor the cumulative sums met -inf - -inf = NaN."""
    xs = make(1, 70, 2, 16, 16, 4)
    w = xs[3]
    w[0, 5, 0, :3] = w[0, 20] = w[0, 33:40, 1] = w[0, 69, :, 7] = float("-inf")
    w[0, 50, 0] = -200.0  # below float32's floor, above float64's
    seq = cuts(70, [20, 41]) if packed else None
    want = run(wkv6_naive, xs, True, seq=seq)
    assert all(torch.isfinite(t).all() for t in want)
    got = run(IMPLS[impl.removesuffix("64")], xs if impl.endswith("64") else [x.float() for x in xs], True, seq=seq)
    assert all(torch.isfinite(t).all() for t in got)
    close(got, want, 1e-10 if impl.endswith("64") else 2e-4, impl)
    assert (got[5][w == float("-inf")] == 0).all()


@pytest.mark.parametrize("impl", ["chunked", "triton", "triton_chunked"])
def test_split_scan_equals_full(impl):
    fn = IMPLS[impl]
    r, k, v, w, u, h0 = make(2, 35, 2, 16, 16, 5, dtype=torch.float32)
    o, ht = fn(r, k, v, w, u, 0.25, h0, True)
    o1, h1 = fn(r[:, :19], k[:, :19], v[:, :19], w[:, :19], u, 0.25, h0, True)
    o2, h2 = fn(r[:, 19:], k[:, 19:], v[:, 19:], w[:, 19:], u, 0.25, h1, True)
    close([torch.cat([o1, o2], 1), h2], [o, ht], 1e-5, impl)


# ---------------------------------------------------------------- packed sequences (seq_idx)
def cuts(T, where):
    """The runs [1, T] of sequences that begin at the positions `where` (sorted, 0 < p < T)."""
    return seq_runs((torch.arange(T)[:, None] >= torch.tensor([p for p in where if 0 < p < T] or [T])).sum(1)[None])


packs = st.tuples(st.integers(1, 150), st.lists(st.integers(1, 149), max_size=5), st.booleans(),
                  st.integers(0, 10_000))


@pytest.mark.parametrize("impl", ["chunked", "triton", "triton_chunked", "triton_chunked_split"])
@settings(max_examples=6, deadline=None)
@given(packs)
@example(case=(150, [16, 64, 65, 128], True, 0))  # sequences that begin on sub-chunk and segment edges
@example(case=(40, list(range(1, 40)), True, 1))  # a new sequence every token
@example(case=(300, [10, 200], False, 2))  # chains of several segments between the breaks, run side by side
def test_seq_idx_matches_naive(impl, case):
    """Outputs, final state and every gradient of a packed batch (its second row packed at other points) against
    the naive loop in float64."""
    T, where, with_h0, seed = case
    xs = make(2, T, 2, 16, 8, seed)
    seq = torch.cat([cuts(T, sorted(where)), cuts(T, [T // 3, T // 2])])
    want = run(wkv6_naive, xs, with_h0, seq=seq)
    # triton_chunked: its boundary passes walk one chain a row; _split: the chains' pieces side by side
    with mock.patch.object(triton_wkv6_chunked, "SPLIT_CHAINS", impl.endswith("_split")):
        impl = impl.removesuffix("_split")
        got = run(IMPLS[impl], xs if impl == "chunked" else [x.float() for x in xs], with_h0, seq=seq)
    close(got, want, 1e-10 if impl == "chunked" else 2e-4, impl, floor=0.1)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_packed_batch_equals_each_sequence_alone(impl):
    """The packed row's outputs are those of each sequence scanned alone (the first from h0, the others from
    zeros) and its final state is the last sequence's."""
    fn = {"naive": wkv6_naive, "chunked": wkv6_chunked}[impl]
    r, k, v, w, u, h0 = make(1, 50, 2, 8, 6, 3)
    starts = [0, 7, 8, 33, 50]
    o, ht = fn(r, k, v, w, u, 0.5, h0, True, seq_idx=cuts(50, starts[1:-1]))
    for i, (a, b) in enumerate(zip(starts, starts[1:])):
        oa, ha = fn(r[:, a:b], k[:, a:b], v[:, a:b], w[:, a:b], u, 0.5, h0 if i == 0 else None, True)
        close([o[:, a:b]], [oa], 1e-12, f"sequence {i}")
    close([ht], [ha], 1e-12, "final state")


@settings(max_examples=10, deadline=None)
@given(seq=st.lists(st.sampled_from([-3, 0, 1, 2, 7, 2**40]), min_size=23, max_size=23))
def test_seq_idx_of_any_integers(seq):
    """Any integers, in any order: the public op restarts wherever seq_idx changes, and the initial state goes
    on only into a first run of 0s (the naive loop's definition, on seq_idx as given)."""
    r, k, v, w, u, h0 = make(1, 23, 2, 8, 6, 5)
    seq = torch.tensor([seq])
    got = wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, seq_idx=seq)
    close(list(got), list(wkv6_naive(r, k, v, w, u, None, h0, True, seq_idx=seq)), 1e-12)


# ---------------------------------------------------------------- fla's varlen form (cu_seqlens)
varlens = st.tuples(st.lists(st.integers(1, 150), min_size=1, max_size=5), st.booleans(), st.booleans(),
                    st.integers(0, 10_000))


def varlen_run(xs, cu, with_h0, final, seed=1, **kw):
    """wkv6 over one packed row with cu_seqlens (h0 [n, H, K, V]): outputs, final states and the gradients of a
    random loss."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    o, ht = wkv6(*xs[:5], 0.5, xs[5] if with_h0 else None, final, cu_seqlens=torch.tensor(cu, device=xs[0].device), **kw)
    g = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
    if final:
        loss = loss + (ht.double() * torch.randn(ht.shape, generator=g, dtype=torch.float64).to(o.device)).sum()
    return [o, *([ht] if final else []), *grads(loss, xs if with_h0 else xs[:5])]


def each_alone(xs, cu, with_h0, final, impl=wkv6_naive):
    """What varlen_run gives, computed a sequence at a time: impl (float64 inputs) over each sequence alone from its
    own initial state; the same random loss over the outputs and final states put back together."""
    alone = [x.detach().clone().requires_grad_() for x in xs]
    outs, states = [], []
    for i, (a, b) in enumerate(zip(cu, cu[1:])):
        o, ht = impl(*(x[:, a:b] for x in alone[:4]), alone[4], 0.5, alone[5][i:i + 1] if with_h0 else None, True)
        outs.append(o)
        states.append(ht)
    want = [torch.cat(outs, 1), *([torch.cat(states)] if final else [])]
    g = torch.Generator().manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum() for t in want)
    return want + grads(loss, alone if with_h0 else alone[:5])


def grads(loss, xs):
    """d loss / d xs, zeros for an input nothing read (w where no state carries on)."""
    got = torch.autograd.grad(loss, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, got)]


@pytest.mark.parametrize("backend", ["torch", "triton", "triton_chunked"])
@settings(max_examples=8, deadline=None)
@given(case=varlens)
@example(case=([1], True, True, 0))  # one token
@example(case=([17, 1, 33, 16], True, False, 1))  # lengths across the sub-chunk edges, initial states only
@example(case=([5, 40, 2], False, True, 2))  # final states only
@example(case=([130, 5, 64, 65], True, True, 3))  # several pieces of 64 tokens a sequence, one on the edge
def test_cu_seqlens_equals_each_sequence_alone(backend, case):
    """fla's varlen form: every sequence of the packed row scanned alone from its own initial state, with its own
    final state, on every path (triton: a program a sequence; triton_chunked: pieces of 64 tokens); outputs, final
    states and the gradients of every input against the naive loop in float64, sequence by sequence."""
    impl = "chunked" if backend == "triton_chunked" else "serial"
    backend = backend.removesuffix("_chunked")
    lengths, with_h0, final, seed = case
    cu = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    T, n = cu[-1], len(lengths)
    r, k, v, w, u, _ = make(1, T, 2, 8, 6, seed)
    h0 = make(n, 1, 2, 8, 6, seed + 1)[5]
    xs = [r, k, v, w, u, h0] if backend == "torch" else [x.float() for x in (r, k, v, w, u, h0)]
    with mock.patch.dict(os.environ, {"ARCHDSL_KERNELS": backend, "ARCHDSL_WKV6_IMPL": impl}):
        got = varlen_run(xs, cu, with_h0, final)
    want = each_alone([r, k, v, w, u, h0], cu, with_h0, final)
    if not final:  # close() names the items o, ht, r, ...: keep the names in step
        got.insert(1, torch.zeros(1))
        want.insert(1, torch.zeros(1))
    close(got, want, 1e-10 if backend == "torch" else 2e-4, backend, floor=0.1)


@pytest.mark.parametrize("impl", ["serial", "chunked"])
def test_cu_seqlens_with_states_takes_strided_and_mixed_inputs(impl, monkeypatch):
    """The Triton varlen paths on what a model hands them: r, k, w as views into one wider [1, T, H, 3K] tensor
    (not contiguous), v in bfloat16 beside float32 r, k, w, a bfloat16 initial state: the values of the same
    inputs made contiguous in float32, on the torch path."""
    monkeypatch.setenv("ARCHDSL_WKV6_IMPL", impl)
    cu = [0, 70, 71, 150]
    r, k, v, w, u, _ = make(1, 150, 2, 8, 6, 5, dtype=torch.float32)
    h0 = make(3, 1, 2, 8, 6, 6, dtype=torch.bfloat16)[5]
    wide = torch.cat([r, k, w], -1)
    views = [wide[..., :8], wide[..., 8:16], v.bfloat16(), wide[..., 16:], u]
    assert not views[0].is_contiguous()
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    o, ht = wkv6(*views, 0.5, h0, True, cu_seqlens=torch.tensor(cu))
    monkeypatch.setenv("ARCHDSL_KERNELS", "torch")
    o2, ht2 = wkv6(r, k, v.bfloat16().float(), w, u, 0.5, h0.float(), True, cu_seqlens=torch.tensor(cu))
    assert o.dtype == torch.float32 and ht.dtype == torch.float32
    close([o, ht], [o2, ht2], 1e-4, impl)


def test_cu_seqlens_in_fla_s_place():
    """chunk_rwkv6's positional order: cu_seqlens right after output_final_state."""
    r, k, v, w, u, _ = make(1, 12, 2, 8, 6, 7)
    h0 = make(2, 1, 2, 8, 6, 8)[5]
    cu = torch.tensor([0, 5, 12])
    got = wkv6(r, k, v, w, u, 0.5, h0, True, cu)
    close(list(got), list(wkv6(r, k, v, w, u, 0.5, h0, True, cu_seqlens=cu)), 1e-15)


def test_cu_seqlens_without_states_is_the_packed_row():
    """Without states, cu_seqlens stands for seq_idx (one packed row, no padding): the same outputs as seq_idx and
    as zero initial states, with a seq_idx that says the same packing accepted beside it."""
    r, k, v, w, u, _ = make(1, 30, 2, 8, 6, 4)
    cu = [0, 3, 4, 30]
    seq = cuts(30, cu[1:-1])
    want = [wkv6_naive(r, k, v, w, u, 0.125, seq_idx=seq)[0]]
    o, ht = wkv6(r, k, v, w, u, 0.125, cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    assert ht is None
    close([o], want, 1e-12)
    o2, _ = wkv6(r, k, v, w, u, 0.125, torch.zeros(3, 2, 8, 6, dtype=torch.float64), cu_seqlens=torch.tensor(cu))
    o3, _ = wkv6(r, k, v, w, u, 0.125, seq_idx=seq, cu_seqlens=torch.tensor(cu),
                 cu_seqlens_cpu=torch.tensor(cu))
    close([o2, o3], [o, o], 1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(cu_seqlens=torch.tensor([0, 3, 3, 8])), r"cu_seqlens: expected 0, then increasing offsets, then L=8"),
    (dict(cu_seqlens=torch.tensor([0, 7])), "then L=8"),
    (dict(cu_seqlens=torch.tensor([0.0, 8.0])), "cu_seqlens: expected an integer tensor"),
    (dict(cu_seqlens=torch.tensor([[0, 8]])), r"cu_seqlens: expected shape \[\*\], got \[1, 2\]"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), cu_seqlens_cpu=torch.tensor([0, 8])), "cu_seqlens_cpu: expected shape"),
    (dict(cu_seqlens_cpu=torch.tensor([0, 3, 8])), "cu_seqlens_cpu: given without cu_seqlens"),
    # both on the CPU: compared (it had been read in place of cu_seqlens, or not, as output_final_state said)
    (dict(cu_seqlens=torch.tensor([0, 2, 8]), cu_seqlens_cpu=torch.tensor([0, 3, 8])),
     r"cu_seqlens_cpu: expected cu_seqlens' offsets \[0, 2, 8\], got \[0, 3, 8\]"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), seq_idx=torch.zeros(1, 8, dtype=torch.long)), "not seq_idx's"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), seq_idx=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])),
     r"seq_idx: expected shape \[1, 8\], got \[8\]"),  # seq_idx checked before cu_seqlens reads it
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), seq_idx=torch.zeros(1, 8)), "seq_idx: expected an integer tensor"),
    (dict(cu_seqlens=torch.tensor([0, 3, 8]), initial_state=torch.zeros(1, 2, 8, 6)),
     r"initial_state: expected shape \[2, 2, 8, 6\]"),
])
def test_cu_seqlens_bad_inputs(kw, match):
    r, k, v, w, u, _ = make(1, 8, 2, 8, 6, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        wkv6(r, k, v, w, u, **kw)
    with pytest.raises(ValueError, match="for a batch of 1"):
        wkv6(*(torch.cat([x, x]) for x in (r, k, v, w)), u, cu_seqlens=torch.tensor([0, 8]))


def test_cu_seqlens_with_states_more_sequences_than_the_triton_grid_takes(monkeypatch):
    """On the Triton path a sequence is a program along the grid's z (at most 65535): more is a clear error."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    T = 65536
    r, k, v, w = (torch.zeros(1, T, 1, 1) for _ in range(4))
    with pytest.raises(ValueError, match="cu_seqlens: at most 65535 sequences on the Triton path, got 65536"):
        wkv6(r, k, v, w, torch.zeros(1, 1), 1.0, torch.zeros(T, 1, 1, 1), cu_seqlens=torch.arange(T + 1))


@pytest.mark.parametrize("K,V", [(8, 6), (5, 40)])
@pytest.mark.parametrize("dtype,state_dtype,tol", [(torch.float32, torch.float32, 1e-6),
                                                   (torch.bfloat16, torch.float32, 1e-6),
                                                   (torch.float32, torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("layout", ["dense", "pool rows", "V before K"])
def test_triton_step_equals_the_torch_step(K, V, dtype, state_dtype, tol, layout, monkeypatch):
    """The Triton step against the torch one: o in r's dtype and the state updated in place in its own dtype, for
    a dense state, every other row of a pool, and a state whose K and V strides are swapped (a transposed view)."""
    B, H = 3, 2
    r, k, v, w, u, h0 = make(B, 1, H, K, V, 4, dtype=torch.float32)
    r, k, v, w = (t[:, 0].to(dtype) for t in (r, k, v, w))
    u = u.to(dtype)
    if layout == "dense":
        state = h0.to(state_dtype).clone()
    elif layout == "pool rows":
        state = torch.zeros(2 * B, H, K, V, dtype=state_dtype)[1::2]
        state.copy_(h0)
    else:
        state = h0.to(state_dtype).transpose(-1, -2).contiguous().transpose(-1, -2)
    want_state = state.clone()
    monkeypatch.setenv("ARCHDSL_KERNELS", "torch")
    want = wkv6_step(want_state, r, k, v, w, u, 0.7)
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    got = wkv6_step(state, r, k, v, w, u, 0.7)
    assert got.dtype == dtype and state.dtype == state_dtype
    close([got, state], [want, want_state], tol, layout)


def test_step_matches_parallel():
    r, k, v, w, u, h0 = make(2, 23, 3, 12, 10, 7)
    o, ht = wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    state = h0.clone()
    steps = [wkv6_step(state, r[:, t], k[:, t], v[:, t], w[:, t], u) for t in range(23)]
    close([torch.stack(steps, 1), state], [o, ht], 1e-12, "step")


@pytest.mark.parametrize("which", ["serial", "chunked"])
def test_public_op_runs_the_forced_triton_implementation(which, monkeypatch):
    from archdsl.kernels.wkv6 import op
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or the Triton interpreter")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ran = []
    for name, load in list(op._TRITON.items()):
        monkeypatch.setitem(op._TRITON, name, lambda name=name, load=load: ran.append(name) or load())
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    monkeypatch.setenv("ARCHDSL_WKV6_IMPL", which)
    r, k, v, w, u, h0 = make(1, 70, 2, 16, 8, 4, dtype=torch.float32, device=device)
    o, ht = wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    assert ran == [which]
    close([o, ht], list(wkv6_naive(r, k, v, w, u, 0.25, h0, True)), 2e-4, which)
    monkeypatch.setenv("ARCHDSL_WKV6_IMPL", "fast")
    with pytest.raises(ValueError, match="ARCHDSL_WKV6_IMPL"):
        wkv6(r, k, v, w, u)


@pytest.mark.parametrize("shape, V, grad, want", [
    ((1, 16384, 32, 64), 64, True, "chunked"), ((2, 4096, 32, 64), 64, True, "chunked"),
    ((2, 2048, 32, 64), 64, True, "chunked"), ((1, 1024, 32, 64), 64, True, "serial"),
    ((1, 1024, 32, 64), 64, False, "chunked"), ((1, 1023, 32, 64), 64, False, "serial"),
    ((4, 4096, 32, 64), 64, True, "serial"), ((4, 4096, 32, 64), 64, False, "serial"),
    ((1, 4096, 32, 64), 256, True, "serial")])
def test_default_layout_keeps_the_card_busy(shape, V, grad, want, monkeypatch):
    """Unset ARCHDSL_WKV6_IMPL on a 132-multiprocessor card: the serial layout (a program per batch, head and
    64-wide V block, each walking all of T) unless that leaves more than half the card idle over T >= 2048
    (T >= 1024 for a forward without gradients)."""
    from archdsl.kernels.wkv6 import op
    monkeypatch.setattr(op, "sm_count", lambda device: 132)
    assert op._default_impl(shape, V, torch.device("cuda"), grad) == want
    assert op._default_impl(shape, V, torch.device("cpu"), grad) == "serial"


@pytest.mark.parametrize("T, n, longest, grad, want", [
    (16384, 64, 8320, True, "chunked"), (16384, 16, 3589, True, "serial"), (16384, 64, 8320, False, "serial"),
    (16384, 2, 8192, True, "chunked"), (4096, 2, 4000, True, "serial"), (1 << 22, 2, 1 << 21, True, "serial")])
def test_varlen_default_takes_the_chunked_form_for_one_dominant_sequence(T, n, longest, grad, want):
    """cu_seqlens with states, ARCHDSL_WKV6_IMPL unset: serial, but on CUDA with gradients over T >= 8192 where
    one sequence holds half the row or more, the chunked form, while its pieces fit the grid (65535)."""
    from archdsl.kernels.wkv6 import op
    assert op._varlen_default(T, n, longest, grad, torch.device("cuda")) == want
    assert op._varlen_default(T, n, longest, grad, torch.device("cpu")) == "serial"


def test_public_op_dispatches_and_defaults_scale():
    r, k, v, w, u, _ = make(1, 9, 2, 16, 8, 9)
    o, ht = wkv6(r, k, v, w, u)
    assert ht is None and o.shape == v.shape and o.dtype == r.dtype
    close([o], [wkv6_naive(r, k, v, w, u, 16 ** -0.5)[0]], 1e-12)


def test_bad_inputs_raise_value_error():
    r, k, v, w, u, h0 = make(1, 5, 2, 8, 8, 0)
    with pytest.raises(ValueError, match="k"):
        wkv6(r, k[:, :4], v, w, u)
    with pytest.raises(ValueError, match="u"):
        wkv6(r, k, v, w, u[:1])
    with pytest.raises(ValueError, match="initial_state"):
        wkv6(r, k, v, w, u, initial_state=h0[..., :3])
    with pytest.raises(ValueError, match="v"):
        wkv6_step(h0.clone(), r[:, 0], k[:, 0], v[:, 0, :, :3], w[:, 0], u)
    with pytest.raises(ValueError, match=r"seq_idx: expected shape \[1, 5\]"):
        wkv6(r, k, v, w, u, seq_idx=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_idx: expected an integer tensor"):
        wkv6(r, k, v, w, u, seq_idx=torch.zeros(1, 5))


def _dw_error(fn, T, dtype, device, H=1, cu=None):
    """‖dw − dw in float64‖ / ‖dw in float64‖ for the sum of the outputs, over T tokens of unit inputs; cu: fla's
    varlen offsets, fn then called with them and zero initial states, the float64 dw each sequence's alone."""
    xs = [x.to(dtype) for x in make(1, T, H, 64, 64, 5, device=device)[:5]]

    def dw(f, inputs, **kw):
        inputs = [x.detach().requires_grad_() for x in inputs]
        return torch.autograd.grad(f(*inputs, 1.0, **kw)[0].sum(), inputs[3])[0].double()

    cu = cu or [0, T]
    want = torch.cat([dw(wkv6_chunked, [x.double()[:, a:b] for x in xs[:4]] + [xs[4].double()])
                      for a, b in zip(cu, cu[1:])], 1)
    kw = dict(initial_state=torch.zeros(len(cu) - 1, H, 64, 64, device=device),
              cu_seqlens=torch.tensor(cu, device=device)) if len(cu) > 2 else {}
    return ((dw(fn, xs, **kw) - want).norm() / want.norm()).item()


def test_serial_dw_does_not_grow_with_the_sequence():
    """The serial backward summed dw's terms, far larger than dw itself, over the whole sequence: float32 at T 2048
    came to ~6e-6 of dw's norm (4.4e-6 at T 1024, 8.9e-6 at 4096; bf16 on the card 2.3e-2 at 4096, 4.5e-2 at
    16384, fla 1.8e-3). The sum restarts from Σ_V(S ⊙ dS) at the states sweep 1 stores: 9e-7 at every length."""
    assert _dw_error(triton_wkv6, 2048, torch.float32, "cpu") < 2.5e-6


def test_serial_dw_does_not_grow_with_a_varlen_sequence():
    """The same restarts in fla's varlen form, whose sequences' lengths are on the device: a slot for every stored
    state of every sequence in T // CKPT + n a head (three sequences, the long one not starting on a multiple of
    CKPT; before: 5.4e-6)."""
    assert _dw_error(triton_wkv6, 2048, torch.float32, "cpu", cu=[0, 37, 1500, 2048]) < 2.5e-6


# ---------------------------------------------------------------- GPU, full size
def gpu_case(B, T, H, K, V, dtype, seed=0):
    return make(B, T, H, K, V, seed, dtype=dtype, device="cuda")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "triton_chunked", "triton_varlen"])
def test_gpu_dw_over_long_sequences_in_bf16(impl):
    """bf16 dw against float64 at T 16384 (H100, before the restarts: the serial layout's 4.5e-2, the chunked 3.8e-3,
    fla 1.8e-3); triton_varlen: the serial layout's varlen form, three sequences of fla's cu_seqlens."""
    cu = [0, 1000, 9001, 16384] if impl == "triton_varlen" else None
    assert _dw_error(IMPLS[impl.removesuffix("_varlen")], 16384, torch.bfloat16, "cuda", H=8, cu=cu) < 1e-2


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "triton_chunked"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-3)])
def test_gpu_full_size_vs_float64(dtype, tol, impl):
    xs = gpu_case(4, 4096, 32, 64, 64, dtype)
    want = reference(xs, True)
    close(run(IMPLS[impl], xs, True), want, tol, f"{impl} full {dtype}")


@pytest.mark.big_memory
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "triton_chunked"])
@pytest.mark.parametrize("T", [131072, 1 << 20])
def test_gpu_long_sequences(T, impl):
    triton_wkv6 = IMPLS[impl]
    xs = gpu_case(1, T, 2, 64, 64, torch.bfloat16)
    o, ht = triton_wkv6(*xs[:5], 0.125, xs[5], True)
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    ro, rh = wkv6_chunked(*[x.double() for x in xs[:5]], 0.125, xs[5].double(), True)
    close([o, ht], [ro, rh], 3e-2, f"T={T}")
    if T == 131072:
        close(run(triton_wkv6, xs, True)[2:], run(wkv6_chunked, [x.double() for x in xs], True)[2:], 5e-2, "grads")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "triton_chunked", "triton_chunked_split"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-3)])
def test_gpu_seq_idx_full_size_vs_float64(dtype, tol, impl, monkeypatch):
    """B4 T4096 H32 K=V=64, each row packed differently (sequences of 1 to ~1000 tokens, boundaries on and off
    the 16- and 64-token edges), outputs, final state and gradients against float64; the chunked layout's
    boundary passes as one chain a row (the default at this size) and split at the breaks."""
    monkeypatch.setattr(triton_wkv6_chunked, "SPLIT_CHAINS", impl.endswith("_split"))
    impl = impl.removesuffix("_split")
    xs = gpu_case(4, 4096, 32, 64, 64, dtype)
    g = torch.Generator().manual_seed(0)
    seq = torch.cat([cuts(4096, sorted(torch.randint(1, 4096, (n,), generator=g).tolist())) for n in (1, 7, 40, 300)])
    seq[0, 2048:] += 1  # and one boundary on a segment's edge
    want = reference(xs, True, seq=seq)
    close(run(IMPLS[impl], xs, True, seq=seq), want, tol, f"{impl} packed {dtype}")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["serial", "chunked"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float32, 1e-3)])
def test_gpu_cu_seqlens_with_states_vs_float64_and_fla(dtype, tol, impl, monkeypatch):
    """fla's varlen form at full size: 40 sequences of 1 to ~1500 tokens packed into T=16384, H32 K=V=64, an
    initial state each and their final states; outputs, states and every gradient against the float64 chunked
    scan of each sequence alone, and the outputs and states against fla's chunk_rwkv6 with the same arguments, where
    fla is installed."""
    g = torch.Generator().manual_seed(0)
    cu = [0, *sorted(torch.randperm(16383, generator=g)[:39].add(1).tolist()), 16384]
    r, k, v, w, u, _ = gpu_case(1, 16384, 32, 64, 64, dtype)
    h0 = gpu_case(40, 1, 32, 64, 64, dtype, seed=1)[5]
    xs = [r, k, v, w, u, h0]
    want = each_alone([x.double() for x in xs], cu, True, True, wkv6_chunked)
    monkeypatch.setenv("ARCHDSL_WKV6_IMPL", impl)
    close(varlen_run(xs, cu, True, True), want, tol, f"cu_seqlens {impl} {dtype}")
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except ImportError:
        return
    o, ht = chunk_rwkv6(r, k, v, w, u, 0.5, h0.float(), True, cu_seqlens=torch.tensor(cu, device="cuda"))
    # fla's chunk kernels multiply float32 in TF32 (tl.dot's default): 1.07e-3 on the H100, above our 1e-3
    close([o, ht], want[:2], max(tol, 5e-3), f"fla {dtype}")


@cuda
@pytest.mark.gpu
def test_gpu_step_matches_parallel_bf16():
    r, k, v, w, u, h0 = gpu_case(2, 4096, 4, 64, 64, torch.bfloat16)
    o, ht = wkv6(r, k, v, w, u, initial_state=h0.float(), output_final_state=True)
    state = h0.float().clone()
    steps = torch.stack([wkv6_step(state, r[:, t], k[:, t], v[:, t], w[:, t], u) for t in range(4096)], 1)
    close([steps, state], [o, ht], 2e-2, "step bf16")


@cuda
@pytest.mark.gpu
def test_gpu_choice_is_timed_once_and_cached(monkeypatch):
    from archdsl.kernels import _dispatch
    monkeypatch.setenv("ARCHDSL_WKV6_IMPL", "auto")
    monkeypatch.setattr(_dispatch, "_CHOICE", {})
    r, k, v, w, u, h0 = gpu_case(2, 1000, 4, 64, 64, torch.bfloat16)
    o1, _ = wkv6(r, k, v, w, u, initial_state=h0)
    (choice,) = _dispatch._CHOICE.values()
    o2, _ = wkv6(r, k, v, w, u, initial_state=h0)
    assert choice in ("serial", "chunked") and len(_dispatch._CHOICE) == 1 and torch.equal(o1, o2)


@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
@pytest.mark.parametrize("h0", [False, True])
def test_no_tokens(backend, h0, monkeypatch):
    """T = 0: an empty o in r's dtype and v's graph, the final state a copy of initial_state (zeros without one) with
    its gradient passed through; no kernel launched (the output was outside autograd's graph)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    g = torch.Generator().manual_seed(0)
    r, k, v, w = (torch.randn(2, 0, 3, 4, generator=g).requires_grad_() for _ in range(4))
    u = torch.randn(3, 4, generator=g)
    h = torch.randn(2, 3, 4, 4, generator=g).requires_grad_() if h0 else None
    o, final = wkv6(r, k, v, w, u, initial_state=h, output_final_state=True)
    assert o.shape == (2, 0, 3, 4) and o.dtype == r.dtype and o.requires_grad
    assert final.dtype == torch.float32 and torch.equal(final, h if h0 else torch.zeros(2, 3, 4, 4))
    assert wkv6(r, k, v, w, u, initial_state=h)[1] is None
    if h0:
        assert final.data_ptr() != h.data_ptr()
        wf = torch.randn(2, 3, 4, 4, generator=g)
        dv, dh = torch.autograd.grad(o.sum() + (final * wf).sum(), [v, h])
        assert dv.shape == (2, 0, 3, 4) and torch.equal(dh, wf)


@pytest.mark.parametrize("backend", ["naive", "torch", "triton"])
@pytest.mark.parametrize("varlen", [False, True])
def test_no_key_channels_with_a_scale_is_empty_work(backend, varlen, monkeypatch):
    """K = 0 with a scale given, as the other zero counts: o is 0 in r's dtype and in autograd's graph (v's gradient
    0), the final state `[B, H, 0, V]` as the initial one, on every path and with fla's cu_seqlens; wkv6_step alike.
    Without a scale it is a ValueError naming scale (the default K^-0.5 needs K >= 1): it was refused either way,
    the message blaming the default."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    B, T, H, V = (1, 6, 2, 3) if varlen else (2, 5, 2, 3)
    g = torch.Generator().manual_seed(0)
    r, k, w = (torch.randn(B, T, H, 0, generator=g).requires_grad_() for _ in range(3))
    v = torch.randn(B, T, H, V, generator=g).requires_grad_()
    u = torch.randn(H, 0, generator=g)
    n = 2 if varlen else B
    h0 = torch.randn(n, H, 0, V, generator=g).requires_grad_()
    packing = dict(cu_seqlens=torch.tensor([0, 2, T])) if varlen else {}
    o, final = wkv6(r, k, v, w, u, 0.5, h0, True, **packing)
    assert o.shape == (B, T, H, V) and o.dtype == r.dtype and o.requires_grad and not o.any()
    assert final.shape == (n, H, 0, V) and final.dtype == torch.float32
    (dv,) = torch.autograd.grad(o.sum(), [v])
    assert torch.equal(dv, torch.zeros_like(v))
    with pytest.raises(ValueError, match=r"scale: the default, K\^-0.5, needs a key size K .* got K=0"):
        wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, **packing)
    state = torch.zeros(B, H, 0, V)
    step = [t[:, 0].detach() for t in (r, k, v, w)]
    o1 = wkv6_step(state, *step, u, scale=0.5)
    assert o1.shape == (B, H, V) and o1.dtype == r.dtype and not o1.any()
    with pytest.raises(ValueError, match=r"scale: the default, K\^-0.5, needs a key size K .* got K=0"):
        wkv6_step(state, *step, u)
