"""Packed sequences: model(input_ids, seq_idx=...) gives every token the logits (and every parameter the
gradient) of its sequence run alone, on every block that packs; the others are refused before anything runs."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.errors import ArchDSLError
from archdsl.model.modules import MODULES

SMALL = {
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4, "dt_floor": 0.05},
    "attn": {"heads": 4, "kv_heads": 2},
    "swa": {"kind": "attn", "heads": 2, "window": 3, "rope": False},
    "mlp": {"hidden": 24},
    "moe": {"experts": 3, "top_k": 2, "hidden": 8},
    "zamba": {"heads": 4, "lora": 4, "hidden": 24, "rope": True},  # RoPE: positions from each prompt
    "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4},
    "cmix": {"hidden": 24, "version": 6},
    "mamba": {"d_state": 5, "dt_rank": 3},
    "jmamba": {"kind": "mamba", "d_state": 4, "inner_norms": "weighted"},
    "s4d": {"d_state": 8},
    "rwkv4": {},
    "cmix4": {"kind": "cmix", "hidden": 24, "version": 4},
}
LAYOUTS = ["mamba2+mlp, attn+moe, swa, mamba2(shared), mamba2(shared), zamba(shared) at 1 3",
           "2×(mamba2, attn(shared)+mlp)", "rwkv6+cmix, attn+mlp, rwkv6+cmix", "mamba+mlp, attn+moe, jmamba",
           "s4d+mlp, attn+mlp, s4d", "rwkv4+cmix4, attn+mlp, rwkv4+cmix4"]
PACKS = sorted(k for k, cls in MODULES.items() if getattr(cls, "PACKS", False))


def model_of(layout, dtype=torch.float64, seed=0):
    return archdsl.compile(archdsl.parse(layout, d_model=16, vocab_size=37, blocks=SMALL), dtype=dtype, seed=seed)


def alone(model, ids, lengths):
    """Each row's sequences run one by one, their logits concatenated back: [B, L, V]."""
    rows = []
    for row, cuts in zip(ids, lengths):
        parts, at = [], 0
        for n in cuts:
            parts.append(model(row[None, at:at + n])[0])
            at += n
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def seq_of(lengths, first=0):
    return torch.stack([torch.repeat_interleave(torch.arange(first, first + len(c)), torch.tensor(c)) for c in lengths])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_packed_equals_each_alone(layout, kernels, monkeypatch):
    """Two rows of 19 tokens, one packing sequences of 1, 6, 4 and 8 tokens (a chunk of 4 cut mid-way, a
    sequence of one), the other a single sequence; logits and the gradients of every parameter. Mamba-2 with
    a dt_floor, a window of 3, a shared attention block and a zamba inject; RWKV-6 with its channel-mix (both
    token shifts); Mamba-1 plain and with Jamba's inner norms; S4D; RWKV-4 with its channel-mix. Triton:
    interpreted kernels."""
    if kernels == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ARCHDSL_KERNELS", kernels)
    dtype = torch.float64 if kernels == "torch" else torch.float32
    model = model_of(layout, dtype)
    lengths = [[1, 6, 4, 8], [19]]
    ids = torch.randint(0, 37, (2, 19), generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, 19, 37, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    packed = model(ids, seq_idx=seq_of(lengths, first=3))
    single = alone(model, ids, lengths)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(packed, single, rtol=tol, atol=tol)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad((packed * w).sum(), params, allow_unused=True)
    want = torch.autograd.grad((alone(model, ids, lengths) * w).sum(), params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        if b is None:
            assert a is None or not a.any(), name
            continue
        torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10, msg=name)


@pytest.mark.parametrize("layout", [LAYOUTS[1], LAYOUTS[3], LAYOUTS[4], LAYOUTS[5]])
@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(1, 7), min_size=1, max_size=5), values=st.sampled_from([0, 5, -2]))
def test_packed_of_any_lengths(layout, cuts, values):
    """Any lengths and seq_idx values (the same sequences numbered from 0, 5 or -2): as each alone (Mamba-2,
    Mamba-1, S4D, RWKV-4 with attention)."""
    model = model_of(layout)
    L = sum(cuts)
    ids = torch.randint(0, 37, (1, L), generator=torch.Generator().manual_seed(L))
    torch.testing.assert_close(model(ids, seq_idx=seq_of([cuts], first=values)), alone(model, ids, [cuts]),
                               rtol=1e-10, atol=1e-10)


