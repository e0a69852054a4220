"""Mutated spec files: whatever the damage, the only exception is ArchDSLError."""
from __future__ import annotations

import glob
import os

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.language import parse_layout
from archdsl.spec import spec_from_yaml
from strategies import layouts, small_layouts

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
