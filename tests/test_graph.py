"""The layer graph and the analyses: pass by pass, against hand counts and the design card."""
from __future__ import annotations

import re

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.blocks.base import FFN, INJECT, MIXER
from archdsl.graph import PASSES, build_graph, layers, role_of
from archdsl.language import Block, format_block

from strategies import small_layouts


def kinds(spec, role):
    return [(role_of(s, role).name if role_of(s, role) else None) for s in layers(spec.graph)]


def test_design_card_example():
    spec = archdsl.parse("7×mamba2, 1×attn(shared), moe every 2")
    assert kinds(spec, MIXER) == ["mamba2"] * 7 + ["attn"]
    assert [i for i, f in enumerate(kinds(spec, FFN)) if f == "moe"] == [1, 3, 5, 7]
    assert spec.graph.graph["groups"] == {"attn": [7]}


def test_jamba_periods_are_zero_based():
    spec = archdsl.load_spec("specs/jamba-v0.1.yaml")
    mixers, ffns = kinds(spec, MIXER), kinds(spec, FFN)
    assert [i for i, m in enumerate(mixers) if m == "attn"] == [4, 12, 20, 28]
    assert all(f == ("moe" if i % 2 == 1 else "mlp") for i, f in enumerate(ffns))


def test_sharing_groups_and_nested_repeats():
    spec = archdsl.parse("4×(7×mamba2, attn(shared)), moe every 2")
    assert len(layers(spec.graph)) == 32
    assert spec.graph.graph["groups"] == {"attn": [7, 15, 23, 31]}
    spec = archdsl.parse("2×(mamba2, attn(shared=a), mamba2, attn(shared=b))")
    assert spec.graph.graph["groups"] == {"a": [1, 5], "b": [3, 7]}


def test_shared_parameters_counted_once():
    block = archdsl.analyze("mamba2, attn").params - archdsl.analyze("mamba2").params  # attn + its norm
    assert archdsl.analyze("4×(mamba2, attn)").params - archdsl.analyze("4×(mamba2, attn(shared))").params == 3 * (block - 768)


def test_tied_embeddings_counted_once():
    tied = archdsl.parse("2×mamba2", tie_embeddings=True)
    untied = archdsl.parse("2×mamba2", tie_embeddings=False)
    assert archdsl.analyze(untied).params - archdsl.analyze(tied).params == tied.vocab_size * tied.d_model


def test_zamba_embedding_edges():
    spec = archdsl.load_spec("specs/zamba2-2.7b.yaml")
    g = spec.graph
    hybrid = [i for i, s in enumerate(layers(g)) if role_of(s, INJECT)]
    assert hybrid == [6, 12, 18, 24, 30, 36, 42, 47, 51]
    assert sorted(v for u, v, e in g.edges(data="embedding") if e) == sorted(f"L{i}" for i in hybrid)
    spec = archdsl.parse("4×mamba2, zamba(shared) at 0 2")
    assert [v for u, v, e in spec.graph.edges(data="embedding") if e] == ["L0", "L2"]
    assert nx.is_directed_acyclic_graph(g)


def test_every_pass_is_verified_and_named():
    spec = archdsl.parse("3×(mamba2+mlp), attn(shared) every 2")
    for p in PASSES:
        g = build_graph(spec, until=p.__name__)
        assert g.graph["stage"] == p.__name__


def test_moe_active_params():
    rep = archdsl.load_spec("specs/jamba-v0.1.yaml")
    r = archdsl.analyze(rep)
    assert r.params == 51_570_323_328
    assert 11.5e9 < r.active_params < 12.5e9  # "about 12B active"


def test_cache_fixed_for_ssm_and_linear_for_attention():
    ssm = [archdsl.analyze("4×mamba2", seq_len=n).cache_bytes for n in (16, 4096, 65536)]
    assert ssm[0] == ssm[1] == ssm[2] > 0
    att = [archdsl.analyze("4×attn", seq_len=n).cache_bytes for n in (1024, 2048, 4096)]
    assert att[1] == 2 * att[0] and att[2] == 2 * att[1]
    win = [archdsl.analyze("attn(window=512)", seq_len=n).cache_bytes for n in (512, 4096)]
    assert win[0] == win[1]
    assert archdsl.analyze("attn", seq_len=1024, batch=4).cache_bytes == 4 * att[0] // 4


