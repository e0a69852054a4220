"""Layout text → AST (archdsl/language/ast.py), with every failure an ArchDSLError.

    >>> parse_layout("7×mamba2, 1×attn(shared), moe every 2")
    Layout(items=(Repeat(count=7, ...), Repeat(count=1, ...)), modifiers=(Modifier(...),))

The grammar (grammar/layout.lark, shipped as the package `archdsl.grammar`) holds no
logic. This module adds what a context-free grammar cannot say:

- newlines separate entries like commas, but only between two entries (a newline after
  ',' or '(' or before ')' is plain whitespace) — a post-lexer filter decides;
- nesting is bounded (MAX_NESTING) so deep input is refused, never a RecursionError;
- values: `true` / `false` are booleans, `none` / `null` is None (an argument unset), other names strings;
- semantic checks (their rules in check.py, which check_layout applies to a tree made by hand):
  counts >= 1, `every N` with N >= 1 and 0 <= offset < N, no repeated argument, `shared` true,
  false or a group name, no empty group or layout, `at` indices >= 0 and distinct; and here
  no unknown string escape, modifiers after all layers;
- CRLF and a lone CR are line breaks, as in a YAML file (line_breaks);
- lark's exceptions become messages in plain words with the position and a caret.

The parse is LALR(1) with the AST built by callbacks during the parse (no parse tree,
no recursion), so a 1000-layer layout parses in milliseconds.
"""
from __future__ import annotations

import functools
import math
import re
import unicodedata
from importlib import resources

from lark import Lark, Token, Transformer
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import ArchDSLError, Source, clipped, shown
from .ast import Arg, Block, Group, Layer, Layout, Modifier, Repeat, Span
from .check import (EMPTY_GROUP, EMPTY_LAYOUT, MAX_DIGITS, MAX_NESTING, TOO_DEEP, args_error, count_error,
                    index_error, offset_error, period_error)

__all__ = ["parse_layout", "line_breaks", "MAX_NESTING"]

# tokens that can end an entry / begin one: a newline between them is a separator
_ENDS = frozenset({"NAME", "RPAR", "INT", "FLOAT", "STRING"})
_STARTS = frozenset({"NAME", "REPEAT", "LPAR"})


class _Semantic(Exception):
    """Raised inside the parse; turned into ArchDSLError by parse_layout."""

    def __init__(self, message: str, start: int, end: int | None = None, hint: str = ""):
        super().__init__(message)
        self.message, self.start, self.end, self.hint = message, start, end, hint


# --- loading the grammar ------------------------------------------------------------
def _grammar_text() -> str:
    """grammar/layout.lark: archdsl.grammar, installed or in a checkout (archdsl/__init__.py finds it there)."""
    return resources.files("archdsl.grammar").joinpath("layout.lark").read_text(encoding="utf-8")


class _Newlines:
    """Post-lexer: keep a newline only where it separates two entries; bound nesting."""

    always_accept = ()

    def process(self, stream):
        prev = None
        newline = None
        base, chain, stack = 0, 0, []  # nesting depth of the enclosing group, repeats since
        for tok in stream:
            kind = tok.type
            if kind == "NL":
                if newline is None:
                    newline = tok
                continue
            if newline is not None:
                if prev is not None and prev.type in _ENDS and kind in _STARTS:
                    yield newline
                    prev = newline
                newline = None
            if kind == "REPEAT":
                chain += 1
                if base + chain > MAX_NESTING:
                    raise _Semantic(TOO_DEEP, tok.start_pos, tok.end_pos)
            elif kind == "LPAR":
                if prev is not None and prev.type == "NAME":  # an argument list
                    stack.append(base)
                else:
                    stack.append(base)
                    base += chain + 1
                    if base > MAX_NESTING:
                        raise _Semantic(TOO_DEEP, tok.start_pos, tok.end_pos)
                chain = 0
            elif kind == "RPAR":
                base = stack.pop() if stack else 0
                chain = 0
            else:
                chain = 0
            yield tok
            prev = tok


# --- building the AST -------------------------------------------------------------
def _start(x) -> int:
    return x.start_pos if isinstance(x, Token) else x.span.start


def _end(x) -> int:
    return x.end_pos if isinstance(x, Token) else x.span.end


def _span(children) -> Span:
    return Span(_start(children[0]), _end(children[-1]))


