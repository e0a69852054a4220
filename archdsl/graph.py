"""The layer graph: named passes from a Spec's AST to a verified networkx.DiGraph.

    expand_repeats ─▶ apply_modifiers ─▶ resolve_blocks ─▶ resolve_sharing
         each followed by verify(graph)

The first pass makes the graph; each later one rewrites the layers' sublayers (and adds edges) in the
graph it is given, which build_graph owns, rather than copy 10^5 nodes. Layers alike (a repeat's) share
their tuple of Sublayer: all of it is frozen, and each pass works out a kind of layer once.

Nodes: "embed", "L0" … "L{n-1}", "norm", "head". Edges carry `flow` ("residual" along
the stream, "embedding" from "embed" to a layer whose INJECT block reads the original
embedding, Zamba) and `embedding=True` wherever the original embedding is read — also on
embed → L0, which is both. A layer node holds `index` and `sublayers`, a tuple of
Sublayer in order (INJECT, MIXER, FFN — each optional, at least one). Graph attributes:
`spec`, `groups` ({group: [layer indices]}) and `stage` (the last pass run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_args

import networkx as nx

from .blocks import BLOCKS, arg_names, make_config, type_hints
from .blocks.base import FFN, INJECT, MIXER, BlockConfig, ConfigError
from .errors import ArchDSLError, clipped, did_you_mean, shown
from .language.ast import NOSPAN, Block, Group, Layer, Repeat, Span
from .language.fmt import _KEYWORDS, _NAME, format_layout, format_modifier, format_value
from .spec import MAX_PARAMS
from .units import sci

MAX_LAYERS = 100_000
ROLE_ORDER = {INJECT: 0, MIXER: 1, FFN: 2}


@dataclass(frozen=True)
class Sublayer:
    """One block of a layer. `name` is what the text says (a kind or an alias), `kind`
    the registered block it resolves to; `config` is filled by resolve_blocks."""

    name: str
    block: Block
    kind: str = ""
    role: str = ""
    config: BlockConfig | None = None
    group: str | None = None
    span: Span = field(default=Span(0, 0), compare=False)


def layer_id(i: int) -> str:
    return f"L{i}"


# --- pass 1 -------------------------------------------------------------------------
def expand_repeats(spec) -> nx.DiGraph:
    """Unroll repeats and groups into a chain of layer nodes."""
    layers: list[Layer] = []
    sizes: dict[int, int] = {}  # by id of a Repeat: its layers, counted once (a walk meets it at every outer count)

    def walk(node, depth=0):
        if isinstance(node, Layer):
            if len(layers) == MAX_LAYERS:  # listed one by one rather than repeated
                raise spec.layout_error(f"the layout expands to more than {MAX_LAYERS} layers", node)
            layers.append(node)
        elif isinstance(node, Group):
            for item in node.items:
                walk(item, depth)
        elif isinstance(node, Repeat):
            if id(node) not in sizes:
                sizes[id(node)] = _size(node)
            if sizes[id(node)] + len(layers) > MAX_LAYERS:
                raise spec.layout_error(f"the layout expands to more than {MAX_LAYERS} layers", node)
            for _ in range(node.count):
                walk(node.body, depth)

    for item in spec.layout.items:
        walk(item)
    if not layers:
        raise ArchDSLError("the layout has no layers", source=spec.source, start=0)
    g = nx.DiGraph(spec=spec, groups={}, stage="expand_repeats")
    g.add_node("embed")
    prev = "embed"
    made: dict[int, tuple[Sublayer, ...]] = {}  # by id of the Layer: a repeat lists the same node
    for i, layer in enumerate(layers):
        if id(layer) not in made:
            made[id(layer)] = tuple(Sublayer(name=b.name, block=b, span=b.span) for b in layer.blocks)
        g.add_node(layer_id(i), index=i, sublayers=made[id(layer)], span=layer.span)
        g.add_edge(prev, layer_id(i), flow="residual")
        prev = layer_id(i)
    g.add_edge(prev, "norm", flow="residual")
    g.add_edge("norm", "head", flow="residual")
    return g


def _size(node) -> int:
    if isinstance(node, Layer):
        return 1
    if isinstance(node, Group):
        return sum(_size(n) for n in node.items)
    return node.count * _size(node.body)


# --- pass 2 -------------------------------------------------------------------------
def apply_modifiers(g: nx.DiGraph) -> nx.DiGraph:
    """`KIND every N [offset K]` / `KIND at i j`: an FFN kind sets the FFN of the selected
    layers, a mixer kind replaces their mixer, an inject kind goes in front; in order.

    In one pass: a layer's sublayers of a role are those of the last modifier of that role that selects it, so the
    modifiers are read from the last, each selection (`every N offset K` as range(K, n, N), `at` as its indices)
    once a role, and each layer written once: the work is the layers and the selections, not their product (20 000
    layers with 1000 modifiers took a minute, every modifier asking every layer)."""
    spec = g.graph["spec"]
    n = num_layers(g)
    mods = spec.layout.modifiers
    roles = []
    for mod in mods:  # the errors, in the order the modifiers are written
        if mod.at is not None and max(mod.at) >= n:
            past = " ".join(str(i) for i in mod.at if i >= n)
            raise spec.layout_error(f"`at {clipped(past)}`: the layout has only {n} layer{'s' if n > 1 else ''} "
                                    f"(indices 0..{n - 1})", mod)
        kind, role = _resolve_kind(spec, mod.block)
        _config(spec, mod.block, kind)  # checked here: a later modifier may overrule it on every layer it selects
        roles.append(role)
        if mod.every is not None and _first(mod) >= n:
            raise spec.layout_error(f"`{_written(spec, mod)}` selects no layer: it picks layer {_first(mod)} first, "
                                    f"and the layout has only {n} layer{'s' if n > 1 else ''} (indices 0..{n - 1})",
                                    mod)
    chosen: dict[int, dict[str, int]] = {}  # layer → role → the index of the last modifier of that role selecting it
    read = set()  # (role, selection) of the modifiers read: an earlier one of the same is overruled on all its layers
    for k in reversed(range(len(mods))):
        mod, role = mods[k], roles[k]
        if (role, mod.every, mod.offset, mod.at) in read:
            continue
        read.add((role, mod.every, mod.offset, mod.at))
        for i in mod.at if mod.at is not None else range(_first(mod), n, mod.every):
            chosen.setdefault(i, {}).setdefault(role, k)
    new = [Sublayer(name=m.block.name, block=m.block, span=m.block.span) for m in mods]
    done: dict[tuple, tuple[Sublayer, ...]] = {}  # by the ids of a layer's sublayers and the modifiers it takes
    for i, by_role in chosen.items():
        node = g.nodes[layer_id(i)]
        picks = sorted(by_role.values())  # in the order the modifiers apply
        key = (tuple(map(id, node["sublayers"])), tuple(picks))
        if key not in done:  # the layer as written is checked first: what a modifier replaces must be right too
            written = _resolved(spec, node["sublayers"], i)
            kept = [s for s, r in zip(node["sublayers"], written) if r.role not in by_role]
            done[key] = tuple(kept + [new[k] for k in picks])
        node["sublayers"] = done[key]
    g.graph["stage"] = "apply_modifiers"
    return g


def _first(mod) -> int:
    """The first layer an `every` modifier selects."""
    return mod.every - 1 if mod.offset is None else mod.offset


def _written(spec, mod) -> str:
    """A modifier as it is written in the layout, on one line (its canonical form stores no default offset: `every 3
    offset 2` is `every 3`); its canonical text where the tree has none."""
    text = spec.source.text[mod.span.start:mod.span.end] if spec.source.text and mod.span != NOSPAN else ""
    if not text or "#" in text:
        return clipped(format_modifier(mod))
    return clipped(" ".join(text.split()))


# --- pass 3 -------------------------------------------------------------------------
def resolve_blocks(g: nx.DiGraph) -> nx.DiGraph:
    """Name → kind (aliases from `blocks:`), role order, the default FFN, typed configs."""
    spec = g.graph["spec"]
    check_blocks(spec)
    check_ffn(spec)
    default_ffn = Block(spec.ffn) if spec.ffn else None
    done: dict[tuple, tuple[Sublayer, ...]] = {}  # by the ids of a layer's sublayers: a bad layer fails at its first
    for i in range(num_layers(g)):
        node = g.nodes[layer_id(i)]
        key = tuple(map(id, node["sublayers"]))
        if key not in done:
            done[key] = _resolve_layer(spec, node["sublayers"], default_ffn, i)
        node["sublayers"] = done[key]
    g.graph["stage"] = "resolve_blocks"
    return g


def _resolved(spec, sublayers: tuple[Sublayer, ...], i: int) -> list[Sublayer]:
    """Layer i's sublayers with their kinds, roles and configs, in their order; ArchDSLError for a bad block or
    argument, or two blocks of one role."""
    subs = []
    for s in sublayers:
        kind, role = _resolve_kind(spec, s.block, layer=i)
        subs.append(replace(s, kind=kind, role=role, config=_config(spec, s.block, kind, layer=i)))
    roles = [s.role for s in subs]
    for role in set(roles):
        if roles.count(role) > 1:
            s = [x for x in subs if x.role == role][1]
            raise spec.layout_error(f"a layer can hold one {role} block, this one has {roles.count(role)}", s.block,
                                    layer=i)
    return subs


def _resolve_layer(spec, sublayers: tuple[Sublayer, ...], default_ffn: Block | None, i: int) -> tuple[Sublayer, ...]:
    subs = _resolved(spec, sublayers, i)
    roles = [s.role for s in subs]
    if default_ffn is not None and MIXER in roles and FFN not in roles:
        kind, _ = _resolve_kind(spec, default_ffn)
        subs.append(Sublayer(name=spec.ffn, block=default_ffn, kind=kind, role=FFN,
                             config=_config(spec, default_ffn, kind, default=True)))
    subs.sort(key=lambda s: ROLE_ORDER[s.role])
    if INJECT in roles and MIXER not in roles:  # Layer.forward runs it in front of the mixer only
        s = next(x for x in subs if x.role == INJECT)
        alone = "stand alone in a layer" if len(subs) == 1 else "share a layer with only an FFN"
        raise spec.layout_error(f"{shown(s.name)} feeds a mixer and cannot {alone} (layer {i})", s.block)
    return tuple(subs)


def canonical_text(spec) -> str:
    """The layout as `archdsl fmt` prints it: format_layout's text with each layer's `+`-joined sublayers in the
    order they run (inject, mixer, FFN), so `mlp+mamba2` and `mamba2+mlp`, one model, print alike."""
    def ordered(node):
        if isinstance(node, Layer):
            return replace(node, blocks=tuple(sorted(node.blocks, key=lambda b: ROLE_ORDER[_resolve_kind(spec, b)[1]])))
        if isinstance(node, Group):
            return replace(node, items=tuple(ordered(n) for n in node.items))
        return replace(node, body=ordered(node.body))

    return format_layout(replace(spec.layout, items=tuple(ordered(n) for n in spec.layout.items)))


def check_ffn(spec) -> None:
    """The default FFN (`ffn:`), if any, names a channel block or an alias of one."""
    if spec.ffn and _resolve_kind(spec, Block(spec.ffn), key=("ffn",))[1] != FFN:
        raise spec.error(f"ffn: {spec.ffn!r} is not a channel block (mlp, moe, cmix or an alias of one)", ("ffn",))


def check_blocks(spec) -> None:
    """Every `blocks:` entry, used in the layout or not: the entry names a block kind or is an alias
    (`kind:`) of one, and its arguments exist for that kind, with the right types, allowed values and
    no zero or negative sizes. What depends on d_model or on other arguments (heads dividing d_model)
    is checked where a block is used; floats must be finite and every `*eps` in (0, 1), as for a used block.
    Errors point at the entry's key or value in the file."""
    named = {spec.ffn} | {args.get("kind") for args in spec.blocks.values()}  # what names an alias but the layout
    for name, args in spec.blocks.items():
        if name in BLOCKS:
            kind = name
            if "kind" in args and args["kind"] != name:
                raise spec.error(f"blocks: {shown(name)} is a block kind; only an alias (a new name) takes `kind:`",
                                 ("blocks", name, "kind", "<key>"))
        elif "kind" in args:
            if (not _NAME.match(name) or name in _KEYWORDS) and name not in named:  # else a syntax error where used
                raise spec.error(f"blocks: the alias {shown(name)} cannot be written in a layout (a block name is a "
                                 f"letter or '_', then letters, digits or '_', and not every, offset or at), and no "
                                 f"ffn: or kind: names it", ("blocks", name, "<key>"))
            kind, _ = _resolve_kind(spec, Block(name))
        else:
            raise spec.error(f"blocks: unknown block kind {shown(name)} (an alias gives its kind with `kind:`)",
                             ("blocks", name, "<key>"), did_you_mean(name, BLOCKS))
        valid, hints = arg_names(kind), type_hints(kind)
        for arg, value in args.items():
            if arg == "kind":
                continue
            if arg == "shared":
                raise spec.error(f"{kind}: sharing is written in the layout, as in {clipped(name)}(shared) or "
                                 f"{clipped(name)}(shared=a), not in blocks:", ("blocks", name, arg, "<key>"))
            if arg not in valid:
                raise spec.error(f"{kind}: unknown argument {shown(arg)}", ("blocks", name, arg, "<key>"),
                                 did_you_mean(arg, valid))
            floor = 0 if arg in BLOCKS[kind].zero_ok else 1  # of int fields, as in BlockConfig.__post_init__
            takes_int = int in (hints[arg], *get_args(hints[arg]))
            if takes_int and isinstance(value, int) and not isinstance(value, bool) and value < floor:
                raise spec.error(f"{kind}: {arg} must be {'>= 0' if floor == 0 else 'positive'}, got {value}",
                                 ("blocks", name, arg))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            takes_float = float in (hints[arg], *get_args(hints[arg]))
            if number and takes_float and not _finite(value):  # an int too large for a float, too
                raise spec.error(f"{kind}: {arg} must be a finite number, got {value}", ("blocks", name, arg))
            if number and arg.endswith("eps") and not 0 < value < 1:
                raise spec.error(f"{kind}: {arg} must be in (0, 1), got {value}", ("blocks", name, arg))
        try:  # make_config checks types and choices before d_model; with d_model 0 it stops there
            make_config(kind, {k: v for k, v in args.items() if k != "kind"}, 0)
        except ConfigError as e:
            if e.field != "d_model":
                raise spec.error(str(e), ("blocks", name, e.field)) from None


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past the largest float
        return False


