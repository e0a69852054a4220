"""Mutated spec files: whatever the damage, the only exception is ArchDSLError."""
from __future__ import annotations

import glob
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archdsl
from archdsl.spec import spec_from_yaml

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
