"""The layout language: parser, formatter, errors (grammar/layout.lark, archdsl/language/)."""
from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import BLOCK_NAMES, layer_count, layouts, small_layouts

import archdsl
from archdsl.errors import ArchDSLError, Source
from archdsl.graph import canonical_text
from archdsl.graph import layers as graph_layers
from archdsl.language import (MAX_NESTING, Arg, Block, Group, Layer, Layout, Modifier, Repeat, check_layout,
                              format_block, format_layout, format_modifier, format_node, parse_layout)
from archdsl.spec import spec_from_yaml

PROPERTY = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def expand(layout: Layout) -> list[Layer]:
    """The layers in order (a local stand-in for the graph's expand pass)."""
    out: list[Layer] = []

    def walk(node):
        if isinstance(node, Layer):
            out.append(node)
        elif isinstance(node, Repeat):
            for _ in range(node.count):
                walk(node.body)
        else:
            for item in node.items:
                walk(item)

    for item in layout.items:
        walk(item)
    return out


def error(text: str, source: Source | None = None) -> str:
    with pytest.raises(ArchDSLError) as info:
        parse_layout(text, source)
    return str(info.value)


# --- the design card and the reference layouts ------------------------------------------
def test_design_example():
    layout = parse_layout("7×mamba2, 1×attn(shared), moe every 2")
    assert layout == Layout(
        items=(Repeat(7, Layer((Block("mamba2"),))),
               Repeat(1, Layer((Block("attn", (Arg("shared", True),)),)))),
        modifiers=(Modifier(Block("moe"), every=2),))
    layers = expand(layout)
    assert len(layers) == 8
    assert [layer.blocks[0].name for layer in layers] == ["mamba2"] * 7 + ["attn"]
    assert layers[7].blocks[0].shared == "attn"
    moe = layout.modifiers[0]
    assert [i for i in range(8) if moe.selects(i)] == [1, 3, 5, 7]


def test_ast_docstring_example():
    layout = parse_layout("4×(7×mamba2, attn(shared)), moe every 2")
    assert layout == Layout(
        items=(Repeat(4, Group((Repeat(7, Layer((Block("mamba2"),))),
                                Layer((Block("attn", (Arg("shared", True),)),)),))),),
        modifiers=(Modifier(Block("moe"), every=2),))
    assert len(expand(layout)) == 32


def test_jamba_and_zamba():
    jamba = parse_layout("32×mamba, attn every 8 offset 4, moe every 2")
    attn, moe = jamba.modifiers
    assert [i for i in range(32) if attn.selects(i)] == [4, 12, 20, 28]
    assert [i for i in range(32) if moe.selects(i)] == list(range(1, 32, 2))
    zamba = parse_layout("54×mamba2, zamba(shared, lora=128) at 6 12 18 24 30 36 42 47 51")
    (mod,) = zamba.modifiers
    assert mod.at == (6, 12, 18, 24, 30, 36, 42, 47, 51)
    assert mod.block == Block("zamba", (Arg("shared", True), Arg("lora", 128)))
    assert mod.block.shared == "zamba"


def test_nemotron_pattern_one_layer_per_character():
    pattern = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
    names = {"M": "mamba2", "*": "attn", "-": "mlp"}
    layout = parse_layout(", ".join(names[c] for c in pattern))
    assert [layer.blocks[0].name for layer in expand(layout)] == [names[c] for c in pattern]
    assert len(expand(layout)) == 52


# --- lexing corners ---------------------------------------------------------------------
@pytest.mark.parametrize("text", ["7×mamba2", "7xmamba2", "7Xmamba2", "7*mamba2", "7 × mamba2", "7 x mamba2",
                                  "7\t*\tmamba2", "  7×mamba2  # seven", "7_×mamba2".replace("_", "")])
def test_repetition_signs(text):
    assert parse_layout(text) == Layout((Repeat(7, Layer((Block("mamba2"),))),))


def test_names_starting_with_x_stay_names():
    assert parse_layout("xattn") == Layout((Layer((Block("xattn"),)),))
    assert parse_layout("x") == Layout((Layer((Block("x"),)),))
    assert parse_layout("2xxattn") == Layout((Repeat(2, Layer((Block("xattn"),))),))
    assert parse_layout("2×xattn, xmlp") == Layout((Repeat(2, Layer((Block("xattn"),))), Layer((Block("xmlp"),))))
    assert parse_layout("attn(act=x)").items[0].blocks[0].args == (Arg("act", "x"),)


def test_argument_values():
    layout = parse_layout("attn(heads=16, window=4_096, rope=false, act=swiglu, eps=1e-5, scale=0.5, "
                          "name='a b', q=\"x\\\"y\", neg=-3, on=true, shared=a)")
    args = dict((a.name, a.value) for a in layout.items[0].blocks[0].args)
    assert args == {"heads": 16, "window": 4096, "rope": False, "act": "swiglu", "eps": 1e-5, "scale": 0.5,
                    "name": "a b", "q": 'x"y', "neg": -3, "on": True, "shared": "a"}
    assert type(args["heads"]) is int and type(args["eps"]) is float and args["rope"] is False
    assert layout.items[0].blocks[0].shared == "a"
    assert parse_layout("attn(shared)").items[0].blocks[0].shared == "attn"
    # keywords may be argument names; `attn()` is attn
    assert parse_layout("attn(every=1, offset=2, at=3)").items[0].blocks[0].config_args() == \
        {"every": 1, "offset": 2, "at": 3}
    assert parse_layout("attn()") == parse_layout("attn")


def test_sublayers_and_nesting():
    layout = parse_layout("zamba(shared)+mamba2, mamba2+mlp, 2×(3×(mamba, mlp), 2×attn+moe)")
    assert [b.name for b in layout.items[0].blocks] == ["zamba", "mamba2"]
    assert [b.name for b in layout.items[1].blocks] == ["mamba2", "mlp"]
    assert len(expand(layout)) == 2 + 2 * (3 * 2 + 2)
    assert format_layout(layout) == "zamba(shared)+mamba2, mamba2+mlp, 2×(3×(mamba, mlp), 2×attn+moe)"


def test_newlines_and_comments_separate_like_commas():
    text = """
    # Jamba-style hybrid
    4×(
        3×mamba,          # three SSM layers
        attn(heads=32,
             kv_heads=8)
        mamba
    )
    moe every 2           # MoE FFN on odd layers
    attn every 8 offset 4
    """
    layout = parse_layout(text)
    assert format_layout(layout) == \
        "4×(3×mamba, attn(heads=32, kv_heads=8), mamba), moe every 2, attn every 8 offset 4"
    assert parse_layout("a\nb") == parse_layout("a, b")
    assert parse_layout("a,\n\n b") == parse_layout("a, b")
    assert parse_layout("a +\n b") == parse_layout("a+b")