def _resolve_kind(spec, block: Block, key: tuple | None = None, layer: int | None = None) -> tuple[str, str]:
    """(kind, role) of a block name, following aliases (spec.kind_of knows each name's kind: a chain of n aliases
    is followed once, not once per name). An unknown name is reported where it is written: at `key` in the file,
    at the block in the layout (in layer `layer`), or at the `kind:` of the alias naming it."""
    name = spec.kind_of(block.name)
    if name is not None:
        return name, BLOCKS[name].role
    name, seen = block.name, {}  # the aliases followed, in order (a dict: `in` at once)
    while name not in BLOCKS:
        alias = spec.blocks.get(name)
        if alias is None or "kind" not in alias or name in seen:
            valid = set(BLOCKS) | {a for a, v in spec.blocks.items() if "kind" in v}
            hint = "" if name in seen else did_you_mean(name, valid)
            if seen:  # the `kind:` of the alias seen last names it
                last = next(reversed(seen))
                msg = (f"alias cycle {' → '.join(clipped(a) for a in [*seen, name])}" if name in seen
                       else f"unknown block {shown(name)}, the kind of alias {shown(last)}")
                raise spec.error(msg, ("blocks", last, "kind"), hint)
            if key is not None:
                raise spec.error(f"unknown block {shown(name)}", key, hint)
            raise spec.layout_error(f"unknown block {shown(name)}", block, layer=layer, hint=hint)
        seen[name] = None
        if not isinstance(alias["kind"], str):  # `kind: 3` named the alias "3" here, and nothing in _config
            raise spec.error(f"blocks: {name}: kind is the name of a block or an alias, got {shown(alias['kind'])}",
                             ("blocks", name, "kind"))
        name = alias["kind"]
    return name, BLOCKS[name].role