def test_flops_grow_with_context_only_for_attention():
    assert archdsl.analyze("mamba2", seq_len=16).flops_per_token == archdsl.analyze("mamba2", seq_len=65536).flops_per_token
    assert archdsl.analyze("attn", seq_len=65536).flops_per_token > archdsl.analyze("attn", seq_len=16).flops_per_token


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_layouts(max_layers=24))
def test_random_layouts_give_verified_graphs_or_clean_errors(layout):
    from archdsl.language import format_layout

    text = format_layout(layout)
    try:
        spec = archdsl.parse(text)
        rep = archdsl.analyze(spec)
    except archdsl.ArchDSLError:
        return
    assert len(rep.layers) == len(layers(spec.graph)) >= 1
    assert rep.params == rep.embedding_params + spec.d_model + sum(r.params for r in rep.layers)
    assert rep.active_params <= rep.params


@pytest.mark.parametrize("text, message", [
    ("4×(mamba2, attn(shared)), attn(shared, heads=4) every 3", "shared group 'attn' joins blocks of different configurations"),
    ("32×mamab", "unknown block 'mamab'; did you mean 'mamba'"),
    ("4×mamba2, zamba at 9", "`at 9`: the layout has only 4 layers"),
    ("4×mamba2, moe every 8", "`moe every 8` selects no layer: it picks layer 7 first, and the layout has only 4 layers"),
    ("3×mamba2, attn every 5 offset 3", "`attn every 5 offset 3` selects no layer"),
    ("zamba", "cannot stand alone"),
    ("mamba2, mlp, zamba at 1", "'zamba' feeds a mixer and cannot share a layer with only an FFN (layer 1)"),
    ("mamba2+attn", "a layer can hold one mixer block"),
    ("4×attn(heads=7)", "attn: heads 7 must divide d_model 768"),
    ("4×attn(heads=0)", "heads must be positive"),
    ("mamba, zamba(rope=true, heads=512) at 0", "zamba: RoPE needs an even head_dim, got 3"),
    ("mamba, zamba(rope_theta=0) at 0", "zamba: rope_theta must be positive"),
    ("4×attn(head=8)", "unknown argument 'head'"),
    ("100000×(mamba2, mamba2)", "more than 100000 layers"),
    ("2×mamba, moe every 3 offset 2", "`moe every 3 offset 2` selects no layer: it picks layer 2 first"),  # no offset
    ("2×mamba, moe every 3\n  offset 2", "`moe every 3 offset 2` selects no layer"),  # on one line
    ("2×mamba, moe(top_k=1)\n  every 4  # past the end\n  offset 2", "`moe(top_k=1) every 4 offset 2` selects no"),
    ("4×Mamba", "unknown block 'Mamba'; did you mean 'mamba', 'mamba2', 'zamba'?"),  # zamba came first
    ("2×Attn", "unknown block 'Attn'; did you mean 'attn'?"),
    ("mamba, attn(Heads=4)", "attn: unknown argument 'Heads'; did you mean 'heads'"),
])
def test_semantic_errors(text, message):
    with pytest.raises(archdsl.ArchDSLError, match=None) as e:
        archdsl.analyze(text)
    assert message in str(e.value)
    assert str(e.value).startswith("<layout>:1:")


@pytest.mark.parametrize("text, ok", [(", ".join(["mlp"] * 10), True), (", ".join(["mlp"] * 11), False),
                                      ("5×mlp, " + ", ".join(["mlp"] * 6), False), ("2×(3×mlp, mlp), 2×mlp", True)])
def test_the_layer_limit_counts_listed_layers_too(text, ok, monkeypatch):
    import archdsl.graph

    monkeypatch.setattr(archdsl.graph, "MAX_LAYERS", 10)
    if ok:
        assert len(layers(archdsl.parse(text).graph)) == 10
    else:
        with pytest.raises(archdsl.ArchDSLError, match="more than 10 layers"):
            archdsl.parse(text).graph


def test_absurd_sizes_refused():
    with pytest.raises(archdsl.ArchDSLError, match="absurd size"):
        archdsl.analyze(archdsl.parse("10000×(mamba2+mlp(hidden=1000000))", d_model=100000))


