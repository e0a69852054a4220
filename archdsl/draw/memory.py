"""The cache-versus-context plot: cache bytes against context length, one line per spec (memory_figure), written
by plot_memory."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

from .. import errors
from ..errors import ArchDSLError
from ..units import count_text, human, plural
from .common import PLOT_FORMATS, check_path, fit_text
from .figure import new_figure, plain_text, save_figure

# Each series' (colour, marker, line style): the colour changes every series, marker and line style every ten, so
# 400 series are all drawn differently (see series_styles). matplotlib's own cycle repeats after ten.
SERIES_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]
SERIES_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
SERIES_LINESTYLES = ["-", "--", ":", "-."]
MAX_SERIES = len(SERIES_COLORS) * len(SERIES_MARKERS) * len(SERIES_LINESTYLES)
LEGEND_ROWS = 20  # entries a legend column holds before another column starts
AXES_WIDTH = 5.4  # inches
TICK_CHAR = 10 * 0.58 / 72  # inches a tick label's character takes at matplotlib's 10-point default, about


def series_styles(n: int) -> list[tuple[str, str, str]]:
    """(colour, marker, line style) of each of `n` series, no two alike for n <= MAX_SERIES: series i has colour
    i mod 10; j = i // 10 picks the marker j mod 10 and the line style (j + j // 10) mod 4, so of the series
    with one colour, those with one marker differ in line style."""
    out = []
    for i in range(n):
        j = i // len(SERIES_COLORS)
        out.append((SERIES_COLORS[i % len(SERIES_COLORS)], SERIES_MARKERS[j % len(SERIES_MARKERS)],
                    SERIES_LINESTYLES[(j + j // len(SERIES_MARKERS)) % len(SERIES_LINESTYLES)]))
    return out


def plot_memory(lens: list[int], data: dict[str, list[int]], path: str, batch: int = 1, dtype: str = "bfloat16",
                ssm_state_dtype: str | None = None, ssm_states: bool = True) -> None:
    """Cache bytes against context length (memory_figure) written to `path` (.svg .png .pdf) as save_figure
    writes; ArchDSLError for a bad argument, before anything is written."""
    check_path(path, PLOT_FORMATS, "plot_memory")
    fig = memory_figure(lens, data, batch, dtype, ssm_state_dtype, ssm_states)
    with plain_text():
        save_figure(fig, path)


def memory_figure(lens: list[int], data: dict[str, list[int]], batch: int = 1, dtype: str = "bfloat16",
                  ssm_state_dtype: str | None = None, ssm_states: bool = True):
    """Cache bytes against context length as a matplotlib Figure (for save_figure, which closes it): log-log, one
    line per spec, drawn over the lengths in ascending order whatever their order in `lens`, each in its own
    (colour, marker, line style); the legend beside the axes, names as given (a leading `_` too), a long one
    wrapped and cut in the middle.

    lens: context lengths (ints >= 1); data: spec name -> one byte count (int >= 0) a length, names distinct as
    str() writes them; at most MAX_SERIES of them. batch (an int >= 1), dtype and ssm_state_dtype (names or
    aliases, as analyze takes them; None: the default SSM-state dtype) only label the y axis, which names the
    SSM states' dtype where it is not `dtype` and `ssm_states` says some plotted spec has them (a Mamba or
    Mamba-2 layer; False: none has, and the label names no SSM state). The ticks are the lengths as the table writes
    them and bytes as 512 MiB (plain text: no mathtext); a spec without a cache says so. Else ArchDSLError naming
    what is wrong."""
    lens, data = _memory_series(lens, data)
    ylabel = _cache_label(batch, dtype, ssm_state_dtype, ssm_states)
    order = sorted(range(len(lens)), key=lambda i: lens[i])  # a line joins its points left to right
    xs = [lens[i] for i in order]
    with plain_text():
        from matplotlib.ticker import FuncFormatter, NullLocator

        # The axes are a fixed size in inches and the figure is cut to what is drawn (save_figure's tight bbox),
        # so a wide legend widens the image instead of squeezing the axes (tight_layout could not, and warned).
        fig = new_figure(figsize=(AXES_WIDTH, 3.4))
        ax = fig.add_axes((0, 0, 1, 1))
        handles, labels = [], []
        for (name, values), (color, marker, ls), label in zip(data.items(), series_styles(len(data)),
                                                               _legend_labels(data)):
            line, = ax.plot(xs, [values[i] for i in order], color=color, marker=marker, linestyle=ls,
                            markersize=5)
            handles.append(line)
            labels.append(label)
        ax.set_xscale("log", base=2)
        at = sorted(set(lens))
        ax.set_xticks(at, _spaced_labels(at, [count_text(n) for n in at], AXES_WIDTH))
        ax.xaxis.set_minor_locator(NullLocator())
        if positive := [v for values in data.values() for v in values if v > 0]:  # zeros alone have no log scale
            ax.set_yscale("log", base=2)
            ax.yaxis.set_minor_locator(NullLocator())
            lo, hi = min(positive), max(positive)
            if sum(lo <= 2 ** k <= hi for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)) < 2:
                ax.set_yticks(sorted({lo, hi}))  # within an octave: the ends labelled, not one power of 2 or none
        else:
            ax.set_yticks([0])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v, "B").replace(".00", "")))
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        # handles and labels given: matplotlib drops an artist whose own label starts with "_" from a legend it
        # collects itself (a spec named `_baseline` had no entry, and a warning leaked)
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8,
                  ncol=math.ceil(len(handles) / LEGEND_ROWS))
        ax.set_title("cache bytes against context length")
    return fig


def _spaced_labels(at: list[int], labels: list[str], width: float) -> list[str]:
    """The x axis's tick labels with those that would overlap on a log axis `width` inches wide left blank (their
    ticks stay): from the left, each label is kept where it clears the last kept one; the last label is always
    kept, in place of the kept one before it where those two would touch. at: ascending lengths."""
    if len(at) < 2:
        return labels
    span = math.log2(at[-1] / at[0]) * 1.1  # matplotlib's margins: 5% each side
    x = [width * (0.05 * span + math.log2(n / at[0])) / span for n in at]  # each tick's place, inches
    half = [len(label) * TICK_CHAR / 2 + 0.02 for label in labels]  # half a label's width, and a gap
    kept = [0]
    for i in range(1, len(at)):
        if x[i] - half[i] >= x[kept[-1]] + half[kept[-1]]:
            kept.append(i)
    if kept[-1] != len(at) - 1:
        if len(kept) > 1 and x[-1] - half[-1] < x[kept[-1]] + half[kept[-1]]:
            kept.pop()
        kept.append(len(at) - 1)
    return [label if i in kept else "" for i, label in enumerate(labels)]


def _legend_labels(data) -> list[str]:
    """Each series' legend text: its name fitted (fit_text), `(no cache)` after it where all its counts are 0; where
    fitting made two alike, each of those gets its place in the table, [k]."""
    labels = [fit_text(name) + ("" if any(values) else " (no cache)") for name, values in data.items()]
    return [f"{label} [{k}]" if labels.count(label) > 1 else label for k, label in enumerate(labels, 1)]


def _cache_label(batch, dtype, ssm_state_dtype, ssm_states: bool = True) -> str:
    """The y axis's label: `inference cache` and what the counts assume, batch and dtypes by their canonical
    names (`half` is float16), the SSM states' only where `ssm_states` (some spec has them); else ArchDSLError."""
    from ..analysis import dtype_name, ssm_states_dtype

    if not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise ArchDSLError(f"plot_memory: batch must be an int >= 1, got {errors.shown(batch)}")
    try:
        dtype = dtype_name(dtype)
        states = None if ssm_state_dtype is None else dtype_name(ssm_state_dtype, "ssm_state_dtype")
    except ArchDSLError as e:
        raise ArchDSLError(f"plot_memory: {e.message}", hint=e.hint) from None
    states = ssm_states_dtype(dtype, states)
    named = ssm_states and states != dtype
    return f"inference cache\n(batch {int(batch):,}, {dtype}" + (f", SSM states {states})" if named else ")")


