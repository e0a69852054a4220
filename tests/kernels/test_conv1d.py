"""Depthwise causal conv1d: Triton (interpreted on CPU) and the F.conv1d path against the loop."""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archdsl.kernels.conv1d import causal_conv1d, causal_conv1d_update
from archdsl.kernels.conv1d.chunked import causal_conv1d_torch
from archdsl.kernels.conv1d.naive import causal_conv1d_naive
from archdsl.kernels._host import seq_runs

CUDA = torch.cuda.is_available()


@contextmanager
def backend(name):
    old = os.environ.get("ARCHDSL_KERNELS")
    os.environ["ARCHDSL_KERNELS"] = name
    try:
        yield
    finally:
        os.environ.pop("ARCHDSL_KERNELS") if old is None else os.environ.__setitem__("ARCHDSL_KERNELS", old)


def make(b, D, L, W, *, bias=True, init=False, seq=False, dtype=torch.float32, device="cpu", seed=0,
         channels_last=False):
    """channels_last: x a transposed slice of a [b, L, D + 3] tensor, as Mamba-2 passes in_proj's output.
    seq: packed sequences, seq_idx of four runs cut at random (some empty, some of one token), the first
    run 0 (the initial states' sequence) or 7."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=device).to(dtype)
    x = r(b, L, D + 3)[:, :, 1:D + 1].transpose(1, 2) if channels_last else r(b, D, L)
    t = dict(x=x, weight=r(D, W) / W ** 0.5, bias=r(D) if bias else None,
             initial_states=r(b, D, W - 1) if init else None, seq_idx=None)
    if seq:
        cuts = torch.sort(torch.randint(0, L + 1, (b, 3), generator=g, device=device), dim=1).values
        runs = (torch.arange(L, device=device)[None, :, None] >= cuts[:, None, :]).sum(-1)
        t["seq_idx"] = runs + 7 * torch.randint(0, 2, (b, 1), generator=g, device=device)
    return t


def as64(t):
    """t's float tensors in float64 (seq_idx as it is)."""
    return {k: v.double() if v is not None and v.is_floating_point() else v for k, v in t.items()}


def run(fn, t, activation, grads=True):
    kw = dict(initial_states=t["initial_states"], return_final_states=True)
    if t.get("seq_idx") is not None:
        kw["seq_idx"] = t["seq_idx"]
    if not grads:
        with torch.no_grad():
            return list(fn(t["x"], t["weight"], t["bias"], activation, **kw))
    leaves = {k: (v.detach() if k == "x" else v.detach().clone()).requires_grad_() for k, v in t.items()
              if v is not None and k != "seq_idx"}  # x keeps its strides
    a = {**t, **leaves}
    y, fin = fn(a["x"], a["weight"], a["bias"], activation, **{**kw, "initial_states": a["initial_states"]})
    if not grads:
        return [y, fin]
    B, D, L = y.shape
    w = torch.randn(B, L, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64).transpose(1, 2)
    w = w.to(y.device) if t["x"].stride(1) == 1 else w.contiguous().to(y.device)  # dy laid out as x
    return [y, fin] + list(torch.autograd.grad((y.double() * w).sum(), list(leaves.values())))


