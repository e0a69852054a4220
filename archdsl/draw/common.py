"""What every picture of a layout shares: the kinds' and shared groups' colours, the folding constants, the
formats and the check of an output path, how a layer's blocks read (their signature, as written), and a name
fitted to a legend or title (fit_text)."""
from __future__ import annotations

import os
import textwrap
from dataclasses import replace

from .. import errors
from ..errors import ArchDSLError
from ..language.fmt import format_block

KIND_COLORS = {
    "mamba": "#4C72B0", "mamba2": "#64B5F6", "rwkv6": "#8172B2", "rwkv4": "#B39DDB", "s4d": "#55A868",
    "attn": "#DD8452", "zamba": "#C44E52", "mlp": "#CCB974", "moe": "#937860", "cmix": "#DA8BC3",
}
# Outlines of shared groups: far from every kind's fill, so a shared zamba (red) or attn (orange) shows its outline.
GROUP_COLORS = ["#000000", "#FFD700", "#FF00FF", "#00E5E5", "#7FFF00"]
# ... and past five groups, the same colours dashed, dotted, dash-dotted: 20 outlines drawn differently.
GROUP_LINESTYLES = ["solid", "dashed", "dotted", "dashdot"]
PER_ROW = 32
FOLD = 3  # this many alike rows or more are drawn once
FORMATS = (".svg", ".png", ".pdf", ".dot", ".mmd")
PLOT_FORMATS = (".svg", ".png", ".pdf")  # what matplotlib writes


def check_path(path: str, formats=FORMATS, where: str = "draw") -> str:
    """The suffix of `path` if it is one of `formats` and `path` can become that file (not a directory, no file
    where a folder goes), else ArchDSLError; a name ending in a slash (`zz.svg/`) or a suffix alone (`.svg`, a
    hidden file without one) is told as such, not as a wrong suffix."""
    from ..atomic import check_control, check_output

    path = errors.check_path(where, path, "file's path")
    check_control(path, f"{where}: path")
    ext = os.path.splitext(path)[1].lower()
    name = os.path.basename(path)
    if not name:  # `zz.svg/`: a directory's name, whatever it ends in
        stripped = path.rstrip("/" + os.sep)
        like = stripped if os.path.splitext(stripped)[1].lower() in formats else os.path.join(stripped, "layout"
                                                                                               + formats[0])
        raise ArchDSLError(f"cannot write {path!r}: the trailing {path[-1]!r} makes it a directory's name; give a "
                           f"file's, as in {like!r}")
    if not ext and name.lower() in formats:  # `.svg`: a hidden file without a suffix
        raise ArchDSLError(f"cannot write {path!r}: {name!r} is a suffix alone; give a name before it, as in "
                           f"{os.path.join(os.path.dirname(path), 'layout' + name)!r}")
    if ext not in formats:
        raise ArchDSLError(f"cannot write {path!r}: use one of {', '.join(formats)}")
    if os.path.isdir(path):
        raise ArchDSLError(f"cannot write {path}: it is a directory")
    check_output(path, where)
    return ext


def kind_color(kind: str) -> str:
    """`kind`'s fill colour: KIND_COLORS', grey for a kind it lacks."""
    return KIND_COLORS.get(kind, "#999999")


def ink(fill: str) -> str:
    """Black or white, whichever contrasts more with `fill` ("#RRGGBB", WCAG's relative luminance): white text
    on a light fill (mlp, mamba2) is lost."""
    lum = sum(w * (int(fill[i:i + 2], 16) / 255) ** 2.2 for w, i in ((0.2126, 1), (0.7152, 3), (0.0722, 5)))
    return "#000000" if (lum + 0.05) / 0.05 > 1.05 / (lum + 0.05) else "#FFFFFF"


def layer_signature(subs) -> tuple:
    """What makes two layers look alike in the strip: their blocks and configs (a windowed attention is not a
    global one) and shared groups."""
    return tuple((s.role, s.name, s.kind, s.group, repr(s.config)) for s in subs)


def written_block(s) -> str:
    """A sublayer's block as the layout writes it, less `shared`: `attn(window=512)`, `swa`, `mamba2`."""
    return format_block(replace(s.block, args=tuple(a for a in s.block.args if a.name != "shared")))


def group_colors(spec) -> dict[str, str]:
    """Each shared group's outline colour, the same in the picture and the DOT graph (whose links also carry the
    group's name: past five groups the colours repeat)."""
    return {g: color for g, (color, _) in group_styles(spec).items()}


def group_styles(spec) -> dict[str, tuple[str, str]]:
    """Each shared group's outline in the strip, (colour, matplotlib line style): every colour solid, then every
    colour dashed, ...: distinct for up to 20 groups. Past that outlines repeat, and the group's name in each box
    (strip.group_marks, unique) tells them apart."""
    n = len(GROUP_COLORS)
    return {g: (GROUP_COLORS[i % n], GROUP_LINESTYLES[i // n % len(GROUP_LINESTYLES)])
            for i, g in enumerate(sorted(spec.graph.graph["groups"]))}


def fit_text(text, width: int = 32, lines: int = 2) -> str:
    """`text` for a legend entry or a title, as written when it fits `width` characters; else wrapped onto at most
    `lines` lines (at spaces and hyphens where it can), and a text longer than those lines hold cut in the middle
    with "…", its start and end kept (`name#2` keeps its #2). A 3000-character name made a legend 30 000 pixels
    wide."""
    text = str(text)
    if len(text) <= width:
        return text
    room = width * lines
    if len(text) > room:
        head = (room - 1) * 2 // 3
        text = text[:head] + "…" + text[len(text) - (room - 1 - head):]
    wrapped = textwrap.wrap(text, width, drop_whitespace=False)
    if len(wrapped) > lines or "".join(wrapped) != text:  # ragged breaks took a line more: cut at the width
        wrapped = [text[i:i + width] for i in range(0, len(text), width)]
    return "\n".join(wrapped)
