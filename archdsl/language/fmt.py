"""AST → the canonical layout text.

    4×(7×mamba2, attn(shared)), moe every 2

Unicode ×, ', ' between entries, arguments in their given order as name=value (`shared`
bare when true, None as `none`, the strings "none" and "null" quoted), modifiers after the
layers, `every N` without `offset` when the offset is the default N-1, `at` indices ascending.
parse_layout(format_layout(t)) == t for every tree the parser produces, and format_layout is
idempotent through parse_layout.
"""
from __future__ import annotations

import math
import re

from .ast import Arg, Block, Group, Layer, Layout, Modifier, Repeat

__all__ = ["format_layout", "format_node", "format_block", "format_modifier", "format_value"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = frozenset({"every", "offset", "at"})
_RESERVED_VALUES = _KEYWORDS | {"true", "false", "none", "null"}


def format_value(value) -> str:
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite number {value} in a layout")
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + (f"e{int(exponent)}" if e else "")  # 1e-05 → 1e-5
    text = str(value)
    if _NAME.match(text) and text not in _RESERVED_VALUES:
        return text
    body = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
            .replace("\t", "\\t"))
    return f'"{body}"'


def _format_arg(arg: Arg) -> str:
    if arg.name == "shared" and arg.value is True:
        return "shared"
    return f"{arg.name}={format_value(arg.value)}"


def format_block(block: Block) -> str:
    if not block.args:
        return block.name
    return f"{block.name}({', '.join(_format_arg(a) for a in block.args)})"


def format_node(node) -> str:
    if isinstance(node, Layer):
        return "+".join(format_block(b) for b in node.blocks)
    if isinstance(node, Repeat):
        return f"{node.count}×{format_node(node.body)}"
    if isinstance(node, Group):
        return "(" + ", ".join(format_node(n) for n in node.items) + ")"
    raise TypeError(f"not a layout node: {node!r}")


def format_modifier(mod: Modifier) -> str:
    head = format_block(mod.block)
    if mod.at is not None:
        return f"{head} at " + " ".join(str(i) for i in sorted(mod.at))
    text = f"{head} every {mod.every}"
    if mod.offset is not None and mod.offset != mod.every - 1:
        text += f" offset {mod.offset}"
    return text


def format_layout(layout: Layout) -> str:
    """The canonical text of a layout."""
    parts = [format_node(n) for n in layout.items] + [format_modifier(m) for m in layout.modifiers]
    return ", ".join(parts)
