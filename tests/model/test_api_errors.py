"""Bad arguments to the model's public calls are ArchDSLErrors naming the argument, never torch's own errors from
deep inside; a static cache refuses tokens past max_len instead of wrapping around; a meta model refuses to be
written."""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.errors import ArchDSLError

SMALL = {"mamba": {"d_state": 4}, "attn": {"heads": 4, "kv_heads": 2}, "mlp": {"hidden": 24}}


@pytest.fixture(scope="module")
def model():
    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    return archdsl.compile(spec, dtype=torch.float64, seed=0)


@pytest.mark.parametrize("call, match", [
    (lambda m, ids: m.step(ids[:, 0], None), r"step: cache must be a Cache .*got NoneType"),
    (lambda m, ids: m.step(ids[:, 0], {}), r"step: cache must be a Cache .*got dict"),
    (lambda m, ids: m(ids, {}), r"forward: cache must be a Cache .* or None, got dict"),
    (lambda m, ids: m.init_cache(0), r"init_cache: batch must be an int >= 1, got 0"),
    (lambda m, ids: m.init_cache(-1), r"init_cache: batch must be an int >= 1, got -1"),
    (lambda m, ids: m.init_cache(2.0), r"init_cache: batch must be an int >= 1, got 2.0"),
    (lambda m, ids: m.init_cache(True), r"init_cache: batch must be an int >= 1, got True"),
    (lambda m, ids: m.init_cache(2, max_len=0), r"init_cache: max_len must be an int >= 1, got 0"),
    (lambda m, ids: m.init_cache(2, max_len=-3), r"init_cache: max_len must be an int >= 1, got -3"),
    (lambda m, ids: m.init_cache(2, static=True), r"init_cache: a static attention cache needs max_len"),
    (lambda m, ids: m.generate(ids, 2, seed=2**64), r"generate: seed 18446744073709551616 is outside"),
    (lambda m, ids: m.generate(ids, 2, seed=-2**63 - 1), r"generate: seed -9223372036854775809 is outside"),
    (lambda m, ids: archdsl.compile(m.spec, seed=2**70), r"compile: seed 1180591620717411303424 is outside"),
])
def test_bad_arguments_are_archdsl_errors(model, call, match):
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ArchDSLError, match=match):
        call(model, ids)


def test_extreme_seeds_torch_takes_are_taken(model):
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    for seed in (-2**63, 2**64 - 1):
        assert model.generate(ids, 1, temperature=1.0, seed=seed).shape == (2, 6)


@settings(max_examples=10, deadline=None)
@given(held=st.integers(0, 8), more=st.integers(1, 10))
def test_static_cache_refuses_tokens_past_max_len(held, more):
    """A static cache's attention buffers are rings of max_len slots: a prefill or a continuation past max_len
    is refused before anything runs (it wrapped around and overwrote the first keys: wrong logits, no error; a
    first prefill past it was torch's RuntimeError); up to max_len it matches the parallel pass."""
    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, dtype=torch.float64, seed=0)
    ids = torch.randint(0, 37, (2, held + more), generator=torch.Generator().manual_seed(held * 11 + more))
    with torch.no_grad():
        cache = model.init_cache(2, max_len=8, static=True)
        if held:
            model(ids[:, :held], cache)
        if held + more > 8:
            with pytest.raises(ArchDSLError, match=rf"forward: the cache is full: max_len 8, {held} tokens held"):
                model(ids[:, held:], cache)
            assert cache.pos == held
        else:
            out = model(ids[:, held:], cache)
            torch.testing.assert_close(out, model(ids)[:, held:], rtol=1e-9, atol=1e-12)
            if held + more == 8:
                with pytest.raises(ArchDSLError, match="step: the cache is full: max_len 8, 8 tokens held"):
                    model.step(ids[:, 0], cache)