# Every `blocks:` entry is checked, used or not; the error points at the key or value in the file.
BLOCKS_ERRORS = {
    # false-y values that are no mapping had been read as no blocks
    "layout: mamba\nblocks: 0\n": ("2:9", "blocks must map a block kind or alias to a mapping of arguments"),
    "layout: mamba\nblocks: []\n": ("2:9", "blocks must map a block kind or alias to a mapping of arguments"),
    "layout: mamba\nblocks: false\n": ("2:9", "blocks must map a block kind or alias to a mapping of arguments"),
    "layout: mamba\nblocks:\n  attn: {heads: 7, bogus: 1}\n":
        ("3:20", "attn: unknown argument 'bogus'; valid names: bias, head_dim, heads, kv_heads, out_bias, rope,"),
    "layout: mamba\nblocks:\n  foo: {kind: nope}\n":
        ("3:15", "unknown block 'nope', the kind of alias 'foo'; did you mean 'moe'?"),
    "layout: mamba, foo\nblocks:\n  foo:\n    kind: nope\n":  # used in the layout: still at `kind: nope`
        ("4:11", "unknown block 'nope', the kind of alias 'foo'"),
    "layout: mamba, foo every 2\nblocks:\n  foo: {kind: bar}\n  bar: {kind: foo}\n":
        ("4:15", "alias cycle foo → bar → foo"),
    "layout: mamba\nffn: foo\nblocks:\n  foo: {kind: mpl}\n":
        ("4:15", "unknown block 'mpl', the kind of alias 'foo'; did you mean 'mlp'?"),
    "layout: mamba\nblocks:\n  mamab: {d_state: 4}\n":
        ("3:3", "blocks: unknown block kind 'mamab' (an alias gives its kind with `kind:`); did you mean 'mamba'"),
    "layout: mamba\nblocks:\n  attn: {kind: mamba}\n":
        ("3:10", "blocks: 'attn' is a block kind; only an alias (a new name) takes `kind:`"),
    "layout: mamba\nblocks:\n  attn: {heads: \"8\"}\n": ("3:17", "attn: heads must be int, got '8'"),
    "layout: mamba\nblocks:\n  swa: {kind: attn, rope: 1}\n": ("3:27", "attn: rope must be bool, got 1"),
    "layout: mamba\nblocks:\n  mlp: {act: relux}\n": ("3:14", "mlp: act must be one of gelu, relu"),
    "layout: mamba\nblocks:\n  attn: {d_model: 8}\n": ("3:10", "attn: unknown argument 'd_model'"),
    "layout: mamba\nblocks:\n  big: {kind: attn, heads: 0}\n": ("3:28", "attn: heads must be positive, got 0"),
    "layout: mamba\nblocks:\n  attn: {window: -3}\n": ("3:18", "attn: window must be positive, got -3"),
    "layout: mamba\nblocks:\n  a: {kind: 3}\n  '3': {kind: attn}\n":  # was a KeyError: `3` read as '3', then not
        ("3:13", "blocks: a: kind is the name of a block or an alias, got 3"),
    # an alias the layout cannot name: it passed check, and failed as a syntax error where it was used
    "layout: mamba\nblocks:\n  '3': {kind: attn}\n": ("3:3", "blocks: the alias '3' cannot be written in a layout"),
    "layout: mamba\nblocks:\n  my-attn: {kind: attn}\n": ("3:3", "blocks: the alias 'my-attn' cannot be written in"),
    "layout: mamba\nblocks:\n  every: {kind: attn}\n": ("3:3", "blocks: the alias 'every' cannot be written in a"),
    # sharing is the layout's: it was "unknown argument 'shared'; did you mean 'heads'?"
    "layout: mamba\nblocks:\n  attn: {shared: true}\n":
        ("3:10", "attn: sharing is written in the layout, as in attn(shared) or attn(shared=a), not in blocks:"),
    "layout: mamba\nblocks:\n  g: {kind: mlp, shared: g}\n": ("3:18", "mlp: sharing is written in the layout, as "
                                                                      "in g(shared)"),
}


@pytest.mark.parametrize("text", list(BLOCKS_ERRORS))
def test_every_blocks_entry_is_checked(text):
    from archdsl.spec import spec_from_yaml

    where, message = BLOCKS_ERRORS[text]
    with pytest.raises(archdsl.ArchDSLError) as e:
        spec_from_yaml(text, file="s.yaml").graph
    head, source_line, caret = str(e.value).split("\n")
    assert head.startswith(f"s.yaml:{where}: {message}")
    line, col = map(int, where.split(":"))
    assert source_line == "  " + text.split("\n")[line - 1] and caret == "  " + " " * (col - 1) + "^"


def test_a_long_alias_chain_resolves_in_linear_time():
    """Each `blocks:` entry's chain of aliases was followed anew, its names kept in a list: 2000 aliases took 40 s
    (cubic). Each name is followed once now, 20 000 in a moment; a cycle is still named in full, at its last `kind:`."""
    n = 20_000
    chain = {f"a{i}": {"kind": f"a{i + 1}"} for i in range(n)}
    spec = archdsl.parse("2×a0, a9 every 2", d_model=16, blocks=chain | {f"a{n}": {"kind": "attn", "heads": 2}})
    assert [[s.kind for s in subs] for subs in layers(spec.graph)] == [["attn"], ["attn"]]
    assert spec.kind_of("a0") == spec.kind_of(f"a{n}") == "attn" and spec.kind_of("mlp") == "mlp"
    cycle = chain | {f"a{n}": {"kind": "a0"}}
    assert archdsl.parse("a0", blocks=cycle).kind_of("a5") is None
    with pytest.raises(archdsl.ArchDSLError) as e:
        archdsl.parse("a0", blocks=cycle).graph
    assert e.value.message == f"alias cycle {' → '.join(f'a{i}' for i in range(n + 1))} → a0"


