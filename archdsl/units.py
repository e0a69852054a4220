"""Counts and figures as people write and read them: '8k' → 8192, 1234567 → '1.23M', '2 tokens'.

Shared by the command line, the reports and the plots; no torch.
"""
from __future__ import annotations

import math

from .errors import ArchDSLError

MAX_COUNT = 2**40  # the largest count any option takes: a trillion tokens is past every machine
MAX_SEED = 2**63 - 1  # seeds are signed 64-bit integers (seed + 1, seed + 2 seed more generators)


def parse_count(text: str, flag: str = "", minimum: int = 1) -> int:
    """'4096', '8k', '64K', '1m', '1_000' → int in minimum..2^40; errors start with `flag` (e.g. '--seq-len')."""
    where = f"{flag}: " if flag else ""
    t = str(text).strip().lower().replace("_", "")
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(t[-1:], 1)
    try:
        if not t.isascii():  # int() reads any script's digits ('１０', '٣'); a count is written in ASCII
            raise ValueError(text)
        value = int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise ArchDSLError(f"{where}not a count: {text!r} (write 4096, 8k or 1m)") from None
    if value < minimum:
        what = "a positive count" if minimum == 1 else f"at least {minimum}"
        raise ArchDSLError(f"{where}must be {what}, got {text!r}")
    if value > MAX_COUNT:
        raise ArchDSLError(f"{where}{text!r} is too large (at most 2^40 = {MAX_COUNT:,})")
    return value


def parse_seed(text: str) -> int:
    """--seed: an integer in 0..2^63-1."""
    try:
        if not text.isascii():
            raise ValueError(text)
        value = int(text)
    except ValueError:
        raise ArchDSLError(f"--seed: not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise ArchDSLError(f"--seed: must be in 0..2^63-1 (a signed 64-bit integer), got {text}")
    return value


def count_text(n: int) -> str:
    """A count as one would write it: 1k, 8k, 1m when a multiple of 1024 (1024², 1024³), else in full."""
    for suffix, unit in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def sci(n: int) -> str:
    """A huge count in scientific notation, '1.234e+15'; past a float's range, 'about 10^404'."""
    try:
        return f"{n:.3e}"
    except OverflowError:
        return f"about 10^{math.floor(math.log10(n))}"


def plural(n: int, word: str, words: str = "") -> str:
    """'1 token', '2 tokens', '1,024 tokens'; `words` where the plural is not word + 's' ('processes')."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


def human(n: float, unit: str = "") -> str:
    """1234567 → '1.23M'; bytes with unit='B' use binary prefixes. A figure that rounds up to the next
    prefix takes it: 999,999 is '1.00M', not '1000.00K'."""
    base, prefixes = 1000, ("", "K", "M", "G", "T", "P")
    if unit == "B":
        base, prefixes = 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    for i, p in enumerate(prefixes):
        if abs(round(n, 2 if i else 0)) < base or p == prefixes[-1]:
            text = f"{n:.2f}" if i else f"{n:.0f}"
            return f"{text} {p}" if unit == "B" else text + p
        n /= base
    return str(n)


def to_float(v) -> float:
    """float(v) of a real number, an int past a float's range as ±inf (for the range check that follows)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf
