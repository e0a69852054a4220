"""Pictures of a layout: a strip of layers coloured by kind (SVG / PNG through matplotlib), a DOT graph, a
Mermaid flowchart; and the cache-versus-context plot. `draw` writes a layout's picture in the format its path's
suffix names.

The parts: common (colours, folding constants, formats, check_path, fit_text), strip (the strip figure and its
rows), figure (matplotlib's side: plain text, font fallback, save_figure), charts (to_dot, to_mermaid and their
folding), memory (memory_figure, plot_memory). matplotlib is imported only inside the functions that draw, so
importing this package does not import it.
"""
from __future__ import annotations

from .. import errors
from ..errors import ArchDSLError
from ..spec import load_spec
from .charts import MERMAID_MAX_EDGES, MERMAID_MAX_TEXT, Fold, fold_layers, to_dot, to_mermaid
from .common import (FOLD, FORMATS, GROUP_COLORS, KIND_COLORS, PER_ROW, PLOT_FORMATS, check_path, fit_text,
                     group_colors, group_styles)
from .figure import fit_fonts, font_with, plain_text, save_figure
from .memory import MAX_SERIES, memory_figure, plot_memory, series_styles
from .strip import HATCHES, MAX_ROWS, MIN_COLS, group_marks, strip_figure, strip_rows

__all__ = [
    "draw", "check_path", "FORMATS", "PLOT_FORMATS", "KIND_COLORS", "GROUP_COLORS", "HATCHES", "PER_ROW", "FOLD",
    "MAX_ROWS", "MIN_COLS", "MERMAID_MAX_EDGES", "MERMAID_MAX_TEXT", "group_colors", "strip_rows", "strip_figure",
    "plain_text", "fit_fonts", "font_with", "save_figure", "Fold", "fold_layers", "to_dot", "to_mermaid",
    "plot_memory", "memory_figure", "series_styles", "MAX_SERIES", "group_styles", "group_marks", "fit_text",
]


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
    from ..atomic import write_atomic

    try:
        write_atomic(path, text)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None