def test_what_depends_on_use_is_checked_only_where_used():
    """heads 7 does not divide d_model 64 and kv_heads 3 does not divide heads: an error for a used attn only;
    a moe float given as an int (aux_loss_coef: 0) is no size."""
    from archdsl.spec import spec_from_yaml

    text = "d_model: 64\nlayout: mamba\nblocks:\n  attn: {heads: 7, kv_heads: 3}\n  moe: {aux_loss_coef: 0}\n"
    assert archdsl.analyze(spec_from_yaml(text)).params > 0
    with pytest.raises(archdsl.ArchDSLError, match=r"^<spec>:4:17: attn: heads 7 must divide d_model 64"):
        spec_from_yaml(text.replace("layout: mamba", "layout: mamba, attn")).graph
    # a rope_fraction that rotates no channel pair of the head (16 · 0.05 < 2) was RoPE silently left out
    few = "d_model: 64\nlayout: attn\nblocks:\n  attn: {heads: 4, rope_fraction: 0.05}\n"
    with pytest.raises(archdsl.ArchDSLError, match=r"^<spec>:4:35: attn: rope_fraction 0.05 of head_dim 16 rotates no"):
        spec_from_yaml(few).graph
    assert spec_from_yaml(few.replace("heads: 4,", "heads: 4, rope: false,")).graph


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.sampled_from([4, 6]), st.sampled_from([0, 8]))
def test_cmix_has_channels_at_every_width(d_model, version, hidden):
    """RWKV-6's default channel-mix width int(3.5·d)//32·32 is 0 below d_model 10: that was a silent FFN of no
    channels (its key and value matrices empty); now an error at the block, asking for `hidden`."""
    spec = archdsl.parse(f"rwkv4+cmix(version={version}" + (f", hidden={hidden})" if hidden else ")"),
                         d_model=d_model, vocab_size=7)
    if version == 6 and not hidden and d_model < 10:
        with pytest.raises(archdsl.ArchDSLError, match=r"^<layout>:1:7: cmix: version 6's default hidden .* is 0 "):
            spec.graph
    else:
        width = hidden or (4 * d_model if version == 4 else int(3.5 * d_model) // 32 * 32)
        assert width > 0 and archdsl.analyze(spec).layers[0].params == (
            archdsl.analyze(archdsl.parse("rwkv4", d_model=d_model, vocab_size=7)).layers[0].params
            + 2 * d_model + 2 * d_model * width + d_model * d_model + d_model)  # cmix + its pre-norm


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["attn", "attn(window=4)", "mamba2, zamba(heads=4) at 0", "mamba2"]),
       st.integers(1, 10**400), st.integers(1, 10**400))
def test_any_context_or_batch_gives_a_report_or_an_error(layout, seq_len, batch):
    """analyze at a context past what a float holds was an OverflowError from attention's mean context."""
    try:
        rep = archdsl.analyze(archdsl.parse(layout), seq_len=seq_len, batch=batch)
    except archdsl.ArchDSLError as e:
        assert "too large to count" in str(e)
    else:
        assert rep.flops_per_token > 0 and rep.cache_bytes > 0


@pytest.mark.parametrize("ffn, entry", [("cmix", "cmix: {version: 6}"), ("big", "big: {kind: cmix, version: 6}")])
def test_an_error_of_the_default_ffn_points_at_ffn(ffn, entry):
    """The default FFN stands nowhere in the layout: an error of its configuration that no argument owns (cmix v6's
    width at a small d_model) pointed at the first character of the layout, now at `ffn:`."""
    from archdsl.spec import spec_from_yaml

    text = f"name: x\nd_model: 8\nlayout: 2×rwkv4\nffn: {ffn}\nblocks:\n  {entry}\n"
    with pytest.raises(archdsl.ArchDSLError) as e:
        spec_from_yaml(text, file="s.yaml").graph
    head, line, caret = str(e.value).split("\n")
    assert head.startswith("s.yaml:4:6: cmix: version 6's default hidden") and line == f"  ffn: {ffn}"
    assert caret == "  " + " " * 5 + "^"


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), min_size=1,
                                                                           unique=True))))
def test_at_selects_its_layers_in_linear_time(case):
    """`mlp at i j k …` applied by asking every layer whether it is listed (`i in at`) took n·k steps: 100 000 layers
    with an index each took over a minute. The layers it picks are the listed ones, without asking each layer."""
    from archdsl.language.ast import Modifier

    n, at = case
    calls = []
    original = Modifier.selects
    Modifier.selects = lambda self, i: calls.append(i) or original(self, i)
    try:
        spec = archdsl.parse(f"{n}×mamba, mlp at " + " ".join(map(str, at)))
        assert [i for i, f in enumerate(kinds(spec, FFN)) if f] == sorted(at)
    finally:
        Modifier.selects = original
    assert calls == []


