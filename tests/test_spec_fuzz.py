"""Mutated spec files: whatever the damage, the only exception is ArchDSLError."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.language import MAX_NESTING, Arg, Block, Group, Layer, Layout, Modifier, Repeat, parse_layout
from archdsl.spec import spec_from_yaml
from strategies import layouts, small_layouts, values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(ROOT, "specs", "*.yaml")))]
PIECES = ["\n", ":", " ", "-", "{", "}", "[", "]", "0", "-1", "1e99", "×", "x", "(", ")", ",", "'", '"', "#",
          "true", "null", "layout: ", "blocks:", "  ", "every 0", "shared", "=", "~", "&a", "*a", "!!python/object"]


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = min(len(text), i + draw(st.integers(0, 6)))
        text = text[:i] + draw(st.sampled_from(PIECES) | st.text(max_size=3)) + text[j:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_spec_files_only_raise_archdsl_error(text):
    try:
        spec = spec_from_yaml(text, file="mutated.yaml")
        archdsl.analyze(spec, seq_len=4096)
    except archdsl.ArchDSLError as e:
        assert str(e)  # a message, with a place when there is one


ANY = st.none() | st.booleans() | st.integers(-3, 5000) | st.floats(allow_nan=True) | st.text(max_size=6) \
    | st.binary(max_size=4) | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["mamba", "2×mamba2, attn", 3, None]) | ANY,
       st.dictionaries(st.sampled_from(["d_model", "vocab_size", "norm", "norm_eps", "ffn", "tie_embeddings", "name",
                                        "blocks", "dmodel"]), ANY, max_size=3),
       st.sampled_from([4096, 1]) | ANY, st.sampled_from([1, 2]) | ANY)
def test_python_api_garbage_only_raises_archdsl_error(layout, sizes, seq_len, batch):
    """parse / analyze given values of any type: a spec and its report, or ArchDSLError (never a TypeError
    from inside)."""
    try:
        spec = archdsl.parse(layout, **sizes)
        archdsl.analyze(spec, seq_len=seq_len, batch=batch)
    except archdsl.ArchDSLError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["1e5", "7e9", "+1E-3", "1_0e5", "-2.5e+3", "yes", "null", "~", "0x1F", ".inf", "2024-01-01",
                        "1:20", "x: y", "- a", "#a", "'a'", "@a"]) | st.text(min_size=1, max_size=12))
def test_to_yaml_loads_back_as_the_same_spec(name):
    """Spec.to_yaml (a saved model's spec.yaml) wrote a name `1e5` plain, which the loader reads as a float: the
    model did not load. Whatever the name (and an alias `1e5` that ffn names), the file loads back the same."""
    try:
        spec = archdsl.parse("2×mamba2, attn", name=name, norm_eps=1e-6, ffn="1e5",
                             blocks={"attn": {"heads": 4}, "1e5": {"kind": "mlp", "hidden": 64}})
    except archdsl.ArchDSLError:
        return  # a name refused (blank, a line break)
    again = spec_from_yaml(spec.to_yaml(), file="saved.yaml")
    assert again == spec and again.to_dict() == spec.to_dict()
    assert archdsl.analyze(again).params == archdsl.analyze(spec).params


SPEC_FIELDS = st.sampled_from(["name", "d_model", "vocab_size", "tie_embeddings", "norm", "norm_eps", "embed_norm",
                               "residual_fp32", "ffn", "blocks"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["parsed", "4×mamba2"]) | ANY, st.dictionaries(SPEC_FIELDS, ANY, max_size=3))
def test_a_spec_made_directly_only_raises_archdsl_error(layout, fields_):
    """archdsl.Spec(...) and dataclasses.replace are checked as parse is: `Spec(layout="4×mamba2")` was an
    AttributeError on use, `replace(spec, norm="foo")` a ConfigError from analyze, `vocab_size=0` a silent report."""
    from dataclasses import replace

    spec = archdsl.parse("2×mamba2, attn")
    for make in (lambda: archdsl.Spec(layout=spec.layout if layout == "parsed" else layout, **fields_),
                 lambda: replace(spec, **fields_)):
        try:
            made = make()
            archdsl.analyze(made, seq_len=64)
        except archdsl.ArchDSLError as e:
            assert str(e)
        else:
            assert made.d_model > 0 and made.vocab_size > 0 and made.norm in ("rmsnorm", "layernorm")


def test_a_key_written_twice_is_an_error():
    text = "name: x\nd_model: 64\nblocks:\n  mamba: {d_state: 4, d_state: 8}\nlayout: mamba\n"
    try:
        spec_from_yaml(text, file="twice.yaml")
    except archdsl.ArchDSLError as e:
        assert str(e).startswith("twice.yaml:4:23: key 'd_state' is written twice (first at line 4)")
    else:
        raise AssertionError("accepted a key written twice")


class _Styled(str):
    """A string that yaml.dump writes in a given style: None (plain), ', ", | or >."""
    style = None


class _StyledDumper(yaml.SafeDumper):
    pass


_StyledDumper.add_representer(_Styled, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style=s.style))
ITEMS = ["mamba2", "2×mamba2", "attn(heads=12)", "(mamba2, mlp)", "mamba2+mlp", 'mlp(act="gelu")', "mlp(act='gelu')",
         "moe(experts=4,  top_k=2)"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ITEMS), max_size=8), st.integers(0, 8),
       st.lists(st.sampled_from([", ", ",\n", ",  ", "\n\n", ",\t", ", \n"]), min_size=9, max_size=9),
       st.sampled_from([None, "'", '"', "|", ">"]), st.integers(10, 90), st.booleans())