def _memory_series(lens, data) -> tuple[list[int], dict[str, list[float]]]:
    """memory_figure's series checked: lens positive ints, data a mapping of at most MAX_SERIES names, distinct as
    str() writes them, to as many byte counts >= 0 (as floats: a count past 2^63 is still drawn; one past a float's
    range, about 1.8e308, is ArchDSLError); else ArchDSLError naming what is wrong."""
    count = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    if isinstance(lens, (str, bytes)) or not isinstance(lens, Iterable) \
            or not (lens := list(lens)) or not all(count(n) and n > 0 for n in lens):
        raise ArchDSLError(f"plot_memory: lens must be context lengths, ints >= 1, got {errors.shown(lens)}")
    if not isinstance(data, Mapping) or not data:
        raise ArchDSLError(f"plot_memory: data must map each spec's name to its cache bytes, got "
                           f"{errors.shown(data)}")
    if len(data) > MAX_SERIES:
        raise ArchDSLError(f"plot_memory: {len(data):,} specs, and the plot draws at most {MAX_SERIES} distinctly; "
                           f"plot fewer (the table takes any number)")
    out: dict[str, list[float]] = {}
    for name, values in data.items():
        ok = not isinstance(values, (str, bytes)) and isinstance(values, Iterable)
        values = list(values) if ok else values
        if not ok or len(values) != len(lens) or not all(count(v) and v >= 0 for v in values):
            raise ArchDSLError(f"plot_memory: data[{name!r}] must be {plural(len(lens), 'byte count')} (ints >= 0), "
                               f"one a length, got {errors.shown(values)}")
        if str(name) in out:
            raise ArchDSLError(f"plot_memory: two of data's keys are {str(name)!r} as str() writes them (one is "
                               f"{errors.shown(name)}): their lines could not be told apart; give each its own name")
        try:
            out[str(name)] = [float(v) for v in values]
        except OverflowError:
            raise ArchDSLError(f"plot_memory: data[{name!r}] holds a count past what a plot can draw (about "
                               f"1.8e308 bytes)") from None
    return [int(n) for n in lens], out