def _modifiers_one_by_one(spec) -> list[list[str]]:
    """The layers' sublayer names after the modifiers, each modifier applied in turn to every layer it selects
    (what apply_modifiers computes in one pass)."""
    from archdsl.graph import _resolve_kind

    out = [[s.name for s in subs] for subs in layers(build_graph(spec, until="expand_repeats"))]
    role = lambda name: _resolve_kind(spec, Block(name))[1]  # noqa: E731
    for mod in spec.layout.modifiers:
        for i, names in enumerate(out):
            if mod.selects(i):
                out[i] = [x for x in names if role(x) != role(mod.block.name)] + [mod.block.name]
    return out


MODIFIER = st.tuples(st.sampled_from(["moe", "mlp", "attn", "mamba2", "zamba"]),
                     st.integers(1, 5).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
                     st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True), st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["mamba", "attn+mlp", "mlp", "zamba+mamba2", "mamba+moe"]), min_size=6, max_size=12),
       st.lists(MODIFIER, max_size=6))
def test_modifiers_apply_as_if_one_after_another(items, mods):
    """apply_modifiers works out each layer's sublayers in one pass; the layers are those of applying the modifiers
    in order, a later one replacing an earlier one's sublayer of its role, the sublayers in the same order."""
    text = ", ".join(items) + "".join(f", {kind} every {n} offset {k}" if every else
                                      f", {kind} at {' '.join(map(str, at))}" for kind, (n, k), at, every in mods)
    spec = archdsl.parse(text)
    g = build_graph(spec, until="apply_modifiers")
    assert [[s.name for s in subs] for subs in layers(g)] == _modifiers_one_by_one(spec)


@pytest.mark.parametrize("layout, error", [
    ("mamba2(bogus=1), attn every 1", r"1:8: mamba2: unknown argument 'bogus'"),
    ("mamba2(d_state=0), attn every 1", r"1:8: mamba2: d_state must be positive, got 0"),
    ("2×mamba2+mlp(act=nope), moe every 1", r"1:14: mlp: act must be one of"),
    ("mamba2+attn, mamba every 1", r"1:8: a layer can hold one mixer block, this one has 2"),
    ("mlp+moe, cmix every 1", r"1:5: a layer can hold one ffn block, this one has 2"),
    ("4×mamba2, attn(bogus=1) every 2, mamba every 1", r"1:16: attn: unknown argument 'bogus'"),
    ("4×mamba2, attn(heads=0) at 1, mamba every 1", r"1:16: attn: heads must be positive, got 0"),
])
def test_what_a_modifier_replaces_is_checked_as_written(layout, error):
    """A modifier dropped the sublayers of its role before any was checked: `mamba2(bogus=1), attn every 1` passed
    check and fmt, and so did a layer of two mixers that a mixer modifier covered, and a modifier that a later one
    overrules on every layer it selects."""
    with pytest.raises(archdsl.ArchDSLError, match=r"^<layout>:" + error):
        archdsl.parse(layout).graph


def test_many_modifiers_on_many_layers_apply_in_linear_time():
    """Every modifier asked every layer whether it selects it: 20 000 layers and 1000 modifiers (a 13 KB layout)
    took a minute, 4000 of them several. Each selection is now read once, from the last modifier of a role."""
    n = 20_000
    mods = [f"moe(experts={2 + k % 7}) every {1 + k % 3}" for k in range(3999)] + ["mlp every 5 offset 1"]
    g = build_graph(archdsl.parse(f"{n}×mamba, " + ", ".join(mods), d_model=64), until="apply_modifiers")
    ffns = [subs[-1].block for subs in layers(g)]
    # the last moe of each period is k = 3996, 3997, 3998 (periods 1, 2, 3; experts 2 + k % 7 = 8, 2, 3), each
    # winning where it selects the layer over those before it, and the mlp (the last modifier) at i % 5 == 1
    assert [format_block(b) for b in ffns[:7]] == [
        "moe(experts=8)", "mlp", "moe(experts=3)", "moe(experts=2)", "moe(experts=8)", "moe(experts=3)", "mlp"]
    assert sum(b.name == "mlp" for b in ffns) == n // 5 and all(len(subs) == 2 for subs in layers(g))