def test_modifier_canonical_forms():
    assert parse_layout("m, moe every 4 offset 3") == parse_layout("m, moe every 4")
    assert parse_layout("m, moe every 4 offset 3").modifiers[0].offset is None
    assert parse_layout("m, z at 18 6 12").modifiers[0].at == (6, 12, 18)
    assert format_layout(parse_layout("m, z at 18 6 12, moe every 4 offset 3, attn every 8 offset 4")) == \
        "m, z at 6 12 18, moe every 4, attn every 8 offset 4"
    assert parse_layout("m, moe(experts=16, top_k=2) every 2").modifiers[0].block.config_args() == \
        {"experts": 16, "top_k": 2}


# --- spans ----------------------------------------------------------------------------
def test_spans_point_at_the_text():
    text = "4×(7×mamba2, attn(shared)), moe every 2"
    layout = parse_layout(text)
    assert layout.span.start == 0 and layout.span.end == len(text)
    rep = layout.items[0]
    assert text[rep.span.start:rep.span.end] == "4×(7×mamba2, attn(shared))"
    group = rep.body
    assert text[group.span.start:group.span.end] == "(7×mamba2, attn(shared))"
    attn = group.items[1].blocks[0]
    assert text[attn.span.start:attn.span.end] == "attn(shared)"
    assert text[attn.args[0].span.start:attn.args[0].span.end] == "shared"
    mod = layout.modifiers[0]
    assert text[mod.span.start:mod.span.end] == "moe every 2"


@PROPERTY
@given(small_layouts(max_layers=40))
def test_spans_of_canonical_text(layout):
    text = format_layout(layout)
    parsed = parse_layout(text)

    def check(node):
        assert text[node.span.start:node.span.end] == format_node(node)
        if isinstance(node, Layer):
            for b in node.blocks:
                assert text[b.span.start:b.span.end] == format_block(b)
        elif isinstance(node, Repeat):
            check(node.body)
        else:
            for item in node.items:
                check(item)

    for item in parsed.items:
        check(item)
    for mod in parsed.modifiers:
        assert text[mod.span.start:mod.span.end] == format_modifier(mod)


# --- properties -------------------------------------------------------------------------
@PROPERTY
@given(layouts())
def test_round_trip_ast_text_ast(layout):
    text = format_layout(layout)
    assert parse_layout(text) == layout


@PROPERTY
@given(layouts())
def test_format_is_idempotent(layout):
    text = format_layout(layout)
    assert format_layout(parse_layout(text)) == text


@PROPERTY
@given(small_layouts(max_layers=64, semantic=True))
def test_semantic_layouts_round_trip(layout):
    assert parse_layout(format_layout(layout)) == layout
    assert 1 <= len(expand(layout)) <= 64


SIGNS = st.sampled_from(["×", "x", "X", "*", " × ", " x ", "\t*"])


@st.composite
def counted_text(draw, depth=3):
    """(layout text, expected number of layers), written with assorted spellings."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        name = draw(st.sampled_from(BLOCK_NAMES))
        return (name + draw(st.sampled_from(["", "+mlp", "(shared)", "(heads=4)+moe"])), 1)
    if draw(st.booleans()):
        count = draw(st.integers(1, 12))
        body, n = draw(counted_text(depth - 1))
        if "," in body or "+" in body or "\n" in body or draw(st.booleans()):
            body = f"({body})"
        return (f"{count}{draw(SIGNS)}{body}", count * n)
    parts = draw(st.lists(counted_text(depth - 1), min_size=1, max_size=4))
    sep = draw(st.sampled_from([", ", ",", "\n", " ,\n  "]))
    return (sep.join(p for p, _ in parts), sum(n for _, n in parts))


@PROPERTY
@given(counted_text())
def test_expanded_count_matches_repetition_arithmetic(case):
    text, n = case
    layout = parse_layout(text)
    assert len(expand(layout)) == n == layer_count(layout)


# with digits of other scripts: only ASCII digits make numbers, the others are refused
LAYOUT_CHARS = "mamba2attnmlpxX×*+()=,#\n\t 0123456789_-.'\"e٣٦０²"
MUTATION = st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 10**6),
                     st.one_of(st.sampled_from(list(LAYOUT_CHARS)), st.characters()))


def only_archdsl_errors(text: str):
    try:
        layout = parse_layout(text)
    except ArchDSLError as e:
        assert e.line is not None and e.col is not None and "^" in e.excerpt
        return
    canonical = format_layout(layout)  # whatever parses has a canonical form that parses the same
    assert parse_layout(canonical) == layout
    assert format_layout(parse_layout(canonical)) == canonical


@settings(max_examples=300, deadline=2000)
@given(st.text(max_size=80))
def test_random_text_only_raises_archdsl_error(text):
    only_archdsl_errors(text)


@settings(max_examples=300, deadline=2000)
@given(st.text(alphabet=LAYOUT_CHARS, max_size=60))
def test_random_layoutish_text_only_raises_archdsl_error(text):
    only_archdsl_errors(text)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(small_layouts(max_layers=30), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_text_only_raises_archdsl_error(layout, mutations):
    text = format_layout(layout)
    for op, where, char in mutations:
        i = where % (len(text) + 1)
        if op == "insert":
            text = text[:i] + char + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + char + text[i + 1:]
    only_archdsl_errors(text)


@pytest.mark.parametrize("text", ["(" * 200, "(" * 200 + "a" + ")" * 200, "2×" * 200 + "a",
                                  "2×(" * 40 + "a" + ")" * 40, "a(" * 200, "(" * 10_000])
def test_deep_nesting_is_refused_not_a_crash(text):
    message = error(text)
    assert "nests" in message or "unexpected" in message or "unclosed" in message


def test_nesting_limit_is_exact():
    ok = "(" * MAX_NESTING + "a" + ")" * MAX_NESTING
    assert len(expand(parse_layout(ok))) == 1
    assert f"more than {MAX_NESTING} deep" in error("(" + ok + ")")


def test_argument_values_compare_with_their_types():
    """1 == True and 16 == 16.0 in Python, not in a layout: each is its own argument and hash."""
    for a, b in (("attn(rope=1)", "attn(rope)"), ("attn(heads=16.0)", "attn(heads=16)"),
                 ("attn(rope=0)", "attn(rope=false)")):
        assert parse_layout(a) != parse_layout(b) and hash(parse_layout(a)) != hash(parse_layout(b))
    assert parse_layout("attn( heads = 16 )") == parse_layout("attn(heads=16)")


@pytest.mark.parametrize("value", ["0", "1", "-1", "1.5", "1e3", '""', '" "', "''"])
def test_shared_is_true_false_or_a_group_name(value):
    """`shared=0` was the group '0' (sharing, where 0 reads as false) and `shared=""` a group the tables showed
    as none: a number or a blank string is refused where it is written."""
    text = f"4×mamba2, attn(heads=4, shared={value}) every 2"
    assert error(text).startswith("<layout>:1:25: 'shared' is true, false or the name of a group, not ")
    assert error(text).endswith("\n" + " " * 26 + "^" + "~" * (len("shared=") + len(value) - 1))
    for ok, group in (("shared", "attn"), ("shared=true", "attn"), ("shared=false", None), ("shared=a", "a"),
                      ('shared="a b"', "a b"), ("shared='1'", "1")):
        assert parse_layout(f"attn({ok})").items[0].blocks[0].shared == group


@given(st.characters(blacklist_characters="\n\r"))  # a line break, CR too: no string goes on past it
def test_a_string_escape_is_known_or_refused(char):
    """`"\\x41"` was read as "x41": a backslash before a letter it does not escape is an error at the backslash."""
    text = f'mamba2, attn(shared="a\\{char}b")'
    known = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
    if char in known:
        assert parse_layout(text).items[1].blocks[0].shared == f"a{known[char]}b"
    elif "\ud800" <= char <= "\udfff":  # no character: refused wherever it stands, before any escape is read
        message = error(text)
        assert message.startswith("<layout>:1:24: ") and ("is not UTF-8" in message or "is not a character" in message)
    else:
        assert error(text).startswith(f"<layout>:1:23: unknown escape '\\{char}' in a string")


def test_a_lone_surrogate_is_refused_where_it_stands():
    """Python keeps an argument's non-UTF-8 byte as U+DC80..U+DCFF; no file or terminal takes such a layout."""
    assert error("mamba2, \udcffattn").startswith("<layout>:1:9: byte 0xff is not UTF-8")
    assert error('attn(shared="\ud83d")').startswith("<layout>:1:14: \\ud83d is not a character")


def test_non_text_is_refused():
    with pytest.raises(ArchDSLError, match="must be text"):
        parse_layout(42)


# --- none: an argument unset ----------------------------------------------------------------
SLIDING = """d_model: 64
vocab_size: 100
layout: |
  2×(mamba2, attn),
  attn(window=none)
blocks:
  attn: {heads: 4, window: 4096}
"""


def test_none_and_null_are_none_and_quoted_they_are_strings():
    args = parse_layout("attn(window=none, x=null, a=\"none\", b='null', c=None, d=Null)").items[0].blocks[0].args
    assert [(a.name, a.value) for a in args] == [("window", None), ("x", None), ("a", "none"), ("b", "null"),
                                                 ("c", "None"), ("d", "Null")]
    assert format_block(Block("attn", args)) == 'attn(window=none, x=none, a="none", b="null", c=None, d=Null)'
    assert parse_layout("attn(window=none)") != parse_layout('attn(window="none")')
    assert parse_layout("none, attn(none=1)").items[0].blocks[0].name == "none"  # a name elsewhere, as before


def test_none_unsets_a_sliding_window_end_to_end():
    """blocks: gives every attention layer a 4096-key window; `attn(window=none)` makes one use full attention:
    the graph, the analysis (its KV cache grows with the context) and the built model agree."""
    spec = spec_from_yaml(SLIDING, file="s.yaml")
    windows = [s.config.window for subs in graph_layers(spec.graph) for s in subs if s.kind == "attn"]
    assert windows == [4096, 4096, None]
    rep = archdsl.analyze(spec, seq_len=8192, batch=2, dtype="float32")
    kv = 2 * 2 * 4 * 16 * 4  # 2 (k, v) · batch · kv_heads · head_dim · bytes, a position
    assert [r.cache_bytes for r in rep.layers if r.mixer == "attn"] == [kv * 4096, kv * 4096, kv * 8192]
    model = archdsl.compile(spec, device="meta")
    assert [layer.mixer.cfg.window for layer in model.layers if layer.mixer.cfg.kind == "attn"] == [4096, 4096, None]
    assert canonical_text(spec) == spec.layout_text == "2×(mamba2, attn), attn(window=none)"
    again = spec_from_yaml(spec.to_yaml(), file="saved.yaml")
    assert again == spec
    assert archdsl.analyze(again, seq_len=8192, batch=2, dtype="float32") == rep


NONE_ERRORS = {
    "attn(heads=none)": "<layout>:1:6: attn: heads cannot be none; it must be int\n"
                        "  attn(heads=none)\n"
                        "       ^~~~~~~~~~",
    "mamba2\nattn(heads=4,\n     kv_heads=null)": "<layout>:3:6: attn: kv_heads cannot be none; it must be int\n"
                                                   "       kv_heads=null)\n"
                                                   "       ^~~~~~~~~~~~~",
    "4×mamba2, moe(top_k=none) every 2": "<layout>:1:15: moe: top_k cannot be none; it must be int\n"
                                         "  4×mamba2, moe(top_k=none) every 2\n"
                                         "                ^~~~~~~~~~",
    "mamba(dt_rank=none)": "<layout>:1:7: mamba: dt_rank cannot be none; it must be int or str\n"
                           "  mamba(dt_rank=none)\n"
                           "        ^~~~~~~~~~~~",
    "mamba2, mlp(act=none)": "<layout>:1:13: mlp: act cannot be none; it must be str\n"
                             "  mamba2, mlp(act=none)\n"
                             "              ^~~~~~~~",
}


@pytest.mark.parametrize("text", list(NONE_ERRORS))
def test_none_where_an_argument_takes_no_none_is_an_error(text):
    with pytest.raises(ArchDSLError) as info:
        archdsl.parse(text, d_model=64).graph
    assert str(info.value) == NONE_ERRORS[text]


def test_none_errors_point_into_the_yaml_file():
    """In a file, at the argument inside the layout string, or at the `blocks:` value (YAML's null), through an
    alias too; an unknown argument given none is still an unknown argument."""
    text = "d_model: 64\nlayout: 2×mamba2, big(kv_heads=none)\nblocks:\n  big: {kind: attn, heads: 4}\n"
    with pytest.raises(ArchDSLError) as info:
        spec_from_yaml(text, file="s.yaml").graph
    assert str(info.value).startswith("s.yaml:2:23: attn: kv_heads cannot be none; it must be int\n")
    with pytest.raises(ArchDSLError) as info:
        spec_from_yaml("d_model: 64\nlayout: attn\nblocks:\n  attn: {heads: null}\n", file="s.yaml").graph
    assert str(info.value) == ("s.yaml:4:17: attn: heads cannot be none; it must be int\n"
                               "    attn: {heads: null}\n"
                               "                  ^")
    with pytest.raises(ArchDSLError, match="unknown argument 'windo'"):
        spec_from_yaml("layout: attn(windo=none)\n").graph
    assert error("attn(shared=none)").startswith(
        "<layout>:1:6: 'shared' is true, false or the name of a group, not none")


def test_inner_norms_none_keeps_its_meaning():
    """mamba's inner_norms takes the word "none" and no None: `inner_norms=none` is that word, as before the layout
    had none, and so is YAML's null there; attn's window takes None and no word: YAML's `window: none` is None, as
    the layout's. Either way the spec is written back so that it loads the same."""
    for text in ("mamba(inner_norms=none)", 'mamba(inner_norms="none")', "mamba(inner_norms=null)"):
        spec = archdsl.parse(text)
        assert graph_layers(spec.graph)[0][0].config.inner_norms == "none"
        assert spec.layout_text == 'mamba(inner_norms="none")'
        assert spec_from_yaml(spec.to_yaml()) == spec
    spec = spec_from_yaml("layout: mamba, attn\nblocks:\n  mamba: {inner_norms: null}\n  attn: {window: none}\n"
                          "  moe: {norm_topk: none}\n")
    assert dict(spec.blocks) == {"mamba": {"inner_norms": "none"}, "attn": {"window": None}, "moe": {"norm_topk": None}}
    assert graph_layers(spec.graph)[0][0].config.inner_norms == "none"
    assert spec_from_yaml(spec.to_yaml()) == spec
    assert archdsl.parse("attn(window=16)", blocks={"attn": {"window": "none"}}).blocks["attn"]["window"] is None
    with pytest.raises(ArchDSLError, match="window must be int or none, got 'none'"):
        archdsl.parse('attn(window="none")').graph  # quoted, it is the string


# --- golden error messages ------------------------------------------------------------------
GOLDEN = {
    "7×mamba2, %attn":
        "<layout>:1:11: unexpected character '%'; expected a block name, a number or '(' after ','\n"
        "  7×mamba2, %attn\n"
        "            ^",
    "4×(7×mamba2, attn":
        "<layout>:1:3: unclosed '(': the layout ends before its ')'\n"
        "  4×(7×mamba2, attn\n"
        "    ^",
    "×mamba2, attn":
        "<layout>:1:1: '×' needs a count before it, as in 4×mamba2\n"
        "  ×mamba2, attn\n"
        "  ^",
    "x mamba2":
        "<layout>:1:1: 'x' needs a count before it, as in 4×mamba2\n"
        "  x mamba2\n"
        "  ^",
    "attn(act=x gelu)":  # was "'x' needs a count before it, as in 4×gelu": an argument's value is no repetition
        "<layout>:1:12: unexpected name 'gelu'; expected ',' or ')' after 'x'\n"
        "  attn(act=x gelu)\n"
        "             ^~~~",
    "8×mamba, moe every 0":
        "<layout>:1:20: 'every' needs a period of at least 1, not 0\n"
        "  8×mamba, moe every 0\n"
        "                     ^",
    "4×mamba, attn at 1, 2":  # was "a count needs a repetition sign after it, as in 2×mamba2"
        "<layout>:1:19: 'at' indices are separated by spaces, not commas: attn at 1 2\n"
        "  4×mamba, attn at 1, 2\n"
        "  " + " " * 18 + "^",
    "8×mamba, zamba(shared, lora=8) at 1 3,5, 7":
        "<layout>:1:38: 'at' indices are separated by spaces, not commas: zamba at 1 3 5\n"
        "  8×mamba, zamba(shared, lora=8) at 1 3,5, 7\n"
        "  " + " " * 37 + "^",
    "32×mamba, attn every 8 offset 8":
        "<layout>:1:31: offset 8 is out of range for 'every 8': it must be between 0 and 7 "
        "(layers are counted from 0)\n"
        "  32×mamba, attn every 8 offset 8\n"
        "                                ^",
    "":
        "<layout>:1:1: empty layout: expected at least one layer, as in 4×mamba2\n"
        "  \n"
        "  ^",
    "   # only a comment":
        "<layout>:1:1: empty layout: expected at least one layer, as in 4×mamba2\n"
        "     # only a comment\n"
        "  ^",
    "0×mamba2":
        "<layout>:1:1: repeat count must be at least 1, not 0\n"
        "  0×mamba2\n"
        "  ^~",
    "mamba2, -3×attn":
        "<layout>:1:9: repeat count must be at least 1, not -3\n"
        "  mamba2, -3×attn\n"
        "          ^~~",
    "attn(heads=8, heads=16)":
        "<layout>:1:15: argument 'heads' given twice to 'attn'\n"
        "  attn(heads=8, heads=16)\n"
        "                ^~~~~~~~",
    "mamba, ()":
        "<layout>:1:8: empty group '()': a group needs at least one layer\n"
        "  mamba, ()\n"
        "         ^~",
    "54×mamba2, zamba at 6 12 6":
        "<layout>:1:26: index 6 is listed twice after 'at'\n"
        "  54×mamba2, zamba at 6 12 6\n"
        "                           ^",
    "moe every 2":
        "<layout>:1:1: the layout has a modifier but no layers to apply it to; write the layers first, "
        "as in 8×mamba2, moe every 2\n"
        "  moe every 2\n"
        "  ^~~~~~~~~~~",
    "8×mamba, moe every 2, attn":
        "<layout>:1:23: layers must come before the modifiers; move this item in front of 'moe every 2'\n"
        "  8×mamba, moe every 2, attn\n"
        "                        ^~~~",
    "mamba2, , attn":
        "<layout>:1:9: unexpected ','; expected a block name, a number or '(' after ','\n"
        "  mamba2, , attn\n"
        "          ^",
    "mamba2,":
        "<layout>:1:8: unexpected end of the layout; expected a block name, a number or '(' after ','\n"
        "  mamba2,\n"
        "         ^",
    "mamba2 attn":
        "<layout>:1:8: unexpected name 'attn'; expected '(', '+', ',', 'every', 'at' or the end of the layout "
        "after 'mamba2'\n"
        "  mamba2 attn\n"
        "         ^~~~",
    "attn(heads=)":
        "<layout>:1:12: unexpected ')'; expected a value (a number, true, false, a name or a quoted string) "
        "after '='\n"
        "  attn(heads=)\n"
        "             ^",
    "attn(16)":
        "<layout>:1:6: unexpected number 16; expected an argument name or ')' after '('\n"
        "  attn(16)\n"
        "       ^~",
    "mamba2+":
        "<layout>:1:8: unexpected end of the layout; expected a block name after '+'\n"
        "  mamba2+\n"
        "         ^",
    "8×mamba, moe every":
        "<layout>:1:19: unexpected end of the layout; expected a whole number after 'every'\n"
        "  8×mamba, moe every\n"
        "                    ^",
    "8×mamba, moe every 2 3":
        "<layout>:1:22: unexpected number 3; expected ',', 'offset' or the end of the layout after '2'\n"
        "  8×mamba, moe every 2 3\n"
        "                       ^",
    "٣×mamba2":
        "<layout>:1:1: unexpected character '٣'; expected a block name, a number, '(' or the end of the layout\n"
        "  ٣×mamba2\n"
        "  ^",
    "1٦×mamba2":
        "<layout>:1:1: a count needs a repetition sign after it, as in 1×mamba2\n"
        "  1٦×mamba2\n"
        "  ^",
    "mamba2, 2 attn":
        "<layout>:1:9: a count needs a repetition sign after it, as in 2×mamba2\n"
        "  mamba2, 2 attn\n"
        "          ^",
    "2\u00a0×mamba":  # the sign is there: the no-break space before it is what is wrong
        "<layout>:1:2: unexpected character '\\xa0' (no-break space) after the count 2: write a plain space or none "
        "before its repetition sign\n"
        "  2\u00a0×mamba\n"
        "   ^",
    "mamba2+2×mlp":  # had listed '+' among what was expected
        "<layout>:1:7: '+' joins the blocks of one layer and takes no count ('+2×'): to repeat a layer, put the count "
        "before it, as in 2×(mamba2+mlp)\n"
        "  mamba2+2×mlp\n"
        "        ^~~",
    "attn(act='swiglu)":
        "<layout>:1:10: unterminated string: a quoted string must end on the same line\n"
        "  attn(act='swiglu)\n"
        "           ^",
    "(" * 70 + "a" + ")" * 70:  # a line past 100 columns is shown 100 of them around the caret, cut with …
        f"<layout>:1:{MAX_NESTING + 1}: the layout nests repeats and groups more than {MAX_NESTING} deep\n"
        "  …" + "(" * 39 + "a" + ")" * 60 + "…\n"
        "  " + " " * (MAX_NESTING - 30) + "^",
}


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_error_messages(text):
    assert error(text) == GOLDEN[text]


def test_error_positions_on_later_lines():
    assert error("mamba2\nattn(heads=8,\n     heads=16)") == (
        "<layout>:3:6: argument 'heads' given twice to 'attn'\n"
        "       heads=16)\n"
        "       ^~~~~~~~")
    assert error("4×(mamba2,\n   attn") == (
        "<layout>:1:3: unclosed '(': the layout ends before its ')'\n"
        "  4×(mamba2,\n"
        "    ^")


def test_errors_point_into_the_yaml_file():
    file_text = "name: demo\nd_model: 256\nlayout: 8×mamba2, moe every 0\n"
    col = file_text.splitlines()[2].index("8")
    source = Source("8×mamba2, moe every 0", file="demo.yaml", line0=2, col0=col, file_text=file_text)
    assert error(source.text, source) == (
        "demo.yaml:3:29: 'every' needs a period of at least 1, not 0\n"
        "  layout: 8×mamba2, moe every 0\n"
        "                              ^")


# Each YAML way of writing a string: the error points at `atn` in the file, whatever YAML did to the text
# (folded lines, escapes, '' for ', an indentation indicator, a comment after `|`, CRLF line ends).
YAML_LAYOUTS = {
    "name: x\nlayout:\n  2×mamba2,\n  atn\n": "4:3",  # plain, over two lines
    "layout: >\n  2×mamba2,\n\n  atn\n": "4:3",
    "layout: >-\n  2×mamba2,\n\n  atn\n": "4:3",
    "layout: |  # the layers\n\n  2×mamba2\n  atn\n": "4:3",
    "layout: |2\n    2×mamba2\n  atn\n": "3:3",
    "layout: |2\n   2×mamba2\n   atn\n": "3:4",  # the indicator keeps a space of each line in the value
    "layout: |2-\n    2×mamba2,\n    atn\n": "3:5",
    "layout: >1\n   2×mamba2,\n   atn\n": "3:4",
    'layout: "2×mamba2,\\tatn"\n': "1:21",
    'layout: "2\\u00d7mamba2, atn"\n': "1:25",
    'layout: "2×mamba2,\n   atn"\n': "2:4",
    'layout: "2×mamba2, \\\n    atn"\n': "2:5",  # an escaped line break
    "layout: 'mamba, mlp(act=''gelu''), atn'\n": "1:36",
    "layout: 'mamba,\n\n  atn'\n": "3:3",
    "layout: 2×mamba2,\r\n  atn\r\n": "2:3",
}


@pytest.mark.parametrize("text", list(YAML_LAYOUTS))
def test_errors_point_into_yaml_strings_of_every_style(text):
    with pytest.raises(ArchDSLError) as info:
        spec_from_yaml(text, file="s.yaml").graph
    line, col = map(int, YAML_LAYOUTS[text].split(":"))
    source_line = text.split("\n")[line - 1].rstrip("\r")
    assert source_line[col - 1:col + 2] == "atn"
    assert str(info.value) == (f"s.yaml:{line}:{col}: unknown block 'atn'; did you mean 'attn'?\n"
                               f"  {source_line}\n"
                               f"  {' ' * (col - 1)}^~~")


