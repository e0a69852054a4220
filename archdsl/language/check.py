"""The rules of a layout that its grammar cannot say, stated once, over the AST.

parse_layout applies them to each node as it builds it, at the token at fault; check_layout applies them to a
whole tree however it was made (by hand, with dataclasses.replace), and Spec.__post_init__ runs it. A tree that
passes is one that parse_layout could have built, so parse_layout(format_layout(t)) == t:

    >>> check_layout(Layout((Repeat(0, Layer((Block("mamba"),))),)))
    ArchDSLError: layout: repeat count must be at least 1, not 0, in '0×mamba'

Each rule is a function that returns the message of a broken rule, or None; the callers place it.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..errors import ArchDSLError, clipped, shown
from .ast import Arg, Block, Group, Layer, Layout, Modifier, Repeat, Span
from .fmt import _KEYWORDS, _NAME, format_block, format_modifier, format_node, format_value

__all__ = ["check_layout", "node_text", "MAX_NESTING", "MAX_DIGITS"]

MAX_NESTING = 64  # groups and repeats inside one another
MAX_DIGITS = 30   # longest number accepted

TOO_DEEP = f"the layout nests repeats and groups more than {MAX_NESTING} deep"
EMPTY_LAYOUT = "empty layout: expected at least one layer, as in 4×mamba2"
EMPTY_GROUP = "empty group '()': a group needs at least one layer"


# --- the rules ----------------------------------------------------------------------------
def count_error(count: int) -> str | None:
    return None if count >= 1 else f"repeat count must be at least 1, not {count}"


def period_error(every: int) -> str | None:
    return None if every >= 1 else f"'every' needs a period of at least 1, not {every}"


def offset_error(every: int, offset: int) -> str | None:
    if 0 <= offset < every:
        return None
    allowed = "0" if every == 1 else f"between 0 and {every - 1}"
    return f"offset {offset} is out of range for 'every {every}': it must be {allowed} (layers are counted from 0)"


def index_error(i: int, earlier) -> str | None:
    """An index after `at`, with the indices listed before it."""
    if i < 0:
        return f"'at' takes 0-based layer indices, which cannot be negative: {i}"
    if i in earlier:
        return f"index {i} is listed twice after 'at'"
    return None


def args_error(name: str, args: tuple[Arg, ...]) -> tuple[str, Arg] | None:
    """(message, the argument at fault) for the arguments of block `name`: one given twice, or a `shared` that is
    not true, false or a group name."""
    seen = set()
    for a in args:
        if a.name in seen:
            return f"argument {shown(a.name)} given twice to {shown(name)}", a
        if a.name == "shared" and not isinstance(a.value, bool) and not (isinstance(a.value, str) and a.value.strip()):
            return f"'shared' is true, false or the name of a group, not {format_value(a.value)}", a
        seen.add(a.name)
    return None


# --- a whole tree ---------------------------------------------------------------------------
def check_layout(layout: Layout) -> Layout:
    """`layout` in its canonical form (a modifier's `at` ascending, a default offset not stored) if parse_layout
    could have built it; else ArchDSLError naming the node at fault. Linear in the size of the tree (not of its
    expansion), and never deeper than MAX_NESTING."""
    _tuple(layout.items, "Layout.items", (Layer, Repeat, Group))
    if not layout.items:
        raise ArchDSLError(f"layout: {EMPTY_LAYOUT}")
    _tuple(layout.modifiers, "Layout.modifiers", (Modifier,))
    for node in layout.items:
        _node(node, 0)
    modifiers = tuple(_modifier(m) for m in layout.modifiers)
    if all(a is b for a, b in zip(modifiers, layout.modifiers)):
        return layout
    return replace(layout, modifiers=modifiers)


def _node(node, depth: int) -> None:
    """`node` and all below it, `depth` repeats and groups deep."""
    _spanned(node, (Layer, Repeat, Group))
    if isinstance(node, Layer):
        _tuple(node.blocks, "Layer.blocks", (Block,))
        if not node.blocks:
            raise ArchDSLError(f"layout: a layer holds one block or more (joined by '+'), got {shown(node)}")
        for block in node.blocks:
            _block(block)
        return
    if depth == MAX_NESTING:
        raise ArchDSLError(f"layout: {TOO_DEEP}")
    if isinstance(node, Repeat):
        _int(node.count, "a repeat count")
        _node(node.body, depth + 1)
        _rule(count_error(node.count), node)
        return
    _tuple(node.items, "Group.items", (Layer, Repeat, Group))
    for item in node.items:
        _node(item, depth + 1)
    _rule(None if node.items else EMPTY_GROUP, node)


def _block(block: Block) -> None:
    _spanned(block, (Block,))
    if not isinstance(block.name, str) or not _NAME.match(block.name) or block.name in _KEYWORDS:  # the grammar's
        raise ArchDSLError(f"layout: {shown(block.name)} is not a block name (a letter or '_', then letters, digits "
                           "or '_'; not every, offset or at)")
    _tuple(block.args, f"the arguments of {clipped(block.name)}", (Arg,))
    for a in block.args:
        _spanned(a, (Arg,))
        if not isinstance(a.name, str) or not _NAME.match(a.name):  # every, offset and at too
            raise ArchDSLError(f"layout: {shown(a.name)} is not an argument name, in {clipped(block.name)}(...)")
        message = _value_error(a.value)
        if message:
            raise ArchDSLError(f"layout: {message}, in {clipped(block.name)}({clipped(a.name)}=...)")
    found = args_error(block.name, block.args)
    _rule(found and found[0], block)


def _value_error(value) -> str | None:
    """Whether an argument's value is one that the layout's text writes and reads back as it is."""
    if type(value) not in (int, float, bool, str, type(None)):  # a subclass (numpy's) would read back as its base
        return f"a value is an int, float, bool, str or None, not {type(value).__name__}"
    if type(value) is int and abs(value) >= 10**MAX_DIGITS:
        return f"number too large: {shown(value)} (more than {MAX_DIGITS} digits)"
    if type(value) is float and not math.isfinite(value):
        return f"number out of range: {value}"
    if type(value) is str and any("\ud800" <= c <= "\udfff" for c in value):
        return f"{shown(value)} is not text (it holds a surrogate, half a character)"
    return None


def _modifier(mod: Modifier) -> Modifier:
    """The modifier checked, in its canonical form."""
    _spanned(mod, (Modifier,))
    if not isinstance(mod.block, Block):
        raise ArchDSLError(f"layout: a modifier's block must be a Block, got {shown(mod.block)}")
    _block(mod.block)
    head = node_text(mod.block)
    if (mod.every is None) == (mod.at is None):
        raise ArchDSLError(f"layout: the modifier {head} takes either 'every N' or 'at i j ...', "
                           f"got every={shown(mod.every)} and at={shown(mod.at)}")
    if mod.at is not None:
        if mod.offset is not None:
            raise ArchDSLError(f"layout: 'offset' goes with 'every', not with 'at', in the modifier {head}")
        _tuple(mod.at, f"the indices after '{head} at'", (int,))
        if not mod.at:
            raise ArchDSLError(f"layout: 'at' needs one layer index or more, in the modifier {head}")
        seen: set[int] = set()  # the indices before this one (a slice of them for each was n² in the list)
        for i in mod.at:
            _int(i, f"an index after '{head} at'")
            _rule(index_error(i, seen), mod)
            seen.add(i)
        at = tuple(sorted(mod.at))
        return mod if at == mod.at else replace(mod, at=at)
    _int(mod.every, f"the period of '{head} every'")
    _rule(period_error(mod.every), mod)
    if mod.offset is None:
        return mod
    _int(mod.offset, f"the offset of '{head} every {mod.every}'")
    _rule(offset_error(mod.every, mod.offset), mod)
    return replace(mod, offset=None) if mod.offset == mod.every - 1 else mod


def _spanned(node, types: tuple) -> None:
    if not isinstance(node, types) or not isinstance(node.span, Span):
        names = " or ".join(t.__name__ for t in types)
        raise ArchDSLError(f"layout: expected a {names} (with a Span), got {shown(node)}")


def _tuple(value, what: str, types: tuple) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
        names = " or ".join(t.__name__ for t in types)
        raise ArchDSLError(f"layout: {what} must be a tuple of {names}, got {shown(value)}")


def _int(value, what: str) -> None:
    if type(value) is not int:
        raise ArchDSLError(f"layout: {what} must be an int, got {shown(value)}")
    if abs(value) >= 10**MAX_DIGITS:
        raise ArchDSLError(f"layout: {what} is too large: {shown(value)} (more than {MAX_DIGITS} digits)")


def node_text(node, limit: int = 60) -> str:
    """A node of a checked tree (a Block, a Modifier, a Layer, Repeat or Group) as the layout writes it, cut to
    `limit` characters: what an error names where the tree has no text to point into."""
    text = format_block(node) if isinstance(node, Block) else \
        format_modifier(node) if isinstance(node, Modifier) else format_node(node)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _rule(message: str | None, node) -> None:
    """An error naming `node` (whose parts are checked already, so that it formats) if a rule is broken."""
    if not message:
        return
    raise ArchDSLError(f"layout: {message}, in '{node_text(node)}'")