def _int(tok: Token) -> int:
    digits = re.sub(r"[^0-9]", "", tok.value)
    if len(digits) > MAX_DIGITS:
        raise _Semantic(f"number too large: {clipped(tok.value.strip())}", tok.start_pos, tok.end_pos)
    text = re.match(r"[+-]?[0-9_]+", tok.value.strip()).group(0)
    return int(text)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


def _unquote(tok: Token) -> str:
    """A quoted string's value; an escape other than those of _ESCAPES is an error, not read as its letter."""
    def escape(m: re.Match) -> str:
        if m.group(1) not in _ESCAPES:
            at = tok.start_pos + 1 + m.start()
            raise _Semantic(f"unknown escape '\\{m.group(1)}' in a string: the escapes are \\\" \\' \\\\ \\n \\t \\r",
                            at, at + 2)
        return _ESCAPES[m.group(1)]

    return re.sub(r"\\(.)", escape, tok.value[1:-1], flags=re.S)


class _Val:
    __slots__ = ("value", "span")

    def __init__(self, value, span):
        self.value, self.span = value, span


class _Build(Transformer):
    """Callbacks run by the LALR parser as it reduces each rule."""

    def start(self, children):
        items, modifiers = [], []
        for c in children:
            if isinstance(c, Token):
                continue
            if isinstance(c, Modifier):
                modifiers.append(c)
            elif modifiers:
                raise _Semantic("layers must come before the modifiers; move this item in front of "
                                f"'{_text_of(modifiers[0])}'", c.span.start, c.span.end)
            else:
                items.append(c)
        if not items:
            if modifiers:
                m = modifiers[0]
                raise _Semantic("the layout has a modifier but no layers to apply it to; "
                                "write the layers first, as in 8×mamba2, moe every 2", m.span.start, m.span.end)
            raise _Semantic(EMPTY_LAYOUT, 0, 0)
        nodes = [c for c in children if not isinstance(c, Token)]
        return Layout(tuple(items), tuple(modifiers), _span(nodes))

    def layer(self, children):
        blocks = tuple(c for c in children if isinstance(c, Block))
        return Layer(blocks, _span(children))

    def group(self, children):
        items = tuple(c for c in children if not isinstance(c, Token))
        if not items:
            raise _Semantic(EMPTY_GROUP, _start(children[0]), _end(children[-1]))
        return Group(items, _span(children))

    def repeat(self, children):
        tok, body = children
        count = _int(tok)
        message = count_error(count)
        if message:
            raise _Semantic(message, tok.start_pos, tok.end_pos)
        return Repeat(count, body, _span(children))

    def block(self, children):
        name = children[0]
        args = tuple(c for c in children[1:] if isinstance(c, Arg))
        found = args_error(name.value, args)
        if found:
            message, a = found
            raise _Semantic(message, a.span.start, a.span.end)
        return Block(name.value, args, _span(children))

    def arg(self, children):
        name = children[0].value
        value = children[2].value if len(children) == 3 else True
        return Arg(name, value, _span(children))

    def value(self, children):
        (tok,) = children
        return _Val(self._value(tok), Span(tok.start_pos, tok.end_pos))

    @staticmethod
    def _value(tok):
        kind = tok.type
        if kind == "INT":
            return _int(tok)
        if kind == "FLOAT":
            value = float(tok.value.replace("_", ""))
            if not math.isfinite(value):
                raise _Semantic(f"number out of range: {clipped(tok.value)}", tok.start_pos, tok.end_pos)
            return value
        if kind == "STRING":
            return _unquote(tok)
        if tok.value == "true":
            return True
        if tok.value == "false":
            return False
        if tok.value in ("none", "null"):  # Python's and YAML's words for no value
            return None
        return tok.value

    def modifier(self, children):
        block, keyword = children[0], children[1]
        numbers = [c for c in children[2:] if c.type == "INT"]
        if keyword.type == "EVERY":
            period = _int(numbers[0])
            message = period_error(period)
            if message:
                raise _Semantic(message, numbers[0].start_pos, numbers[0].end_pos)
            offset = None
            if len(numbers) == 2:
                offset = _int(numbers[1])
                message = offset_error(period, offset)
                if message:
                    raise _Semantic(message, numbers[1].start_pos, numbers[1].end_pos)
                if offset == period - 1:  # the default, written out
                    offset = None
            return Modifier(block, every=period, offset=offset, span=_span(children))
        seen = {}
        for tok in numbers:
            i = _int(tok)
            message = index_error(i, seen)
            if message:
                raise _Semantic(message, tok.start_pos, tok.end_pos)
            seen[i] = tok
        return Modifier(block, at=tuple(sorted(seen)), span=_span(children))


def _text_of(mod: Modifier) -> str:
    from .fmt import format_modifier
    return format_modifier(mod)


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(_grammar_text(), parser="lalr", lexer="basic", transformer=_Build(), postlex=_Newlines(),
                maybe_placeholders=False, propagate_positions=False)


@functools.lru_cache(maxsize=1)
def _lexer_only() -> Lark:
    """The same grammar without callbacks: used to explain errors."""
    return Lark(_grammar_text(), parser="lalr", lexer="basic", postlex=_Newlines(), maybe_placeholders=False)


# --- the entry point ---------------------------------------------------------------
_LONE_CR = re.compile(r"\r(?!\n)")


def line_breaks(text: str) -> str:
    """`text` with each lone "\\r" (a classic Mac line end) a "\\n", as YAML reads it; "\\r\\n" is a line break
    already (its "\\r" is whitespace). Of the same length, so that offsets into `text` hold."""
    return _LONE_CR.sub("\n", text) if "\r" in text else text


def parse_layout(text: str, source: Source | None = None) -> Layout:
    """Parse layout text into a Layout. `source` places the text inside a file (a layout
    string inside a YAML spec) so errors point there; its text has its line breaks as line_breaks gives
    them. Raises ArchDSLError, only."""
    if not isinstance(text, str):
        raise ArchDSLError(f"a layout must be text, not {type(text).__name__}",
                           source=source, start=0 if source is not None else None)
    text = line_breaks(text)
    if source is None:
        source = Source(text)
    bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:  # an argument's byte that is not UTF-8 (Python keeps it as U+DC80..U+DCFF), or half a pair
        c = ord(text[bad])
        what = f"byte 0x{c - 0xDC00:02x} is not UTF-8" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x} is not a character"
        raise ArchDSLError(what, source=source, start=bad, end=bad + 1)
    try:
        return _lark().parse(text)
    except _Semantic as e:
        raise ArchDSLError(e.message, source=source, start=e.start, end=e.end, hint=e.hint) from None
    except UnexpectedInput as e:
        message, start, end = _explain(text, e)
        raise ArchDSLError(message, source=source, start=start, end=end) from None
    except (LarkError, RecursionError, ValueError) as e:  # should not happen; never leak them
        raise ArchDSLError(f"cannot parse the layout ({type(e).__name__}: {e})", source=source, start=0) from None


# --- explaining syntax errors in plain words ---------------------------------------------
_PUNCT = {"LPAR": "'('", "RPAR": "')'", "COMMA": "','", "PLUS": "'+'", "EQUAL": "'='",
          "EVERY": "'every'", "OFFSET": "'offset'", "AT": "'at'"}
_ORDER = ["NAME", "REPEAT", "INT", "VALUE", "LPAR", "PLUS", "EQUAL", "COMMA", "RPAR", "EVERY", "AT", "OFFSET",
          "$END"]


def _prefix_tokens(text: str, offset: int) -> list[Token]:
    """Tokens (after newline filtering) that start before `offset`."""
    out = []
    try:
        for tok in _lexer_only().lex(text[:offset]):
            out.append(tok)
    except Exception:  # noqa: BLE001 - the prefix was fine up to the error; keep what we have
        pass
    return out


def _accepts(tokens: list[Token]) -> set[str]:
    try:
        ip = _lexer_only().parse_interactive("")
        for tok in tokens:
            ip.feed_token(tok)
        return set(ip.accepts())
    except Exception:  # noqa: BLE001
        return set()


def _describe_expected(expected: set[str], prev: Token | None) -> str:
    words = []
    value_context = "FLOAT" in expected or "STRING" in expected
    for kind in _ORDER:
        if kind == "VALUE":
            if value_context:
                words.append("a value (a number, true, false, a name or a quoted string)")
            continue
        if kind not in expected or (value_context and kind in ("NAME", "INT")):
            continue
        if kind == "NAME":
            block_context = "REPEAT" in expected or (prev is not None and prev.type == "PLUS")
            words.append("a block name" if block_context else "an argument name")
        elif kind in ("REPEAT", "INT"):
            if "a number" not in words:
                words.append("a number" if "REPEAT" in expected else "a whole number")
        elif kind == "$END":
            words.append("the end of the layout")
        elif kind in ("EVERY", "AT", "OFFSET") and "NAME" in expected and "REPEAT" not in expected \
                and not (prev is not None and prev.type == "PLUS"):
            continue  # keywords allowed as argument names: covered by "an argument name"
        else:
            words.append(_PUNCT[kind])
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(tok: Token) -> str:
    kind = tok.type
    if kind == "$END":
        return "end of the layout"
    if kind == "NL":
        return "line break"
    if kind == "NAME":
        return f"name '{clipped(tok.value)}'"
    if kind in ("INT", "FLOAT"):
        return f"number {clipped(tok.value)}"
    if kind == "STRING":
        return f"string {clipped(tok.value)}"
    if kind == "REPEAT":
        return f"repetition '{clipped(tok.value)}'"
    return f"'{tok.value}'"


def _after(prev: Token | None) -> str:
    if prev is None:
        return ""
    if prev.type == "NL":
        return " after the line break"
    return f" after '{clipped(prev.value.strip())}'"


def _explain(text: str, e: UnexpectedInput) -> tuple[str, int, int]:
    """(message, start, end) for a lark syntax error."""
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream
        char = text[pos] if pos < len(text) else ""
        prefix = _prefix_tokens(text, pos)
        prev = prefix[-1] if prefix else None
        if char in "×*" and (prev is None or prev.type in ("COMMA", "NL", "LPAR", "PLUS")):
            return (f"'{char}' needs a count before it, as in 4{char}mamba2", pos, pos + 1)
        expected = _describe_expected(_accepts(prefix), prev)
        message = f"unexpected character {char!r}"
        if char == '"' or char == "'":
            message = "unterminated string: a quoted string must end on the same line"
        elif expected:
            message += f"; expected {expected}{_after(prev)}"
        return message, pos, pos + 1
    if isinstance(e, UnexpectedToken):
        tok = e.token
        at_end = tok.type == "$END"
        pos = len(text) if at_end else tok.start_pos
        prefix = _prefix_tokens(text, pos)
        prev = prefix[-1] if prefix else None
        # the parser's own `expected` merges contexts (LALR); replaying the prefix is exact
        expected_set = _accepts(prefix) or set(e.expected or ())
        expected = _describe_expected(expected_set, prev)
        if at_end:
            open_parens = _unclosed(prefix)
            if open_parens and "RPAR" in expected_set:
                p = open_parens[-1]
                return ("unclosed '(': the layout ends before its ')'", p.start_pos, p.end_pos)
            if not prefix:
                return ("empty layout: expected at least one layer, as in 4×mamba2", 0, 0)
            return (f"unexpected end of the layout; expected {expected}{_after(prev)}", pos, pos)
        message = f"unexpected {_describe_token(tok)}"
        if tok.type == "REPEAT" and tok.value.startswith("+") and prev is not None and prev.type in ("NAME", "RPAR"):
            return (f"'+' joins the blocks of one layer and takes no count ('{clipped(tok.value)}'): to repeat a "
                    f"layer, put the count before it, as in 2×(mamba2+mlp)", pos, tok.end_pos)
        # `x NAME` reads as a repetition sign without its count, but not where the x is an argument's value
        # (`attn(act=x gelu)`: a comma or quotes left out), where no repetition can stand
        if tok.type == "NAME" and prev is not None and prev.type == "NAME" and prev.value in ("x", "X") \
                and not (len(prefix) > 1 and prefix[-2].type == "EQUAL"):
            return (f"'{prev.value}' needs a count before it, as in 4×{clipped(tok.value)}", prev.start_pos,
                    prev.end_pos)
        number = tok if tok.type in ("INT", "FLOAT") else prev if tok.type == "NAME" and tok.value[:1] == "_" \
            and prev is not None and prev.type in ("INT", "FLOAT") and prev.end_pos == tok.start_pos else None
        malformed = _malformed_number(text, number.start_pos) if number is not None else None
        if malformed:
            return malformed
        if tok.type == "INT" and "REPEAT" in expected_set:
            at = _at_list_before(prefix)
            if at is not None:  # `attn at 1, 2`: the comma ends the modifier, and `2` starts nothing
                indices = [t.value.strip() for t in prefix[prefix.index(at) + 1:-1]] + [tok.value.strip()]
                listed = " ".join(indices[:6]) + (" ..." if len(indices) > 6 else "")
                block = prefix[_entry_start(prefix, prefix.index(at))].value
                return (f"'at' indices are separated by spaces, not commas: {clipped(block)} at {listed}",
                        prev.start_pos, prev.end_pos)
            n = clipped(tok.value.strip())
            gap = tok.end_pos + len(text[tok.end_pos:]) - len(text[tok.end_pos:].lstrip(" \t"))
            odd = text[gap:gap + 1]
            if odd and (odd.isspace() or unicodedata.category(odd) in ("Zs", "Cf")):  # a no-break space, say
                return (f"unexpected character {odd!r} ({unicodedata.name(odd, 'a space').lower()}) after the count "
                        f"{n}: write a plain space or none before its repetition sign", gap, gap + 1)
            return (f"a count needs a repetition sign after it, as in {n}×mamba2", pos, tok.end_pos)
        if expected:
            message += f"; expected {expected}{_after(prev)}"
        if tok.type in ("EVERY", "AT") and "NAME" not in expected_set:  # `(mamba2, moe every 2)`, `2×moe every 2`
            message += ("; a modifier (`moe every 2`, `attn at 3 7`) is an entry of its own after the layers: one "
                        "block, outside parentheses and repeats")
        end = tok.end_pos if tok.end_pos is not None else pos + 1
        return message, pos, max(end, pos + 1)
    if isinstance(e, UnexpectedEOF):
        prefix = _prefix_tokens(text, len(text))
        prev = prefix[-1] if prefix else None
        expected = _describe_expected(set(e.expected or ()), prev)
        return (f"unexpected end of the layout; expected {expected}{_after(prev)}", len(text), len(text))
    return (f"cannot parse the layout: {e}", 0, 1)


# a number as far as its digits, underscores, point and exponent go (`1__0`, `1.5_`); _NUMBER: a well-formed one,
# as the grammar's INT and FLOAT read it
_NUMBER_RUN = re.compile(r"[+-]?[0-9][0-9_]*(?:\.[0-9_]+)?(?:[eE][+-]?[0-9_]+)?")
_NUMBER = re.compile(r"[+-]?[0-9]+(_[0-9]+)*((\.[0-9]+(_[0-9]+)*)?([eE][+-]?[0-9]+)?)?\Z")


def _malformed_number(text: str, start: int) -> tuple[str, int, int] | None:
    """(message, start, end) where the number at `start` has an underscore other than between two digits (`1__0`,
    `1_`, `1_.5`): the lexer reads it as a number and a name, which the parser's message would put down to something
    else (a count without its repetition sign). None for a number that ends where a name goes on (`7_mamba2`)."""
    m = _NUMBER_RUN.match(text, start)
    if m is None:
        return None
    run = m.group(0)
    after = text[start + len(run):start + len(run) + 1]
    if "_" not in run or _NUMBER.match(run) or (after.isalnum() or after == "_") and after not in "xX":
        return None
    return (f"malformed number {shown(run)}: an underscore goes between two digits, as in 1_000", start, start + len(run))


def _at_list_before(prefix: list[Token]) -> Token | None:
    """The `at` of a modifier whose indices the comma ending `prefix` follows (`attn at 1,`), else None."""
    k = len(prefix) - 2
    if k < 1 or prefix[-1].type != "COMMA" or prefix[k].type != "INT":
        return None
    while k >= 0 and prefix[k].type == "INT":
        k -= 1
    return prefix[k] if k >= 0 and prefix[k].type == "AT" else None


def _entry_start(tokens: list[Token], k: int) -> int:
    """The index of the first token of the entry that tokens[k] is in: after the separator before it outside
    parentheses."""
    depth = 0
    while k > 0:
        kind = tokens[k - 1].type
        if depth == 0 and kind in ("COMMA", "NL", "LPAR"):
            break
        depth += (kind == "RPAR") - (kind == "LPAR")
        k -= 1
    return k


def _unclosed(tokens: list[Token]) -> list[Token]:
    stack = []
    for tok in tokens:
        if tok.type == "LPAR":
            stack.append(tok)
        elif tok.type == "RPAR" and stack:
            stack.pop()
    return stack
