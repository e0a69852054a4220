"""hypothesis strategies for layout ASTs, shared by the test files.

    from strategies import layouts, small_layouts, layer_count

    @given(small_layouts(max_layers=16))
    def test_something(layout): ...

`layouts()` draws syntactically arbitrary trees (any block names from BLOCK_NAMES, random
arguments, nesting, modifiers) whose expansion stays at most `max_layers` (default 2000)
layers. `small_layouts(max_layers=...)` is the same with a small bound and fewer
arguments. With `semantic=True` they draw layouts that the layer graph accepts: each
layer is a mixer, a mixer with an FFN, or an FFN alone, with no arguments except sharing
and attention's `window=none`, and modifiers that set FFNs. Every tree drawn is canonical:
parse_layout(format_layout(t)) == t.
"""
from __future__ import annotations

from hypothesis import strategies as st

from archdsl.language.ast import Arg, Block, Group, Layer, Layout, Modifier, Repeat

BLOCK_NAMES = ["mamba", "mamba2", "attn", "mlp", "moe", "rwkv6", "rwkv4", "s4d", "cmix", "zamba"]
MIXERS = ["mamba", "mamba2", "attn", "rwkv6", "s4d"]
FFNS = ["mlp", "moe"]
ARG_NAMES = ["heads", "window", "rope", "act", "lora", "d_state", "eps", "kv_heads", "expand", "every", "offset",
             "at", "x", "_a1"]
_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


def values():
    """Argument values: ints, finite floats, booleans, None (`none`), identifiers and arbitrary strings, the
    strings "none" and "null" among them."""
    return st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        _IDENT,
        st.sampled_from(["none", "null"]),
        st.text(max_size=12),
    )


@st.composite
def blocks(draw, names=BLOCK_NAMES, args=True, max_args=4):
    name = draw(st.sampled_from(names))
    block_args = []
    if args:
        arg_names = draw(st.lists(st.sampled_from(ARG_NAMES + ["shared"]), unique=True, max_size=max_args))
        for arg_name in arg_names:
            if arg_name == "shared":
                value = draw(st.one_of(st.just(True), st.just(False), _IDENT))
            else:
                value = draw(values())
            block_args.append(Arg(arg_name, value))
    return Block(name, tuple(block_args))


@st.composite
def _semantic_layer(draw):
    shared = draw(st.sampled_from([None, None, None, True]))  # group = the kind: same shapes
    args = () if shared is None else (Arg("shared", shared),)
    form = draw(st.sampled_from(["mixer", "mixer+ffn", "ffn"]))
    if form == "ffn":
        return Layer((Block(draw(st.sampled_from(FFNS))),))
    kind = draw(st.sampled_from(MIXERS))
    if kind == "attn" and draw(st.booleans()):
        args = (Arg("window", None),) + args  # `window=none`: full attention, as the default
    mixer = Block(kind, args)
    if form == "mixer":
        return Layer((mixer,))
    return Layer((mixer, Block(draw(st.sampled_from(FFNS)))))


def layer_count(node) -> int:
    """Expanded number of layers of a node or a Layout."""
    if isinstance(node, Layout):
        return sum(layer_count(n) for n in node.items)
    if isinstance(node, Layer):
        return 1
    if isinstance(node, Repeat):
        return node.count * layer_count(node.body)
    if isinstance(node, Group):
        return sum(layer_count(n) for n in node.items)
    raise TypeError(node)


@st.composite
def nodes(draw, budget: int, depth: int, layer, max_count: int = 8):
    """A node whose expansion has at most `budget` (>= 1) layers."""
    kinds = ["layer"]
    if depth > 0 and budget >= 1:
        kinds += ["repeat", "group"]
    kind = draw(st.sampled_from(kinds))
    if kind == "layer":
        return draw(layer)
    if kind == "repeat":
        count = draw(st.integers(1, max(1, min(max_count, budget))))
        body = draw(nodes(budget // count, depth - 1, layer, max_count))
        return Repeat(count, body)
    items = []
    left = budget
    for _ in range(draw(st.integers(1, 3))):
        if left < 1:
            break
        item = draw(nodes(left, depth - 1, layer, max_count))
        items.append(item)
        left -= layer_count(item)
    return Group(tuple(items))


@st.composite
def modifiers(draw, n_layers: int, block):
    if draw(st.booleans()):
        period = draw(st.integers(1, 9))
        offset = draw(st.one_of(st.none(), st.integers(0, period - 1)))
        if offset == period - 1:
            offset = None  # canonical: the default offset is not stored
        return Modifier(draw(block), every=period, offset=offset)
    at = draw(st.lists(st.integers(0, max(0, n_layers - 1)), unique=True, min_size=1, max_size=6))
    return Modifier(draw(block), at=tuple(sorted(at)))


@st.composite
def layouts(draw, max_layers: int = 2000, max_depth: int = 4, max_items: int = 4, max_modifiers: int = 2,
            names=BLOCK_NAMES, args: bool = True, semantic: bool = False):
    """A random canonical Layout expanding to at most `max_layers` layers."""
    if semantic:
        layer = _semantic_layer()
        mod_block = st.builds(Block, st.sampled_from(FFNS))
    else:
        layer = st.builds(Layer, st.lists(blocks(names, args), min_size=1, max_size=3).map(tuple))
        mod_block = blocks(names, args, max_args=2)
    items = []
    left = max_layers
    for _ in range(draw(st.integers(1, max_items))):
        if left < 1:
            break
        item = draw(nodes(left, max_depth, layer))
        items.append(item)
        left -= layer_count(item)
    n = sum(layer_count(i) for i in items)
    mods = draw(st.lists(modifiers(n, mod_block), max_size=max_modifiers))
    return Layout(tuple(items), tuple(mods))


def small_layouts(max_layers: int = 32, **kw):
    """Layouts whose expansion has at most `max_layers` layers (few arguments by default)."""
    kw.setdefault("max_depth", 3)
    return layouts(max_layers=max_layers, **kw)