def test_shared_blocks_that_mean_the_same_join_one_group():
    """Sharing compared configurations as written: kv_heads 8 (= heads) was not kv_heads 0, a default written out
    not the default, and the error printed the second use as a bare `attn`, nothing visible differing. Configurations
    are compared as the blocks use them; where they differ, the message names the values that do."""
    for text in ("attn(shared=g, kv_heads=8), mamba, attn(shared=g)",
                 "mlp(shared=g, hidden=3072), mamba, mlp(shared=g)",
                 "mamba(shared=g, dt_rank=48), mamba, mamba(shared=g)",
                 "attn(shared=g), mamba, attn(shared=g, head_dim=96)",
                 "moe(shared=g, norm_topk=false), mamba, moe(shared=g)",
                 "mamba2(shared=g, heads=24), mamba2(shared=g)"):
        spec = archdsl.parse(text)
        assert spec.graph.graph["groups"] == {"g": [0, 2] if "mamba," in text else [0, 1]}, text
        one = archdsl.parse(text.replace("shared=g", "shared=false"))
        alone = archdsl.analyze(one).layers[0].params - 768  # less its norm
        assert archdsl.analyze(one).params - archdsl.analyze(spec).params == alone, text  # one set of weights
    for text, why in (
            ("attn(shared=g, heads=4), attn(shared=g)", "attn(heads=4) and attn differ in heads (4 and 8), kv_heads (4 "
                                                        "and 8), head_dim (192 and 96)"),
            ("attn(shared=g), attn(shared=g, kv_heads=4)", "attn and attn(kv_heads=4) differ in kv_heads (8 and 4)"),
            ("mamba(shared=g, dt_rank=8), mamba(shared=g)", "mamba(dt_rank=8) and mamba differ in dt_rank (8 and 48)"),
            ("attn(shared=g), mlp(shared=g)", "attn and mlp are different kinds of block")):
        with pytest.raises(archdsl.ArchDSLError) as e:
            _ = archdsl.parse(text).graph
        assert str(e.value).startswith(f"<layout>:1:{text.index('), ') + 4}: shared group 'g' joins blocks of "
                                       f"different configurations: {why}\n"), str(e.value)


def test_the_layers_active_parameters_add_up_to_the_total():
    """Each use of a shared block added its active parameters to its layer's row, and the total took the surplus
    off: the rows of zamba2-2.7b summed to 3.85 B active of 2.48 B. A shared group's are counted at its first use,
    as its parameters are."""
    for spec in (archdsl.load_spec("specs/zamba2-2.7b.yaml"), archdsl.load_spec("specs/jamba-v0.1.yaml"),
                 archdsl.parse("4×(7×mamba2, attn(shared)), moe every 2"),
                 archdsl.parse("3×(mamba2, zamba(shared=a)+mamba2, mamba2+moe(shared=e, experts=8, top_k=2), "
                               "attn(shared=b))", d_model=64)):
        r = archdsl.analyze(spec)
        outer = r.params - sum(x.params for x in r.layers)  # the embedding and the final norm
        assert r.active_params == outer + sum(x.active_params for x in r.layers), spec.name
    zamba2 = archdsl.analyze("specs/zamba2-2.7b.yaml")
    assert zamba2.params == zamba2.active_params == 2_481_848_336  # no MoE: every parameter is active
    assert archdsl.analyze("specs/jamba-v0.1.yaml").active_params == 12_110_311_296  # nothing shared: as it was
    r = archdsl.analyze("4×(7×mamba2, attn(shared)), moe every 2")  # attn's 4·768² at layer 7 only, in both figures
    for figure in ("params", "active_params"):
        assert [getattr(r.layers[i], figure) - getattr(r.layers[7], figure) for i in (15, 23, 31)] == [-4 * 768**2] * 3


@pytest.mark.parametrize("uses, experts, top_k", [(1, 8, 2), (2, 8, 2), (3, 8, 2), (4, 8, 2), (9, 8, 2), (4, 4, 2),
                                                  (3, 16, 3)])
def test_a_shared_moe_counts_the_experts_a_token_can_reach(uses, experts, top_k):
    """A shared MoE counted top_k experts once, whatever the uses: a token passes it at each use and may be routed to
    other experts each time. Its active parameters are the router and min(experts, uses·top_k) experts."""
    from archdsl.blocks.mlp import ffn_params

    d, hidden = 32, 8
    moe = f"moe(shared, experts={experts}, top_k={top_k}, hidden={hidden})"
    shared, alone = (archdsl.analyze(archdsl.parse(f"{uses}×attn(heads=2)+{m}", d_model=d, vocab_size=64))
                     for m in (moe, moe.replace("shared, ", "")))
    per_use = alone.layers[0].active_params - (d * experts + top_k * ffn_params(d, hidden, "swiglu", False))
    want = d * experts + min(experts, uses * top_k) * ffn_params(d, hidden, "swiglu", False)
    assert shared.active_params - shared.embedding_params - d == uses * per_use + want
    assert shared.active_params <= shared.params and shared.layers[0].active_params == per_use + want


