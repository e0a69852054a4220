"""What an exploration leaves behind: results.json, results.csv, the plots, the ranked table.

Every file is written aside and renamed into place, so an interrupted run never leaves a
half-written results file (the runner rewrites them after each probed candidate).
"""
from __future__ import annotations

import csv
import io
import json
import os

from ..atomic import write_atomic
from ..draw.figure import new_figure, save_figure
from ..errors import finite
from ..units import human, plural
from .search import Candidate

CSV_FIELDS = ["id", "rank", "on_front", "layout", "mixer", "d_model", "depth", "attn_count", "attn_fraction",
              "placement", "shared", "moe_every", "moe_experts", "moe_top_k", "moe_hidden", "params", "active_params",
              "flops_per_token", "cache_bytes", "accuracy", "best_accuracy", "final_loss", "steps", "wall_time"]


def csv_row(c: Candidate) -> dict:
    row = {"id": c.id, "rank": c.rank, "on_front": c.on_front, "layout": c.layout}
    row.update({k: c.knobs.get(k) for k in CSV_FIELDS if k in c.knobs})
    row.update({k: c.figures.get(k) for k in ("params", "active_params", "flops_per_token", "cache_bytes")})
    if c.probe:
        row.update({k: c.probe.get(k) for k in ("accuracy", "best_accuracy", "final_loss", "steps", "wall_time")})
    return row


def write_results(outdir: str, config: dict, cands: list[Candidate], status: str, summary: dict) -> None:
    """results.json (config, summary, every candidate) and results.csv (one row each). Both are strict: a loss
    that is inf or NaN (a diverged probe, marked `diverged`) is written as null, as an empty CSV cell. results.json is
    written last, so that its status never speaks for a CSV not yet written."""
    doc = {"status": status, "config": config, "summary": summary, "candidates": [c.to_dict() for c in cands]}
    text = json.dumps(finite(doc), indent=1, default=_plain, allow_nan=False)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for c in cands:
        w.writerow(finite(csv_row(c)))
    write_atomic(os.path.join(outdir, "results.csv"), buf.getvalue())
    write_atomic(os.path.join(outdir, "results.json"), text + "\n")  # last: its status holds for the CSV too


def _plain(o):
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def table_text(cands: list[Candidate], top: int | None, context: int, probed: bool) -> str:
    rows = []
    for c in cands[:top] if top else cands:
        row = ["*" if c.on_front else "", "-" if c.rank is None else c.rank, c.id, _short(c.layout, 56),
               human(c.figures["params"]), human(c.figures["active_params"]), human(c.figures["flops_per_token"]),
               human(c.figures["cache_bytes"], "B")]
        if probed:
            row.append("-" if not c.probe else f"{c.probe['accuracy']:.3f}"
                       + (" (diverged)" if c.probe.get("diverged") else ""))
        rows.append(row)
    head = ["", "rank", "id", "layout", "params", "active", f"FLOPs/tok@{_ctx(context)}", f"cache@{_ctx(context)}"]
    if probed:
        head.append("accuracy")
    return _table(rows, head, left={0, 3})


def _table(rows, head, left) -> str:
    cells = [head] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --- plots -------------------------------------------------------------------------------------
def _figure():
    """A figure and its axes (new_figure's: the caller's matplotlib backend is left alone)."""
    fig = new_figure(figsize=(6.4, 4.4), dpi=100)
    return fig, fig.subplots()


LABELS = {"params": "parameters", "active_params": "active parameters", "flops_per_token": "FLOPs / token",
          "cache_bytes": "cache bytes", "accuracy": "probe accuracy", "loss": "probe loss", "depth": "depth",
          "attn_fraction": "attention fraction", "wall_time": "probe wall time (s)"}


