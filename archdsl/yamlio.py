"""YAML in and out for specs and design spaces: read safely with YAML 1.2's floats, every mapping value's place
kept (an error points into the file, inside a layout string too), duplicate keys and recursive aliases refused;
written so that it reads back the same."""
from __future__ import annotations

import os
import re
import sys
import unicodedata

import yaml

from .errors import TOO_DEEP, ArchDSLError, Source, shown


def read_text(path: str) -> str:
    """A file's text as UTF-8; unreadable or binary files end in ArchDSLError, and so do devices, FIFOs and
    sockets, before they are opened (reading /dev/zero would not end, opening a FIFO waits for a writer)."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise ArchDSLError(f"{path} is not a regular file (a device, FIFO or socket)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArchDSLError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is no part of the text
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ArchDSLError(f"not a UTF-8 text file (byte {e.start}: 0x{data[e.start]:02x})", file=path, line=line) from None


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's numbers: `1e-6` (no dot) is a number, not a string, and `12:48` is
    text, not YAML 1.1's base 60 (768). An integer with a leading 0 (`01024`: 532 in YAML 1.1, octal; 1024 in YAML
    1.2) is refused, as is a scalar that Python refuses to make (an integer past its digit limit, a date such as
    2024-02-30): each a YAML error at its place, not a ValueError or a silent other number."""

    def _checked(self, node, make):
        try:
            return make(self, node)
        except ValueError as e:
            why = f"over {sys.get_int_max_str_digits()} digits" if "digits" in str(e) else e
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shown(node.value)} as {node.tag.rpartition(':')[2]}: {why}",
                node.start_mark) from None


def _text(self, node):
    """A string, refused where it holds a lone surrogate (`"\\ud83d"`): no character, and no file or terminal
    can be written with it."""
    value = self.construct_scalar(node)
    bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise yaml.constructor.ConstructorError(
            None, None, f"\\u{ord(bad):04x} is half of a UTF-16 surrogate pair, not a character: write the character "
            f"itself or its \\U escape (\\U0001F600)", node.start_mark)
    return value


def _int(self, node):
    """An int, refused where YAML 1.1 and 1.2 read it as two numbers: a leading 0 (octal in 1.1)."""
    digits = self.construct_scalar(node).lstrip("+-").replace("_", "")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        value = self.construct_scalar(node)
        raise yaml.constructor.ConstructorError(
            None, None, f"{shown(value)}: a leading 0 reads as octal in YAML 1.1 ({int(digits, 8)}) and as "
            f"{int(digits)} in YAML 1.2: write the number without it", node.start_mark)
    return yaml.SafeLoader.construct_yaml_int(self, node)


YamlLoader.add_constructor("tag:yaml.org,2002:str", _text)
for _tag, _make in (("int", _int), ("timestamp", yaml.SafeLoader.construct_yaml_timestamp)):
    YamlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", lambda self, node, make=_make: self._checked(node, make))


class YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings that YamlLoader reads as floats (a name `1e5`), so that what
    Spec.to_yaml writes loads back the same."""

    def analyze_scalar(self, scalar):
        """A NEL (U+0085) only in double quotes, as the escape \\N: written raw, it was read back as a line break."""
        analysis = super().analyze_scalar(scalar)
        if "\x85" in scalar:
            analysis.allow_flow_plain = analysis.allow_block_plain = False
            analysis.allow_single_quoted = analysis.allow_block = False
        return analysis


# YAML 1.1's int and float patterns (PyYAML's) without their base-60 branch: 12:48 (768) and 1:30.5 (90.5) read
# as text, as in YAML 1.2
_NUMBERS = {
    "tag:yaml.org,2002:int": re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                                        r"|[-+]?0x[0-9a-fA-F_]+)$"),
    "tag:yaml.org,2002:float": re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                                          r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                                          r"|\.(?:nan|NaN|NAN))$"),
}
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, _NUMBERS.get(tag, rx)) for tag, rx in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

_FLOAT12 = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")  # YAML 1.2's `1e-6`, without a dot
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT12, list("-+0123456789"))
YamlDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT12, list("-+0123456789"))


def dump_yaml(data) -> str:
    """YAML text of plain data (a spec's, a space's) that read_yaml reads back the same: a name `1e5` quoted."""
    return yaml.dump(data, Dumper=YamlDumper, sort_keys=False, allow_unicode=True)


# what PyYAML (YAML 1.1) reads as a line break beside \n and \r, where an editor and every error's line:col see
# none: a YAML error after one may stem from it
YAML_BREAKS = "\x85\u2028\u2029"


def read_yaml(text: str, file: str):
    """(composed node tree, plain data) of YAML text, safely; a syntax error points into the file."""
    try:
        root = yaml.compose(text, Loader=YamlLoader)
        _unique_keys(root, text, file)
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a safe loader)
        _flatten_merges(root)
        return root, data
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (a control character, U+FFFF)
        what = (f"the control character U+{e.character:04X} (YAML text holds none but tab and line breaks)"
                if unicodedata.category(chr(e.character)) == "Cc" else
                f"U+{e.character:04X} is not a character YAML text may hold")
        raise ArchDSLError(f"invalid YAML: {what}", source=Source(text, file, file_text=text),
                           start=e.position) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if mark is None:
            raise ArchDSLError(f"invalid YAML: {problem}", file=file) from None
        source = Source(text, file, file_text=text)
        at = len(text.rstrip()) if mark.index >= len(text) else mark.index  # at the end: where the last line ends
        brk = re.search(f"[{YAML_BREAKS}]", text[:at])
        hint = "" if brk is None else (f"U+{ord(brk.group()):04X} at {':'.join(map(str, source.locate(brk.start())))}"
                                       f" is a line break to YAML, though an editor may show none")
        raise ArchDSLError(f"invalid YAML: {problem}", source=source, start=at, hint=hint) from None
    except RecursionError:  # [[[[...]]]] some thousand deep: past the parser's stack
        raise ArchDSLError(TOO_DEEP, file=file) from None


def _flatten_merges(node, done: set | None = None) -> None:
    """Merge keys (`<<: *base`) resolved in the composed tree as the loader resolves them for the data, so that
    a merged key is found, and pointed at, where its value is written."""
    done = set() if done is None else done
    if id(node) in done:
        return
    done.add(id(node))
    if isinstance(node, yaml.MappingNode):
        YamlLoader("").flatten_mapping(node)
    for child in node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else ():
        for sub in child if isinstance(child, tuple) else (child,):
            _flatten_merges(sub, done)


def _unique_keys(node, text: str, file: str, within: tuple = (), done: set | None = None) -> None:
    """A key written twice in one mapping is an error (YAML forbids it; PyYAML keeps the last silently),
    and so is an alias inside the node it names (`a: &x [*x]`: no spec value is infinite). Each node is
    checked once, however many aliases name it."""
    done = set() if done is None else done
    if any(node is outer for outer in within):
        raise ArchDSLError("a YAML alias refers to a node that contains it (a recursive value)",
                           source=Source(text, file, file_text=text), start=node.start_mark.index)
    if id(node) in done:
        return
    done.add(id(node))
    within = within + (node,)
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in seen:  # its line as every error counts lines (PyYAML's mark counts U+2028 as a break)
                    whole = Source(text, file, file_text=text)
                    raise ArchDSLError(f"key {key_node.value!r} is written twice (first at line "
                                       f"{whole.locate(seen[key])[0]})", source=whole, start=key_node.start_mark.index)
                seen[key] = key_node.start_mark.index
    for child in node.value if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) else ():
        for sub in child if isinstance(child, tuple) else (child,):
            _unique_keys(sub, text, file, within, done)


def key_positions(node, path: tuple = ()) -> dict[tuple, int]:
    """Offsets of every mapping value (and key) in the composed YAML tree, by key path."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = path + (_key_text(key_node),)
            out[key] = value_node.start_mark.index
            out[key + ("<key>",)] = key_node.start_mark.index
            out.update(key_positions(value_node, key))
    return out


