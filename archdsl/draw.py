"""Pictures of a layout: a strip of layers coloured by kind (SVG / PNG through
matplotlib), a DOT graph, a Mermaid flowchart; and the cache-versus-context plot.

The strip wraps every 32 layers, so 100 layers read as four rows (a layout that repeats every
p layers wraps at a whole number of periods instead, and three or more alike rows are drawn
once, marked × k; `every_layer` draws each). Each layer is a column: its mixer on top, its FFN below, an inject block
(Zamba's shared block) as a band above the mixer. The legend names each block as written; where
a kind comes in two or more configs (an alias, inline arguments: `attn(window=512)` beside
`attn`), each but the plain kind is its kind's colour, hatched. A
shared group is drawn with a thick outline of the group's colour and its name, so one can
see at a glance which layers hold the same weights.

The DOT and Mermaid charts fold the same way, by the layout's own blocks: a run of FOLD or more alike
blocks of layers is drawn once, as a box (DOT cluster, Mermaid subgraph) titled × k, folded again inside
(`4×(7×mamba2, attn)` is one box × 4 holding a mamba2 node × 7 and an attn node); links to layers drawn
once go to the layer drawn for them.
"""
from __future__ import annotations

import numbers
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache

from .blocks.base import FFN, INJECT, MIXER
from . import errors
from .errors import ArchDSLError, ArchDSLWarning
from .graph import layers, role_of
from .language.fmt import format_block
from .spec import load_spec
from .units import count_text, human, plural

KIND_COLORS = {
    "mamba": "#4C72B0", "mamba2": "#64B5F6", "rwkv6": "#8172B2", "rwkv4": "#B39DDB", "s4d": "#55A868",
    "attn": "#DD8452", "zamba": "#C44E52", "mlp": "#CCB974", "moe": "#937860", "cmix": "#DA8BC3",
}
# Outlines of shared groups: far from every kind's fill, so a shared zamba (red) or attn (orange) shows its outline.
GROUP_COLORS = ["#000000", "#FFD700", "#FF00FF", "#00E5E5", "#7FFF00"]
HATCHES = ["//", "..", "xx", "\\\\", "oo"]
PER_ROW = 32
FOLD = 3  # this many alike rows or more are drawn once
MAX_ROWS = 48  # rows the picture draws, after folding
MIN_COLS = 11
MERMAID_MAX_EDGES, MERMAID_MAX_TEXT = 500, 50_000  # Mermaid's defaults, maxEdges and maxTextSize
FORMATS = (".svg", ".png", ".pdf", ".dot", ".mmd")
PLOT_FORMATS = (".svg", ".png", ".pdf")  # what matplotlib writes


def check_path(path: str, formats=FORMATS, where: str = "draw") -> str:
    """The suffix of `path` if it is one of `formats` and `path` can become that file (not a directory, no file
    where a folder goes), else ArchDSLError."""
    from .atomic import check_control, check_output

    path = errors.check_path(where, path, "file's path")
    check_control(path, f"{where}: path")
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise ArchDSLError(f"cannot write {path!r}: use one of {', '.join(formats)}")
    if os.path.isdir(path):
        raise ArchDSLError(f"cannot write {path}: it is a directory")
    check_output(path, where)
    return ext


