"""Left padding: model(ids, cache, attention_mask=...) and generate(..., attention_mask=...) give every prompt
token the logits, and every row the decode steps, of its prompt run alone; a block that cannot skip pads (none
now) and masks that are not left padding are refused before anything runs."""
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
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "attn": {"heads": 4, "kv_heads": 2},
    "swa": {"kind": "attn", "heads": 2, "window": 3},
    "mlp": {"hidden": 24},
    "moe": {"experts": 3, "top_k": 2, "hidden": 8},
    "zamba": {"heads": 4, "lora": 4, "hidden": 24, "rope": True},  # RoPE: positions from each prompt
    "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4},
    "cmix": {"hidden": 24, "version": 6},
    "rwkv4": {},
    "cmix4": {"kind": "cmix", "hidden": 24, "version": 4},
}
# every block that takes padding: Mamba-2 (conv state), Mamba-1 and S4D (zeroed inputs), attention with and
# without a window (its ring), a shared block, a zamba inject, MoE; RWKV-6 and RWKV-4 (the WKV restarts at the
# prompt) with their channel-mixes
LAYOUTS = ["mamba2+mlp, attn+moe, swa, mamba2(shared), mamba, s4d, zamba(shared) at 1 3",
           "rwkv6+cmix, attn+mlp, rwkv6+cmix", "rwkv4+cmix4, swa, rwkv4+cmix4"]
PADS = sorted(k for k, cls in MODULES.items() if getattr(cls, "PADS", False))


def model_of(layout, dtype=torch.float64, seed=0, d_model=16, vocab=37, device="cpu", **kw):
    spec = archdsl.parse(layout, d_model=d_model, vocab_size=vocab, blocks=SMALL)
    return archdsl.compile(spec, dtype=dtype, seed=seed, device=device, **kw)


def left_padded(lengths, vocab=37, seed=0, device="cpu"):
    """ids [B, max(lengths)] and attention_mask (int64), row b's last lengths[b] tokens real."""
    L = max(lengths)
    ids = torch.randint(0, vocab, (len(lengths), L), generator=torch.Generator().manual_seed(seed)).to(device)
    mask = (torch.arange(L)[None] >= L - torch.tensor(lengths)[:, None]).long().to(device)
    return ids, mask


def prompt(ids, lengths, b):
    return ids[b:b + 1, ids.shape[1] - lengths[b]:]


def check_rows(model, lengths, tol, static=False):
    """Prefill logits at the prompt tokens, and two steps after, against each prompt alone."""
    ids, mask = left_padded(lengths, device=model.device)
    B, L = ids.shape
    cache = model.init_cache(B, max_len=L + 2, static=static)
    logits = model(ids, cache, attention_mask=mask)
    tok = logits[:, -1].argmax(-1)
    steps = [model.step(tok, cache), model.step((tok + 1) % 37, cache)]
    for b, n in enumerate(lengths):
        one = model.init_cache(1, max_len=n + 2)
        alone = model(prompt(ids, lengths, b), one)
        torch.testing.assert_close(logits[b, L - n:], alone[0], rtol=tol, atol=tol, msg=f"row {b} prefill")
        for i, t in enumerate((tok[b:b + 1], (tok[b:b + 1] + 1) % 37)):
            torch.testing.assert_close(steps[i][b], model.step(t, one)[0], rtol=tol, atol=tol,
                                       msg=f"row {b} step {i}")


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), layout=st.sampled_from(LAYOUTS),
       static=st.booleans())
def test_padded_rows_equal_each_prompt_alone(lengths, layout, static):
    """Any prompt lengths (one token, shorter than the conv window or the attention window, no pad in a row):
    the torch kernels, float64; a growing or a static (CUDA-graph) cache."""
    check_rows(model_of(layout), lengths, 1e-10, static)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_padded_zamba_rows_equal_each_prompt_alone(rope, static):
    """A zamba inject with and without RoPE, a growing and a static (CUDA-graph) cache: each padded row's queries
    and keys rotate at positions counted from its prompt's first token, in the prefill and in the steps."""
    model = model_of(f"mamba2, mamba2, zamba(shared, rope={str(rope).lower()}) at 1")
    check_rows(model, [2, 7, 4], 1e-10, static)


def test_padded_rows_on_triton_kernels(monkeypatch):
    """The Triton kernels (interpreted): the SSD with seq_idx and an initial state, the selective scan and the
    conv on zeroed pads, WKV4 restarting at the prompt (its forward and step), float32."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    check_rows(model_of("mamba2, mamba, swa", torch.float32), [6, 2], 2e-5)
    check_rows(model_of("rwkv4+cmix4, swa, rwkv4+cmix4", torch.float32), [6, 2, 1], 2e-5)


def check_grads(model, lengths, tol):
    """The gradients of every parameter from a loss on the prompt tokens of a left-padded batch (the pads'
    logits left out) against the sum of each prompt's alone: finite, and equal."""
    ids, mask = left_padded(lengths, seed=5, device=model.device)
    B, L = ids.shape
    w = torch.randn(B, L, 37, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(model.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    keep = mask.bool()
    got = torch.autograd.grad((model(ids, attention_mask=mask)[keep] * w[keep]).sum(), params, allow_unused=True)
    loss = sum((model(prompt(ids, lengths, b))[0] * w[b, L - n:]).sum() for b, n in enumerate(lengths))
    want = torch.autograd.grad(loss, params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        if b is None:
            assert a is None or not a.any(), name
            continue
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_padded_gradients_equal_each_prompt_alone(layout):
    """Training on a left-padded batch: every parameter's gradient is the sum of those of the prompts run alone
    (float64, torch kernels), rows of one token and without pads included. RWKV-4 gave NaN there (k = -inf at the
    pads: 0/0 in its WKV's backward)."""
    check_grads(model_of(layout), [6, 1, 8, 3], 1e-12)


def test_padded_gradients_on_triton_kernels(monkeypatch):
    """The same through the interpreted Triton WKV4 (its seq_idx backward), float32."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    check_grads(model_of("rwkv4+cmix4, rwkv4+cmix4", torch.float32), [6, 2, 1], 1e-4)


def test_padded_generate_equals_each_prompt_alone():
    """Greedy generate on a left-padded batch gives each row the tokens of its prompt alone; a bool mask and a
    mask without pads (nothing to skip) say the same."""
    model = model_of(LAYOUTS[0])
    lengths = [7, 2, 11, 1]
    ids, mask = left_padded(lengths, seed=3)
    out = model.generate(ids, 6, temperature=0, attention_mask=mask)
    assert torch.equal(model.generate(ids, 6, temperature=0, attention_mask=mask.bool()), out)
    L = ids.shape[1]
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, L:], model.generate(prompt(ids, lengths, b), 6, temperature=0)[0, n:])
    full = torch.ones_like(mask)
    assert torch.equal(model.generate(ids, 3, temperature=0, attention_mask=full), model.generate(ids, 3, temperature=0))


def test_pads_are_not_repeats():
    """repetition_penalty counts the tokens of each row's prompt, not the tokens under its pads (random ones here):
    the padded batch gives each row the tokens of its prompt alone."""
    model = model_of(LAYOUTS[0])
    lengths = [7, 2, 11]
    ids, mask = left_padded(lengths, seed=4)
    out = model.generate(ids, 8, temperature=0, attention_mask=mask, repetition_penalty=1.8)
    L = ids.shape[1]
    for b, n in enumerate(lengths):
        alone = model.generate(prompt(ids, lengths, b), 8, temperature=0, repetition_penalty=1.8)
        assert torch.equal(out[b, L:], alone[0, n:])


def test_pads_change_nothing_else():
    """A mask without pads is no mask: the same logits bit for bit, and a model with RWKV-4 takes it."""
    model = model_of(LAYOUTS[1])
    ids, _ = left_padded([5, 5])
    assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)), model(ids))
    rwkv4 = archdsl.compile(archdsl.parse("rwkv4+cmix", d_model=16, vocab_size=37, blocks={"cmix": {"hidden": 24}}),
                            dtype=torch.float64)
    assert torch.equal(rwkv4(ids, attention_mask=torch.ones_like(ids)), rwkv4(ids))


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=2, max_size=3), seed=st.integers(0, 2**16))
def test_pads_take_no_part_in_the_balancing_loss(lengths, seed):
    """MoE's aux_loss of a left-padded batch is that of its prompts' tokens (HF's attention_mask): the pads'
    routing was counted too. Position-wise layers only, so that the tokens laid in one row mean the same."""
    model = model_of("mlp, moe, moe", seed=seed)
    ids, mask = left_padded(lengths, seed=seed)
    model(ids, attention_mask=mask)
    padded = model.aux_loss
    model(ids[mask.bool()][None])
    assert torch.allclose(padded, model.aux_loss, rtol=1e-12, atol=0)


def test_a_block_that_cannot_skip_pads_is_refused(monkeypatch):
    """Every block takes left padding; one that did not (PADS taken from RWKV-4 here) would be refused, with the
    layer, before anything runs, also by generate."""
    assert set(PADS) == set(MODULES)
    monkeypatch.setattr(MODULES["rwkv4"], "PADS", False)
    model = archdsl.compile(archdsl.parse("mamba2, rwkv4+cmix", d_model=16, vocab_size=37, blocks=SMALL),
                            dtype=torch.float64)
    ids, mask = left_padded([5, 2])
    with pytest.raises(ArchDSLError, match=r"attention_mask \(left padding\): layer 1's rwkv4 cannot skip the pads"):
        model(ids, attention_mask=mask)
    with pytest.raises(ArchDSLError, match="generate: attention_mask"):
        model.generate(ids, 2, attention_mask=mask)


@pytest.mark.parametrize("bad, msg", [
    (torch.ones(2, 5, dtype=torch.long), r"must be a bool or 0/1 integer tensor of the shape of input_ids \[2, 6\], "
                                         r"got int64 \[2, 5\]"),
    (torch.ones(2, 6), "got float32"), ([[1] * 6] * 2, "got list"),
    (torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 2]]), r"holds \[2\]: 1 marks a token, 0 a pad"),
    (torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1]]), "row 1 has a pad after a token: the pads must come first"),
    (torch.tensor([[1, 1, 1, 1, 1, 0], [1] * 6]), "row 0 has a pad after a token"),
    (torch.tensor([[0, 1, 1, 1, 1, 1], [0] * 6]), "row 1 holds pads only"),
])
def test_bad_attention_mask(bad, msg):
    model = model_of(LAYOUTS[1])
    ids = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ArchDSLError, match=msg):
        model(ids, attention_mask=bad)
    with pytest.raises(ArchDSLError, match=msg):
        model.generate(ids, 2, attention_mask=bad)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([0, 1, 1, 1, 2, -1]), min_size=4, max_size=4), min_size=1, max_size=3),
       as_bool=st.booleans())
def test_any_mask_runs_or_raises_archdsl_error(rows, as_bool):
    """Garbage in, ArchDSLError out: any small integer (or bool) mask either is left padding and runs, or is
    refused by name, before any block runs."""
    model = model_of(LAYOUTS[1])
    mask = torch.tensor(rows)
    mask = mask.bool() if as_bool else mask
    ids = torch.zeros(len(rows), 4, dtype=torch.long)
    m = mask.long()
    valid = bool(((m == 0) | (m == 1)).all() and (m[:, 1:] >= m[:, :-1]).all() and m[:, -1].all())
    try:
        logits = model(ids, attention_mask=mask)
    except ArchDSLError as e:
        assert not valid, e
        assert "attention_mask" in str(e)
    else:
        assert valid and logits.isfinite().all()


def test_padding_takes_a_fresh_cache_and_no_seq_idx():
    model = model_of(LAYOUTS[1])
    ids, mask = left_padded([6, 3])
    cache = model.init_cache(2)
    model(ids, cache)
    with pytest.raises(ArchDSLError, match="takes a fresh cache \\(this one holds 6 tokens\\)"):
        model(ids, cache, attention_mask=mask)
    with pytest.raises(ArchDSLError, match="attention_mask and seq_idx together"):
        model(ids, attention_mask=mask, seq_idx=torch.zeros_like(ids))


def test_pads_names_its_blocks():
    assert PADS == ["attn", "cmix", "mamba", "mamba2", "mlp", "moe", "rwkv4", "rwkv6", "s4d", "zamba"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["mamba2, attn+moe, mamba+mlp, attn(window=4)",
                                    "3×mamba2, zamba(shared, heads=4, lora=4) at 0 2",
                                    "rwkv6+cmix, s4d+mlp, mamba2", "rwkv4+cmix4, attn+mlp, rwkv4+cmix4"])
def test_gpu_padded_generate(layout):
    """On the card's kernels, float32, d_model 64: a left-padded batch generated through the CUDA graph (the
    static cache's pad counts) and eagerly gives each row its prompt's tokens alone; the prefill logits agree."""
    spec = archdsl.parse(layout, d_model=64, vocab_size=101, blocks={**SMALL, "mamba2": {"d_state": 16, "headdim": 16}})
    eager = archdsl.compile(spec, device="cuda", dtype=torch.float32, seed=0, cuda_graph=False)
    graphed = archdsl.compile(spec, device="cuda", dtype=torch.float32, seed=0, cuda_graph=True)
    lengths = [37, 5, 130]
    ids, mask = left_padded(lengths, vocab=101, seed=1, device="cuda")
    L = ids.shape[1]
    a = eager.generate(ids, 12, temperature=0, attention_mask=mask)
    assert torch.equal(graphed.generate(ids, 12, temperature=0, attention_mask=mask), a)
    logits = eager(ids, attention_mask=mask)
    for b, n in enumerate(lengths):
        p = prompt(ids, lengths, b)
        torch.testing.assert_close(logits[b, L - n:], eager(p)[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(a[b, L:], eager.generate(p, 12, temperature=0)[0, n:])


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3), chunks=st.lists(st.integers(1, 5), min_size=1,
       max_size=3), rope=st.booleans(), seed=st.integers(0, 2**16))
def test_a_chunk_on_a_static_zamba_cache_equals_its_steps(lengths, chunks, rope, seed):
    """A chunk of tokens after a static cache's first ones (a chunked prefill, a chat's next turn on the CUDA-graph
    cache) went through the zamba block a token at a time; now it is one attention call over the buffer: the
    same logits as the steps, and the same cache after (the steps that follow agree), left padding included,
    float64."""
    model = model_of(f"mamba2, mamba2, zamba(shared, rope={str(rope).lower()}) at 1", seed=seed % 7)
    ids, mask = left_padded(lengths, seed=seed)
    B, L = ids.shape
    more = torch.randint(0, 37, (B, sum(chunks) + 1), generator=torch.Generator().manual_seed(seed + 1))
    caches = [model.init_cache(B, max_len=L + sum(chunks) + 1, static=True) for _ in range(2)]
    for cache in caches:
        model(ids, cache, attention_mask=mask)
    at = 0
    for n in chunks:
        got = model(more[:, at:at + n], caches[0])
        want = torch.stack([model.step(more[:, t], caches[1]) for t in range(at, at + n)], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        at += n
    torch.testing.assert_close(model.step(more[:, at], caches[0]), model.step(more[:, at], caches[1]),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("L, n, extra", [(3, 4, 0), (1, 3, 1)])
def test_a_static_zamba_chunk_may_fill_the_cache_and_not_past_it(L, n, extra):
    """A chunk that exactly fills a static zamba cache is taken (the steps' logits); one more token is refused."""
    model = model_of("mamba2, mamba2, zamba(shared) at 1")
    ids = torch.randint(0, 37, (2, L), generator=torch.Generator().manual_seed(0))
    more = torch.randint(0, 37, (2, n), generator=torch.Generator().manual_seed(1))
    caches = [model.init_cache(2, max_len=L + n + extra, static=True) for _ in range(2)]
    for c in caches:
        model(ids, c)
    got = model(more, caches[0])
    want = torch.stack([model.step(more[:, t], caches[1]) for t in range(n)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises((ArchDSLError, RuntimeError), match="full|past|max_len"):
        model(more[:, :extra + 1], caches[0])