def _config(spec, block: Block, kind: str, layer: int | None = None, default: bool = False) -> BlockConfig:
    """Defaults of the kind, then each alias on the way, then the item's own arguments. `block` is in layer
    `layer`, or (`default`) the default FFN that `ffn:` names."""
    args: dict[str, Any] = {}
    origin: dict[str, tuple] = {}
    chain, name = [], block.name
    while name != kind:
        chain.append(name)
        name = spec.blocks[name]["kind"]
    for src in [kind] + chain[::-1]:
        for k, v in spec.blocks.get(src, {}).items():
            if k != "kind":
                args[k], origin[k] = v, ("blocks", src, k)
    spans = {}
    for a in block.args:
        if a.name != "shared":
            args[a.name] = a.value
            spans[a.name] = a.span
            origin.pop(a.name, None)
    try:
        config = _make_config(kind, args, spec.d_model)
    except ConfigError as e:
        where = e.field if e.field in spans or e.field in origin else None
        if where in origin:
            unknown = where not in {f.name for f in fields(BLOCKS[kind])}
            raise spec.error(str(e), origin[where] + (("<key>",) if unknown else ())) from None
        if where is None and default:  # the default FFN, named by `ffn:`, not in the layout
            raise spec.error(str(e), ("ffn",)) from None
        raise spec.layout_error(str(e), block, span=spans.get(where), layer=layer) from None
    if config.params() > MAX_PARAMS:  # as analyze refuses it: `check` must not pass what every other command refuses
        message = f"absurd size: {clipped(block.name)} has {sci(config.params())} parameters (over 10^13)"
        if default:
            raise spec.error(message, ("ffn",))
        raise spec.layout_error(message, block, layer=layer)
    return config


_CONFIGS: dict[tuple, BlockConfig] = {}


def _make_config(kind: str, args: dict, d_model: int) -> BlockConfig:
    """make_config, memoised: a 1000-layer layout repeats a handful of configs."""
    try:
        key = (kind, d_model, tuple(sorted((k, type(v).__name__, v) for k, v in args.items())))
        hash(key)
    except TypeError:  # an unhashable argument value: let make_config say what is wrong
        return make_config(kind, args, d_model)
    if key not in _CONFIGS:
        if len(_CONFIGS) > 4096:
            _CONFIGS.clear()
        _CONFIGS[key] = make_config(kind, args, d_model)
    return _CONFIGS[key]


# --- pass 4 -------------------------------------------------------------------------
def resolve_sharing(g: nx.DiGraph) -> nx.DiGraph:
    """Join `shared` uses into groups (one parameter set; equal configurations required) and add
    the embedding edges of blocks that read the original embedding."""
    spec = g.graph["spec"]
    groups: dict[str, list[int]] = {}
    first: dict[str, Sublayer] = {}
    done: dict[tuple, tuple[Sublayer, ...]] = {}  # by the ids of a layer's sublayers, as in resolve_blocks
    for i in range(num_layers(g)):
        node = g.nodes[layer_id(i)]
        key = tuple(map(id, node["sublayers"]))
        if key not in done:
            done[key] = tuple(_join(spec, s, first, i) for s in node["sublayers"])
        node["sublayers"] = done[key]
        for s in node["sublayers"]:
            if s.group is not None:
                groups.setdefault(s.group, []).append(i)
            if s.role == INJECT:
                if g.has_edge("embed", layer_id(i)):  # L0: the residual edge carries it too
                    g.edges["embed", layer_id(i)]["embedding"] = True
                else:
                    g.add_edge("embed", layer_id(i), flow="embedding", embedding=True)
    g.graph["groups"] = groups
    g.graph["stage"] = "resolve_sharing"
    return g


def _join(spec, s: Sublayer, first: dict[str, Sublayer], layer: int) -> Sublayer:
    """`s` (in layer `layer`) in its group, if shared: of the configuration of the group's first use. Configurations
    that mean the same (attn's kv_heads 0 and kv_heads = heads, a default written out) are the same (shape_key)."""
    group = s.block.shared
    if group is None:
        return s
    if group in first and first[group].config.shape_key() != s.config.shape_key():
        f = first[group]
        a, b = f.config.resolved(), s.config.resolved()
        why = "are different kinds of block" if f.kind != s.kind else \
            "differ in " + ", ".join(f"{k} ({_as_written(a[k])} and {_as_written(b[k])})" for k in a if a[k] != b[k])
        raise spec.layout_error(
            f"shared group {shown(group)} joins blocks of different configurations: "
            f"{clipped(f.kind + _args(f.config))} and {clipped(s.kind + _args(s.config))} {why}", s.block, layer=layer)
    first.setdefault(group, s)
    return replace(s, group=group)


def _as_written(value) -> str:
    """An argument's value as a layout writes it where it has a word for it (`none`, `true`), else shown."""
    return format_value(value) if value is None or isinstance(value, bool) else shown(value)


def _args(config: BlockConfig) -> str:
    args = config.to_args()
    return "(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")" if args else ""


