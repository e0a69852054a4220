"""The cache-versus-context plot (plot_memory): cache bytes against context length, one line per spec."""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping

from .. import errors
from ..errors import ArchDSLError
from ..units import count_text, human, plural
from .common import PLOT_FORMATS, check_path
from .figure import plain_text, save_figure


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
