"""ArchDSLError: every bad input ends here, with a place and a picture of it.

    specs/jamba.yaml:6:24: unknown block 'mamab'; did you mean 'mamba', 'mamba2'?
      layout: 32×mamab, attn every 8 offset 4
                 ^~~~~
"""
from __future__ import annotations

import difflib
import math
import reprlib
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Text that errors point into. `line0`/`col0` place `text` inside a larger file
    (a layout string inside a YAML file), so positions are reported in the file's terms.

    Where the text is not a plain copy of one stretch of the file (a YAML string that is
    folded over lines or holds escapes), `offsets` maps it: offsets[i] is the offset in
    `file_text` of text[i], and offsets[len(text)] where the text ends."""

    text: str
    file: str = "<layout>"
    line0: int = 0  # 0-based line of text[0] in the file
    col0: int = 0  # 0-based column of text[0] in the file
    file_text: str | None = None
    offsets: tuple[int, ...] | None = None

    def locate(self, offset: int) -> tuple[int, int]:
        """1-based (line, col) in the file of character `offset` of `text`."""
        offset = max(0, min(offset, len(self.text)))
        if self.offsets is not None and self.file_text is not None:
            return _line_col(self.file_text, self.offsets[offset])
        line, col = _line_col(self.text, offset)
        return self.line0 + line, col + (self.col0 if line == 1 else 0)

    def line_text(self, line: int) -> str:
        lines = (self.file_text if self.file_text is not None else self._padded()).split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""

    def _padded(self) -> str:
        return "\n" * self.line0 + " " * self.col0 + self.text


def _visible(c: str) -> str:
    """A character of an excerpt as it is printed: a control character or a line or paragraph separator (U+2028,
    which YAML reads as a line break) as one replacement character, so that it neither acts on the terminal nor
    moves the caret's line."""
    return "\ufffd" if c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp") else c


EXCERPT = 100  # columns of a source line that an error shows


def _window(text: str, at: int, width: int) -> tuple[str, int, int]:
    """(the part of line `text` an excerpt shows, the caret's 0-based column in it, the underline's width): a line
    of more than EXCERPT columns is cut to EXCERPT of them around column `at`, with '…' where it is cut, and the
    underline stops where the part shown does (a 140 KB line made a 280 KB message)."""
    if len(text) <= EXCERPT:
        return text, at, width
    start = max(0, min(at - EXCERPT // 3, len(text) - EXCERPT))
    end = start + EXCERPT
    shown_text = ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
    return shown_text, at - start + (1 if start else 0), max(1, min(width, end - at))


def _cells(c: str) -> int:
    """The terminal columns character `c` takes: 2 for a wide one (CJK), 0 for a combining mark or a zero-width
    format character, else 1 (an unassigned one too: Unicode calls U+FFFE wide)."""
    category = unicodedata.category(c)
    if unicodedata.combining(c) or category in ("Mn", "Me", "Cf"):
        return 0
    return 2 if category != "Cn" and unicodedata.east_asian_width(c) in ("W", "F") else 1


def _line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, col) of character `offset` of `text`."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


class ArchDSLWarning(UserWarning):
    """Something done, but not quite as asked (a character no installed font has, drawn as a box); the CLI
    says it as `warning: ...` on stderr."""


def warn(message: str) -> None:
    """An ArchDSLWarning said at the user's line: the first frame outside the archdsl package, whichever of its
    functions (the public wrapper or the one it calls) the user called."""
    import os
    import sys
    import warnings

    inside = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ArchDSLWarning, stacklevel=level)


class ArchDSLError(Exception):
    """A bad layout, spec, argument or checkpoint: says where and what.

    Attributes: message, file, line, col (1-based, or None), excerpt (source line + caret),
    hint (closest valid names)."""

    def __init__(self, message: str, *, source: Source | None = None, start: int | None = None,
                 end: int | None = None, file: str | None = None, line: int | None = None,
                 col: int | None = None, width: int = 1, hint: str = ""):
        self.message, self.hint = message, hint
        self.file = source.file if source is not None else file
        self.line, self.col, self.excerpt = line, col, ""
        if source is not None and start is not None:
            self.line, self.col = source.locate(start)
            end_line, end_col = source.locate(end if end is not None else start + 1)
            width = max(1, end_col - self.col) if end_line == self.line else 1
            text, at, width = _window("".join(_visible(c) for c in source.line_text(self.line)), self.col - 1, width)
            pad = "".join(c if c == "\t" else " " * _cells(c) for c in text[:at])  # tabs kept: the caret lines up
            width = max(1, sum(_cells(c) for c in text[at:at + width]))
            self.excerpt = f"  {text}\n  {pad}^{'~' * (width - 1)}"
        super().__init__(self.render())

    def place(self) -> str:
        """'file:line:col', as much of it as is known, or ''."""
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}" + (f":{self.col}" if self.col is not None else "")
        return where

    def render(self) -> str:
        where = self.place()
        head = f"{where}: {self.message}" if where else self.message
        if self.hint:
            head += f"; {self.hint}"
        return head + ("\n" + self.excerpt if self.excerpt else "")

    def prefixed(self, cause: str) -> ArchDSLError:
        """This error told as the doing of `cause` (a command-line option that changed what the place holds):
        'cause: message (at place)', the picture and the hint kept."""
        where = self.place()
        new = ArchDSLError(f"{cause}: {self.message}" + (f" (at {where})" if where else ""), hint=self.hint)
        new.excerpt = self.excerpt
        new.args = (new.render(),)
        return new


