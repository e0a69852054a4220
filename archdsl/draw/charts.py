"""The layer graph as text: a DOT digraph and a Mermaid flowchart.

The DOT and Mermaid charts fold the same way, by the layout's own blocks: a run of FOLD or more alike
blocks of layers is drawn once, as a box (DOT cluster, Mermaid subgraph) titled × k, folded again inside
(`4×(7×mamba2, attn)` is one box × 4 holding a mamba2 node × 7 and an attn node); links to layers drawn
once go to the layer drawn for them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import errors
from ..blocks.base import MIXER
from ..errors import ArchDSLError
from ..graph import layers, role_of
from ..spec import load_spec
from ..units import plural
from .common import FOLD, PER_ROW, group_colors, ink, kind_color, layer_signature, written_block

MERMAID_MAX_EDGES, MERMAID_MAX_TEXT = 500, 50_000  # Mermaid's defaults, maxEdges and maxTextSize


def _label(subs) -> str:
    """`zamba(lora=16) [g] + mamba2`: each block as written, less `shared`, then its group."""
    return " + ".join(written_block(s) + (f" [{s.group}]" if s.group else "") for s in subs)


def _dot(text: str) -> str:
    """`text` inside a DOT double-quoted string: backslashes, quotes and line breaks escaped."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_MERMAID_PLAIN = re.compile(r"[A-Za-z0-9 _.,:+×*/=()\[\]-]")


def _mmd(text: str) -> str:
    """`text` for a Mermaid label: every character outside a plain set as an entity code (`"` → #34;),
    so no name can close a label, start markup or be read as syntax."""
    return "".join(c if _MERMAID_PLAIN.fullmatch(c) else f"#{ord(c)};" for c in str(text))


@dataclass(frozen=True)
class Fold:
    """`repeats` alike blocks of `period` layers from layer `first`, drawn once: `items` the first block's."""

    first: int
    period: int
    repeats: int
    items: tuple