def test_one_sequence_is_no_packing():
    """seq_idx of one value (any) changes nothing."""
    model = model_of(LAYOUTS[0])
    ids = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids, seq_idx=torch.full((2, 11), 4)), model(ids), rtol=1e-12, atol=1e-12)


def test_a_block_that_cannot_pack_is_refused(monkeypatch):
    """Every block packs; one that did not (PACKS taken from S4D here) would be refused, with the layer, before
    anything runs."""
    assert set(PACKS) == set(MODULES)
    monkeypatch.setattr(MODULES["s4d"], "PACKS", False)
    model = archdsl.compile(archdsl.parse("mamba2, s4d", d_model=16, vocab_size=37, blocks=SMALL), dtype=torch.float64)
    with pytest.raises(ArchDSLError, match=r"seq_idx \(packed sequences\): layer 1's s4d carries its state"):
        model(torch.zeros(1, 5, dtype=torch.long), seq_idx=torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(1, 5), r"seq_idx must be an integer tensor of the shape of input_ids \[1, 6\], got float32 \[1, 5\]"),
    (torch.zeros(1, 6), "got float32"), (torch.zeros(6, dtype=torch.long), r"got int64 \[6\]"),
    ([0] * 6, "got list"), (torch.zeros(1, 6, dtype=torch.bool), r"got bool \[1, 6\]"),
])
def test_bad_seq_idx(bad, msg):
    model = model_of(LAYOUTS[1])
    with pytest.raises(ArchDSLError, match=msg):
        model(torch.zeros(1, 6, dtype=torch.long), seq_idx=bad)
    with pytest.raises(ArchDSLError, match="takes no cache"):
        model(torch.zeros(1, 6, dtype=torch.long), model.init_cache(1), seq_idx=torch.zeros(1, 6, dtype=torch.long))


