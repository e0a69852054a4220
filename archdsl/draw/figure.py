"""matplotlib's side of the pictures: texts drawn as written (plain_text), fonts that fall back glyph by glyph
to installed fonts that have a name's characters (fit_fonts, font_with), and a figure saved whole or not at all
(save_figure)."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import lru_cache

from .. import errors
from ..errors import ArchDSLError, warn
from ..units import plural
from .common import PLOT_FORMATS, check_path


@contextmanager
def plain_text():
    """matplotlib with every text drawn as written: no mathtext, so a '$' in a name is a '$'."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def new_figure(**kwargs):
    """A matplotlib Figure(**kwargs) on an Agg canvas of its own, not pyplot's: drawing it (canvas.draw,
    get_renderer) works as on pyplot's, and the caller's backend (a notebook's inline one) is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


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
        warn(f"no installed font has {plural(len(left), 'character')} of the picture's names ("
             f"{chars[:20]}{'…' if len(chars) > 20 else ''}): they are drawn as boxes; install a font "
             f"that has them (Noto Sans CJK for Chinese, Japanese, Korean), or write .dot or .mmd")


_NO_DATE = {".svg": {"Date": None}, ".pdf": {"CreationDate": None, "ModDate": None}}  # PNG has none


def save_figure(fig, path: str, dpi=150, bbox_inches="tight") -> None:
    """Render a matplotlib Figure into memory, then write it with atomic.write_atomic (beside `path` under a
    temporary name, renamed into place), so a failed or interrupted render leaves nothing half-written; missing
    parent directories are created. The suffix of `path` picks the format (.svg, .png or .pdf). The figure is
    closed, on error too. Texts fall back to installed fonts for characters the default font lacks (fit_fonts).
    One figure gives the same bytes on every run: no date in an SVG's or PDF's metadata, and the SVG's ids drawn
    from a fixed salt, not at random (pictures are committed to docs: a diff shows what changed)."""
    import io

    import sys

    import matplotlib
    from matplotlib.figure import Figure

    from ..atomic import write_atomic

    if not isinstance(fig, Figure):
        raise ArchDSLError(f"save_figure: fig must be a matplotlib Figure, got {errors.shown(fig)}")
    buf = io.BytesIO()
    try:
        ext = check_path(path, PLOT_FORMATS, "save_figure")
        fit_fonts(fig)
        with warnings.catch_warnings():  # said once by fit_fonts, not a glyph at a time
            warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from", UserWarning)
            with matplotlib.rc_context({"svg.hashsalt": "archdsl"}):
                fig.savefig(buf, format=ext[1:], dpi=dpi, bbox_inches=bbox_inches, metadata=_NO_DATE.get(ext))
    except OSError as e:  # a backend's own files (fonts, a renderer's scratch space)
        raise ArchDSLError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if "matplotlib.pyplot" in sys.modules:  # a figure pyplot made (a caller's): closed, as ours need not be
            sys.modules["matplotlib.pyplot"].close(fig)
    write_atomic(path, buf.getvalue())