def test_layout_errors_point_at_the_token_in_every_yaml_style(items, at, seps, style, width, unicode):
    """A layout with an unknown block `atn`, written by yaml.dump in each style, folded at any width: the
    error names the line and column of `atn` in the file."""
    items = items[:at] + ["atn"] + items[at:]
    layout = _Styled("".join(item + sep for item, sep in zip(items, seps)).rstrip(",\n\t "))
    layout.style = style
    text = yaml.dump({"name": "x", "layout": layout}, Dumper=_StyledDumper, width=width, allow_unicode=unicode,
                     sort_keys=False)
    where = text.index("atn")
    line, col = text.count("\n", 0, where) + 1, where - text.rfind("\n", 0, where)
    try:
        spec_from_yaml(text, file="s.yaml").graph
    except archdsl.ArchDSLError as e:
        assert str(e).startswith(f"s.yaml:{line}:{col}: unknown block 'atn'"), (text, str(e))
    else:
        raise AssertionError("accepted `atn`")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ITEMS), max_size=8), st.integers(0, 8), st.sampled_from(["atn", "mamba2 +,", "(mamba2"]),
       st.lists(st.sampled_from([", ", ",\n", "\n\n", ", \n"]), min_size=9, max_size=9),
       st.sampled_from([None, "'", '"', "|", ">"]), st.integers(10, 90))
def test_a_crlf_file_has_the_errors_of_its_lf_twin(items, at, mistake, seps, style, width):
    """Windows line ends: the '\\r' of a CRLF was taken for a character of the layout, so the caret under a name
    at the end of a line was one too wide and an error at the end of the layout one column too far right."""
    items = items[:at] + [mistake] + items[at:]
    layout = _Styled("".join(item + sep for item, sep in zip(items, seps)).rstrip(",\n\t "))
    layout.style = style
    text = yaml.dump({"name": "x", "layout": layout}, Dumper=_StyledDumper, width=width, sort_keys=False)
    errors = []
    for lines in (text, text.replace("\n", "\r\n")):
        try:
            spec_from_yaml(lines, file="s.yaml").graph
        except archdsl.ArchDSLError as e:
            errors.append(str(e))
        else:
            raise AssertionError(f"accepted {mistake!r}")
    assert errors[0] == errors[1], (text, errors)


def _error(text: str) -> str:
    try:
        spec_from_yaml(text, file="s.yaml").graph
    except archdsl.ArchDSLError as e:
        return str(e)
    raise AssertionError(f"accepted:\n{text}")


def test_a_recursive_alias_is_an_error_not_a_recursion():
    assert _error("name: x\nlayout: mamba\nblocks:\n  a: &x [*x]\n").startswith(
        "s.yaml:4:6: a YAML alias refers to a node that contains it")
    many = "name: x\nlayout: mamba\nz: &a [1, 1]\n" + "".join(
        f"z{i}: &a{i} [*{'a' if i == 0 else f'a{i - 1}'}, *{'a' if i == 0 else f'a{i - 1}'}]\n" for i in range(40))
    assert "unknown spec key 'z'" in _error(many)  # 2^40 paths through the aliases: each node checked once


@pytest.mark.parametrize("value, field", [(".inf", "dt_max"), (".nan", "dt_max"), ("-.inf", "dt_min"),
                                          (".nan", "norm_eps"), ("-1.0", "norm_eps"), ("0.0", "norm_eps"),
                                          ("1.5", "norm_eps")])
def test_block_floats_must_be_finite_and_eps_in_range(value, field):
    message = _error(f"name: x\nlayout: mamba2\nblocks:\n  mamba2: {{{field}: {value}}}\n")
    assert message.startswith("s.yaml:4:") and f"mamba2: {field} must be" in message
    for text in (f"zamba(norm_eps={value.lstrip('.')})", "mamba(inner_norms=weighted, inner_norm_eps=-1.0)",
                 "attn(rope_theta=1e400)"):
        with pytest.raises(archdsl.ArchDSLError):
            archdsl.parse(text).graph


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_model_floats_must_be_finite(value):
    for key in ("rope_theta", "aux_loss_coef"):
        block = "attn" if key == "rope_theta" else "moe"
        assert f"{key} must be" in _error(f"name: x\nlayout: mamba2, {block}\nblocks:\n  {block}: {{{key}: {value}}}\n")
    assert "norm_eps must be" in _error(f"name: x\nlayout: mamba2\nnorm_eps: {value}\n")


def test_floats_without_a_dot_are_numbers():
    spec = spec_from_yaml("name: x\nlayout: mamba2\nnorm_eps: 1e-6\nblocks:\n  mamba2: {norm_eps: 1E-5, dt_max: 2e-1}\n")
    assert spec.norm_eps == 1e-6 and spec.graph is not None
    assert spec_from_yaml(spec.to_yaml()).to_dict() == spec.to_dict()


def test_a_bare_layout_file_keeps_its_positions():
    assert _error("# a layout alone\n2×mamba2,\n  atn\n").startswith("s.yaml:3:3: unknown block 'atn'")
    assert _error('"2×mamba2, ٣×attn"\n').startswith("s.yaml:1:12: unexpected character '٣'")


@pytest.mark.parametrize("key, shown", [("null", "None"), ("true", "True"), ("1", "1"), ("~", "None")])
def test_unknown_keys_that_yaml_reads_as_other_types_are_placed(key, shown):
    assert _error(f"name: x\nlayout: mamba\n{key}: 3\n").startswith(f"s.yaml:3:1: unknown spec key {shown}")
    assert _error(f"name: x\nlayout: mamba\nblocks:\n  {key}: {{d_state: 4}}\n").startswith("s.yaml:4:3: ")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["d_model", "vocab_size", "name", "norm", "norm_eps", "ffn", "tie_embeddings",
                                 "dmodel", ""]).flatmap(
    lambda key: st.builds(lambda sep, value: key + sep + value, st.sampled_from(["=", " = ", "", "=="]),
                          st.sampled_from(PIECES) | st.text(max_size=6))), min_size=1, max_size=3),
       st.sampled_from(TEXTS))
def test_garbage_settings_only_raise_archdsl_error(settings_, text):
    """--set's KEY=VALUE texts, whatever they hold, give a spec or an ArchDSLError that names the setting."""
    from archdsl.spec import with_settings

    try:
        spec = with_settings(spec_from_yaml(text, file="spec.yaml"), settings_)
        archdsl.analyze(spec, seq_len=4096)
    except archdsl.ArchDSLError as e:
        assert str(e)


@settings(max_examples=60, deadline=None)
@given(st.integers(2**1024, 10**400) | st.integers(-(10**400), -(2**1024)),
       st.sampled_from([("mamba2", "norm_eps"), ("mamba2", "dt_max"), ("attn", "rope_theta"), ("moe", "aux_loss_coef"),
                        ("s4d", "dt_min")]), st.booleans())
