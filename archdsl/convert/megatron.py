"""Megatron-Core hybrid layer patterns → archdsl layouts and specs.

Megatron writes one character per sublayer, each its own pre-norm residual layer:
M = Mamba-2 mixer, * = attention, - = MLP, E = MoE. A classic transformer layer is `*-`.
`|` marks a pipeline stage's end (no layer) and `/` starts the multi-token-prediction layers,
which are not part of the model's next-token forward (megatron/core/models/hybrid/
hybrid_layer_allocation.py; the pattern is `--hybrid-layer-pattern`, formerly
`--hybrid-override-pattern`).

    pattern_to_layout("M-M-M-*-")  → "3×(mamba2, mlp), attn, mlp"
"""
from __future__ import annotations

from ..errors import ArchDSLError, Source, shown, warn

SYMBOLS = {"M": "mamba2", "*": "attn", "-": "mlp", "E": "moe"}
PIPE, MTP = "|", "/"  # a pipeline stage boundary; the multi-token-prediction part's start
# Megatron's other layer symbols, which archdsl has no block for
OTHER = {"G": "Gated DeltaNet", "D": "DeepSeek sparse attention", "+": "multi-latent attention (MLA)"}
VALID = "valid characters: M (mamba2), * (attn), - (mlp), E (moe), | (a pipeline stage's end), / (MTP layers follow)"
# Megatron's hybrid model's defaults where archdsl's differ and the run's arguments seldom set them
# (TransformerConfig.mamba_num_groups, MambaMixer's chunk_size, HybridModel's position_embedding_type 'none')
DEFAULT_BLOCKS = {"mamba2": {"ngroups": 8, "chunk_size": 128}, "attn": {"rope": False}}
NOTE = """\
# From a Megatron-Core hybrid pattern: the layout, one layer per character, and Megatron's hybrid defaults
# where archdsl's differ (mamba_num_groups 8, Mamba chunks of 128, attention without positional encoding).
# The pattern holds no size: set them from the run's arguments (--hidden-size: d_model; --num-attention-heads,
# --num-query-groups, --kv-channels: attn; --mamba-num-heads, --mamba-head-dim, --mamba-state-dim: mamba2;
# --ffn-hidden-size and --swiglu / --squared-relu (gelu otherwise): mlp; the vocabulary; and
# tie_embeddings: false for --untie-embeddings-and-output-weights).
"""


def pattern_layers(pattern: str) -> list[str]:
    """One block kind per character of the main pattern (pipeline marks `|` dropped; the multi-token-prediction
    part after `/` dropped with a warning); a bad character is an ArchDSLError pointing at it."""
    if not isinstance(pattern, str):
        raise ArchDSLError(f"a hybrid pattern is a string such as 'M-M-*-', got {shown(pattern)}")
    src = Source(pattern, file="<pattern>")
    for i, ch in enumerate(pattern):
        if ch in OTHER:
            raise ArchDSLError(f"{ch!r} at position {i} of the hybrid pattern is Megatron's {OTHER[ch]} layer, "
                               "which archdsl has no block for", source=src, start=i, hint=VALID)
        if ch not in SYMBOLS and ch not in (PIPE, MTP):
            raise ArchDSLError(f"bad character {ch!r} at position {i} of the hybrid pattern", source=src, start=i,
                               hint=VALID)
    main, _, mtp = pattern.partition(MTP)
    out = [SYMBOLS[ch] for ch in main if ch != PIPE]
    if not pattern:
        raise ArchDSLError("empty hybrid pattern", source=src, start=0, hint=VALID)
    if not out:
        where = " before its '/' (the multi-token-prediction layers follow it)" if MTP in pattern else ""
        raise ArchDSLError(f"the hybrid pattern has no layer{where}", source=src, start=0, hint=VALID)
    if MTP in pattern:
        warn(f"the hybrid pattern's multi-token-prediction layers after its first '/' ({mtp!r}) are left out: "
             "archdsl's models predict the next token only")
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


def pattern_to_spec(pattern: str, name: str = "megatron-hybrid") -> dict:
    """A spec's data (name, layout, blocks) for a pattern: its layout, with Megatron's hybrid defaults (DEFAULT_BLOCKS)
    for the kinds it has. The sizes are archdsl's defaults: the pattern holds none (NOTE)."""
    kinds = pattern_layers(pattern)
    blocks = {kind: dict(args) for kind, args in DEFAULT_BLOCKS.items() if kind in kinds}
    return {"name": name, "layout": ", ".join(compressed_layout(kinds)), **({"blocks": blocks} if blocks else {})}