def test_errors_at_the_end_of_a_folded_layout():
    assert str(pytest.raises(ArchDSLError, spec_from_yaml, "layout:\n  mamba2,\n  attn +\n", "s.yaml").value) == (
        "s.yaml:3:9: unexpected end of the layout; expected a block name after '+'\n"
        "    attn +\n"
        "          ^")
    assert str(pytest.raises(ArchDSLError, spec_from_yaml, "layout: >\n  4×(mamba2,\n    attn\n", "s.yaml").value) == (
        "s.yaml:2:5: unclosed '(': the layout ends before its ')'\n"
        "    4×(mamba2,\n"
        "      ^")


def test_the_caret_keeps_the_tabs_of_the_line():
    text = 'layout: "2×mamba2,\tatn"\n'  # a real tab inside the quotes
    with pytest.raises(ArchDSLError) as info:
        spec_from_yaml(text, file="s.yaml").graph
    assert str(info.value).endswith('  layout: "2×mamba2,\tatn"\n                    \t^~~')


def test_lark_names_never_leak():
    texts = ["a b", "a(", "a(b c)", "(", ")", "a,,", "a every x", "a at", "4×", "a+(", "a=1", "a(b=(", "'",
             "a(b='x)", "a@", "1.5×a", "a every 2 offset", "zamba at 1 2 3 ×"]
    for text in texts:
        message = error(text)
        for internal in ("NAME", "REPEAT", "LPAR", "RPAR", "COMMA", "$END", "Token", "NL", "__ANON", "EQUAL"):
            assert internal not in message, (text, message)


# --- a large layout (its speed is measured in benchmarks/language.py) ----------------------------
def test_a_1000_layer_layout_round_trips():
    text = ", ".join(["mamba2+mlp", "attn(heads=32, kv_heads=8, window=4096)+moe(experts=16, top_k=2)"] * 500)
    text += ", moe every 2, attn every 8 offset 4"
    layout = parse_layout(text)
    assert len(expand(layout)) == 1000
    assert format_layout(parse_layout(format_layout(layout))) == format_layout(layout)


# --- a lone CR ------------------------------------------------------------------------------
def test_a_lone_cr_is_a_line_break_as_in_yaml():
    """A YAML file's lone CR (a classic Mac line end) was a line break there and whitespace in archdsl.parse:
    `mamba\rattn` was 'unexpected name'. Both read it as a line break, and errors count lines alike."""
    assert parse_layout("mamba\rattn") == parse_layout("mamba\r\nattn") == parse_layout("mamba, attn")
    assert parse_layout("mamba # a comment\rattn") == parse_layout("mamba, attn")
    assert spec_from_yaml("layout: |\n  mamba\r  attn\n").layout == archdsl.parse("mamba\r  attn").layout
    assert error("mamba\r\r  4×").startswith("<layout>:3:5: unexpected end of the layout")
    with pytest.raises(ArchDSLError) as info:
        archdsl.parse("mamba\r\rattnn").graph  # the graph's errors too
    assert str(info.value).startswith("<layout>:3:1: unknown block 'attnn'")
    assert str(info.value).split("\n")[1:] == ["  attnn", "  ^~~~~"]


# --- a tree made by hand ------------------------------------------------------------------------
M = Layer((Block("mamba"),))


def _nested(depth: int):
    node = M
    for _ in range(depth):
        node = Group((node,))
    return node


HAND_MADE = [  # trees parse_layout never builds: Spec refused none of them, or failed with another exception
    (Layout((M,), (Modifier(Block("moe"), every=0),)), "'every' needs a period of at least 1, not 0, in 'moe every 0'"),
    (Layout((M,), (Modifier(Block("moe"), every=2, offset=2),)), "offset 2 is out of range for 'every 2'"),
    (Layout((M,), (Modifier(Block("moe"), at=()),)), "'at' needs one layer index or more, in the modifier moe"),
    (Layout((M,), (Modifier(Block("moe"), at=(-1,)),)), "cannot be negative: -1, in 'moe at -1'"),
    (Layout((M, M), (Modifier(Block("moe"), at=(1, 1)),)), "index 1 is listed twice after 'at', in 'moe at 1 1'"),
    (Layout((M,), (Modifier(Block("moe")),)), "the modifier moe takes either 'every N' or 'at i j ...'"),
    (Layout((M,), (Modifier(Block("moe"), every=2, at=(1,)),)), "takes either 'every N' or 'at i j ...'"),
    (Layout((M,), (Modifier(Block("moe"), at=(0,), offset=0),)), "'offset' goes with 'every', not with 'at'"),
    (Layout((Layer(()),)), "a layer holds one block or more"),
    (Layout(()), "empty layout"),
    (Layout((Group(()),)), "empty group '()'"),
    (Layout((_nested(3000),)), f"more than {MAX_NESTING} deep"),
    (Layout((_nested(MAX_NESTING + 1),)), f"more than {MAX_NESTING} deep"),
    (Layout((Repeat(-1, M), M)), "repeat count must be at least 1, not -1, in '-1×mamba'"),
    (Layout((Repeat(True, M),)), "a repeat count must be an int, got True"),
    (Layout((Repeat(10**30, M),)), "a repeat count is too large"),
    (Layout((Layer((Block("attn", (Arg("shared", 3),)),)),)), "'shared' is true, false or the name of a group, not 3"),
    (Layout((Layer((Block("attn", (Arg("shared", " "),)),)),)), "'shared' is true, false or the name of a group"),
    (Layout((Layer((Block("attn", (Arg("heads", 2), Arg("heads", 4))),)),)),
     "argument 'heads' given twice to 'attn', in 'attn(heads=2, heads=4)'"),
    (Layout((Layer((Block("attn", (Arg("rope_theta", float("inf")),)),)),)), "number out of range: inf"),
    (Layout((Layer((Block("attn", (Arg("heads", 10**40),)),)),)), "number too large"),
    (Layout((Layer((Block("mlp", (Arg("act", "\udcff"),)),)),)), "is not text"),
    (Layout((Layer((Block("mlp", (Arg("act", ["gelu"]),)),)),)), "a value is an int, float, bool, str or None, not"),
    (Layout((Layer((Block("every"),)),)), "'every' is not a block name"),
    (Layout((Layer((Block("mamba 2"),)),)), "'mamba 2' is not a block name"),
    (Layout((Layer((Block("attn", (Arg("a b", 1),)),)),)), "'a b' is not an argument name"),
    (Layout([M]), "Layout.items must be a tuple of Layer or Repeat or Group"),
    (Layout((Block("mamba"),)), "Layout.items must be a tuple of Layer or Repeat or Group"),
    (Layout((Repeat(2, "mamba"),)), "expected a Layer or Repeat or Group"),
]