def _key_text(node) -> str:
    """A mapping key as str() of the value it loads as, the lookups' spelling: `null` → 'None', `true` → 'True'."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    try:
        return str(YamlLoader("").construct_object(node))
    except yaml.YAMLError:
        return str(node.value)


def scalar_source(text: str, file: str, node, value: str) -> Source:
    """Where the characters of the string `value`, read from the scalar `node`, stand in the file: the Source that
    makes an error in a layout string point inside it."""
    start, end = node.start_mark.index, node.end_mark.index
    if node.style in ("'", '"'):
        start, end = start + 1, end - 1
    elif node.style in ("|", ">"):  # the text starts on the line below `|` / `>-` (and any comment)
        header_end = text.find("\n", start, end)
        start = end if header_end < 0 else header_end + 1
    if text.startswith(value, start) and "\n" not in value:  # a plain copy of the file
        line = text.count("\n", 0, start)
        return Source(value, file, line, start - (text.rfind("\n", 0, start) + 1), text)
    offsets = _scalar_offsets(text, start, end, node.style, value)
    return Source(value, file, file_text=text, offsets=offsets)


def _scalar_offsets(text: str, start: int, end: int, style: str | None, value: str) -> tuple[int, ...]:
    """For each character of `value`, the YAML scalar read from text[start:end], its offset in `text`,
    and one more for the end of `value`. The characters of `value` are found in order among the
    pieces of the file text: an escape stands for what it means, `''` for `'`, a line break for the
    space or newline that folding makes of it; what YAML drops (whitespace around folded line
    breaks, a line break folded away) is passed over."""
    indent = 0
    if style in ("|", ">"):  # the block's indentation: what the file has before its first line that the value has not
        first = next((line for line in value.split("\n") if line.strip()), None)
        in_file = next((line for line in text[start:end].split("\n") if line.strip()), None)
        if first is not None and in_file is not None:  # (a value of blank lines matches nothing anyway)
            indent = (len(in_file) - len(in_file.lstrip(" "))) - (len(first) - len(first.lstrip(" ")))
    pieces = _scalar_pieces(text, start, end, style, indent)
    offsets: list[int] = []
    k, stop = 0, start
    for ch in value:
        while k < len(pieces) and not (pieces[k][0] == ch or (pieces[k][0] is None and ch in " \n")):
            k += 1
        if k == len(pieces):  # not found (not expected): the rest points at the end
            break
        meaning, at, length = pieces[k]
        offsets.append(at)
        stop = at if meaning is None else at + length  # after a line break: the end of its line
        k += 1
    return tuple(offsets + [stop] * (len(value) + 1 - len(offsets)))


def _scalar_pieces(text: str, start: int, end: int, style: str | None, indent: int) -> list[tuple[str | None, int, int]]:
    """(meaning, offset, length) of each piece of a YAML scalar's text: a character, an escape
    (double quotes), `''` (single quotes) or a line break (meaning None). A block's `indent` spaces
    or the whitespace that starts a line (a flow string) are left out, and so is an escaped line break."""
    block = style in ("|", ">")
    escapes, codes = yaml.scanner.Scanner.ESCAPE_REPLACEMENTS, yaml.scanner.Scanner.ESCAPE_CODES
    pieces: list[tuple[str | None, int, int]] = []
    i, line_start = start, block
    while i < end:
        if line_start:
            stop = min(end, i + indent) if block else end
            while i < stop and text[i] in (" " if block else " \t"):
                i += 1
            line_start = False
            continue
        ch = text[i]
        if ch == "\n" or text.startswith("\r\n", i):  # a line break, of two characters in a CRLF file
            length = 1 if ch == "\n" else 2
            pieces.append((None, i, length))
            i, line_start = i + length, True
        elif style == '"' and ch == "\\":
            code = text[i + 1:i + 2]
            if code == "\n" or text.startswith("\r\n", i + 1):  # an escaped line break joins the lines
                i, line_start = i + (2 if code == "\n" else 3), True
            elif code in codes:  # \xXX, \uXXXX, \UXXXXXXXX
                length = 2 + codes[code]
                pieces.append((chr(int(text[i + 2:i + length], 16)), i, length))
                i += length
            else:
                pieces.append((escapes.get(code, code), i, 2))
                i += 2
        elif style == "'" and text.startswith("''", i):
            pieces.append(("'", i, 2))
            i += 2
        else:
            pieces.append((ch, i, 1))
            i += 1
    return pieces
