"""Mutated spec files: whatever the damage, the only exception is ArchDSLError."""
from __future__ import annotations

import glob
import os

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
