"""dump: one stage of the pipeline's output, by the stage's name (the CLI can dump any stage's output).

    parse_layout ─▶ expand_repeats ─▶ apply_modifiers ─▶ resolve_blocks ─▶ resolve_sharing ─▶ analyze

parse_layout's stage is the AST the spec holds (its layout text, or with --json the tree); each graph pass's is the
layer graph after that pass (archdsl/graph.py's build_graph(until=...)): a line a node, or a node-link JSON object;
analyze's is what `archdsl show` prints, table or JSON, at show's defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from ..errors import ArchDSLError, did_you_mean, finite
from ..units import plural
from .common import ARGS, COMMANDS, add_spec, command, read_spec

# the help names them before any module of the pipeline is asked; test_dump checks these against graph.PASSES
AST, ANALYSIS = "parse_layout", "analyze"
PASS_NAMES = ("expand_repeats", "apply_modifiers", "resolve_blocks", "resolve_sharing")


def stages() -> list[str]:
    """Every stage's name, in the order the pipeline runs them."""
    from ..graph import PASSES

    return [AST] + [p.__name__ for p in PASSES] + [ANALYSIS]


def check_stage(name: str) -> str:
    valid = stages()
    if name not in valid:
        hint = did_you_mean(name, valid)
        raise ArchDSLError(f"--stage: unknown stage {name!r}; the stages, in order: {', '.join(valid)}",
                           hint=hint if hint.startswith("did you mean") else "")
    return name


@command("dump", "print one pipeline stage's output: the AST, the layer graph after a pass, the analysis")
def cmd_dump(args):
    """Print the output of stage --stage for SPEC: parse_layout (the AST: its layout text; --json its tree), a graph
    pass (expand_repeats, apply_modifiers, resolve_blocks, resolve_sharing: the layer graph after it, a line a node
    with its attributes and out-edges; --json node-link), or analyze (what `archdsl show` prints)."""
    stage = check_stage(args.stage)
    if stage == ANALYSIS:  # show's own output, at show's defaults (show takes --seq-len, --batch, --dtype)
        show = argparse.ArgumentParser()
        ARGS["show"](show)
        show_args = show.parse_args(["-"])
        show_args.spec, show_args.set, show_args.json = args.spec, args.set, args.json
        COMMANDS["show"][0](show_args)
        return
    spec = read_spec(args.spec, args.set)
    if stage == AST:
        from ..language import format_layout

        if args.json:
            print(json.dumps({"stage": stage, "name": spec.name, "text": format_layout(spec.layout),
                              "layout": finite(ast_data(spec.layout))}, indent=2, allow_nan=False))
        else:
            print(format_layout(spec.layout))
        return
    from ..graph import PASSES, build_graph

    # the whole graph is the spec's own (spec.graph: the `none` arguments checked first, as every command has it)
    g = spec.graph if stage == PASSES[-1].__name__ else build_graph(spec, until=stage)
    if args.json:
        print(json.dumps(finite(graph_data(g)), indent=2, allow_nan=False))
    else:
        print("\n".join(graph_lines(g)))


def ast_data(node):
    """An AST node as plain data: {"node": its class, each field}, spans as [start, end]."""
    from ..language import Span

    if isinstance(node, Span):
        return [node.start, node.end]
    if dataclasses.is_dataclass(node):
        fields = dataclasses.fields(node)
        return {"node": type(node).__name__, **{f.name: ast_data(getattr(node, f.name)) for f in fields}}
    if isinstance(node, (tuple, list)):
        return [ast_data(x) for x in node]
    return node


def _sublayer_data(s) -> dict:
    return {"name": s.name, "kind": s.kind or None, "role": s.role or None, "args": s.block.config_args(),
            "shared": s.block.shared, "group": s.group, "span": [s.span.start, s.span.end],
            "config": None if s.config is None else dataclasses.asdict(s.config)}


def graph_data(g) -> dict:
    """The layer graph as networkx's node-link form (nx.node_link_graph(data, edges="links") reads it back), each
    attribute plain data: a layer's sublayers as dicts (their resolved config once resolve_blocks has run)."""
    nodes = []
    for n, attrs in g.nodes(data=True):
        node = {"id": n}
        if "index" in attrs:
            node.update(index=attrs["index"], span=[attrs["span"].start, attrs["span"].end],
                        sublayers=[_sublayer_data(s) for s in attrs["sublayers"]])
        nodes.append(node)
    links = [{"source": u, "target": v, **attrs} for u, v, attrs in g.edges(data=True)]
    spec = g.graph["spec"]
    return {"directed": True, "multigraph": False,
            "graph": {"stage": g.graph["stage"], "name": spec.name, "groups": g.graph["groups"]},
            "nodes": nodes, "links": links}


def _sublayer_text(s) -> str:
    from ..language import format_block, format_value

    if s.config is None:  # before resolve_blocks: the block as written
        return format_block(s.block)
    args = s.config.to_args()  # what differs from the kind's defaults: the spec's blocks: and the item's own
    text = f"{s.role}={s.name}" + (f"<{s.kind}>" if s.kind != s.name else "")
    text += "(" + ", ".join(f"{k}={format_value(v)}" for k, v in args.items()) + ")" if args else ""
    return text + (f" [group {s.group}]" if s.group is not None else "")


def _also_embedding(edge: dict) -> str:
    """", embedding" on a residual edge that carries the original embedding too (embed → L0 where L0 injects)."""
    return ", embedding" if edge.get("embedding") and edge["flow"] != "embedding" else ""


def graph_lines(g) -> list[str]:
    """A header, then a line a node: its name, a layer's index and sublayers, then its out-edges with their flow."""
    from ..graph import num_layers

    groups = "; ".join(f"{k}: layers {' '.join(map(str, v))}" for k, v in g.graph["groups"].items())
    lines = [f"# {g.graph['spec'].name} after {g.graph['stage']}: {g.number_of_nodes()} nodes "
             f"({plural(num_layers(g), 'layer')}), {g.number_of_edges()} edges"
             + (f"; sharing groups {groups}" if groups else "")]
    rows = []
    for n, attrs in g.nodes(data=True):
        body = ""
        if "index" in attrs:
            body = f"index={attrs['index']}  " + " + ".join(_sublayer_text(s) for s in attrs["sublayers"])
        edges = ", ".join(f"{v} ({e['flow']}{_also_embedding(e)})" for _, v, e in g.out_edges(n, data=True))
        rows.append((n, body, f"-> {edges}" if edges else ""))
    width = max(len(r[0]) for r in rows)
    lines += [f"{n.ljust(width)}  {body}{'  ' if body and edges else ''}{edges}".rstrip() for n, body, edges in rows]
    return lines


def _add_dump(p):
    add_spec(p)
    p.add_argument("--stage", required=True, metavar="NAME",
                   help=f"the stage whose output to print, in the order they run: {AST} (the AST), "
                        f"{', '.join(PASS_NAMES)} (the layer graph after that pass), {ANALYSIS} (show's table)")
    p.add_argument("--json", action="store_true", help="print one JSON object: the AST's tree, the graph in "
                                                       "node-link form, or show's JSON")


ARGS["dump"] = _add_dump
