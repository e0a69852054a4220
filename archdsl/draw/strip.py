"""The strip picture of a layout, a matplotlib Figure of layers coloured by kind (strip_figure), and how it
lays out rows (strip_rows).

The strip wraps every 32 layers, so 100 layers read as four rows (a layout that repeats every
p layers wraps at a whole number of periods instead, and three or more alike rows are drawn
once, marked × k; `every_layer` draws each). Each layer is a column: its mixer on top, its FFN below, an inject block
(Zamba's shared block) as a band above the mixer. The legend names each block as written; where
a kind comes in two or more configs (an alias, inline arguments: `attn(window=512)` beside
`attn`), each but the plain kind is its kind's colour, hatched. A
shared group is drawn with a thick outline of the group's colour and line style and its name (cut
to six characters, no two groups alike: group_marks), so one can see at a glance which layers
hold the same weights.
"""
from __future__ import annotations

from collections import Counter

from .. import errors
from ..blocks.base import FFN, INJECT, MIXER
from ..errors import ArchDSLError
from ..graph import layers, role_of
from ..spec import load_spec
from ..units import plural
from .common import FOLD, PER_ROW, fit_text, group_styles, ink, kind_color, layer_signature, written_block
from .figure import new_figure

# The configs of one kind are told apart by hatch: lines, dots, then a line and a dot pattern together, 30 in all.
HATCHES = ["//", "..", "xx", "\\\\", "oo", "||", "--", "++", "**", "OO",
           *(line * 2 + dot * 2 for line in ("/", "\\", "|", "-") for dot in (".", "o", "O", "*")),
           "xx..", "xxoo", "++..", "++oo"]
MAX_ROWS = 48  # rows the picture draws, after folding
MIN_COLS = 11


def strip_rows(rows: list, fold: int = FOLD) -> tuple[int, list[tuple[int, int]]]:
    """How the strip lays out layers (each a tuple of sublayers): the row width, and the drawn rows as
    (first layer, repeats). A layout that repeats with a period of PER_ROW layers or fewer gets rows of a
    whole number of periods, so they come out alike; a run of FOLD or more alike rows is drawn once, so
    2000 layers of a pattern read as one row × 62, not as a picture 60 rows high (`fold`: FOLD, or more to
    fold less)."""
    sigs = [layer_signature(subs) for subs in rows]
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
        # k alike rows too few to fold: each drawn, and none of them starts a run long enough either (the next
        # has k - 1 alike after it), so they are not compared again (that made every_layer quadratic)
        drawn += [(start, k)] if k >= fold else [(start + j * width, 1) for j in range(k)]
        start += k * width
    return width, drawn


def group_marks(groups) -> dict[str, str]:
    """What each shared group's boxes say, at most 6 characters, no two alike: the name; a longer one cut,
    `layer…`; where two cut alike, start and end, `l…p_1`; where those still meet, every group numbered, `g1`,
    `g2` (in sorted order)."""
    groups = sorted(groups)
    cuts = (lambda g: g if len(g) <= 6 else g[:5] + "…", lambda g: g if len(g) <= 6 else g[:2] + "…" + g[-3:])
    marks = {g: cuts[0](g) for g in groups}
    for cut in cuts[1:]:
        seen = Counter(marks.values())
        marks.update({g: cut(g) for g in groups if seen[marks[g]] > 1})
    if len(set(marks.values())) < len(marks):
        marks = {g: f"g{i}" for i, g in enumerate(groups, 1)}
    return marks


