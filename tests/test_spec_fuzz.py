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