@contextmanager
def plain_text():
    """matplotlib (Agg) with every text drawn as written: no mathtext, so a '$' in a name is a '$'."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def draw(spec, path: str, every_layer: bool = False) -> None:
    """Write the picture of `spec` (a Spec, spec file, saved-model directory or layout string) to `path`; the
    suffix picks the format (.svg .png .pdf, .dot, .mmd). Missing parent directories are created; the file
    appears whole or not at all. every_layer: nothing folded, each layer drawn."""
    ext = check_path(path)
    every_layer = errors.check_flag("draw", "every_layer", every_layer)
    spec = load_spec(spec)
    if ext == ".dot":
        _write_text(path, to_dot(spec, every_layer))
    elif ext == ".mmd":
        _write_text(path, to_mermaid(spec, every_layer))
    else:
        with plain_text():
            save_figure(strip_figure(spec, every_layer), path)


def _write_text(path: str, text: str) -> None:
    from .atomic import write_atomic

    try:
        write_atomic(path, text)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind, "#999999")


def _ink(fill: str) -> str:
    """Black or white, whichever contrasts more with `fill` ("#RRGGBB", WCAG's relative luminance): white text
    on a light fill (mlp, mamba2) is lost."""
    lum = sum(w * (int(fill[i:i + 2], 16) / 255) ** 2.2 for w, i in ((0.2126, 1), (0.7152, 3), (0.0722, 5)))
    return "#000000" if (lum + 0.05) / 0.05 > 1.05 / (lum + 0.05) else "#FFFFFF"


def _signature(subs) -> tuple:
    """What makes two layers look alike in the strip: their blocks and configs (a windowed attention is not a
    global one) and shared groups."""
    return tuple((s.role, s.name, s.kind, s.group, repr(s.config)) for s in subs)


def _written(s) -> str:
    """A sublayer's block as the layout writes it, less `shared`: `attn(window=512)`, `swa`, `mamba2`."""
    return format_block(replace(s.block, args=tuple(a for a in s.block.args if a.name != "shared")))


def strip_rows(rows: list, fold: int = FOLD) -> tuple[int, list[tuple[int, int]]]:
    """How the strip lays out layers (each a tuple of sublayers): the row width, and the drawn rows as
    (first layer, repeats). A layout that repeats with a period of PER_ROW layers or fewer gets rows of a
    whole number of periods, so they come out alike; a run of FOLD or more alike rows is drawn once, so
    2000 layers of a pattern read as one row × 62, not as a picture 60 rows high (`fold`: FOLD, or more to
    fold less)."""
    sigs = [_signature(subs) for subs in rows]
    n = len(sigs)
    width = PER_ROW
    for p in range(1, PER_ROW + 1):
        if 2 * p <= n and all(sigs[i] == sigs[i - p] for i in range(p, n)):
            width = p * (PER_ROW // p)
            break
    width = min(width, n)
    drawn: list[tuple[int, int]] = []
    start = 0
    while start < n:
        k = 1
        row = sigs[start:start + width]
        while start + (k + 1) * width <= n and sigs[start + k * width:start + (k + 1) * width] == row:
            k += 1
        if k < fold:
            k = 1
        drawn.append((start, k))
        start += k * width
    return width, drawn


def _short(name: str) -> str:
    return name if len(name) <= 6 else name[:5] + "…"


def strip_figure(spec, every_layer: bool = False):
    """The strip of `spec` as a matplotlib Figure, for save_figure (which closes it); ArchDSLError past MAX_ROWS
    rows."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    every_layer = errors.check_flag("strip_figure", "every_layer", every_layer)
    spec = load_spec(spec)
    rows = layers(spec.graph)
    n = len(rows)
    width, drawn = strip_rows(rows, n + 1 if every_layer else FOLD)
    if len(drawn) > MAX_ROWS:
        raise ArchDSLError(f"the layout's {n:,} layers make {len(drawn)} {'' if every_layer else 'different '}rows "
                           f"of {width}, and the picture draws at most {MAX_ROWS}: write .dot")
    nrows = len(drawn)
    cols = max(width, MIN_COLS)  # a layer keeps its shape however few there are
    pad = (cols - width) / 2
    base = 0.0 if any(role_of(subs, FFN) for subs in rows) else 0.28  # the numbers sit under the lowest band
    # The axes fill the figure and the figure is sized in layers, so a column is 0.42 in wide whatever the
    # title and legend are; those lie outside and the saved image grows to take them (bbox_inches="tight").
    fig = plt.figure(figsize=(0.42 * (cols + 0.4), 1.55 * nrows - 0.1 - base))
    ax = fig.add_axes((0, 0, 1, 1))
    groups = sorted(spec.graph.graph["groups"])
    gcolor = group_colors(spec)
    # Each config of a block is named as the shortest of its layers writes it (`attn(heads=8)` where that is the
    # default is `attn`, as a plain `attn` layer with the same config writes it). Where a kind comes in two or
    # more (an alias, inline arguments: `attn(window=512)` beside `attn`), each but the plain kind is hatched.
    variants: dict[tuple, str] = {}  # (name, config) -> its name
    for s in (s for subs in rows for s in subs):
        key, written = (s.name, repr(s.config)), _written(s)
        variants[key] = min(variants.get(key, written), written, key=lambda w: (len(w), w))
    drawn_as = {(s.kind, variants[s.name, repr(s.config)]) for subs in rows for s in subs}  # (kind, name)
    hatches: dict[str, str] = {}
    seen: dict[str, Patch] = {}  # legend entries by label
    for r, (start, repeats) in enumerate(drawn):
        y = -r * 1.55
        for i in range(start, min(start + width, n)):
            x = i - start
            for role, (y0, h) in ((INJECT, (0.78, 0.22)), (MIXER, (0.28, 0.48)), (FFN, (0.0, 0.26))):
                s = role_of(rows[i], role)
                if s is None:
                    continue
                written = variants[s.name, repr(s.config)]
                plain = written == s.kind or sum(kind == s.kind for kind, _ in drawn_as) == 1
                hatch = None if plain else hatches.setdefault(written, HATCHES[len(hatches) % len(HATCHES)])
                label = written if s.name == s.kind else f"{written} ({s.kind})"
                seen.setdefault(label, Patch(facecolor=_color(s.kind), hatch=hatch, edgecolor="white", label=label))
                edge = gcolor.get(s.group, "white")
                ax.add_patch(Rectangle((x + 0.05, y + y0), 0.9, h, facecolor=_color(s.kind), hatch=hatch,
                                       edgecolor=edge, linewidth=2.5 if s.group else 0.5))
                if s.group:
                    ax.text(x + 0.5, y + y0 + h / 2, _short(s.group), ha="center", va="center", fontsize=6,
                            color=_ink(_color(s.kind)))
            if (i - start) % 4 == 0 or width <= 16:
                ax.text(x + 0.5, y + base - 0.12, str(i), ha="center", va="top", fontsize=7, color="#444")
        if repeats > 1:
            last = start + repeats * width - 1
            ax.text(width + 0.3, y + 0.5, f"× {repeats}\nlayers {start}–{last}", ha="left", va="center", fontsize=8)
    handles = list(seen.values())
    handles += [Patch(facecolor="white", edgecolor=gcolor[g], linewidth=2.5, label=f"shared: {g}") for g in groups]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(6, len(handles)),
              fontsize=8, frameon=False)
    ax.set_xlim(-0.2 - pad, width + 0.2 + pad)
    ax.set_ylim(-(nrows - 1) * 1.55 - 0.35 + base, 1.1)
    ax.set_axis_off()
    bands = [f"{where}: {what}" for role, where, what in ((INJECT, "top", "inject"), (MIXER, "middle", "mixer"),
                                                          (FFN, "bottom", "FFN")) if any(role_of(r, role) for r in rows)]
    key = f"  ({' · '.join(bands)})" if len(bands) > 1 else ""  # which band is which, where there are two or three
    ax.set_title(f"{spec.name}: {plural(n, 'layer')}{key}", fontsize=9)
    return fig


def group_colors(spec) -> dict[str, str]:
    """Each shared group's outline colour, the same in the picture and the DOT graph."""
    return {g: GROUP_COLORS[i % len(GROUP_COLORS)] for i, g in enumerate(sorted(spec.graph.graph["groups"]))}


@lru_cache(maxsize=None)
def _charmap(fname: str) -> frozenset:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(fname).get_charmap())
    except (OSError, RuntimeError):  # a font file matplotlib listed but cannot read
        return frozenset()


def _fonts() -> dict[str, str]:
    """Installed fonts as matplotlib lists them, name -> file; not "Last Resort", which has every character as a
    box."""
    from matplotlib import font_manager

    return {f.name: f.fname for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")}


def font_with(char: str) -> str | None:
    """The name of an installed font that has `char`, or None."""
    return next((name for name, fname in _fonts().items() if ord(char) in _charmap(fname)), None)


def fit_fonts(fig) -> None:
    """Let every text of `fig` fall back, glyph by glyph, to installed fonts that have the characters the default
    font lacks (a CJK or Devanagari name drawn by DejaVu Sans is a row of empty boxes); one ArchDSLWarning names
    the characters no installed font has, instead of matplotlib's warning a glyph."""
    from matplotlib import font_manager
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_text()]
    base = font_manager.findfont(texts[0].get_fontproperties()) if texts else None
    lacking = {ord(c) for t in texts for c in t.get_text() if not c.isspace()} - _charmap(base) if base else set()
    if not lacking:
        return
    fallbacks, left = [], set(lacking)
    fonts = _fonts()
    while left:  # the font with most of what is left, until none has any
        name = max(fonts, key=lambda n: len(left & _charmap(fonts[n])), default=None)
        if name is None or not left & _charmap(fonts[name]):
            break
        fallbacks.append(name)
        left -= _charmap(fonts.pop(name))
    if fallbacks:
        family = [font_manager.FontProperties(fname=base).get_name(), *fallbacks]
        for t in texts:
            t.set_fontfamily(family)
    if left:
        chars = "".join(sorted(map(chr, left)))
        warnings.warn(f"no installed font has {plural(len(left), 'character')} of the picture's names ("
                      f"{chars[:20]}{'…' if len(chars) > 20 else ''}): they are drawn as boxes; install a font "
                      f"that has them (Noto Sans CJK for Chinese, Japanese, Korean), or write .dot or .mmd",
                      ArchDSLWarning, stacklevel=4)


def save_figure(fig, path: str, dpi=150, bbox_inches="tight") -> None:
    """Render a matplotlib Figure into memory, then write it with atomic.write_atomic (beside `path` under a
    temporary name, renamed into place), so a failed or interrupted render leaves nothing half-written; missing
    parent directories are created. The suffix of `path` picks the format (.svg, .png or .pdf). The figure is
    closed, on error too. Texts fall back to installed fonts for characters the default font lacks (fit_fonts)."""
    import io

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from .atomic import write_atomic

    if not isinstance(fig, Figure):
        raise ArchDSLError(f"save_figure: fig must be a matplotlib Figure, got {errors.shown(fig)}")
    buf = io.BytesIO()
    try:
        ext = check_path(path, PLOT_FORMATS, "save_figure")
        fit_fonts(fig)
        with warnings.catch_warnings():  # said once by fit_fonts, not a glyph at a time
            warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from", UserWarning)
            fig.savefig(buf, format=ext[1:], dpi=dpi, bbox_inches=bbox_inches)
    except OSError as e:  # a backend's own files (fonts, a renderer's scratch space)
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())