def test_packs_names_its_blocks():
    assert PACKS == ["attn", "cmix", "mamba", "mamba2", "mlp", "moe", "rwkv4", "rwkv6", "s4d", "zamba"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["mamba2, attn+mlp, mamba2", "rwkv6+cmix, attn+mlp, rwkv6+cmix",
                                    "mamba, attn+mlp, mamba", "s4d+mlp, attn+mlp, rwkv4+cmix4"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_packed_equals_each_alone(dtype, tol, layout):
    """On the card's kernels (the SSD's chunked and Gluon paths, WKV6's serial or chunked, pick themselves),
    d_model 256, chunks of 256 cut by sequences of 100, 3, 300 and 109 tokens, next to a row of one sequence;
    logits and the gradients. bf16 is compared through the relative error of the whole tensor (each alone is
    one more rounding). (The lengths share Triton's specialisation of L, so that the kernels compile twice,
    not four times.)"""
    blocks = {"mamba2": {"headdim": 64, "dt_floor": 1e-3}, "attn": {"heads": 4}, "mlp": {"hidden": 512}, "mamba": {},
              "rwkv6": {"head_size": 64}, "cmix": {"version": 6}, "s4d": {"d_state": 64}, "rwkv4": {},
              "cmix4": {"kind": "cmix", "version": 4}}
    spec = archdsl.parse(layout, d_model=256, vocab_size=1000, blocks=blocks)
    model = archdsl.compile(spec, dtype=dtype, seed=0, device="cuda")
    lengths = [[100, 3, 300, 109], [512]]
    ids = torch.randint(0, 1000, (2, 512), generator=torch.Generator().manual_seed(1)).cuda()
    w = torch.randn(2, 512, 1000, generator=torch.Generator().manual_seed(2)).to("cuda", dtype)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    packed = model(ids, seq_idx=seq_of(lengths).cuda())
    single = alone(model, ids, lengths)
    assert rel(packed, single) < tol
    params = list(model.parameters())
    got = torch.autograd.grad((packed * w).float().sum(), params)
    want = torch.autograd.grad((alone(model, ids, lengths) * w).float().sum(), params)
    worst = max((rel(a, b), name) for (name, _), a, b in zip(model.named_parameters(), got, want))
    print(f"{dtype}: logits {rel(packed, single):.1e}, worst gradient {worst[0]:.1e} ({worst[1]})")
    assert worst[0] < 10 * tol, worst


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 70), min_size=1, max_size=5), min_size=1, max_size=3))
def test_in_rows_gives_each_sequence_a_row_from_step_0(lengths):
    """Packed.in_rows: fn sees every sequence from step 0 of a row of its own, zeros after it, rows of one
    power-of-two width (from 16) at a time, widths rising; what fn returns lands back at each token; the rows'
    steps stay under twice the tokens plus 16 a sequence."""
    from archdsl.model.packed import Packed

    L = max(sum(row) for row in lengths)
    lengths = [row[:-1] + [row[-1] + L - sum(row)] for row in lengths]  # each row fills L
    x = torch.randn(len(lengths), L, 3, dtype=torch.float64)
    packed, seen = Packed.of(seq_of(lengths)), []

    def fn(rows):
        seen.append(rows)
        return rows.cumsum(1)  # a running sum: wrong wherever a row carried another sequence's steps in
    got = packed.in_rows(fn, x)
    want = torch.cat([torch.cat([part.cumsum(0) for part in x[b].split(row)]) for b, row in enumerate(lengths)])
    torch.testing.assert_close(got.reshape(-1, 3), want, rtol=0, atol=1e-12)
    widths = [r.shape[1] for r in seen]
    assert widths == sorted(set(widths)) and all(w >= 16 for w in widths)
    n = sum(len(row) for row in lengths)
    assert sum(r.shape[0] * r.shape[1] for r in seen) <= 2 * x.shape[0] * L + 16 * n
    assert packed.widest == widths[-1]


def test_cu_seqlens_reads_the_rows_in_turn():
    """Packed.cu_seqlens: the B·L tokens' sequences, row after row, and the longest."""
    from archdsl.model.packed import Packed

    cu, longest = Packed.of(seq_of([[1, 6, 4, 8], [19]])).cu_seqlens()
    assert cu.tolist() == [0, 1, 7, 11, 19, 38] and cu.dtype == torch.int32 and longest == 19


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("window", [None, 37])
def test_gpu_varlen_attention_equals_the_dense_mask(window):
    """packed_sdpa's varlen flash attention (bf16 on CUDA) against SDPA with the packed dense mask: outputs and
    the gradients of q, k, v; 4 query heads on 2 key heads, sequences of 100, 3, 300 and 109 tokens beside a row
    of one."""
    from archdsl.model.modules.attn import _varlen_attn, packed_sdpa, sdpa
    from archdsl.model.packed import Packed

    if _varlen_attn() is None:
        pytest.skip(f"torch {torch.__version__} has no varlen_attn with window_size")
    g = torch.Generator("cuda").manual_seed(0)
    q = torch.randn(2, 4, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k, v = (torch.randn(2, 2, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(2))
    packed = Packed.of(seq_of([[100, 3, 300, 109], [512]]).cuda())
    do = torch.randn_like(q)
    got = packed_sdpa(q, k, v, packed, window)
    want = sdpa(q.float(), k.float(), v.float(), mask=packed.attn_mask(window), gqa=True)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    assert rel(got, want) < 1e-2
    for a, b in zip(torch.autograd.grad(got, (q, k, v), do), torch.autograd.grad(want, (q, k, v), do)):
        assert rel(a, b) < 2e-2