def assert_close(got, want, tol, sums=(), sum_tol=1e-3):
    """Relative errors below tol; the outputs at the indices in `sums` (weight's and bias's gradients: sums of
    b·L terms that can cancel to far below the terms' size) get sum_tol, their size taken as at least 0.01.
    Seen: the bias gradient of D 1, L 300 is 0.0148 from terms of size ~1, and float32 torch is 1.8e-5 off it."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert torch.isfinite(a).all(), i
        limit, floor = (sum_tol, 1e-2) if i in sums else (tol, 1e-6)
        err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(floor)).item()
        assert err < limit, (i, err)


shapes = dict(b=st.integers(1, 2), D=st.sampled_from([1, 3, 5, 17]), L=st.sampled_from([1, 2, 3, 7, 13, 300]),
              W=st.integers(2, 4), act=st.sampled_from([None, "silu", "swish"]), bias=st.booleans(),
              init=st.booleans(), seq=st.booleans(), seed=st.integers(0, 3))


def naive(x, weight, bias, activation, initial_states=None, return_final_states=False, seq_idx=None):
    """The loop, taking seq_idx as the public op does (any integers, numbered into runs)."""
    runs = None if seq_idx is None else seq_runs(seq_idx)
    return causal_conv1d_naive(x, weight, bias, activation, initial_states, return_final_states, runs)


@settings(max_examples=25, deadline=None)
@given(**shapes, channels_last=st.booleans())
@example(b=1, D=1, L=300, W=2, act="silu", bias=True, init=False, seq=False, seed=0,
         channels_last=True)  # a cancelling bias gradient
@example(b=1, D=1, L=7, W=2, act="silu", bias=True, init=True, seq=False, seed=1,
         channels_last=False)  # a cancelling initial-state gradient: -2e-4 from terms of ~1, float32 1.7e-5 off
def test_triton_matches_naive(b, D, L, W, act, bias, init, seq, seed, channels_last):
    t = make(b, D, L, W, bias=bias, init=init, seq=seq, seed=seed, channels_last=channels_last)
    want = run(naive, as64(t), act)
    sums = (3, 4, 5) if bias else (3, 4)  # weight, bias and initial-state gradients: sums that can cancel
    with backend("triton"):
        assert_close(run(causal_conv1d, t, act), want, 1e-5, sums=sums)


@settings(max_examples=25, deadline=None)
@given(**shapes)
def test_torch_matches_naive(b, D, L, W, act, bias, init, seq, seed):
    t = make(b, D, L, W, bias=bias, init=init, seq=seq, seed=seed, dtype=torch.float64)
    with backend("torch"):
        assert_close(run(causal_conv1d, t, act), run(naive, t, act), 1e-12)


@pytest.mark.parametrize("name", ["triton", "torch", "naive"])
@pytest.mark.parametrize("W", [2, 4])
def test_seq_idx_packed_equals_each_alone(name, W):
    """A packed batch (runs of 6, 1, 2 and 14 tokens; the first, seq_idx 0, continues the initial states) equals
    each sequence convolved alone, the others from zeros; the final states are the last sequence's own."""
    t = make(1, 5, 23, W, init=True)
    lengths = [6, 1, 2, 14]
    seq = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))[None]
    with backend(name):
        y, fin = run(causal_conv1d, {**t, "seq_idx": seq}, "silu", grads=False)
        parts, start = [], 0
        for i, n in enumerate(lengths):
            part = {**t, "x": t["x"][..., start:start + n], "initial_states": t["initial_states"] if i == 0 else None}
            parts.append(run(causal_conv1d, part, "silu", grads=False))
            start += n
    assert_close([y, fin], [torch.cat([p[0] for p in parts], -1), parts[-1][1]], 1e-6)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_seq_idx_final_states_of_a_short_last_sequence(name):
    """The last sequence shorter than the window: the final states hold its tokens and zeros before them (not the
    previous sequence's inputs), so a continuation of it reads what it would alone; one of seq_idx 0 reads the
    initial states before it."""
    t = make(2, 3, 9, 4, init=True)
    for seq, keep in ([[1] * 8 + [2]] * 2, 1), ([[0] * 9] * 2, 3):
        with backend(name):
            _, fin = run(causal_conv1d, {**t, "seq_idx": torch.tensor(seq)}, None, grads=False)
        want = torch.cat([t["initial_states"], t["x"]], -1)[..., -3:]
        want[..., :3 - keep] = 0
        assert_close([fin], [want], 1e-7)