def test_an_int_past_the_largest_float_is_an_error(value, field, used):
    """YAML reads ints of any size: one given where a float goes (a block's, used or not, or norm_eps) was an
    OverflowError from float(value); now an ArchDSLError at the value."""
    kind, key = field
    layout = f"mamba2, {kind}" if used else "mamba2"
    assert _error(f"name: x\nlayout: {layout}\nblocks:\n  {kind}: {{{key}: {value}}}\n").startswith(
        f"s.yaml:4:{len(kind) + len(key) + 8}: {kind}: {key} must be")
    assert _error(f"name: x\nlayout: mamba2\nnorm_eps: {value}\n").startswith("s.yaml:3:11: norm_eps must be a finite")
    with pytest.raises(archdsl.ArchDSLError, match=f"{key} must be a finite number"):
        archdsl.parse(layout, blocks={kind: {key: value}}).graph


@pytest.mark.parametrize("value, field", [(".inf", "dt_max"), (".nan", "dt_min"), ("5.0", "norm_eps"), ("0", "norm_eps"),
                                          ("-.inf", "rope_theta"), (".nan", "inner_norm_eps")])
def test_floats_of_unused_blocks_entries_are_checked(value, field):
    """Every `blocks:` entry is checked, used or not: a NaN, an infinity or an eps outside (0, 1) in an entry the
    layout did not use passed `check` (make_config stopped at d_model 0 before the config's own checks)."""
    kind = {"rope_theta": "attn", "inner_norm_eps": "mamba"}.get(field, "mamba2")
    alias = f"  big: {{kind: {kind}, {field}: {value}}}\n"
    for entry, col in ((f"  {kind}: {{{field}: {value}}}\n", len(kind) + len(field) + 8), (alias, len(field) + len(kind) + 19)):
        assert _error(f"name: x\nlayout: rwkv6\nblocks:\n{entry}").startswith(f"s.yaml:4:{col}: {kind}: {field} must be")


@pytest.mark.parametrize("bom, newline", [("\ufeff", "\n"), ("\ufeff", "\r\n"), ("", "\r"), ("\ufeff", "\r")])
@pytest.mark.parametrize("row", [1, 2])
def test_a_byte_order_mark_or_a_lone_cr_keeps_the_positions(tmp_path, bom, newline, row):
    """YAML skips a leading byte-order mark, and reads a lone CR (a classic Mac file) as a line break; positions
    counted the mark as a column and the file as one line, so that errors pointed beside their place."""
    lines = ["name: x", "d_model: 64", ""]
    text = bom + newline.join(lines[:row - 1] + ["layout: 8×mamba2, mamab"] + lines[row - 1:])
    path = tmp_path / "bom.yaml"
    path.write_bytes(text.encode("utf-8"))
    for make in (lambda: spec_from_yaml(text, file="s.yaml"), lambda: archdsl.load_spec(str(path))):
        with pytest.raises(archdsl.ArchDSLError) as e:
            make().graph
        head, line, caret = str(e.value).split("\n")
        assert head.endswith(f":{row}:19: unknown block 'mamab'; did you mean 'mamba', 'mamba2', 'zamba'?")
        assert line == "  layout: 8×mamba2, mamab" and caret == "  " + " " * 18 + "^~~~~"


@settings(max_examples=100, deadline=None)
@given(small_layouts(max_layers=12), st.sampled_from([{}, {"attn": {"heads": 4}}]))
def test_specs_hash_as_they_compare(layout, blocks):
    """A Spec is a frozen value, but hash(spec) was a TypeError (its blocks are a mappingproxy): no set of specs,
    no cache keyed by one. Equal specs hash alike, whichever way they were written."""
    from archdsl.language import format_layout

    spec = archdsl.Spec(layout=layout, blocks=blocks)
    again = archdsl.parse(format_layout(layout), blocks=blocks)
    assert again == spec and hash(again) == hash(spec) and len({spec, again}) == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts(max_layers=16))