def test_meta_model_runs_but_is_not_written(tmp_path):
    """compile(device="meta") gives shapes (no range check reads its ids), and save / export refuse it with an
    ArchDSLError, writing nothing (they were torch's NotImplementedError)."""
    from archdsl.convert.hf_io import export_hf

    spec = archdsl.parse("4×attn", d_model=16, vocab_size=37, tie_embeddings=True, ffn="mlp", blocks=SMALL)
    model = archdsl.compile(spec, device="meta")
    assert model(torch.zeros(2, 3, dtype=torch.long, device="meta")).shape == (2, 3, 37)
    with pytest.raises(ArchDSLError, match="save: the model is on the meta device"):
        model.save(tmp_path / "m")
    with pytest.raises(ArchDSLError, match="export: the model is on the meta device"):
        export_hf(model, tmp_path / "hf")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("new", [0, 1, 3])
def test_generate_keeps_the_prompts_dtype(model, dtype, new):
    """int32 prompts came back int64 when any token was generated, int32 with max_new_tokens=0."""
    ids = torch.randint(0, 37, (2, 4), dtype=dtype, generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, new, temperature=0)
    assert out.dtype == dtype and out.shape == (2, 4 + new) and torch.equal(out[:, :4], ids)


@pytest.mark.parametrize("call, match", [
    (lambda m, ids: m.generate(ids, 10**12), r"generate: the decode cache \(batch 2, 1,000,000,000,005 positions\) "
                                             r"does not fit in memory on cpu .*: it holds the prompt's 5 tokens and "
                                             r"max_new_tokens 1,000,000,000,000 \(no eos_token_id stops it"),
    (lambda m, ids: m.generate(ids, 2**63), r"generate: the decode cache .* does not fit in memory.* max_new_tokens"),
    (lambda m, ids: m.init_cache(1, max_len=10**30), r"init_cache: the decode cache .* does not fit in memory"),
    (lambda m, ids: m.init_cache(10**13), r"init_cache: the decode cache \(batch 10,000,000,000,000\) does not fit"),
])
def test_a_cache_too_big_to_allocate_is_named(model, call, match):
    """Counts no machine holds: the allocator's RuntimeError (or torch's TypeError past int64) was raised raw."""
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ArchDSLError, match=match):
        call(model, ids)


def _spy_caches(model, monkeypatch) -> list:
    """The caches model._new_cache makes from now on, as it makes them."""
    made, new = [], model._new_cache
    monkeypatch.setattr(model, "_new_cache", lambda *a: made.append(new(*a)) or made[-1])
    return made


@pytest.mark.parametrize("layout", ["mamba, attn+mlp", "attn(window=4), mamba, zamba(shared) at 0 1"])
def test_generate_with_an_eos_grows_the_cache_as_the_tokens_come(layout, monkeypatch):
    """With eos_token_id, generate's KV buffers grow by doubling as tokens come, never past L + max_new_tokens: a
    max_new_tokens no machine could hold runs when the eos comes at once (it reserved L + max_new_tokens positions
    before the first token, and refused 10**10 as a cache that does not fit)."""
    blocks = {**SMALL, "zamba": {"heads": 4, "lora": 4, "hidden": 24}}
    model = archdsl.compile(archdsl.parse(layout, d_model=16, vocab_size=37, blocks=blocks), dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    greedy = model.generate(ids, 7)
    made = _spy_caches(model, monkeypatch)
    first = sorted(set(greedy[:, 5].tolist()))  # every row's first new token
    out = model.generate(ids, 10**10, eos_token_id=first)
    assert torch.equal(out, greedy[:, :6])
    assert made[-1].nbytes() < 2**20 and made[-1].max_len is None
    unused = [t for t in range(37) if t not in greedy[:, 5:].flatten().tolist()][0]
    assert torch.equal(model.generate(ids, 7, eos_token_id=unused), greedy)  # the eos never comes: the same tokens
    held = [s["k"].shape[2] for layer in made[-1].states for s in layer.values() if s and "limit" in s]
    assert held and all(h <= 5 + 7 for h in held)  # grown to at most L + max_new_tokens (16 by doubling alone)


def test_generate_out_of_memory_while_the_cache_grows_names_max_new_tokens(model, monkeypatch):
    """The allocator failing as a growing KV buffer doubles: an ArchDSLError naming max_new_tokens and how far it
    got, not the allocator's RuntimeError from inside a block."""
    from archdsl.model.modules.attn import Attention

    ensure = Attention._ensure

    def short(self, state, need):  # as the CPU allocator says it
        if need > 7:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")
        ensure(self, state, need)

    monkeypatch.setattr(Attention, "_ensure", short)
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    greedy = model.generate(ids, 3)  # 7 positions: room enough
    unused = [t for t in range(37) if t not in greedy[:, 5:].flatten().tolist()][0]
    with pytest.raises(ArchDSLError, match=r"generate: out of memory on cpu after 3 new tokens of max_new_tokens "
                                           r"1,000,000 \(batch 2, the decode cache growing to 8 positions\): ask for "
                                           r"fewer new tokens"):
        model.generate(ids, 10**6, eos_token_id=unused)


@pytest.mark.parametrize("temperature", [1e-46, 5e-324, 1e-40])
def test_a_temperature_float32_cannot_hold_is_still_sampled(model, temperature):
    """Below float32's range the temperature read as 0 and gave 0/0 (multinomial's RuntimeError); it is the
    limit of sampling: the likeliest token (the logits of this model have no ties)."""
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(ids, 3, temperature=temperature, seed=1), model.generate(ids, 3, temperature=0))