def fold_layers(sigs: list, lo: int, hi: int, fold: int = FOLD) -> tuple:
    """Layers lo .. hi-1 as a chart draws them: each item a layer's index or a Fold. At each layer the run of
    `fold` or more alike blocks (of PER_ROW layers or fewer) that covers the most layers is folded (the shorter
    block on a tie), its first block folded again inside; else the layer stands alone."""
    items: list = []
    i = lo
    while i < hi:
        best = None  # (layers covered, period, repeats)
        for p in range(1, min(PER_ROW, (hi - i) // fold) + 1):
            k = 1
            while i + (k + 1) * p <= hi and sigs[i + k * p:i + (k + 1) * p] == sigs[i:i + p]:
                k += 1
            if k >= fold and (best is None or p * k > best[0]):
                best = (p * k, p, k)
        if best is None:
            items.append(i)
            i += 1
        else:
            _, p, k = best
            items.append(Fold(i, p, k, fold_layers(sigs, i, i + p, fold) if p > 1 else (i,)))
            i += p * k
    return tuple(items)


class _Chart:
    """What the DOT and Mermaid writers share: the folded items, for each layer the layer drawn for it, and the
    links (residual chain, embedding reads, shared groups) between drawn nodes, each once."""

    def __init__(self, spec, every_layer: bool, where: str):
        every_layer = errors.check_flag(where, "every_layer", every_layer)
        self.spec = spec = load_spec(spec)
        g = spec.graph
        self.rows = layers(g)
        n = len(self.rows)
        sigs = [layer_signature(subs) for subs in self.rows]
        self.items = fold_layers(sigs, 0, n, n + 1 if every_layer else FOLD)
        self.drawn_for = list(range(n))
        self._walk(self.items)
        node = lambda v: f"L{self.drawn_for[g.nodes[v]['index']]}" if v.startswith("L") else v
        chain = ["embed"] + [f"L{i}" for i in self._chain(self.items)] + ["norm", "head"]
        self.edges: dict[tuple[str, str], str] = {(a, b): "residual" for a, b in zip(chain, chain[1:])}
        for u, v, data in g.edges(data=True):
            key = (node(u), node(v))
            if data["flow"] == "embedding":
                self.edges.setdefault(key, "embedding")
            elif data.get("embedding") and key in self.edges:
                self.edges[key] = "residual+embedding"
        self.group_links: dict[tuple[int, int], str] = {}
        for group, members in g.graph["groups"].items():
            drawn = list(dict.fromkeys(self.drawn_for[m] for m in members))
            for a, b in zip(drawn, drawn[1:]):
                self.group_links.setdefault((a, b), group)

    def _walk(self, items) -> None:
        """drawn_for of every layer a fold stands for: the layer drawn for the one at its place in the first block."""
        for it in items:
            if isinstance(it, Fold):
                self._walk(it.items)
                for r in range(1, it.repeats):
                    for j in range(it.period):
                        self.drawn_for[it.first + r * it.period + j] = self.drawn_for[it.first + j]

    def _chain(self, items) -> list[int]:
        return [i for it in items for i in (self._chain(it.items) if isinstance(it, Fold) else [it])]

    def label(self, i: int, fold: Fold | None = None) -> str:
        """`7: mamba2`, or for a one-layer fold `0–6: mamba2 × 7`."""
        if fold is not None:
            return f"{fold.first}–{fold.first + fold.repeats - 1}: {_label(self.rows[i])} × {fold.repeats}"
        return f"{i}: {_label(self.rows[i])}"

    @staticmethod
    def title(fold: Fold) -> str:
        return f"layers {fold.first}–{fold.first + fold.period * fold.repeats - 1} × {fold.repeats}"


def to_dot(spec, every_layer: bool = False) -> str:
    """The layer graph as a DOT digraph, folded as the module says (every_layer: each layer a node)."""
    chart = _Chart(spec, every_layer, "to_dot")
    spec = chart.spec
    out = [f'digraph "{_dot(spec.name)}" {{', "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fontname=Helvetica];',
           '  embed [label="embedding", fillcolor="#EEEEEE"];']

    def emit(items, depth):
        pad = "  " * depth
        for it in items:
            if isinstance(it, Fold) and it.period > 1:
                out.append(f"{pad}subgraph cluster_F{it.first}_{it.period} {{")
                out.append(f'{pad}  label="{_dot(chart.title(it))}"; style="rounded,dashed"; color="#888888"; '
                           f'fontname=Helvetica;')
                emit(it.items, depth + 1)
                out.append(f"{pad}}}")
                continue
            i, fold = (it.first, it) if isinstance(it, Fold) else (it, None)
            fill = kind_color((role_of(chart.rows[i], MIXER) or chart.rows[i][0]).kind)
            out.append(f'{pad}L{i} [label="{_dot(chart.label(i, fold))}", fillcolor="{fill}", '
                       f'fontcolor="{ink(fill)}"];')

    emit(chart.items, 1)
    out.append('  norm [label="final norm", fillcolor="#EEEEEE"];')
    out.append(f'  head [label="LM head{" (tied)" if spec.tie_embeddings else ""}", fillcolor="#EEEEEE"];')
    for (u, v), flow in chart.edges.items():
        style = {"residual": "", "embedding": ' [style=dashed, label="embedding"]',
                 "residual+embedding": ' [label="+ embedding"]'}[flow]
        out.append(f"  {u} -> {v}{style};")
    gcolor = group_colors(spec)
    for (a, b), group in chart.group_links.items():
        out.append(f'  L{a} -> L{b} [dir=none, style=dotted, color="{gcolor[group]}", constraint=false, '
                   f'label="{_dot(group)}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(spec, every_layer: bool = False) -> str:
    """The layer graph as a Mermaid flowchart, folded as the module says (every_layer: each layer a node);
    ArchDSLError past what Mermaid draws by default (maxEdges, maxTextSize: beyond them it shows an error box,
    as GitHub does), about 500 layers drawn."""
    chart = _Chart(spec, every_layer, "to_mermaid")
    spec = chart.spec
    out = ["flowchart LR", '  embed["embedding"]']
    classes: dict[str, list[str]] = {}

    def emit(items, depth):
        pad = "  " * depth
        for it in items:
            if isinstance(it, Fold) and it.period > 1:
                out.append(f'{pad}subgraph F{it.first}_{it.period}["{_mmd(chart.title(it))}"]')
                out.append(f"{pad}  direction LR")
                emit(it.items, depth + 1)
                out.append(f"{pad}end")
                continue
            i, fold = (it.first, it) if isinstance(it, Fold) else (it, None)
            classes.setdefault((role_of(chart.rows[i], MIXER) or chart.rows[i][0]).kind, []).append(f"L{i}")
            out.append(f'{pad}L{i}["{_mmd(chart.label(i, fold))}"]')

    emit(chart.items, 1)
    out += ['  norm["final norm"]', f'  head["LM head{" (tied)" if spec.tie_embeddings else ""}"]']
    for (u, v), flow in chart.edges.items():  # as DOT draws them: a residual link that reads the embedding says so
        out.append({"residual": f"  {u} --> {v}", "embedding": f"  {u} -.-> {v}",
                    "residual+embedding": f'  {u} -->|"+ embedding"| {v}'}[flow])
    for (a, b), group in chart.group_links.items():
        out.append(f'  L{a} -.-|"{_mmd(group)}"| L{b}')
    for kind, ids in classes.items():
        out.append(f"  classDef {kind} fill:{kind_color(kind)},color:{ink(kind_color(kind))}")
        out.append(f"  class {','.join(ids)} {kind}")
    text = "\n".join(out) + "\n"
    edges = len(chart.edges) + len(chart.group_links)
    if edges > MERMAID_MAX_EDGES or len(text) > MERMAID_MAX_TEXT:
        drawn = sum(len(ids) for ids in classes.values())
        raise ArchDSLError(f"the layout's {plural(len(chart.rows), 'layer')} make a Mermaid chart of "
                           f"{plural(drawn, 'node')}, {edges:,} links and {len(text):,} characters, and Mermaid "
                           f"draws at most {MERMAID_MAX_EDGES} links and {MERMAID_MAX_TEXT:,} characters: write "
                           f".dot instead")
    return text