@pytest.mark.parametrize("layout, message", HAND_MADE, ids=range(len(HAND_MADE)))
def test_a_hand_made_tree_is_checked_by_the_parsers_rules(layout, message):
    """`Spec(layout=Layout(...))` was checked by no rule of the parser: `every=0` was a ZeroDivisionError, 3000
    nested groups a RecursionError, `Repeat(-1, ...)` dropped, `shared=3` written as text that does not parse. Each
    is an ArchDSLError naming the node, from Spec(...) and dataclasses.replace alike."""
    from dataclasses import replace

    for make in (check_layout, lambda t: archdsl.Spec(layout=t), lambda t: replace(archdsl.parse("mamba"), layout=t)):
        with pytest.raises(ArchDSLError) as info:
            make(layout)
        assert str(info.value).startswith("layout: ") and message in str(info.value), str(info.value)


def test_a_hand_made_tree_is_made_canonical():
    """`at` unsorted and an offset that is the default were written as text that reads back as another tree."""
    made = Layout((Repeat(8, M),), (Modifier(Block("moe"), at=(5, 1)), Modifier(Block("mlp"), every=4, offset=3)))
    spec = archdsl.Spec(layout=made)
    assert spec.layout == parse_layout("8×mamba, moe at 1 5, mlp every 4") == parse_layout(spec.layout_text)
    assert spec == archdsl.parse(spec.layout_text)
    ok = parse_layout("4×(7×mamba2, attn(shared)), moe every 2")
    assert check_layout(ok) is ok  # a parsed tree is its own canonical form
    deepest = Layout((_nested(MAX_NESTING),))
    assert parse_layout(format_layout(check_layout(deepest))) == deepest


HAND_MADE_ERRORS = [  # trees the rules pass, whose graphs cannot be built: errors at <layout>:1:1 under a blank line
    (Layout((Repeat(2, Layer((Block("attn", (Arg("heads", 5),)),))),)),
     "attn: heads 5 must divide d_model 768 (in layer 0: attn(heads=5))"),
    (Layout((M, Layer((Block("mamab"),)))),
     "unknown block 'mamab' (in layer 1: mamab); did you mean 'mamba'"),
    (Layout((M,), (Modifier(Block("moe"), at=(3,)),)),
     "`at 3`: the layout has only 1 layer (indices 0..0) (in moe at 3)"),
    (Layout((M,), (Modifier(Block("moe"), every=4),)),
     "`moe every 4` selects no layer: it picks layer 3 first, and the layout has only 1 layer (indices 0..0) (in moe "
     "every 4)"),
    (Layout((Layer((Block("mlp", (Arg("hidden", 10**12),)),)),)),
     "absurd size: mlp has 2.304e+15 parameters (over 10^13) (in layer 0: mlp(hidden=1000000000000))"),
    (Layout((M, Layer((Block("mamba"), Block("attn"))))),
     "a layer can hold one mixer block, this one has 2 (in layer 1: attn)"),
    (Layout((M, Layer((Block("zamba"),)))),
     "'zamba' feeds a mixer and cannot stand alone in a layer (layer 1) (in zamba)"),
    (Layout((Layer((Block("attn", (Arg("shared", "g"),)),)),
             Layer((Block("attn", (Arg("shared", "g"), Arg("heads", 4))),)))),
     "shared group 'g' joins blocks of different configurations: attn and attn(heads=4) differ in heads (8 and 4)"),
    (Layout((Layer((Block("attn", (Arg("heads", None),)),)),)),
     "attn: heads cannot be none; it must be int (in attn(heads=none))"),
    (Layout((Repeat(100_001, M),)),
     "the layout expands to more than 100000 layers (in 100001×mamba)"),
]


@pytest.mark.parametrize("layout, message", HAND_MADE_ERRORS, ids=range(len(HAND_MADE_ERRORS)))
def test_a_hand_made_tree_s_errors_name_the_node(layout, message):
    """A tree made by hand has no text: its errors said `<layout>:1:1` with a caret under an empty line, and not
    which layer or block. They name the node (its layer's index, the block as the layout writes it), with no
    place, whether the spec has a source or not."""
    for spec in (archdsl.Spec(layout=layout), archdsl.Spec(layout=layout, source=Source("mamba, mamba"))):
        with pytest.raises(ArchDSLError) as info:
            _ = spec.graph
        assert str(info.value).startswith("<layout>: ") and message in str(info.value), str(info.value)
        assert info.value.line is None and info.value.excerpt == "" and "\n" not in str(info.value)


def test_a_layout_swapped_in_by_replace_is_pointed_at_in_its_own_text():
    """dataclasses.replace(spec, layout=...) kept the old source: errors gave the old file's line and column, under
    text that does not hold the error. The spec's source becomes the new layout's canonical text, its errors point
    there (as archdsl.parse of that text would), and the file's key positions are dropped with it; a replace that
    keeps the layout, or gives a source with it, keeps the positions."""
    import os
    from dataclasses import replace

    spec = archdsl.parse("2×mamba2, attn(heads=4), moe every 2")
    new = replace(spec, layout=parse_layout("mamba,  attn(heads=5)"))
    with pytest.raises(ArchDSLError) as info:
        _ = new.graph
    assert str(info.value) == ("<layout>:1:13: attn: heads 5 must divide d_model 768\n"
                               "  mamba, attn(heads=5)\n"
                               "              ^~~~~~~")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jamba = archdsl.load_spec(os.path.join(root, "specs", "jamba-v0.1.yaml"))
    new = replace(jamba, layout=Layout((Repeat(4, M), Layer((Block("mamab"),)))))
    with pytest.raises(ArchDSLError) as info:
        _ = new.graph
    assert str(info.value).split("\n") == ["<layout>:1:10: unknown block 'mamab'; did you mean 'mamba', 'mamba2', "
                                           "'zamba'?", "  4×mamba, mamab", "           ^~~~~"]
    assert new.positions == {} and new.layout == parse_layout("4×mamba, mamab") and new.d_model == jamba.d_model
    assert replace(new, d_model=8192).source is new.source  # its own layout: kept as it is
    assert replace(jamba, name="j").positions == jamba.positions
    with pytest.raises(ArchDSLError, match=r"jamba-v0.1.yaml:\d+:\d+: attn: heads 32 must divide d_model 100"):
        _ = replace(jamba, name="j", d_model=100).graph
    source = Source("4×mamba, mamab", file="<mine>")
    new = replace(jamba, layout=parse_layout(source.text, source), source=source)  # a layout with its source
    with pytest.raises(ArchDSLError, match=r"^<mine>:1:10: unknown block 'mamab'"):
        _ = new.graph