@pytest.mark.parametrize("path, match", [(None, "got NoneType"), (3, "got int"), (b"m", "got bytes"),
                                         ("", "got an empty string")])
def test_save_names_a_path_that_is_not_one(model, path, match):
    with pytest.raises(ArchDSLError, match=f"save: expected a directory's path.*{match}"):
        model.save(path)


@pytest.mark.parametrize("path, match", [(None, "got NoneType"), (b"m", "got bytes")])
def test_load_names_a_path_that_is_not_one(path, match):
    with pytest.raises(ArchDSLError, match=f"load: expected a directory's path.*{match}"):
        archdsl.load(path)


@pytest.mark.parametrize("companions, match", [
    ({"spec.yaml": b"layout: attn\n"}, "save: model.companions holds 'spec.yaml', which is no tokenizer"),
    ({"../escaped.txt": b"x"}, "save: model.companions holds '../escaped.txt'"),
    ({"notes.txt": b"x"}, "save: model.companions holds 'notes.txt'"),
    ({"tokenizer.json": "{}"}, r"save: model.companions\['tokenizer.json'\] must be bytes, got str"),
    ([("tokenizer.json", b"{}")], "save: model.companions must be a dict"),
])
def test_save_writes_only_companion_files(model, tmp_path, companions, match):
    """A companion named spec.yaml overwrote the save's spec (load then failed on every tensor's shape), ../x was
    written outside the directory: each is refused before anything is written."""
    model.companions = companions
    try:
        with pytest.raises(ArchDSLError, match=match):
            model.save(tmp_path / "m")
    finally:
        model.companions = {}
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.complex64])
def test_save_refuses_a_dtype_load_cannot_read(tmp_path, dtype):
    """model.to(float8 or complex64).save() wrote what load then refused (unknown dtype 'float8_e4m3fn'; a
    malformed safetensors header for complex64)."""
    m = archdsl.compile(archdsl.parse("mamba", d_model=16, vocab_size=37, blocks=SMALL))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "complex modules are a new feature"
        m = m.to(dtype)
    with pytest.raises(ArchDSLError, match=f"save: embeddings.weight is {str(dtype)[6:]}; a saved model's tensors"):
        m.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_fuse_takes_an_iterator_once_and_refuses_bytes():
    """compile(fuse=iter(...)) was read to its end by the check, and then switched every fusion off."""
    spec = archdsl.parse("attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    assert archdsl.compile(spec, fuse=iter(["qkv"])).fusions == {"qkv"}
    with pytest.raises(ArchDSLError, match="fuse: expected True, False or a set of fusion names, got b'qkv'"):
        archdsl.compile(spec, fuse=b"qkv")


def test_meta_moe_forward_gives_shapes():
    """The MoE's expert loop counts tokens an expert (bincount), which the meta device cannot."""
    spec = archdsl.parse("attn+moe", d_model=16, vocab_size=37, blocks={**SMALL, "moe": {"experts": 4, "top_k": 2}})
    model = archdsl.compile(spec, device="meta")
    assert model(torch.zeros(2, 3, dtype=torch.long, device="meta")).shape == (2, 3, 37)


def _tied():
    spec = archdsl.parse("mamba", d_model=16, vocab_size=37, tie_embeddings=True, blocks=SMALL)
    return archdsl.compile(spec, seed=0)


def test_load_weights_refuses_aliases_that_differ_and_leaves_the_model():
    """The two names of a tied tensor, given different values: the last one won. Now refused, and nothing of the
    checkpoint lands (the check comes before any copy)."""
    from archdsl.model import load_weights

    model = _tied()
    tensors = {n: p.detach() + 1 for n, p in model.named_parameters(remove_duplicate=False)}
    before = {n: t.clone() for n, t in model.state_dict().items()}
    load_weights(model, tensors)  # equal aliases are fine
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"] + 1)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 2
    with pytest.raises(ArchDSLError, match="'embeddings.weight' and 'lm_head.weight' are one tensor of the model"):
        load_weights(model, tensors)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_load_weights_refuses_tensors_that_are_not_floats(dtype):
    from archdsl.model import load_weights

    model = _tied()
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = "layers.0.mixer.A_log"
    tensors[name] = tensors[name].to(dtype)
    with pytest.raises(ArchDSLError, match=f"tensor '{name}' is {str(dtype)[6:]}, the model's is float32"):
        load_weights(model, tensors)


def test_load_weights_takes_float8_and_bf16_weights():
    """A narrower float widens exactly: taken."""
    from archdsl.model import load_weights

    model = _tied()
    tensors = {n: p.detach().to(torch.float8_e4m3fn) for n, p in model.named_parameters()}
    load_weights(model, tensors)
    assert torch.equal(model.lm_head.weight, tensors["embeddings.weight"].float())


def test_a_read_only_save_is_not_replaced(model, tmp_path, monkeypatch):
    """Moved aside, a read-only directory's files could not be removed (unless root): its `.old` copy stayed
    beside the new save. Refused before anything is written (os.access stands in for the permissions, which
    root would pass)."""
    import archdsl.atomic

    model.save(tmp_path / "m")
    monkeypatch.setattr(archdsl.atomic.os, "access", lambda path, mode: not str(path).endswith("m"))
    with pytest.raises(ArchDSLError, match="will not replace .*m: it is read-only"):
        model.save(tmp_path / "m")
    assert os.listdir(tmp_path) == ["m"]


@pytest.mark.parametrize("kwargs", [dict(top_p=1e-46), dict(repetition_penalty=1e-300),
                                    dict(repetition_penalty=5e-324), dict(repetition_penalty=1e300)])
def test_sampling_options_past_float32s_range_still_sample(model, kwargs):
    """top_p 1e-46 read as 0 in float32 dropped every token; a penalty of 1e-300 gave inf logits and inf - inf:
    multinomial's RuntimeError. The likeliest token is kept; a repeated token made certain is sampled."""
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, 3, temperature=1.0, seed=0, **kwargs)
    assert out.shape == (2, 8) and bool(((out >= 0) & (out < 37)).all())
    if "top_p" in kwargs:
        assert torch.equal(out, model.generate(ids, 3, temperature=0))


def test_meta_models_take_every_forward_and_generate_option():
    """Shapes only: a mask's pads and a packing do not change them (they were torch's errors from reading the
    values); eos and seed are skipped; logits_mask, whose values decide the shape, is refused by name."""
    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    meta = archdsl.compile(spec, device="meta")
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    assert meta(ids, attention_mask=torch.ones_like(ids)).shape == (2, 5, 37)
    assert meta(ids, seq_idx=torch.zeros_like(ids)).shape == (2, 5, 37)
    assert meta.generate(ids, 2, eos_token_id=1, seed=1).shape == (2, 7)
    with pytest.raises(ArchDSLError, match="forward: logits_mask on the meta device"):
        meta(ids, logits_mask=torch.ones_like(ids, dtype=torch.bool))
    s4d = archdsl.compile(archdsl.parse("s4d, s4d", d_model=16, vocab_size=37), device="meta")
    assert s4d(ids, seq_idx=torch.zeros_like(ids)).shape == (2, 5, 37)


def test_flags_and_names_of_the_wrong_kind_are_named(model, tmp_path):
    with pytest.raises(ArchDSLError, match="init_cache: static must be True or False, got 'no'"):
        model.init_cache(1, max_len=4, static="no")
    with pytest.raises(ArchDSLError, match="save: the directory's path .* holds a NUL byte"):
        model.save(str(tmp_path / "a\0b"))
    with pytest.raises(ArchDSLError, match="from_hf: weights must be True or False, got 'yes'"):
        archdsl.from_hf(str(tmp_path), weights="yes")
    with pytest.raises(ArchDSLError, match="from_hf: name must be None or a str, got 3"):
        archdsl.from_hf(str(tmp_path), name=3)
    with pytest.raises(ArchDSLError, match="from_hf: the config.json's or model directory's path .* NUL byte"):
        archdsl.convert.hf.read_hf_config(str(tmp_path / "a\0b"))
    assert os.listdir(tmp_path) == []


def test_numpy_integers_are_ints_everywhere():
    """parse and analyze refused them where compile, init_cache and generate took them."""
    import numpy as np
    from archdsl.spec import with_sizes

    spec = archdsl.parse("mamba", d_model=np.int64(16), vocab_size=np.int32(37), blocks=SMALL)
    assert type(spec.d_model) is int and spec == archdsl.parse("mamba", d_model=16, vocab_size=37, blocks=SMALL)
    rep = archdsl.analyze(spec, seq_len=np.int64(64), batch=np.int16(2))
    assert (rep.seq_len, rep.batch) == (64, 2) and type(rep.seq_len) is int
    assert [r.seq_len for r in archdsl.analyze_lengths(spec, np.array([16, 32]))] == [16, 32]
    assert with_sizes(spec, blocks={"mamba": {"d_state": 8}}).blocks["mamba"]["d_state"] == 8
    with pytest.raises(ArchDSLError, match="with_sizes: expected a Spec, got str"):
        with_sizes("mamba", d_model=8)


def test_cuda_graph_must_be_a_bool_or_none(model, tmp_path):
    """compile's and load's cuda_graph is None (the default: a graph where one captures), True or False: "no" read
    as True (a CUDA graph where none was asked for; on the CPU, the error said cuda_graph=True)."""
    with pytest.raises(ArchDSLError, match="compile: cuda_graph must be None, True or False, got 'no'"):
        archdsl.compile(model.spec, cuda_graph="no")
    model.save(tmp_path / "m")
    with pytest.raises(ArchDSLError, match="load: cuda_graph must be None, True or False, got 1"):
        archdsl.load(tmp_path / "m", cuda_graph=1)
    assert archdsl.load(tmp_path / "m", cuda_graph=False).cuda_graph is False
    assert archdsl.load(tmp_path / "m").cuda_graph is None and archdsl.compile(model.spec).cuda_graph is None
    with pytest.raises(ArchDSLError, match="model: cuda_graph must be None, True or False, got 'yes'"):
        model.cuda_graph = "yes"
    assert model.cuda_graph is None


def test_setting_cuda_graph_tries_again_and_false_drops_the_graph(model):
    model._graphs, model._graph_failed = {"key": "a graph"}, "a capture failed"
    model.cuda_graph = None  # tried again
    assert model._graph_failed is None and model._graphs == {"key": "a graph"}
    model.cuda_graph = False  # its buffers go
    assert model._graphs == {} and model.cuda_graph is False


def test_sparse_token_tensors_and_a_meta_eos_are_named(model):
    """A sparse input_ids, tokens, seq_idx, attention_mask or logits_mask was torch's NotImplementedError from inside
    (aminmax, as_strided, ne, index), and an eos_token_id tensor on the meta device that of .tolist()."""
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(0))
    sparse = "must be a dense tensor.*got layout torch.sparse_coo"
    with pytest.raises(ArchDSLError, match=f"forward: input_ids {sparse}"):
        model(ids.to_sparse())
    with pytest.raises(ArchDSLError, match=f"generate: input_ids {sparse}"):
        model.generate(ids.to_sparse(), 2)
    with pytest.raises(ArchDSLError, match=f"step: tokens {sparse}"):
        model.step(ids[:, 0].to_sparse(), model.init_cache(2))
    for name, value in (("seq_idx", torch.zeros_like(ids)), ("attention_mask", torch.ones_like(ids)),
                        ("logits_mask", torch.ones_like(ids, dtype=torch.bool))):
        with pytest.raises(ArchDSLError, match=f"forward: {name} {sparse}"):
            model(ids, **{name: value.to_sparse()})
    with pytest.raises(ArchDSLError, match=f"generate: attention_mask {sparse}"):
        model.generate(ids, 2, attention_mask=torch.ones_like(ids).to_sparse())
    with pytest.raises(ArchDSLError, match="generate: eos_token_id must be a token id or a non-empty list"):
        model.generate(ids, 2, eos_token_id=torch.tensor(1, device="meta"))


def test_sampling_logits_that_are_not_finite_is_named():
    """A NaN or +inf logit (NaN weights, a float16 overflow), or a row of -inf only, made multinomial's RuntimeError
    ("probability tensor contains either inf, nan or element < 0"): an ArchDSLError naming the row, and in generate
    the step. -inf beside finite logits is a token never drawn; greedy takes the argmax as it is."""
    from archdsl.model.decoding import sample

    inf, nan = float("inf"), float("nan")
    for row, holds in [([inf, 0.0], r"\+inf"), ([nan, 0.0], "NaN"), ([-inf, -inf], "-inf only")]:
        logits = torch.tensor([[0.0, 1.0], row])
        for kw in ({}, dict(top_k=1), dict(top_p=0.5)):
            with pytest.raises(ArchDSLError, match=rf"^sample: the logits of row 1 hold {holds}: sampling needs"):
                sample(logits, 1.0, **kw)
        assert sample(logits, 0).shape == (2,)
    assert sample(torch.tensor([[-inf, 0.0, -inf]]), 1.0).tolist() == [1]
    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    bad = archdsl.compile(spec, seed=0)
    ids = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        bad.lm_head.weight[5, 0] = nan  # NaN weights: the logit of token 5 NaN in every row
    with pytest.raises(ArchDSLError, match=r"^generate: step 0 \(new token 1\): the logits of row 0 hold NaN"):
        bad.generate(ids, 3, temperature=1.0, seed=0)
    assert bad.generate(ids, 3).shape == (2, 6)  # greedy


def test_compile_of_a_saved_directory_warns_that_its_weights_are_not_used(tmp_path):
    """archdsl.compile(SAVED_DIR) gave a model of the saved one's name and size with fresh weights, without a word
    (the CLI's compile says so): now an ArchDSLWarning names load; load itself warns of nothing."""
    import warnings

    import archdsl
    from archdsl.errors import ArchDSLWarning

    archdsl.compile(archdsl.parse("2×mamba2", d_model=32, vocab_size=64), seed=1).save(tmp_path / "m")
    with pytest.warns(ArchDSLWarning, match=r"fresh weights from seed 0; its saved weights are not used "
                                            r"\(archdsl.load reads them\)") as record:
        archdsl.compile(tmp_path / "m")
    assert record[0].filename == __file__  # said at the user's call
    from archdsl.model import compile as compile_directly

    with pytest.warns(ArchDSLWarning, match="its saved weights are not used") as record:
        compile_directly(tmp_path / "m")
    assert record[0].filename == __file__  # through whichever of archdsl's functions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        archdsl.load(tmp_path / "m")
        archdsl.compile(tmp_path / "m" / "spec.yaml")  # the spec file: asked for its spec alone


def test_compile_of_a_spec_directory_and_the_hint_of_a_save_say_nothing(tmp_path):
    """A directory holding a spec.yaml and no weights is a spec: compile warns of no weights it leaves unused; a
    directory with a spec.yaml beside a config.json is an archdsl save, given no Hugging Face hint."""
    import warnings

    import archdsl
    from archdsl.spec import hf_dir_hint

    archdsl.compile(archdsl.parse("2×mamba2", d_model=32, vocab_size=64)).save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        archdsl.compile(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert hf_dir_hint(tmp_path / "m") == ""
    (tmp_path / "m" / "spec.yaml").unlink()
    assert hf_dir_hint(tmp_path / "m") != ""


def test_the_deferred_finite_check_says_what_the_immediate_one_says(monkeypatch):
    """On a card, sampling generate reads its finite check every CHECK_EVERY steps (Deferred), not each token: run
    here on the CPU, it draws the same tokens as the check of every step, and raises the same ArchDSLError for the
    earliest step and row that were not finite, however many steps later it reads it."""
    from archdsl.model import decoding

    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, seed=0)
    ids = torch.randint(0, 37, (3, 4), generator=torch.Generator().manual_seed(0))
    want = model.generate(ids, 40, temperature=0.8, top_k=9, seed=3)
    monkeypatch.setattr(decoding, "defers", lambda *a: True)
    assert torch.equal(model.generate(ids, 40, temperature=0.8, top_k=9, seed=3), want)
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    for n in (1, 3, 32, 33, 40):  # a check at the last step, at step 31, and after it
        with pytest.raises(ArchDSLError, match=r"^generate: step 0 \(new token 1\): the logits of row 0 hold NaN: "):
            model.generate(ids, n, temperature=1.0, seed=0)
    deferred = decoding.Deferred(3, "cpu")
    inf = float("inf")
    ok = torch.zeros(3, 4)
    assert torch.equal(deferred.note(ok, 0), ok)
    deferred.check()  # all finite: nothing to say
    late = ok.clone()
    late[2] = -inf  # row 2 at step 1: -inf only
    assert torch.equal(deferred.note(late, 1)[2], torch.zeros(4))  # sampled as a uniform row, never multinomial's NaN
    later = ok.clone()
    later[0, 1] = inf  # row 0 at step 2: +inf; row 2 finite again
    deferred.note(later, 2)
    with pytest.raises(ArchDSLError, match=r"^generate: step 1 \(new token 2\): the logits of row 2 hold -inf only"):
        deferred.check()


def test_which_generate_defers_its_finite_check():
    """On a card, for sampling without an eos only: greedy takes the argmax as it is (never a zeroed row)."""
    from types import SimpleNamespace

    from archdsl.model.decoding import defers

    card, cpu = SimpleNamespace(is_cuda=True), torch.zeros(1, 1, dtype=torch.long)
    assert defers(card, 1.0, None)
    assert not defers(card, 0, None)  # greedy
    assert not defers(card, 1.0, ([2], 0))  # an eos
    assert not defers(cpu, 1.0, None)


def test_the_deferred_check_waits_every_check_every_steps(monkeypatch):
    from archdsl.model import decoding

    spec = archdsl.parse("mamba, attn+mlp", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, seed=0)
    ids = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(decoding, "defers", lambda *a: True)
    checks, immediate = [], []
    real = decoding.Deferred.check
    monkeypatch.setattr(decoding.Deferred, "check", lambda self: (checks.append(1), real(self))[1])
    monkeypatch.setattr(decoding, "check_finite", lambda *a: immediate.append(1))
    model.generate(ids, 70, temperature=1.0, seed=0)
    assert len(checks) == 3 and not immediate  # after steps 31, 63 and 69; sample checks nothing itself


def test_the_deferred_check_tells_what_the_first_bad_step_held():
    from archdsl.model import decoding

    deferred = decoding.Deferred(2, "cpu")
    nan, inf = torch.zeros(2, 4), torch.zeros(2, 4)
    nan[0, 1], inf[0, 2] = float("nan"), float("inf")
    deferred.note(nan, 0)
    deferred.note(inf, 1)
    with pytest.raises(ArchDSLError, match=r"^generate: step 0 \(new token 1\): the logits of row 0 hold NaN"):
        deferred.check()


def test_load_names_itself_for_an_unknown_keyword(tmp_path):
    """`archdsl.load(dir, fooo=1)` said `compile() got an unexpected keyword argument 'fooo'`."""
    archdsl.compile("mamba2", dtype=torch.float32).save(tmp_path / "m")
    with pytest.raises(TypeError, match=r"^load\(\) got an unexpected keyword argument 'fooo'"):
        archdsl.load(tmp_path / "m", fooo=1)
    assert archdsl.load(tmp_path / "m", fuse=False, ssm_state_dtype="bf16", seed=3).ssm_state_dtype == torch.bfloat16