def _label(subs) -> str:
    """`zamba(lora=16) [g] + mamba2`: each block as written, less `shared`, then its group."""
    return " + ".join(_written(s) + (f" [{s.group}]" if s.group else "") for s in subs)


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
        sigs = [_signature(subs) for subs in self.rows]
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
            fill = _color((role_of(chart.rows[i], MIXER) or chart.rows[i][0]).kind)
            out.append(f'{pad}L{i} [label="{_dot(chart.label(i, fold))}", fillcolor="{fill}", '
                       f'fontcolor="{_ink(fill)}"];')

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
    for (u, v), flow in chart.edges.items():
        out.append(f"  {u} -.-> {v}" if flow == "embedding" else f"  {u} --> {v}")
    for (a, b), group in chart.group_links.items():
        out.append(f'  L{a} -.-|"{_mmd(group)}"| L{b}')
    for kind, ids in classes.items():
        out.append(f"  classDef {kind} fill:{_color(kind)},color:{_ink(_color(kind))}")
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


def plot_memory(lens: list[int], data: dict[str, list[int]], path: str, batch: int = 1, dtype: str = "bfloat16") -> None:
    """Cache bytes against context length, log-log, one line per spec, written to `path` (.svg .png .pdf) as
    save_figure writes. lens: context lengths (ints >= 1); data: spec name -> one byte count (int >= 0) a length;
    batch and dtype only label the y axis. The ticks are the lengths as the table writes them and bytes as
    512 MiB (plain text: no mathtext); a spec without a cache says so."""
    check_path(path, PLOT_FORMATS, "plot_memory")
    lens, data = _memory_series(lens, data)
    with plain_text():
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullLocator


        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, values in data.items():
            ax.plot(lens, values, marker="o", label=name if any(values) else f"{name} (no cache)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(lens)), [count_text(n) for n in sorted(set(lens))])
        ax.xaxis.set_minor_locator(NullLocator())
        if any(v > 0 for values in data.values() for v in values):  # a log axis of zeros alone has no scale
            ax.set_yscale("log", base=2)
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.set_yticks([0])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v, "B").replace(".00", "")))
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(f"inference cache (batch {batch}, {dtype})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("cache bytes against context length")
        fig.tight_layout()
        save_figure(fig, path)


def _memory_series(lens, data) -> tuple[list[int], dict[str, list[float]]]:
    """plot_memory's series checked: lens positive ints, data a mapping of names to as many byte counts >= 0
    (as floats: a count past 2^63 is still drawn); else ArchDSLError naming what is wrong."""
    count = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    if isinstance(lens, (str, bytes)) or not isinstance(lens, Iterable) \
            or not (lens := list(lens)) or not all(count(n) and n > 0 for n in lens):
        raise ArchDSLError(f"plot_memory: lens must be context lengths, ints >= 1, got {errors.shown(lens)}")
    if not isinstance(data, Mapping) or not data:
        raise ArchDSLError(f"plot_memory: data must map each spec's name to its cache bytes, got "
                           f"{errors.shown(data)}")
    out = {}
    for name, values in data.items():
        ok = not isinstance(values, (str, bytes)) and isinstance(values, Iterable)
        values = list(values) if ok else values
        if not ok or len(values) != len(lens) or not all(count(v) and v >= 0 for v in values):
            raise ArchDSLError(f"plot_memory: data[{name!r}] must be {plural(len(lens), 'byte count')} (ints >= 0), "
                               f"one a length, got {errors.shown(values)}")
        out[str(name)] = [float(v) for v in values]
    return [int(n) for n in lens], out