@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_gradient_in_the_other_layout(channels_last):
    """dy laid out unlike x (a steps-contiguous dy for a channels-last x runs the walk reading dy across the
    channels; the reverse runs the tiles reading dy across the steps): the same gradients, in x's layout."""
    t = make(2, 19, 150, 4, init=True, channels_last=channels_last)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items() if v is not None}
    dy = torch.randn(2, 19, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # reproducible
    dy = dy.float() if channels_last else dy.transpose(1, 2).contiguous().transpose(1, 2).float()
    want = torch.autograd.grad(causal_conv1d_naive(*(leaves[k].double() for k in ("x", "weight", "bias")), "silu",
                                                   leaves["initial_states"].double()), list(leaves.values()), dy.double())
    with backend("triton"):
        y = causal_conv1d(leaves["x"], leaves["weight"], leaves["bias"], "silu", leaves["initial_states"])
        got = torch.autograd.grad(y, list(leaves.values()), dy)
    assert (got[0].stride(1) == 1) == channels_last
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_initial_states_gradient_reads_nothing_before_them(channels_last):
    """The backward's first program recomputes the activation's derivative at the steps before 0: it reads the
    initial states there and nothing before them (the walk once read 3 steps further back, out of its channel,
    and a huge neighbour made 0 · inf = NaN), and g is exactly 0 there, so a huge initial state of one channel
    leaves every other channel's gradient as torch gives it (its own overflows in the conv, as torch's does)."""
    x = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(0))
    x = x.transpose(1, 2) if channels_last else x.transpose(1, 2).contiguous()
    init = torch.zeros(1, 2, 3)
    init[0, 0] = 3e38
    grads = []
    for name in ("triton", "torch"):
        leaf = init.clone().requires_grad_()
        with backend(name):
            y = causal_conv1d(x, torch.ones(2, 4), None, "silu", leaf)
        grads.append(torch.autograd.grad(y[:, 1].sum(), leaf)[0])
    assert torch.isfinite(grads[0][:, 1]).all()
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_split_continues_from_final_states(name):
    t = make(2, 5, 23, 4, init=True)
    with backend(name):
        y, fin = run(causal_conv1d, t, "silu", grads=False)
        y1, f1 = run(causal_conv1d, {**t, "x": t["x"][..., :2]}, "silu", grads=False)
        y2, f2 = run(causal_conv1d, {**t, "x": t["x"][..., 2:], "initial_states": f1}, "silu", grads=False)
    assert_close([torch.cat([y1, y2], -1), f2], [y, fin], 1e-6)


@pytest.mark.parametrize("name", ["triton", "torch", "naive"])
def test_final_states_are_a_tensor_of_their_own(name):
    """The final states returned are not a view of the padded input autograd keeps for the backward: a decode step
    writes them in place (that had spoilt the prefill's backward), and a view held the prompt's whole copy."""
    x = torch.randn(2, 3, 40, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    with backend(name):
        y, state = causal_conv1d(x, w, activation="silu", return_final_states=True)
        y2 = causal_conv1d_update(torch.randn(2, 3), state, w, activation="silu")
    (y.sum() + y2.sum()).backward()
    assert x.grad is not None and state.untyped_storage().nbytes() == state.numel() * state.element_size()


@pytest.mark.parametrize("name", ["triton", "torch", "naive"])
def test_16_bit_input_is_computed_in_float32_on_every_path(name):
    """bf16 x: every path accumulates in float32 (the torch path had convolved in bf16, twice the error)."""
    t = make(2, 16, 37, 4, init=True, dtype=torch.bfloat16)
    with backend(name):
        got = causal_conv1d(t["x"], t["weight"], t["bias"], "silu", t["initial_states"])
    t64 = as64(t)
    want = causal_conv1d_naive(t64["x"], t64["weight"], t64["bias"], "silu", t64["initial_states"])
    assert got.dtype == torch.bfloat16
    # the exact result rounded once, but for a rare tie of float32's rounding (bf16 sums: most elements off)
    assert (got != want.to(torch.bfloat16)).float().mean() < 0.01


@pytest.mark.parametrize("name", ["triton", "torch"])
@pytest.mark.parametrize("W,extra", [(2, 0), (4, 0), (4, 1), (3, 2)])
def test_update_matches_parallel(name, W, extra):
    """conv_state [B, D, W-1+extra]; extra=1 is mamba_ssm's [B, D, W] layout."""
    t = make(2, 6, 9, W, init=True)
    with backend(name):
        y, fin = run(causal_conv1d, t, "silu", grads=False)
        state = torch.cat([torch.randn(2, 6, extra), t["initial_states"]], -1)
        ys = [causal_conv1d_update(t["x"][..., i], state, t["weight"], t["bias"], "silu") for i in range(9)]
        multi_state = torch.cat([torch.randn(2, 6, extra), t["initial_states"]], -1)
        multi = causal_conv1d_update(t["x"], multi_state, t["weight"], t["bias"], "silu")
    assert_close([torch.stack(ys, -1), state[..., extra:], multi], [y, fin, y], 1e-6)


def circular(state, at):
    """The linear window state [B, D, S] (oldest first) as a circular buffer whose next write goes at `at` [B]: the
    entry i of a row at (at - S + i) mod S."""
    S = state.shape[-1]
    where = torch.remainder(at.long()[:, None] - S + torch.arange(S), S)
    return torch.empty_like(state).scatter_(2, where[:, None, :].expand_as(state), state)


@pytest.mark.parametrize("name", ["triton", "torch"])
@settings(max_examples=10, deadline=None)
@given(W=st.integers(2, 4), extra=st.integers(0, 3), T=st.integers(1, 6), steps=st.integers(1, 3),
       at=st.lists(st.integers(-20, 20), min_size=3, max_size=3), two_dims=st.booleans(), seed=st.integers(0, 99))
@example(W=4, extra=0, T=5, steps=1, at=[0, -1, 7], two_dims=False, seed=0)  # T > S: the buffer wraps in one call
def test_update_with_cache_seqlens_is_the_shifted_window(name, W, extra, T, steps, at, two_dims, seed):
    """cache_seqlens (causal-conv1d's circular conv_state): each call, from any write position (negative ones
    wrap as torch.remainder), gives the shifted window's outputs, and leaves the buffer that holds the shifted
    window with the next write at cache_seqlens + T; over several calls with the position advanced by the caller."""
    t = make(3, 5, T * steps, W, init=False, seed=seed)
    S = W - 1 + extra
    linear = torch.randn(3, 5, S, generator=torch.Generator().manual_seed(seed))
    pos = torch.tensor(at, dtype=torch.int32)
    buf = circular(linear, pos)
    with backend(name):
        for c in range(steps):
            x = t["x"][..., c * T:(c + 1) * T]
            if two_dims and T == 1:
                x = x[..., 0]
            want = causal_conv1d_update(x, linear, t["weight"], t["bias"], "silu")
            got = causal_conv1d_update(x, buf, t["weight"], t["bias"], "silu", pos)
            pos = pos + T
            assert_close([got, buf], [want, circular(linear, pos)], 1e-6)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_update_with_cache_seqlens_and_a_pool(name):
    """Both of causal-conv1d's keywords at once, passed in its order: row b's circular buffer is the pool's entry
    idx[b], written at cache_seqlens[b]; a pad row (-1) gives 0 and touches nothing."""
    t = make(3, 4, 1, 3, seed=5)
    idx, pos = torch.tensor([4, -1, 1]), torch.tensor([2, 9, -4])
    linear = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(1))
    pool = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(2))
    for b in (0, 2):
        pool[idx[b]] = circular(linear[b:b + 1], pos[b:b + 1])[0]
    want_pool = pool.clone()
    with backend(name):
        want = causal_conv1d_update(t["x"][..., 0], linear, t["weight"], t["bias"], "silu")  # shifts `linear`
        got = causal_conv1d_update(t["x"][..., 0], pool, t["weight"], t["bias"], "silu", pos, idx)
    want[1] = 0
    for b in (0, 2):
        want_pool[idx[b]] = circular(linear[b:b + 1], pos[b:b + 1] + 1)[0]
    assert_close([got, pool], [want, want_pool], 1e-6)