# --- the invariants -------------------------------------------------------------------
def verify(g: nx.DiGraph) -> nx.DiGraph:
    """The graph's invariants, stated once; raises AssertionError (a compiler bug) if broken."""
    stage = g.graph["stage"]
    n = num_layers(g)
    assert n >= 1, "no layers"
    chain = ["embed"] + [layer_id(i) for i in range(n)] + ["norm", "head"]
    assert set(g.nodes) == set(chain), f"unexpected nodes: {set(g.nodes) ^ set(chain)}"
    residual = [(u, v) for u, v, f in g.edges(data="flow") if f == "residual"]
    assert residual == list(zip(chain, chain[1:])) or sorted(residual) == sorted(zip(chain, chain[1:])), \
        "the residual stream must run embed → L0 → … → norm → head"
    assert nx.is_directed_acyclic_graph(g), "the graph has a cycle"
    for i in range(n):
        subs = g.nodes[layer_id(i)]["sublayers"]
        assert subs, f"layer {i} is empty"
        if stage in ("resolve_blocks", "resolve_sharing"):
            roles = [s.role for s in subs]
            assert roles == sorted(roles, key=ROLE_ORDER.get) and len(set(roles)) == len(roles), \
                f"layer {i}: sublayers {roles} out of order"
            assert all(s.config is not None for s in subs), f"layer {i}: unresolved block"
            has_embed = g.has_edge("embed", layer_id(i)) and g.edges["embed", layer_id(i)].get("embedding", False)
            if stage == "resolve_sharing":
                assert has_embed == (INJECT in roles), f"layer {i}: embedding edge and inject block disagree"
    for group, members in g.graph["groups"].items():
        keys = {s.config.shape_key() for i in members for s in g.nodes[layer_id(i)]["sublayers"] if s.group == group}
        assert len(keys) == 1, f"group {group}: members differ in shape"
    return g


PASSES = (expand_repeats, apply_modifiers, resolve_blocks, resolve_sharing)


def build_graph(spec, until: str | None = None) -> nx.DiGraph:
    """Run the passes (up to and including `until`, a pass's name; None: all), each followed by verify: a broken
    invariant is caught at the pass that broke it. An `until` that names no pass is an ArchDSLError, not all of
    them run."""
    names = [p.__name__ for p in PASSES]
    if until is not None and (not isinstance(until, str) or until not in names):
        hint = did_you_mean(until, names) if isinstance(until, str) else ""
        raise ArchDSLError(f"build_graph: until={shown(until)} is not a pass; the passes, in order: {', '.join(names)}",
                           hint=hint if hint.startswith("did you mean") else "")
    g = None
    for p in PASSES:
        g = verify(p(spec) if g is None else p(g))
        if p.__name__ == until:
            break
    return g


# --- reading the graph ----------------------------------------------------------------
def num_layers(g: nx.DiGraph) -> int:
    return sum(1 for n in g.nodes if n.startswith("L"))


def layers(g: nx.DiGraph) -> list[tuple[Sublayer, ...]]:
    """The sublayers of each layer, in order."""
    return [g.nodes[layer_id(i)]["sublayers"] for i in range(num_layers(g))]


def role_of(subs: tuple[Sublayer, ...], role: str) -> Sublayer | None:
    return next((s for s in subs if s.role == role), None)