@example(archdsl.parse('mamba(act="a\x85b")').layout)
@example(parse_layout('attn(act=none, window="none")'))
def test_to_yaml_keeps_any_layout(layout):
    """Spec.to_yaml wrote a string holding a NEL (U+0085) raw in single quotes, where YAML reads it as a line
    break folded into a space: the saved layout came back another. Whatever strings the layout holds, it loads
    back the same (a quoted "none" beside a `none` stays a string)."""
    spec = archdsl.Spec(layout=layout)
    assert spec_from_yaml(spec.to_yaml(), file="saved.yaml").layout == layout


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_layouts(max_layers=12, semantic=True),
       st.fixed_dictionaries({}, optional={"attn": st.fixed_dictionaries({"window": st.none() | st.integers(1, 64)}),
                                           "moe": st.fixed_dictionaries({"norm_topk": st.none() | st.booleans()}),
                                           "mamba": st.fixed_dictionaries({"inner_norms": st.sampled_from(
                                               [None, "none", "weighted"])})}))
def test_none_in_the_layout_and_the_blocks_loads_back_the_same(layout, blocks):
    """A layout's `none` (attn(window=none)) and the blocks' None (YAML's null) are written so that the spec loads
    back the same, and builds the same."""
    spec = archdsl.Spec(layout=layout, blocks=blocks)
    again = spec_from_yaml(spec.to_yaml(), file="saved.yaml")
    assert again == spec and again.to_dict() == spec.to_dict()
    try:
        cache = archdsl.analyze(spec, seq_len=256).cache_bytes
    except archdsl.ArchDSLError:
        return  # a modifier past the last layer
    assert archdsl.analyze(again, seq_len=256).cache_bytes == cache


# --- a tree made by hand (archdsl.language's classes) -----------------------------------------------------
BAD_INTS = st.integers(-2, 0) | st.sampled_from([10**30, -(10**31), True, 2.0, None, np.int64(2)])
BAD_VALUES = st.sampled_from([float("inf"), float("nan"), 10**30, "\udcff", [1], np.int64(2), np.str_("gelu")])


def _sometimes(draw, good, bad):
    """`good`, and `bad` one time in eight or so: a tree with a defect or two, not one broken everywhere."""
    return draw(bad if draw(st.integers(0, 7)) == 3 else good)  # hypothesis draws the ends of a range most often


@st.composite
def hand_made_blocks(draw):
    name = _sometimes(draw, st.sampled_from(["mamba", "attn", "moe", "mlp", "x"]),
                      st.sampled_from(["every", "2x", "a b", "", None]))
    args = []
    for _ in range(draw(st.integers(0, 2))):
        arg = _sometimes(draw, st.sampled_from(["shared", "heads", "window", "at"]), st.sampled_from(["bad name", 3]))
        value = _sometimes(draw, st.booleans() | st.sampled_from(["a", "b"]) if arg == "shared" else values(),
                           BAD_VALUES | st.sampled_from([3, "", " ", None]))
        args.append(Arg(arg, value))
    return Block(name, _sometimes(draw, st.just(tuple(args)), st.just(args)))


@st.composite
def hand_made_nodes(draw, depth: int = 3):
    kind = _sometimes(draw, st.sampled_from(["layer", "layer", "repeat", "group"] if depth else ["layer"]),
                      st.sampled_from(["deep", "junk"]))
    if kind == "layer":
        return Layer(tuple(draw(st.lists(hand_made_blocks(), min_size=_sometimes(draw, st.just(1), st.just(0)),
                                         max_size=2))))
    if kind == "repeat":
        return Repeat(_sometimes(draw, st.integers(1, 4), BAD_INTS), draw(hand_made_nodes(depth - 1)))
    if kind == "group":
        return Group(tuple(draw(st.lists(hand_made_nodes(depth - 1), min_size=_sometimes(draw, st.just(1), st.just(0)),
                                         max_size=2))))
    if kind == "deep":  # at the limit of nesting, or one past it
        node = draw(hand_made_nodes(0))
        for _ in range(draw(st.integers(MAX_NESTING - 1, MAX_NESTING + 1))):
            node = Group((node,)) if draw(st.booleans()) else Repeat(1, node)
        return node
    return draw(st.sampled_from(["mamba", None, Block("mamba")]))