def strip_figure(spec, every_layer: bool = False):
    """The strip of `spec` as a matplotlib Figure, for save_figure (which closes it); ArchDSLError past MAX_ROWS
    rows, or past len(HATCHES) hatched configs of one colour (two would be drawn alike; the plain kind is unhatched)."""
    from matplotlib.patches import Patch, Rectangle

    every_layer = errors.check_flag("strip_figure", "every_layer", every_layer)
    spec = load_spec(spec)
    rows = layers(spec.graph)
    n = len(rows)
    width, drawn = strip_rows(rows, n + 1 if every_layer else FOLD)
    if len(drawn) > MAX_ROWS:
        raise ArchDSLError(f"the layout's {n:,} layers make {len(drawn)} {'' if every_layer else 'different '}rows "
                           f"of {width}, and the picture draws at most {MAX_ROWS}: "
                           f"{'drop --every-layer or ' if every_layer else ''}write .dot")
    nrows = len(drawn)
    cols = max(width, MIN_COLS)  # a layer keeps its shape however few there are
    pad = (cols - width) / 2
    base = 0.0 if any(role_of(subs, FFN) for subs in rows) else 0.28  # the numbers sit under the lowest band
    # The axes fill the figure and the figure is sized in layers, so a column is 0.42 in wide whatever the
    # title and legend are; those lie outside and the saved image grows to take them (bbox_inches="tight").
    fig = new_figure(figsize=(0.42 * (cols + 0.4), 1.55 * nrows - 0.1 - base))
    ax = fig.add_axes((0, 0, 1, 1))
    groups = sorted(spec.graph.graph["groups"])
    gstyle, marks = group_styles(spec), group_marks(groups)
    # Each config of a block is named as the shortest of its layers writes it (`attn(heads=8)` where that is the
    # default is `attn`, as a plain `attn` layer with the same config writes it). Where a kind comes in two or
    # more (an alias, inline arguments: `attn(window=512)` beside `attn`), each but the plain kind is hatched.
    variants: dict[tuple, str] = {}  # (name, config) -> its name
    for s in (s for subs in rows for s in subs):
        key, written = (s.name, repr(s.config)), written_block(s)
        variants[key] = min(variants.get(key, written), written, key=lambda w: (len(w), w))
    drawn_as = {(s.kind, variants[s.name, repr(s.config)]) for subs in rows for s in subs}  # (kind, name)
    # Hatches are counted by fill: configs of one colour must differ in hatch, those of two colours already differ.
    hatched = Counter(kind_color(kind) for kind, written in sorted(drawn_as) if written != kind
                      and sum(k == kind for k, _ in drawn_as) > 1)
    if hatched and max(hatched.values()) > len(HATCHES):
        kind = next(k for k, _ in sorted(drawn_as) if hatched[kind_color(k)] == max(hatched.values()))
        raise ArchDSLError(f"the layout has {max(hatched.values())} configs of {kind} other than a plain {kind}, and "
                           f"the picture tells at most {len(HATCHES)} of one colour apart, by hatch: write .dot")
    hatches: dict[tuple[str, str], str] = {}  # (fill, name) -> its hatch
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
                fill = kind_color(s.kind)
                if plain:
                    hatch = None
                else:
                    same = sum(f == fill for f, _ in hatches)
                    hatch = hatches.setdefault((fill, written), HATCHES[same])
                label = written if s.name == s.kind else f"{written} ({s.kind})"
                seen.setdefault(label, Patch(facecolor=fill, hatch=hatch, edgecolor="white", label=label))
                # matplotlib draws a hatch in its patch's edge colour: the fill and its white hatch in one patch,
                # a shared group's outline in another (a group's black outline had hatched the box black)
                ax.add_patch(Rectangle((x + 0.05, y + y0), 0.9, h, facecolor=fill, hatch=hatch, edgecolor="white",
                                       linewidth=0.5))
                if s.group:
                    edge, ls = gstyle[s.group]
                    ax.add_patch(Rectangle((x + 0.05, y + y0), 0.9, h, fill=False, edgecolor=edge, linestyle=ls,
                                           linewidth=2.5))
                    ax.text(x + 0.5, y + y0 + h / 2, marks[s.group], ha="center", va="center", fontsize=6,
                            color=ink(fill))
            if (i - start) % 4 == 0 or width <= 16:
                ax.text(x + 0.5, y + base - 0.12, str(i), ha="center", va="top", fontsize=7, color="#444")
        if repeats > 1:
            last = start + repeats * width - 1
            ax.text(width + 0.3, y + 0.5, f"× {repeats}\nlayers {start}–{last}", ha="left", va="center", fontsize=8)
    handles = list(seen.values())
    handles += [Patch(facecolor="white", edgecolor=gstyle[g][0], linestyle=gstyle[g][1], linewidth=2.5,
                      label=_group_label(g, marks[g])) for g in groups]
    # handles with their labels given, so a name starting with "_" is shown as matplotlib would not
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.02),
              ncol=min(6, len(handles)), fontsize=8, frameon=False)
    ax.set_xlim(-0.2 - pad, width + 0.2 + pad)
    ax.set_ylim(-(nrows - 1) * 1.55 - 0.35 + base, 1.1)
    ax.set_axis_off()
    bands = [f"{where}: {what}" for role, where, what in ((INJECT, "top", "inject"), (MIXER, "middle", "mixer"),
                                                          (FFN, "bottom", "FFN")) if any(role_of(r, role) for r in rows)]
    key = f"  ({' · '.join(bands)})" if len(bands) > 1 else ""  # which band is which, where there are two or three
    ax.set_title(f"{fit_text(spec.name, 60)}: {plural(n, 'layer')}{key}", fontsize=9)
    return fig


def _group_label(group: str, mark: str) -> str:
    """A shared group's legend entry: `shared: NAME`, fitted (fit_text), and the mark its boxes say where that is
    not plainly the name's start."""
    plain = mark == group or (mark.endswith("…") and group.startswith(mark[:-1]))
    return f"shared: {fit_text(group)}" + ("" if plain else f" ({mark})")