@pytest.mark.parametrize("name", ["naive", "torch", "triton"])
@pytest.mark.parametrize("pool", [False, True])
def test_update_with_cache_seqlens_has_gradients(name, pool):
    """A circular conv_state stepped by x of two tokens that needs a gradient, the state itself out of a
    differentiable step: the gradients of x, the state before, weight and bias are the shifted window's (the steps
    wrote the state in place between reads that autograd kept: its in-place error, on every path)."""
    t = as64(make(2, 3, 2, 4, seed=3))
    linear = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pos, idx = torch.tensor([1, 5]), torch.tensor([2, 0])
    g = torch.Generator().manual_seed(5)
    wy, wstate = torch.randn(2, 3, 2, generator=g, dtype=torch.float64), torch.randn(2, 3, 3, generator=g,
                                                                                     dtype=torch.float64)

    def grads(circular_form):
        x, s0, w, b = (v.detach().clone().requires_grad_() for v in (t["x"], linear, t["weight"], t["bias"]))
        state = s0 * 1  # a state in the graph, as a differentiable prefill leaves it
        if not circular_form:
            y = causal_conv1d_update(x, state, w, b, "silu")
            after = circular(state, pos + 2)  # the buffer that holds the shifted window
        else:
            state = circular(state, pos)
            if pool:  # rows 2 and 0 of a pool of 3
                state = torch.cat([state[1:], torch.randn(1, 3, 3, dtype=torch.float64), state[:1]])
            y = causal_conv1d_update(x, state, w, b, "silu", pos, idx if pool else None)
            after = state[idx] if pool else state
        loss = (y * wy).sum() + (after * wstate).sum()
        return [y] + list(torch.autograd.grad(loss, [x, s0, w, b]))

    with backend(name):
        got = grads(True)
    with backend("naive"):
        want = grads(False)
    assert_close(got, want, 1e-12)