def test_dtype_names_read_as_the_model_reads_them():
    """analyze takes the model's dtype names in any case, reports the canonical one; an SSM state only in a
    dtype the model can hold it in (float8 is a KV-cache estimate only)."""
    spec = archdsl.parse("mamba2, attn", d_model=256)
    for name, canonical in [("BF16", "bfloat16"), ("half", "float16"), ("torch.float32", "float32"), ("fp8", "float8")]:
        assert archdsl.analyze(spec, dtype=name).dtype == canonical
    assert archdsl.analyze(spec, ssm_state_dtype="BF16").ssm_state_dtype == "bfloat16"
    assert archdsl.analyze(spec, dtype="bf16").cache_bytes == archdsl.analyze(spec, dtype="bfloat16").cache_bytes
    with pytest.raises(archdsl.ArchDSLError, match="unknown ssm_state_dtype 'fp8'"):
        archdsl.analyze(spec, ssm_state_dtype="fp8")
    with pytest.raises(archdsl.ArchDSLError, match="unknown dtype 'int8'"):
        archdsl.analyze(spec, dtype="int8")
    import torch  # torch's own float8 dtypes, as the docstring promises (they were unknown)
    for f8 in (torch.float8_e4m3fn, torch.float8_e5m2):
        assert archdsl.analyze(spec, dtype=f8).cache_bytes == archdsl.analyze(spec, dtype="fp8").cache_bytes
    with pytest.raises(archdsl.ArchDSLError, match="unknown ssm_state_dtype"):
        archdsl.analyze(spec, ssm_state_dtype=torch.float8_e4m3fn)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_lens=[], batch="x"), "batch must be an int, got 'x'"),  # a ValueError of int() with no lengths
    (dict(seq_lens=[], batch=-5), "batch must be positive, got -5"),  # no lengths: nothing checked at all
    (dict(seq_lens=[1024], batch=2.5), "batch must be an int, got 2.5"),
    (dict(seq_lens=[1024, 0]), "seq_len must be positive, got 0"),
])
def test_analyze_lengths_checks_batch_with_or_without_lengths(kwargs, message):
    with pytest.raises(archdsl.ArchDSLError, match=re.escape(message)):
        archdsl.analyze_lengths("2×attn", **kwargs)


def test_a_deep_graph_is_its_layout_written_out():
    """The passes work out each kind of layer once and update one graph in place; the graph of a deep layout
    with groups, `every` and `at` is still each layer written out, and the one of a copy and a verify per pass."""
    from archdsl.graph import verify

    n = 3000
    spec = archdsl.parse(f"{n // 2}×(mamba2, attn(shared)), moe every 3, zamba(shared=z) at 0 {n - 2}", d_model=256)
    small = archdsl.parse("mamba2+moe, attn, zamba(shared=z) at 0", d_model=256)
    config = {s.kind: s.config for subs in layers(small.graph) for s in subs}
    g = spec.graph
    assert list(g.nodes) == ["embed"] + [f"L{i}" for i in range(n)] + ["norm", "head"]
    for i in range(n):
        want = [("zamba", INJECT, "z")] if i in (0, n - 2) else []
        want += [("mamba2", MIXER, None) if i % 2 == 0 else ("attn", MIXER, "attn")]
        want += [("moe", FFN, None)] if i % 3 == 2 else []
        node = g.nodes[f"L{i}"]
        assert set(node) == {"index", "sublayers", "span"} and node["index"] == i
        assert [(s.name, s.kind, s.role, s.group, s.config) for s in node["sublayers"]] == \
            [(kind, kind, role, group, config[kind]) for kind, role, group in want]
    chain = list(g.nodes)
    edges = {(u, v): {"flow": "residual"} for u, v in zip(chain, chain[1:])}
    edges[("embed", "L0")] = {"flow": "residual", "embedding": True}
    edges[("embed", f"L{n - 2}")] = {"flow": "embedding", "embedding": True}
    assert dict(((u, v), d) for u, v, d in g.edges(data=True)) == edges and g.number_of_edges() == len(edges)
    assert g.graph == {"spec": spec, "groups": {"attn": list(range(1, n, 2)), "z": [0, n - 2]},
                       "stage": "resolve_sharing"}

    old = None  # the pipeline as it was: a copy of the graph for every pass, verified after each
    for p in PASSES:
        old = verify(p(spec) if old is None else p(old.copy()))
    assert list(old.nodes(data=True)) == list(g.nodes(data=True))
    assert list(old.edges(data=True)) == list(g.edges(data=True))
    assert [[s.span for s in subs] for subs in layers(old)] == [[s.span for s in subs] for subs in layers(g)]
    assert old.graph == g.graph


