"""Megatron-Core hybrid override patterns → archdsl layouts.

Megatron writes one character per sublayer, each its own pre-norm residual layer:
M = Mamba-2 mixer, * = attention, - = MLP, E = MoE. A classic transformer layer is `*-`.

    pattern_to_layout("M-M-M-*-")  → "3×(mamba2, mlp), attn, mlp"
"""
from __future__ import annotations

from ..errors import ArchDSLError, Source, shown

SYMBOLS = {"M": "mamba2", "*": "attn", "-": "mlp", "E": "moe"}


def pattern_layers(pattern: str) -> list[str]:
    """One block kind per character; a bad character is an ArchDSLError pointing at it."""
    if not isinstance(pattern, str):
        raise ArchDSLError(f"a hybrid pattern is a string such as 'M-M-*-', got {shown(pattern)}")
    src = Source(pattern, file="<pattern>")
    if not pattern.strip():
        raise ArchDSLError("empty hybrid pattern", source=src, start=0,
                           hint="valid characters: M (mamba2), * (attn), - (mlp), E (moe)")
    out = []
    for i, ch in enumerate(pattern):
        if ch not in SYMBOLS:
            raise ArchDSLError(f"bad character {ch!r} at position {i} of the hybrid pattern", source=src, start=i,
                               hint="valid characters: M (mamba2), * (attn), - (mlp), E (moe)")
        out.append(SYMBOLS[ch])
    return out


def _compress(items: list[str]) -> list[tuple[int, tuple[str, ...]]]:
    """Greedy run-length coding over units of length 1..12: [(count, unit), ...]."""
    out, i = [], 0
    while i < len(items):
        best = (1, (items[i],), 1)  # count, unit, covered
        for size in range(1, 13):
            unit = tuple(items[i:i + size])
            if len(unit) < size:
                break
            count = 1
            while tuple(items[i + count * size:i + (count + 1) * size]) == unit:
                count += 1
            if count > 1 and count * size > best[2]:
                best = (count, unit, count * size)
        out.append(best[:2])
        i += best[2]
    return out


def compressed_layout(items: list[str]) -> list[str]:
    """The layout's parts for a list of layer kinds, repeated runs compressed with `N×` (nested where it pays)."""
    parts = []
    for count, unit in _compress(items):
        if count == 1:
            parts.extend(unit)
        else:
            inner = compressed_layout(list(unit))
            parts.append(f"{count}×" + (inner[0] if len(inner) == 1 else "(" + ", ".join(inner) + ")"))
    return parts


def pattern_to_layout(pattern: str) -> str:
    """A layout string with one layer per character, runs compressed with `N×`."""
    return ", ".join(compressed_layout(pattern_layers(pattern)))
