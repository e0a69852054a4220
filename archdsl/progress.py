"""Progress on stderr: a tqdm bar on a terminal; elsewhere (a log, a batch job) plain lines, where a bar's
carriage returns would pile up.

    bar = progress_bar("train demo", total=1000, unit="step", every=30.0)
    bar.set_postfix({"loss": "2.31"}); bar.update(1); ...; bar.close()
"""
from __future__ import annotations

import sys
import time


def progress_bar(desc: str, total: int | None, unit: str, every: float = 30.0, initial: int = 0,
                 lines: bool | None = None, **tqdm_kwargs):
    """A tqdm bar where stderr is a terminal, else `Lines` (one line at most every `every` seconds); `lines`
    forces one or the other."""
    if lines is None:
        lines = not sys.stderr.isatty()
    if lines:
        return Lines(desc, total, unit, every, initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, **tqdm_kwargs)


class Lines:
    """tqdm's update / set_postfix / set_postfix_str / close as plain lines on stderr,
    `DESC: N/TOTAL UNIT (POSTFIX), S s`: one at most every `every` seconds, and a last one at close where any came
    before (a run shorter than `every` prints none)."""

    def __init__(self, desc: str, total: int | None, unit: str, every: float, initial: int = 0):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.n = self.shown = initial
        self.post, self.printed = "", False
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if n and time.monotonic() - self.last >= self.every:
            self._line()

    def set_postfix(self, post: dict, refresh: bool = True) -> None:
        self.post = ", ".join(f"{k}={v}" for k, v in post.items())

    def set_postfix_str(self, s: str) -> None:
        self.post = s

    def close(self) -> None:
        if self.printed and self.n != self.shown:
            self._line()

    def _line(self) -> None:
        self.last, self.shown, self.printed = time.monotonic(), self.n, True
        of = f"/{self.total}" if self.total is not None else ""
        post = f" ({self.post})" if self.post else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}{post}, {self.last - self.start:.0f} s", file=sys.stderr,
              flush=True)
