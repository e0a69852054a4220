"""Counts and figures as people write and read them: '8k' → 8192, 1234567 → '1.23M', '2 tokens'.

Shared by the command line, the reports and the plots; no torch.
"""
from __future__ import annotations

import math
import re

from .errors import ArchDSLError

MAX_COUNT = 2**40  # the largest count any option takes: a trillion tokens is past every machine
MAX_SEED = 2**63 - 1  # seeds are signed 64-bit integers (seed + 1, seed + 2 seed more generators)
# The highest peak learning rate (train and explore's probes): AdamW moves each weight by up to about lr a step, so
# past 1 a run only diverges; and torch refuses a step of lr / (1 - beta1) past float32's 3.4e38 (lr 1e300 was a
# RuntimeError at the first step). At most 1, that step stays below 1e16 for any beta1 below 1.
MAX_LR = 1.0
MAX_LR_WHY = "AdamW moves each weight by up to about lr a step: more only diverges"


def parse_count(text: str, flag: str = "", minimum: int = 1) -> int:
    """'4096', '8k', '64K', '1m', '1_000', '1.5k' → int in minimum..2^40; k, m, g are 1024, 1024², 1024³ (as
    count_text writes them back), and a decimal takes one where it makes a whole count (1.5k = 1536, not 1.3k).
    Errors start with `flag` (e.g. '--seq-len')."""
    where = f"{flag}: " if flag else ""
    t = str(text).strip().lower().replace("_", "")
    mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    try:
        if not t.isascii():  # int() reads any script's digits ('１０', '٣'); a count is written in ASCII
            raise ValueError(text)
        decimal = re.fullmatch(r"([+-]?[0-9]+)\.([0-9]+)", digits) if mult > 1 else None
        if decimal:  # exact: int() of the digits, never a float's rounding
            whole, frac = decimal.groups()
            scaled = int(whole + frac) * mult
            value, rest = divmod(abs(scaled), 10 ** len(frac))
            if rest:
                exact = f"{'-' * (scaled < 0)}{value:,}.{str(rest).zfill(len(frac)).rstrip('0')}"
                raise ArchDSLError(f"{where}{text!r} is {exact}, not a whole count (k, m, g are 1024, 1024², "
                                   f"1024³: 1.5k is 1536)")
            value = -value if scaled < 0 else value
        else:
            value = int(digits) * mult
    except ValueError:
        raise ArchDSLError(f"{where}not a count: {text!r} (write 4096, 8k or 1m)") from None
    if value < minimum:
        what = "a positive count" if minimum == 1 else f"at least {minimum}"
        raise ArchDSLError(f"{where}must be {what}, got {text!r}")
    if value > MAX_COUNT:
        raise ArchDSLError(f"{where}{text!r} is too large (at most 2^40 = {MAX_COUNT:,})")
    return value


def count(flag: str, minimum: int = 1):
    """An argparse type: parse_count, its errors naming the option `flag`."""
    return lambda text: parse_count(text, flag, minimum)


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
    prefix takes it: 999,999 is '1.00M', not '1000.00K'. Past the last prefix (Y, YiB) in scientific notation:
    '1.24e+27 B'."""
    base, prefixes = 1000, ("", "K", "M", "G", "T", "P", "E", "Z", "Y")
    if unit == "B":
        base, prefixes = 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    if abs(n) < base ** len(prefixes):  # else past the prefixes (and maybe past a float's range): not divided
        x = n
        for i, p in enumerate(prefixes):
            if abs(round(x, 2 if i else 0)) < base:
                text = f"{x:.2f}" if i else f"{x:.0f}"
                return f"{text} {p}" if unit == "B" else text + p
            x /= base
    try:
        text = f"{n:.2e}"
    except OverflowError:  # an int past a float's range
        text = sci(n)
    return f"{text} B" if unit == "B" else text


def to_float(v) -> float:
    """float(v) of a real number, an int past a float's range as ±inf (for the range check that follows)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf
