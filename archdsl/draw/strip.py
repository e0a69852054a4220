"""The strip picture of a layout, a matplotlib Figure of layers coloured by kind (strip_figure), and how it
lays out rows (strip_rows).

The strip wraps every 32 layers, so 100 layers read as four rows (a layout that repeats every
p layers wraps at a whole number of periods instead, and three or more alike rows are drawn
once, marked × k; `every_layer` draws each). Each layer is a column: its mixer on top, its FFN below, an inject block
(Zamba's shared block) as a band above the mixer. The legend names each block as written; where
a kind comes in two or more configs (an alias, inline arguments: `attn(window=512)` beside
`attn`), each but the plain kind is its kind's colour, hatched. A
shared group is drawn with a thick outline of the group's colour and its name, so one can
see at a glance which layers hold the same weights.
"""
from __future__ import annotations

from .. import errors
from ..blocks.base import FFN, INJECT, MIXER
from ..errors import ArchDSLError
from ..graph import layers, role_of
from ..spec import load_spec
from ..units import plural
from .common import FOLD, PER_ROW, group_colors, ink, kind_color, layer_signature, written_block

HATCHES = ["//", "..", "xx", "\\\\", "oo"]
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
        key, written = (s.name, repr(s.config)), written_block(s)
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
                seen.setdefault(label, Patch(facecolor=kind_color(s.kind), hatch=hatch, edgecolor="white", label=label))
                edge = gcolor.get(s.group, "white")
                ax.add_patch(Rectangle((x + 0.05, y + y0), 0.9, h, facecolor=kind_color(s.kind), hatch=hatch,
                                       edgecolor=edge, linewidth=2.5 if s.group else 0.5))
                if s.group:
                    ax.text(x + 0.5, y + y0 + h / 2, _short(s.group), ha="center", va="center", fontsize=6,
                            color=ink(kind_color(s.kind)))
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