def plot_pareto(cands: list[Candidate], objectives, path: str, title: str = "") -> None:
    """The first two objectives (or the first against params): every candidate, the front joined."""
    xo = objectives[0]
    yo = objectives[1] if len(objectives) > 1 else ("params" if xo != "params" else "cache_bytes")
    pts = [(c.value(xo), c.value(yo), c) for c in cands if c.value(xo) is not None and c.value(yo) is not None]
    fig, ax = _figure()
    ax.scatter([p[0] for p in pts if not p[2].on_front], [p[1] for p in pts if not p[2].on_front],
               s=14, c="#9aa5b1", label="candidates", zorder=2)
    front = sorted([p for p in pts if p[2].on_front], key=lambda p: (p[0], p[1]))
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", c="#d1495b", ms=5, lw=1.2,
            label="Pareto front", zorder=3)
    ties: dict[tuple, list] = {}
    for x, y, c in front:
        ties.setdefault((x, y), []).append(c.id)
    for (x, y), ids in list(ties.items())[:12]:
        more = f" (+{plural(len(ids) - 1, 'placement')})" if len(ids) > 1 else ""
        ax.annotate(ids[0] + more, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    for axis, o in (("x", xo), ("y", yo)):
        vals = [p[0 if axis == "x" else 1] for p in pts]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 20 and o not in ("accuracy", "attn_fraction"):
            (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2 if o == "cache_bytes" else 10)
        _plain_ticks(ax.xaxis if axis == "x" else ax.yaxis, o)
    ax.set_xlabel(LABELS.get(xo, xo))
    ax.set_ylabel(LABELS.get(yo, yo))
    ax.set_title(title or f"{plural(len(pts), 'candidate')}, {len(front)} on the front", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=None, bbox_inches=None)


FIGURES = ("params", "active_params", "flops_per_token", "cache_bytes")


def _plain_ticks(axis, objective: str) -> None:
    """Tick labels as the tables write figures (12.5M, 64 MiB), not matplotlib's mathtext powers of ten, which
    plain_text shows raw; at most 6 ticks on a linear axis, so that long labels do not run together."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    if objective not in FIGURES:
        return
    unit = "B" if objective == "cache_bytes" else ""
    if axis.get_scale() == "log":
        axis.set_minor_locator(NullLocator())
        if unit:  # bytes at powers of two, at most 8 of them
            axis.set_major_locator(LogLocator(base=2, numticks=8))
    else:
        axis.set_major_locator(MaxNLocator(6))
    axis.set_major_formatter(FuncFormatter(lambda v, _: human(v, unit).replace(".00", "") if v > 0 else "0"))


def plot_cache(cands: list[Candidate], path: str, batch: int = 1, dtype: str = "bfloat16", most: int = 8) -> None:
    """Cache bytes against context length (1k … 1M) for the front (at most `most` lines), drawn as `archdsl memory`
    draws them (draw.memory_figure: its axis names the SSM states' dtype where it is not the cache's)."""
    from ..analysis import analyze_lengths, has_ssm_states
    from ..draw.memory import memory_figure

    lens = [2**k for k in range(10, 21)]

    pool = [c for c in cands if c.on_front] or cands
    distinct: dict[tuple, Candidate] = {}
    for c in pool:  # placements of one frame have one curve: draw it once
        distinct.setdefault((c.knobs.get("attn_count"), c.knobs.get("d_model"), c.knobs.get("depth"),
                             c.knobs.get("shared"), c.knobs.get("mixer")), c)
    pool = sorted(distinct.values(), key=lambda c: c.figures["cache_bytes"])
    step = max(1, len(pool) / most)
    chosen = [pool[int(i * step)] for i in range(min(most, len(pool)))]
    data = {f"{c.id}: {_short(c.layout, 40)}": [r.cache_bytes for r in analyze_lengths(c.spec, lens, batch=batch,
                                                                                      dtype=dtype)]
            for c in chosen}
    fig = memory_figure(lens, data, batch, dtype, ssm_states=any(has_ssm_states(c.spec) for c in chosen))
    fig.axes[0].set_title("cache bytes of the front against context length")
    save_figure(fig, path)


def plot_accuracy(cands: list[Candidate], path: str, task: str = "probe") -> None:
    """Probe accuracy against attention fraction, one colour per placement."""
    probed = [c for c in cands if c.probe]
    fig, ax = _figure()
    groups: dict[str, list] = {}
    for c in probed:
        p = c.knobs.get("placement", "")
        groups.setdefault("every" if p.startswith("every") else p, []).append(c)
    for name, cs in sorted(groups.items()):
        ax.scatter([c.knobs["attn_fraction"] for c in cs], [c.probe["accuracy"] for c in cs], s=22, label=name,
                   alpha=0.85, zorder=3)
    ax.set_xlabel("attention fraction (attention layers / depth)")
    ax.set_ylabel(f"{task} accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8, title="placement", title_fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=None, bbox_inches=None)


def write_plots(outdir: str, cands: list[Candidate], objectives, batch: int, dtype: str, task: str | None) -> list[str]:
    from ..draw import plain_text

    paths = [os.path.join(outdir, "pareto.png"), os.path.join(outdir, "cache_vs_context.png")]
    with plain_text():
        plot_pareto(cands, objectives, paths[0])
        plot_cache(cands, paths[1], batch=batch, dtype=dtype)
        if task:
            paths.append(os.path.join(outdir, "accuracy_vs_attention.png"))
            plot_accuracy(cands, paths[-1], task)
    return paths


def _ctx(n: int) -> str:
    """4096 → '4k', 65536 → '64k', 1000 → '1000' (binary k, as the CLI reads them)."""
    for unit, size in (("m", 2**20), ("k", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
