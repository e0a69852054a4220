"""The launchers' plain-Python helpers: the integer ones give the values of the Triton functions they replace,
fp32_dot the precision torch's float32 matmul setting asks for; shares_memory (the in-place states' check) the
answer of enumerating every element's offset; packing and on_device (the varlen plans' host side)."""
import itertools

import pytest
import torch
import triton
from hypothesis import given
from hypothesis import strategies as st

from archdsl.kernels._checks import shares_memory
from archdsl.kernels._host import cdiv, fp32_dot, next_pow2, on_device, packing


@given(st.integers(0, 1 << 40))
def test_next_pow2_matches_triton(n):
    assert next_pow2(n) == triton.next_power_of_2(n)


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 20))
def test_cdiv_matches_triton(a, b):
    assert cdiv(a, b) == triton.cdiv(a, b)


def test_next_pow2_of_a_traced_size_guards_on_its_range():
    """Under torch.compile(dynamic=True) a size is a symbol: next_pow2 of it gives the value eager gives and
    keeps one graph for every size between the same powers of two (a new graph past them), where bit_length
    would have fixed the graph to one size."""
    import torch
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    traced = torch.compile(lambda x: x.new_zeros(next_pow2(x.shape[0])), backend="eager", dynamic=True,
                           fullgraph=True)
    for n in (300, 301, 400, 512, 513, 1000):
        assert traced(torch.zeros(n)).shape == (next_pow2(n),)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_fp32_dot_follows_torchs_matmul_precision():
    old = torch.get_float32_matmul_precision()
    try:
        for precision, want in (("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")):
            torch.set_float32_matmul_precision(precision)
            assert fp32_dot() == want
    finally:
        torch.set_float32_matmul_precision(old)


def test_fp32_dot_under_torch_compile():
    """torch.compile(fullgraph=True) of an autograd.Function whose forward asks fp32_dot (as the SSD, varlen and
    wkv6 launchers do) traces in one graph, and traces again where the precision changes. The getter it reads had
    broken every compiled float32 launch (a graph break under fullgraph)."""

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * (2.0 if fp32_dot() == "tf32x3" else 3.0)

        @staticmethod
        def backward(ctx, g):
            return g

    torch._dynamo.reset()
    f = torch.compile(Scale.apply, backend="aot_eager", fullgraph=True)
    old = torch.get_float32_matmul_precision()
    x = torch.ones(3, requires_grad=True)
    try:
        torch.set_float32_matmul_precision("highest")
        assert f(x).tolist() == [2.0] * 3
        torch.set_float32_matmul_precision("high")
        assert f(x).tolist() == [3.0] * 3
    finally:
        torch.set_float32_matmul_precision(old)
        torch._dynamo.reset()


def _offsets_repeat(shape, strides) -> bool:
    offsets = [sum(i * s for i, s in zip(index, strides)) for index in itertools.product(*map(range, shape))]
    return len(set(offsets)) < len(offsets)


@given(st.data())
def test_shares_memory_is_exact_on_views_of_a_dense_tensor(data):
    """Views that permuting, slicing with steps and expanding make of a dense tensor: shares_memory says whether
    two elements are one (the values of an arange repeat). torch's own test answers "too hard" for such views."""
    shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    t = torch.arange(int(torch.tensor(shape).prod())).reshape(shape)
    t = t.permute(data.draw(st.permutations(range(t.dim()))))
    for d in range(t.dim()):
        start = data.draw(st.integers(0, t.shape[d] - 1))
        t = t.narrow(d, start, data.draw(st.integers(1, t.shape[d] - start)))
        t = t[(slice(None),) * d + (slice(None, None, data.draw(st.integers(1, 3))),)]
    if data.draw(st.booleans()):  # a new dim, expanded: its elements are one per index of the others
        d = data.draw(st.integers(0, t.dim()))
        t = t.unsqueeze(d).expand(*t.shape[:d], data.draw(st.integers(1, 3)), *t.shape[d:])
    assert shares_memory(t.shape, t.stride()) == (len(set(t.flatten().tolist())) < t.numel())


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 7)), min_size=1, max_size=4))
def test_shares_memory_never_misses_an_overlap(dims):
    """Any sizes and strides (as_strided's): where two indices reach one offset, shares_memory says so. (The
    converse fails only for interleaved layouts no view of a dense tensor has, as sizes (3, 2) at strides (2, 3).)"""
    shape, strides = zip(*dims)
    if _offsets_repeat(shape, strides):
        assert shares_memory(shape, strides)


def test_interpreting_reads_triton_interpret_as_triton_does(monkeypatch):
    """Triton (3.9's getenv_bool) runs its interpreter for TRITON_INTERPRET=1, true, on, yes or y in any case;
    archdsl.kernels took only "1" for it, so under TRITON_INTERPRET=true the kernels ran interpreted without the
    interpreter's bf16 corrections and ARCHDSL_KERNELS=triton refused CPU tensors."""
    from archdsl.kernels._dispatch import interpreting

    for value in ("1", "true", "True", "ON", "yes", "Y"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert interpreting(), value
    for value in ("0", "", "false", "off", "no", "2", " 1", "enabled"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert not interpreting(), value
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not interpreting()


def test_packing_without_runs_reads_the_offsets_only():
    """runs=False (wkv6's cu_seqlens with states): the offsets come back checked, and no seq_idx is made; with
    runs, or a seq_idx to compare, the runs come back as before."""
    x, cu = torch.zeros(1, 8, 2), torch.tensor([0, 3, 8])
    assert packing(None, cu, x, runs=False) == (None, [0, 3, 8])
    seq, offsets = packing(None, cu, x)
    assert offsets == [0, 3, 8] and seq.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    assert torch.equal(packing(seq, cu, x, runs=False)[0], seq)  # a seq_idx given is checked against it
    with pytest.raises(ValueError, match="cu_seqlens: expected 0, then increasing offsets"):
        packing(None, torch.tensor([0, 3, 3, 8]), x, runs=False)
    with pytest.raises(ValueError, match="cu_seqlens: its sequences are not seq_idx's"):
        packing(torch.zeros(1, 8, dtype=torch.long), cu, x, runs=False)


def test_on_device_keeps_plans_in_place_or_copies_them_once():
    plans = [torch.tensor([0, 3, 8], dtype=torch.int32), torch.tensor([1, 0], dtype=torch.int32)]
    assert all(a is b for a, b in zip(on_device(plans, torch.device("cpu")), plans))
    if torch.cuda.is_available():
        moved = on_device(plans, torch.device("cuda"))
        assert [m.tolist() for m in moved] == [p.tolist() for p in plans]
        assert all(m.is_cuda and m.dtype == torch.int32 and m.is_contiguous() for m in moved)