class _Repr(reprlib.Repr):
    def repr_int(self, x, level):
        """An int of 16 digits or more in scientific notation ('1.000e+400'): as telling as its digits, and str()
        refuses an int of more than 4300."""
        from .units import sci

        return repr(x) if abs(x) < 10**15 else ("-" if x < 0 else "") + sci(abs(x))


_SHOWN = _Repr()  # its limits set one by one: Python 3.10 and 3.11 take no arguments
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 4, 4, 4, 60, 60


TOO_DEEP = "nested too deeply to read (past Python's recursion limit)"


def shown(value) -> str:
    """repr(value) for an error message, cut short: a YAML value may be a list of lists a few aliases deep (a
    300-byte file that stands for 10^8 strings), whose whole repr would not end."""
    text = _SHOWN.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def clipped(text: str, limit: int = 60) -> str:
    """`text` (a name, a part of a layout) as a message quotes it, cut to `limit` characters: as shown() cuts a
    value's repr."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def finite(o):
    """`o` with every float that is inf or NaN replaced by None, in dicts, lists and tuples too: JSON has no such
    numbers, and the `NaN` json.dumps writes is refused by jq, JavaScript and pandas' strict readers."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def did_you_mean(name: str, valid, aliases: dict[str, str] | None = None) -> str:
    """'did you mean 'a', 'b'?' for the closest valid names, else the list of valid names. aliases: other names
    matched too, each suggested as the name it stands for (`float` as 'float32'), once."""
    aliases = {a: v for a, v in (aliases or {}).items() if v in set(valid)}
    valid = sorted(set(valid) | set(aliases))
    by_case: dict[str, list[str]] = {}  # ranked without case: `Mamba` is closest to 'mamba', then 'mamba2'
    for v in valid:
        by_case.setdefault(v.lower(), []).append(v)
    close = [v for c in difflib.get_close_matches(name.lower(), list(by_case), n=3, cutoff=0.5) for v in by_case[c]]
    close = list(dict.fromkeys(aliases.get(c, c) for c in close))
    if close:
        return "did you mean " + ", ".join(repr(c) for c in close[:3]) + "?"
    return "valid names: " + ", ".join(v for v in valid if v not in aliases)


def out_of_memory(e: BaseException) -> bool:
    """An allocation the sizes asked for failed: Python's MemoryError, torch's OutOfMemoryError (CUDA) or its CPU
    allocator's RuntimeError."""
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(e))


def check_flag(where: str, name: str, value, none_ok: bool = False) -> bool | None:
    """`value` as a bool: True or False (numpy's too), or None where none_ok (an "auto" setting); anything else
    ("no", 1) ArchDSLError naming it, not a silent truthy yes."""
    if none_ok and value is None:
        return None
    if not isinstance(value, bool) and getattr(getattr(value, "dtype", None), "kind", None) != "b":
        raise ArchDSLError(f"{where}: {name} must be {'None, ' if none_ok else ''}True or False, got {shown(value)}")
    return bool(value)


def check_path(where: str, path, what: str = "path") -> str:
    """`path` (a str or an os.PathLike of one) as a str; else ArchDSLError "where: expected a what ...", an empty
    one too (which would mean the current directory)."""
    import os

    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise ArchDSLError(f"{where}: expected a {what} (str or os.PathLike), got {type(path).__name__}")
    if not path:
        raise ArchDSLError(f"{where}: expected a {what}, got an empty string")
    if "\0" in path:
        raise ArchDSLError(f"{where}: the {what} {path!r} holds a NUL byte, which no file name can")
    return path