@st.composite
def hand_made_modifiers(draw):
    block = draw(hand_made_blocks())
    if draw(st.booleans()):
        every = _sometimes(draw, st.integers(1, 4), BAD_INTS)
        offset = _sometimes(draw, st.none() | st.integers(0, max(0, every - 1)) if type(every) is int else st.none(),
                            BAD_INTS | st.integers(-1, 5))
        at = _sometimes(draw, st.none(), st.just((0,)))
    else:
        at = _sometimes(draw, st.lists(st.integers(0, 8), min_size=1, max_size=3, unique=True).map(tuple),
                        st.lists(BAD_INTS | st.integers(0, 2), max_size=3).map(tuple) | st.none())
        every, offset = _sometimes(draw, st.just((None, None)), st.tuples(st.none() | st.just(2), st.just(0)))
    return Modifier(block, every=every, offset=offset, at=at)


@st.composite
def hand_made_layouts(draw):
    items = tuple(draw(st.lists(hand_made_nodes(), min_size=_sometimes(draw, st.just(1), st.just(0)), max_size=3)))
    return Layout(_sometimes(draw, st.just(items), st.just(list(items))),
                  tuple(draw(st.lists(hand_made_modifiers(), max_size=2))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hand_made_layouts())
def test_a_hand_made_layout_is_refused_or_reads_back_from_its_text(layout):
    """Spec(layout=...) of a tree made of archdsl.language's classes: ArchDSLError naming the layout, or a spec
    whose layout_text parses back to its layout (and to the same spec), whose graph builds or says why."""
    try:
        spec = archdsl.Spec(layout=layout, d_model=16)
    except archdsl.ArchDSLError as e:
        assert str(e).startswith("layout: ")
        return
    assert parse_layout(spec.layout_text) == spec.layout
    assert archdsl.parse(spec.layout_text, d_model=16) == spec
    try:
        spec.graph
    except archdsl.ArchDSLError as e:
        assert str(e)


# --- numpy's values: a sweep over np.arange or an array of names ----------------------------------
def test_numpy_values_are_python_values_in_a_spec():
    """A numpy string in `blocks` (or as the name) made to_yaml / ArchModel.save raise yaml's RepresenterError, and a
    numpy int was 'heads must be int' in `blocks` though taken as d_model: each is its Python value now."""
    plain = archdsl.parse("mlp, attn", name="x", d_model=16, vocab_size=10,
                          blocks={"mlp": {"act": "gelu", "hidden": 32}, "attn": {"heads": 2, "rope_theta": 0.5}})
    made = archdsl.parse("mlp, attn", name=np.str_("x"), d_model=np.int64(16), vocab_size=np.uint8(10),
                         blocks={np.str_("mlp"): {np.str_("act"): np.str_("gelu"), "hidden": np.int32(32)},
                                 "attn": {"heads": np.int64(2), "rope_theta": np.float16(0.5)}})
    assert made == plain and made.to_yaml() == plain.to_yaml()
    assert type(made.name) is str and [type(v) for v in made.blocks["attn"].values()] == [int, float]
    assert spec_from_yaml(made.to_yaml()) == made and archdsl.analyze(made).params == archdsl.analyze(plain).params


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["heads", "rope", "rope_theta", "window", "kind"]),
       st.sampled_from([np.int64(2), np.int8(-1), np.uint64(4), np.float16(0.5), np.float64("inf"), np.str_("none"),
                        np.str_("mlp"), np.bool_(True), np.array(2), np.array("gelu"), np.array([2]), [2], {"a": 1},
                        (1, 2), b"\x00", object()]) | ANY)
def test_a_blocks_value_of_any_type_writes_as_yaml_or_is_refused(arg, value):
    """Whatever the value in `blocks` (numpy's scalars and arrays among them): ArchDSLError, or a spec that to_yaml
    writes (never a yaml exception) and that reads back the same (a NaN, equal to nothing, as the same text)."""
    try:
        spec = archdsl.parse("attn", d_model=16, blocks={"attn": {arg: value}, "mine": {"kind": "attn", arg: value}})
    except archdsl.ArchDSLError as e:
        assert str(e)
        return
    back = spec_from_yaml(spec.to_yaml())
    assert back == spec or (".nan" in spec.to_yaml() and back.to_yaml() == spec.to_yaml())
    try:
        spec.graph
    except archdsl.ArchDSLError as e:
        assert str(e)
