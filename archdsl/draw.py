"""Pictures of a layout: a strip of layers coloured by kind (SVG / PNG through
matplotlib), a DOT graph, a Mermaid flowchart; and the cache-versus-context plot.

The strip wraps every 32 layers, so 100 layers read as four rows. Each layer is a column:
its mixer on top, its FFN below, an inject block (Zamba's shared block) as a band above
the mixer. A shared group is drawn with a thick outline of the group's colour and its
name, so one can see at a glance which layers hold the same weights.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager

from .blocks.base import FFN, INJECT, MIXER
from .errors import ArchDSLError
from .graph import layers, role_of
from .units import count_text, human, plural

KIND_COLORS = {
    "mamba": "#4C72B0", "mamba2": "#64B5F6", "rwkv6": "#8172B2", "rwkv4": "#B39DDB", "s4d": "#55A868",
    "attn": "#DD8452", "zamba": "#C44E52", "mlp": "#CCB974", "moe": "#937860", "cmix": "#DA8BC3",
}
GROUP_COLORS = ["#D62728", "#2CA02C", "#9467BD", "#17BECF", "#FF7F0E", "#8C564B"]
PER_ROW = 32
FORMATS = (".svg", ".png", ".pdf", ".dot", ".mmd")
PLOT_FORMATS = (".svg", ".png", ".pdf")  # what matplotlib writes


def check_path(path: str, formats=FORMATS) -> str:
    """The suffix of `path` if it is one of `formats` and `path` is not a directory, else ArchDSLError."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise ArchDSLError(f"cannot write {path!r}: use one of {', '.join(formats)}")
    if os.path.isdir(path):
        raise ArchDSLError(f"cannot write {path}: it is a directory")
    return ext


@contextmanager
def plain_text():
    """matplotlib (Agg) with every text drawn as written: no mathtext, so a '$' in a name is a '$'."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def draw(spec, path: str) -> None:
    """Write the picture of `spec` to `path`; the suffix picks the format. Missing parent directories
    are created; the file appears whole or not at all."""
    ext = check_path(path)
    if ext == ".dot":
        _write_text(path, to_dot(spec))
    elif ext == ".mmd":
        _write_text(path, to_mermaid(spec))
    else:
        with plain_text():
            save_figure(strip_figure(spec), path)


def _write_text(path: str, text: str) -> None:
    from .atomic import write_atomic

    try:
        write_atomic(path, text)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind, "#999999")


def strip_figure(spec):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle


    rows = layers(spec.graph)
    n = len(rows)
    nrows = (n + PER_ROW - 1) // PER_ROW
    width = min(n, PER_ROW)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * width + 1.5), 1.0 + 1.55 * nrows))
    groups = sorted(spec.graph.graph["groups"])
    gcolor = {g: GROUP_COLORS[i % len(GROUP_COLORS)] for i, g in enumerate(groups)}
    kinds_seen: dict[str, str] = {}
    for i, subs in enumerate(rows):
        x, y = i % PER_ROW, -(i // PER_ROW) * 1.55
        for role, (y0, h) in ((INJECT, (0.78, 0.22)), (MIXER, (0.28, 0.48)), (FFN, (0.0, 0.26))):
            s = role_of(subs, role)
            if s is None:
                continue
            kinds_seen[s.kind] = _color(s.kind)
            edge = gcolor.get(s.group, "white")
            ax.add_patch(Rectangle((x + 0.05, y + y0), 0.9, h, facecolor=_color(s.kind),
                                   edgecolor=edge, linewidth=2.5 if s.group else 0.5))
            if s.group:
                ax.text(x + 0.5, y + y0 + h / 2, s.group[:3], ha="center", va="center", fontsize=6, color="white")
        if i % 4 == 0 or n <= 16:
            ax.text(x + 0.5, y - 0.12, str(i), ha="center", va="top", fontsize=7, color="#444")
    handles = [Patch(facecolor=c, label=k) for k, c in kinds_seen.items()]
    handles += [Patch(facecolor="white", edgecolor=gcolor[g], linewidth=2.5, label=f"shared: {g}") for g in groups]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(6, len(handles)),
              fontsize=8, frameon=False)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-(nrows - 1) * 1.55 - 0.35, 1.1)
    ax.set_axis_off()
    ax.set_title(f"{spec.name}: {plural(n, 'layer')}  (top: inject · middle: mixer · bottom: FFN)", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str, dpi=150, bbox_inches="tight") -> None:
    """Render to a temporary file beside `path` and rename it, so a failed or interrupted render leaves
    nothing half-written; missing parent directories are created. The figure is closed."""
    import matplotlib.pyplot as plt

    folder, name = os.path.split(os.path.abspath(path))
    base, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches)
        os.replace(tmp, path)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _label(subs) -> str:
    return " + ".join(s.name + (f" [{s.group}]" if s.group else "") for s in subs)


def _dot(text: str) -> str:
    """`text` inside a DOT double-quoted string: backslashes, quotes and line breaks escaped."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_MERMAID_PLAIN = re.compile(r"[A-Za-z0-9 _.,:+×*/=()\[\]-]")


def _mmd(text: str) -> str:
    """`text` for a Mermaid label: every character outside a plain set as an entity code (`"` → #34;),
    so no name can close a label, start markup or be read as syntax."""
    return "".join(c if _MERMAID_PLAIN.fullmatch(c) else f"#{ord(c)};" for c in str(text))


def to_dot(spec) -> str:
    g = spec.graph
    out = [f'digraph "{_dot(spec.name)}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname=Helvetica];']
    out.append('  embed [label="embedding", fillcolor="#EEEEEE"];')
    for i, subs in enumerate(layers(g)):
        main = role_of(subs, MIXER) or subs[0]
        out.append(f'  L{i} [label="{i}: {_dot(_label(subs))}", fillcolor="{_color(main.kind)}"];')
    out.append('  norm [label="final norm", fillcolor="#EEEEEE"];')
    out.append(f'  head [label="LM head{" (tied)" if spec.tie_embeddings else ""}", fillcolor="#EEEEEE"];')
    for u, v, data in g.edges(data=True):
        style = ' [style=dashed, label="embedding"]' if data["flow"] == "embedding" else (
            ' [label="+ embedding"]' if data.get("embedding") else "")
        out.append(f"  {u} -> {v}{style};")
    for group, members in g.graph["groups"].items():
        for a, b in zip(members, members[1:]):
            out.append(f'  L{a} -> L{b} [dir=none, style=dotted, color="#D62728", constraint=false, label="{_dot(group)}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_mermaid(spec) -> str:
    g = spec.graph
    out = ["flowchart LR", '  embed["embedding"]']
    classes = {}
    for i, subs in enumerate(layers(g)):
        main = role_of(subs, MIXER) or subs[0]
        classes.setdefault(main.kind, []).append(f"L{i}")
        out.append(f'  L{i}["{i}: {_mmd(_label(subs))}"]')
    out += ['  norm["final norm"]', '  head["LM head"]']
    for u, v, data in g.edges(data=True):
        out.append(f"  {u} -.-> {v}" if data["flow"] == "embedding" else f"  {u} --> {v}")
    for group, members in g.graph["groups"].items():
        for a, b in zip(members, members[1:]):
            out.append(f'  L{a} -.-|"{_mmd(group)}"| L{b}')
    for kind, ids in classes.items():
        out.append(f"  classDef {kind} fill:{_color(kind)},color:#fff")
        out.append(f"  class {','.join(ids)} {kind}")
    return "\n".join(out) + "\n"


def plot_memory(lens: list[int], data: dict[str, list[int]], path: str, batch: int = 1, dtype: str = "bfloat16") -> None:
    """Cache bytes against context length, log-log, one line per spec. The ticks are the lengths as the
    table writes them and bytes as 512 MiB (plain text: no mathtext); a spec without a cache says so."""
    check_path(path, PLOT_FORMATS)
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