@pytest.mark.parametrize("circular_form", [False, True])
def test_update_of_a_float64_state_is_exact(circular_form):
    """A float64 conv_state (with float64 or float32 x) takes the torch step on the Triton backend too, as
    wkv6_step's does: outputs and the shifted state equal the torch path's to the bit (the Triton step rounded the
    window through float32 and wrote it back so)."""
    t = as64(make(2, 3, 3, 4, seed=6))
    pos = torch.tensor([2, -1]) if circular_form else None
    for x in (t["x"], t["x"].float()):
        state0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        out = {}
        for name in ("torch", "triton"):
            state = state0.clone()
            with backend(name):
                out[name] = (causal_conv1d_update(x, state, t["weight"], t["bias"], "silu", pos), state)
        assert torch.equal(out["triton"][0], out["torch"][0]) and torch.equal(out["triton"][1], out["torch"][1])


@pytest.mark.parametrize("name", ["naive", "torch", "triton"])
@pytest.mark.parametrize("init", [False, True])
def test_no_tokens(name, init):
    """L = 0, as wkv6 and wkv4 take T = 0: an empty y in x's dtype, in x's graph, and the initial states as the
    final ones (a copy; zeros without them), with seq_idx too; no kernel launched."""
    t = make(2, 3, 0, 4, init=init, seq=True)
    x = t["x"].requires_grad_()
    h0 = t["initial_states"].requires_grad_() if init else None
    with backend(name):
        y, fin = causal_conv1d(x, t["weight"], t["bias"], "silu", h0, True, t["seq_idx"])
        assert causal_conv1d(x, t["weight"]).shape == (2, 3, 0)
    assert y.shape == (2, 3, 0) and y.dtype == x.dtype and fin.shape == (2, 3, 3)
    assert torch.equal(fin, h0 if init else torch.zeros(2, 3, 3)) and (not init or fin.data_ptr() != h0.data_ptr())
    wf = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(1))
    dx, *dh0 = torch.autograd.grad(y.sum() + (fin * wf).sum(), [x] + ([h0] if init else []), allow_unused=True)
    assert torch.equal(dx, torch.zeros(2, 3, 0)) and (not init or torch.equal(dh0[0], wf))


def test_bad_input():
    x, w = torch.randn(2, 3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d(x, w, initial_states=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"seq_idx: expected shape \[2, 5\]"):
        causal_conv1d(x, w, seq_idx=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_idx: expected an integer tensor"):
        causal_conv1d(x, w, seq_idx=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x[..., 0], torch.randn(2, 3, 2), w)
    with pytest.raises(ValueError, match="x"):
        causal_conv1d_update(x[0, :, 0], torch.randn(2, 3, 3), w)
    with pytest.raises(ValueError, match=r"cache_seqlens: expected shape \[2\]"):
        causal_conv1d_update(x[..., 0], torch.randn(2, 3, 3), w, cache_seqlens=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="cache_seqlens: expected an integer tensor"):
        causal_conv1d_update(x[..., 0], torch.randn(2, 3, 3), w, cache_seqlens=torch.zeros(2))


# ------------------------------------------------------------------ GPU (H200)
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("seq", [False, True])
def test_gpu_full_size(dtype, tol, channels_last, seq):
    t = make(4, 5120, 4096, 4, init=True, seq=seq, dtype=dtype, device="cuda", channels_last=channels_last)
    with backend("torch"):
        want = run(causal_conv1d, as64(t), "silu")
    got = run(causal_conv1d, t, "silu")
    assert_close(got, want, tol)
    assert (got[0].stride(1) == 1) == channels_last  # y laid out as x


@pytest.mark.big_memory
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L", [131072, 1 << 20])
def test_gpu_long_sequences(L):
    t = make(1, 64, L, 4, init=True, device="cuda")
    want = run(causal_conv1d_torch, as64(t), "silu")
    assert_close(run(causal_conv1d, t, "silu"), want, 1e-5)


@pytest.mark.gpu
@gpu
def test_gpu_update_matches_parallel_bf16():
    t = make(2, 256, 4096, 4, init=True, dtype=torch.bfloat16, device="cuda")
    y, fin = run(causal_conv1d, t, "silu", grads=False)
    state = t["initial_states"].clone()
    ys = [causal_conv1d_update(t["x"][..., i], state, t["weight"], t["bias"], "silu") for i in range(4096)]
    assert_close([torch.stack(ys, -1), state], [y, fin], 1e-2)