def _layer(g, i):
    return g.nodes[f"L{i}"]


def _no_layers(g):
    g.remove_nodes_from([f"L{i}" for i in range(4)])
    g.add_edge("embed", "norm", flow="residual")


def _unordered(g):
    _layer(g, 1)["sublayers"] = _layer(g, 1)["sublayers"][::-1]


def _unresolved(g):
    from dataclasses import replace

    _layer(g, 1)["sublayers"] = tuple(replace(s, config=None) for s in _layer(g, 1)["sublayers"])


def _reshaped(g):
    from dataclasses import replace

    _layer(g, 3)["sublayers"] = tuple(replace(s, config=replace(s.config, heads=4)) for s in _layer(g, 3)["sublayers"])


# (layout, the pass that breaks, what it breaks, what verify says)
BROKEN = [
    ("4×mamba2", "expand_repeats", _no_layers, "no layers"),
    ("4×mamba2", "expand_repeats", lambda g: g.add_node("stray"), "unexpected nodes: {'stray'}"),
    ("4×mamba2", "expand_repeats", lambda g: g.remove_edge("L1", "L2"), "the residual stream must run"),
    ("4×mamba2", "apply_modifiers", lambda g: _layer(g, 2).update(sublayers=()), "layer 2 is empty"),
    ("4×mamba2", "resolve_sharing", lambda g: g.add_edge("L3", "L1", flow="embedding"), "the graph has a cycle"),
    ("4×(mamba2+mlp)", "resolve_blocks", _unordered, "layer 1: sublayers ['ffn', 'mixer'] out of order"),
    ("4×(mamba2+mlp)", "resolve_blocks", _unresolved, "layer 1: unresolved block"),
    ("4×mamba2, zamba(shared) at 2", "resolve_sharing", lambda g: g.remove_edge("embed", "L2"),
     "layer 2: embedding edge and inject block disagree"),
    ("2×(mamba2, attn(shared))", "resolve_sharing", _reshaped, "group attn: members differ in shape"),
]


@pytest.mark.parametrize("layout, name, damage, message", BROKEN)
def test_verify_catches_a_broken_pass(layout, name, damage, message, monkeypatch):
    """The graph is verified once, after the last pass: what a broken pass breaks is still there to be caught,
    whether the build runs to the end or stops at that pass."""
    import archdsl.graph

    def broken(p):
        def run(g):
            g = p(g)
            damage(g)
            return g

        run.__name__ = p.__name__
        return run

    monkeypatch.setattr(archdsl.graph, "PASSES", tuple(broken(p) if p.__name__ == name else p for p in PASSES))
    for until in (None, name):
        with pytest.raises(AssertionError) as e:
            build_graph(archdsl.parse(layout), until=until)
        assert str(e.value).startswith(message)


def test_analyze_lengths_is_analyze_at_each_length():
    from archdsl.analysis import analyze_lengths

    layout = "300×(mamba2, attn(shared), rwkv6+cmix), moe every 4, attn(window=64) every 5, zamba(shared=z) at 0 7"
    spec = archdsl.parse(layout, d_model=256)
    lens = [1, 16, 64, 1000, 65536, 1 << 20]
    for kw in ({}, {"batch": 3, "dtype": "float32", "ssm_state_dtype": "bf16"}):
        assert analyze_lengths(spec, lens, **kw) == [archdsl.analyze(spec, seq_len=n, **kw) for n in lens]
    assert analyze_lengths(spec, []) == []
    with pytest.raises(archdsl.ArchDSLError, match="seq_len 1" + "0" * 400 + " or batch 1 is too large to count"):
        analyze_lengths(spec, [16, 10**400])
    with pytest.raises(archdsl.ArchDSLError, match="seq_len must be an int, got 1.5"):
        analyze_lengths(spec, [16, 1.5])


def test_the_figures_of_a_deep_layout_add_up_period_by_period():
    """Costing each kind of layer once changes no figure: 1000 periods cost 1000 times one period."""
    one, deep = (archdsl.analyze(archdsl.parse(f"{k}×(mamba2, attn, mamba2+mlp), moe every 3, attn(window=64) every 6",
                                               d_model=256), seq_len=4096, batch=2) for k in (2, 2000))
    outer, head = one.embedding_params + 256, 2 * 256 * 50280
    assert deep.params - outer == 1000 * (one.params - outer)
    assert deep.active_params - outer == 1000 * (one.active_params - outer)
    assert deep.flops_per_token - head == 1000 * (one.flops_per_token - head)
    assert deep.cache_bytes == 1000 * one.cache_bytes
    assert [r.params for r in deep.layers] == [r.params for r in one.layers] * 1000