def test_a_long_at_list_is_checked_in_linear_time():
    """check_layout (every Spec runs it) looked for each `at` index among a slice of those before it: 100 000
    indices, a valid layout at the layer limit, took two minutes."""
    n = 100_000
    made = Layout((Repeat(n, M),), (Modifier(Block("moe"), at=tuple(range(n - 1, -1, -1))),))
    assert check_layout(made).modifiers[0].at == tuple(range(n))
    with pytest.raises(ArchDSLError, match=f"index {n - 1} is listed twice after 'at'"):
        check_layout(Layout((Repeat(n, M),), (Modifier(Block("moe"), at=tuple(range(n)) + (n - 1,)),)))


@pytest.mark.parametrize("text, at, underline", [
    ("mamba, " * 2000 + "mamab", 14000, 5),  # a line of 140 KB made a message of 280 KB
    ("m" * 200000, 0, 200000),  # a name of 200 000 characters: 600 KB, in the message twice and the line once
    ("mamba(" + "d" * 200000 + "=1)", 6, 200002),
    ("mamba(d_state=1, d_state='" + "a" * 5000 + "')", 17, 5010),  # the underline was the argument's length
    ("2×mamba, moe" + "e" * 2000 + " every 2", 9, 2003),
])
def test_an_error_in_a_long_line_shows_a_window_of_it(text, at, underline):
    """An excerpt is at most EXCERPT columns of its line, cut with … around the place, the caret under the place
    and its underline no longer than what is shown; a long name is cut in the message."""
    from archdsl.errors import EXCERPT

    with pytest.raises(ArchDSLError) as info:
        _ = archdsl.parse(text).graph
    message, line, caret = str(info.value).split("\n")
    assert info.value.col == at + 1 and len(str(info.value)) < 600, str(info.value)[:400]
    assert len(line) <= 2 + EXCERPT + 2 and len(caret) <= len(line) and caret.strip().startswith("^")
    shown, k = line[2:], caret.index("^") - 2
    start = at - k + (1 if shown.startswith("…") else 0)  # where the part shown starts in the text
    assert shown.strip("…") == text[start:start + len(shown.strip("…"))]
    assert shown.startswith("…") == (start > 0) and shown.endswith("…") == (start + EXCERPT < len(text))
    assert len(caret.strip()) == min(underline, len(shown.rstrip("…")) - k)


@pytest.mark.parametrize("text, number, col", [
    ("1__0×mamba2", "1__0", 1), ("1_×mamba2", "1_", 1), ("2__xmamba2", "2__", 1), ("mamba2, -2_×attn", "-2_", 9),
    ("attn(heads=1_)", "1_", 12), ("mamba2(heads=1__0)", "1__0", 14), ("attn(norm_eps=1_e-5)", "1_e-5", 15),
    ("attn(rope_theta=1.5_)", "1.5_", 17), ("4×mamba2, moe every 2_", "2_", 21),
    ("4×mamba2, attn at 1 2__", "2__", 21)])
def test_a_malformed_number_is_named(text, number, col):
    """A number with an underscore other than between two digits was lexed as a number and a name, and the message
    blamed something else (`1__0×mamba2`: "a count needs a repetition sign after it, as in 1×mamba2")."""
    assert error(text) == (f"<layout>:1:{col}: malformed number '{number}': an underscore goes between two digits, "
                           f"as in 1_000\n  {text}\n  {' ' * (col - 1)}^{'~' * (len(number) - 1)}")


@pytest.mark.parametrize("text", ["7_mamba2", "mamba2, 2 attn", "1٦×mamba2"])
def test_a_count_without_its_sign_is_still_said_so(text):
    """A number that runs into a name (`7_mamba2`) or stands alone is a count without its repetition sign."""
    assert "a count needs a repetition sign after it" in error(text)
    assert parse_layout("1_000×mamba2, attn(heads=1_6, rope_theta=1_0.0_5)") == \
        parse_layout("1000×mamba2, attn(heads=16, rope_theta=10.05)")


@pytest.mark.parametrize("layout", ["(mamba2, moe every 2)", "4×mamba2, 2×moe every 2", "moe+mlp every 2",
                                    "(mamba2, attn at 1)"])
def test_a_modifier_inside_a_group_says_where_modifiers_go(layout):
    """`(mamba2, moe every 2)` said only "unexpected 'every'; expected '(', '+', ',' or ')' after 'moe'"."""
    with pytest.raises(ArchDSLError, match=r"a modifier \(`moe every 2`, `attn at 3 7`\) is an entry of its own after "
                                           r"the layers: one block, outside parentheses and repeats"):
        archdsl.parse(layout)


def test_a_selection_takes_whole_numbers():
    for layout, col in (("4×mamba2, moe every 2.0", 21), ("4×mamba2, moe at 1.0", 18),
                        ("4×mamba2, moe every 2 offset 1.0", 30)):
        with pytest.raises(ArchDSLError, match="; expected a whole number after") as e:
            archdsl.parse(layout)
        assert e.value.col == col, layout


def test_at_past_the_layers_names_each_index_past_them():
    with pytest.raises(ArchDSLError, match=r"`at 7 9`: the layout has only 4 layers \(indices 0..3\)"):
        archdsl.parse("4×mamba2, moe at 1 2 7 9").graph


@pytest.mark.parametrize("before, cells", [('"注意力"', 8), ('"e\u0301"', 3), ('"é"', 3), ('"a\u200bb"', 4)])
def test_the_caret_counts_terminal_columns(before, cells):
    """The caret's line had one space a character: after CJK (two columns each) it stood left of the token, after a
    combining mark right of it. line:col still count characters."""
    layout = f"2×mamba2(shared={before}), mamab2"
    with pytest.raises(ArchDSLError) as e:
        archdsl.parse(layout).graph
    text, caret = e.value.excerpt.split("\n")
    assert caret == "  " + " " * (len("2×mamba2(shared=") + cells + len("), ")) + "^~~~~~", (text, caret)
    assert e.value.col == layout.index("mamab2") + 1


def test_a_shared_groups_conflict_writes_none_as_the_layout_does():
    with pytest.raises(ArchDSLError, match=r"differ in window \(512 and none\)\n"):
        archdsl.parse("attn(shared, window=512), attn(shared)").graph
