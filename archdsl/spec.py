"""Spec: a layout plus the model-level sizes around it, from a YAML file or a bare layout.

YAML is turned into a typed Spec at this boundary only; positions are kept so that
an error in the file points into the file — inside the layout string when it is there.

    name: jamba-v0.1
    d_model: 4096
    vocab_size: 65536
    tie_embeddings: false
    ffn: mlp
    layout: 32×mamba, attn every 8 offset 4, moe every 2
    blocks:
      mamba: {d_state: 16, dt_rank: 256, inner_norms: weighted}
      attn:  {heads: 32, kv_heads: 8, rope: false}
"""
from __future__ import annotations

import numbers
import os
import re
import unicodedata
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping, get_args

import yaml

from .blocks import BLOCKS, arg_names, type_hints
from .errors import ArchDSLError, Source, did_you_mean, shown
from .language import (NOSPAN, Block, Group, Layer, Layout, Repeat, Span, check_layout, format_layout, line_breaks,
                       node_text, parse_layout)
from .yamlio import YamlLoader, dump_yaml, key_positions, read_text, read_yaml, scalar_source

NORMS = ("rmsnorm", "layernorm")
MAX_PARAMS = 10**13


@dataclass(frozen=True, kw_only=True)
class Spec:
    """A whole model: sizes, default FFN, the layout and per-kind block defaults / aliases."""

    name: str = "model"
    d_model: int = 768
    vocab_size: int = 50280
    tie_embeddings: bool = True
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    embed_norm: bool = False
    residual_fp32: bool = False  # 16-bit models keep the residual stream in float32 (mamba_ssm's residual_in_fp32)
    ffn: str | None = None
    layout: Layout
    blocks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Source = field(default=Source(""), compare=False, repr=False)
    # where each YAML key stood: ("blocks", "attn", "heads") -> offset into source.file_text
    positions: Mapping[tuple, int] = field(default_factory=dict, compare=False, repr=False)
    # (layout, source) as this spec was made: dataclasses.replace carries it, so that a layout swapped in without
    # its source (whose spans are offsets into another text) is told from the spec's own
    _made: tuple | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Checked however it is made (a file, parse, Spec(...), dataclasses.replace): the layout by the parser's
        rules (check_layout: a tree made by hand too), the types, then the model-level values; the blocks' values
        are plain here, their kinds and arguments checked when the graph is built. Block arguments given as none
        are read as their blocks take them (_none_word).

        A layout given by dataclasses.replace without a new source is not the text of the old one: the spec's
        source becomes the layout's canonical text (its errors point there, as archdsl.parse of that text would
        have them), and the YAML positions are dropped (they were of another file's layout)."""
        if not isinstance(self.layout, Layout):
            raise ArchDSLError(f"a Spec's layout must be a parsed Layout, not {type(self.layout).__name__} "
                               "(archdsl.parse(text, d_model=...) makes a Spec of layout text)")
        layout = check_layout(self.layout)
        if self._made is not None and self.source is self._made[1] and self.layout is not self._made[0]:
            source = Source(format_layout(layout))
            layout = parse_layout(source.text, source)  # the same tree (parse(format(t)) == t), spanned in its text
            object.__setattr__(self, "source", source)
            object.__setattr__(self, "positions", {})
        for key in SIZE_TYPES:
            object.__setattr__(self, key, _typed(key, getattr(self, key), self.error))
        blocks = _blocks(self.blocks, self.error)
        kinds = _kinds(blocks)  # the kind of each name in blocks, once: `none` values (kind: is never one) need it
        blocks = {k: {a: _none_word(_kind(kinds, k), a, v) for a, v in args.items()} for k, args in blocks.items()}
        object.__setattr__(self, "blocks", MappingProxyType({k: MappingProxyType(v) for k, v in blocks.items()}))
        object.__setattr__(self, "_kinds", MappingProxyType(kinds))
        object.__setattr__(self, "layout", _map_blocks(layout, lambda b: _none_words(b, kinds)))
        object.__setattr__(self, "_made", (self.layout, self.source))
        _checked(self)

    def __reduce__(self):
        """Pickled (torch.save of a whole model, multiprocessing) as its fields, the blocks as plain dicts (a
        mappingproxy does not pickle); the graph is built again on first use."""
        fields_ = {f.name: getattr(self, f.name) for f in fields(self)}
        fields_["blocks"] = {k: dict(v) for k, v in self.blocks.items()}
        fields_["positions"] = dict(self.positions)
        del fields_["_made"]  # its layout and source, made again
        return _spec_of, (fields_,)

    def __hash__(self) -> int:
        """Hashable like any frozen value (a set of specs, a cache keyed by one); the blocks are left out (a
        mapping does not hash), which equal specs have alike anyway."""
        return hash((self.name, self.d_model, self.vocab_size, self.ffn, self.layout))

    def __deepcopy__(self, memo) -> Spec:
        """A Spec is immutable: copy.deepcopy of a model (EMA weights, say) shares it."""
        return self

    @cached_property
    def graph(self):
        """The verified layer graph (networkx.DiGraph); built on first use, after the check of `none` arguments."""
        from .graph import build_graph

        _check_nones(self)
        return build_graph(self)

    def kind_of(self, name: str) -> str | None:
        """The block kind that `name` (a kind, or an alias in `blocks`) stands for; None if it stands for none (an
        unknown name, a cycle of aliases: the graph says which)."""
        return _kind(self._kinds, name)

    @property
    def layout_text(self) -> str:
        return format_layout(self.layout)

    def error(self, message: str, key: tuple = (), hint: str = "") -> ArchDSLError:
        """An ArchDSLError pointing at YAML key `key` (or at the file when unknown)."""
        offset = self.positions.get(key)
        if offset is None or self.source.file_text is None:
            return _keyed(ArchDSLError(message, file=self.source.file, hint=hint), key)
        whole = Source(self.source.file_text, self.source.file, file_text=self.source.file_text)
        return _keyed(ArchDSLError(message, source=whole, start=offset, hint=hint), key)

    def layout_error(self, message: str, node, span: Span | None = None, layer: int | None = None,
                     hint: str = "") -> ArchDSLError:
        """An ArchDSLError at `node` of the layout (a Block, Layer, Repeat or Modifier; `span` a part of it, as an
        argument), with its place and a caret. A tree made by hand has no text to point into (its spans are NOSPAN,
        or the spec has no source): the error names the node, and `layer` its layer's index, instead of a place."""
        span = node.span if span is None else span
        if self.source.text and span != NOSPAN:
            return ArchDSLError(message, source=self.source, start=span.start, end=span.end, hint=hint)
        where = f"layer {layer}: " if layer is not None else ""
        return ArchDSLError(f"{message} (in {where}{node_text(node)})", file=self.source.file, hint=hint)

    def to_dict(self) -> dict:
        """Plain data for yaml.safe_dump: the spec written back as a file."""
        out: dict[str, Any] = {"name": self.name, "d_model": self.d_model, "vocab_size": self.vocab_size,
                               "tie_embeddings": self.tie_embeddings, "norm": self.norm}
        if self.norm_eps != 1e-5:
            out["norm_eps"] = self.norm_eps
        if self.embed_norm:
            out["embed_norm"] = True
        if self.residual_fp32:
            out["residual_fp32"] = True
        if self.ffn:
            out["ffn"] = self.ffn
        out["layout"] = self.layout_text
        if self.blocks:
            out["blocks"] = {k: dict(v) for k, v in self.blocks.items()}
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def _spec_of(fields_: dict) -> Spec:
    return Spec(**fields_)


SPEC_KEYS = {f.name for f in fields(Spec)} - {"source", "positions", "_made"}


# the model-level keys and their types, for YAML files and parse()'s keywords alike
SIZE_TYPES = {"name": str, "d_model": int, "vocab_size": int, "tie_embeddings": bool, "norm": str,
              "norm_eps": float, "embed_norm": bool, "residual_fp32": bool, "ffn": str}
EXAMPLES = {"d_model": "1024", "vocab_size": "32000", "tie_embeddings": "true", "norm_eps": "1e-5",
            "embed_norm": "true", "residual_fp32": "true", "norm": "rmsnorm"}  # for --set's errors


def parse(text: str, **sizes) -> Spec:
    """A Spec from a bare layout string, with default sizes (override with keywords: name, d_model, vocab_size,
    tie_embeddings, norm, norm_eps, embed_norm, residual_fp32, ffn, and blocks: block kind or alias → its
    arguments). The syntax and these keywords are checked here (ArchDSLError); block names and arguments when
    the graph is first built (spec.graph, analyze, compile)."""
    if not isinstance(text, str):
        raise ArchDSLError(f"a layout must be a string, not {type(text).__name__}")
    source = Source(line_breaks(text))  # a lone CR a line break, as parse_layout reads it
    layout = parse_layout(source.text, source)
    blocks = _blocks(_or_empty(sizes.pop("blocks", None)), _plain_error)
    return Spec(layout=layout, source=source, blocks=blocks, **_sizes(sizes))


def _plain_error(message: str, key: tuple) -> ArchDSLError:
    return ArchDSLError(message)


def _sizes(sizes: dict) -> dict:
    """Model-level keywords (parse, with_sizes) checked as a file's keys are."""
    for key in sizes:
        if key not in SIZE_TYPES:
            raise ArchDSLError(f"unknown spec key {shown(key)}", hint=did_you_mean(key, [*SIZE_TYPES, "blocks"]))
    return {key: _typed(key, value, _plain_error) for key, value in sizes.items()}


def _typed(key: str, value, err):
    """A model-level value checked against SIZE_TYPES (an int where a float goes is taken; None, "none" or ""
    for ffn is no default FFN); err(message, key path) makes the error."""
    typ = SIZE_TYPES[key]
    if key == "ffn" and value in (None, "none", ""):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy's integers too
        value = int(value)
    elif typ is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(value, str):  # numpy's strings too: the safe YAML dumper writes no str subclass
        value = str(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # past the largest float
            raise err(f"{key} must be a finite number, got {value}", (key,)) from None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise err(f"{key} must be {typ.__name__}, got {shown(value)}", (key,))
    return value


def _or_empty(blocks):
    """A blocks mapping as given, {} for None (`blocks:` with nothing after it); false, 0 or [] stay, refused."""
    return {} if blocks is None else blocks


def _blocks(blocks, err) -> dict:
    """The blocks mapping checked: block kind or alias → mapping of named arguments, each a number, a bool, None or
    a string. numpy's numbers and strings (a sweep over np.arange) are taken as int, float and str, as for the
    model-level keys, so that the spec writes as YAML; what the kinds and arguments are, when the graph is built."""
    if not isinstance(blocks, Mapping) or not all(isinstance(v, Mapping) for v in blocks.values()):
        raise err("blocks must map a block kind or alias to a mapping of arguments", ("blocks",))
    out = {}
    for kind, args in blocks.items():
        for name in [kind, *args]:
            if not isinstance(name, str):
                where = ("blocks", str(kind)) + ((str(name),) if name is not kind else ()) + ("<key>",)
                raise err(f"blocks: {name!r} is not a name (block kinds and arguments are words)", where)
        out[str(kind)] = {str(arg): _plain(value) for arg, value in args.items()}
        for arg, value in out[str(kind)].items():
            if value is not None and type(value) not in (bool, int, float, str):  # no block takes a list or a mapping
                raise err(f"{kind}: {arg} must be a number, true, false, none or a string, got {shown(value)}",
                          ("blocks", str(kind), arg))
    return out


def _plain(value):
    """numpy's integers, floats and strings (np.arange, an array of names) as int, float and str; any other value as
    it is."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _kinds(blocks: Mapping) -> dict[str, str | None]:
    """The block kind that each name of `blocks` (a kind, or an alias with `kind:`) stands for; None where it stands
    for none (an unknown name or a cycle on the way: the graph says which). Linear in the entries: a chain of aliases
    is followed once, each name on it then known (a 2000-alias chain followed anew from each name took 40 s)."""
    kinds: dict[str, str | None] = {}
    for start in blocks:
        path, name = {}, start  # the names followed, in order
        while name not in BLOCKS and name not in kinds:
            entry = blocks.get(name)
            if entry is None or not isinstance(entry.get("kind"), str) or name in path:
                break
            path[name] = None
            name = entry["kind"]
        kind = name if name in BLOCKS else kinds.get(name)
        for n in [*path, start]:
            kinds[n] = kind
    return kinds


def _kind(kinds: Mapping, name: str) -> str | None:
    """The block kind that `name` stands for, with `kinds` of _kinds."""
    return name if name in BLOCKS else kinds.get(name)


def _takes_none(kind: str, arg: str) -> bool:
    """Whether argument `arg` of block `kind` may be None (an Optional field: attn's window, moe's norm_topk)."""
    tp = type_hints(kind)[arg]
    return type(None) in (get_args(tp) or (tp,))


def _none_word(kind: str | None, arg: str, value):
    """A layout's `none` and YAML's `null` are None, YAML's `none` the string "none"; each is read as the argument
    takes it. mamba's inner_norms takes the word "none" and no None: `inner_norms=none` stays what it was before
    the layout had `none`. attn's window takes None and no string: `window: none` in YAML is None, as in a layout."""
    if kind is None or not (value is None or isinstance(value, str) and value == "none") or arg not in arg_names(kind):
        return value
    if value is None and not _takes_none(kind, arg) and "none" in getattr(BLOCKS[kind], "choices", {}).get(arg, ()):
        return "none"
    if value == "none" and _takes_none(kind, arg) and str not in get_args(type_hints(kind)[arg]):
        return None
    return value


def _none_refused(kind: str | None, arg: str, value) -> str | None:
    """The error of a `none` given to an argument that cannot be None; None if it can, or if the block or the
    argument is unknown (the graph says so)."""
    if value is not None or kind is None or arg not in arg_names(kind) or _takes_none(kind, arg):
        return None
    tp = type_hints(kind)[arg]
    return f"{kind}: {arg} cannot be none; it must be {' or '.join(t.__name__ for t in get_args(tp) or (tp,))}"


def _none_words(block: Block, kinds: Mapping) -> Block:
    """`block` with its `none` arguments read by _none_word (a quoted "none" is a string, as it is written); `kinds`
    as _kinds gives them."""
    if not any(a.value is None for a in block.args):
        return block
    kind = _kind(kinds, block.name)
    return replace(block, args=tuple(a if a.value is not None else replace(a, value=_none_word(kind, a.name, None))
                                     for a in block.args))


def _map_blocks(node, f):
    """A Layout, or a node of one, with f applied to each block; the same node where f changes none of its blocks."""
    if isinstance(node, Layout):
        items = tuple(_map_blocks(n, f) for n in node.items)
        modifiers = tuple(replace(m, block=b) if b is not m.block else m
                          for m, b in zip(node.modifiers, [f(m.block) for m in node.modifiers]))
        return node if items == node.items and modifiers == node.modifiers else \
            replace(node, items=items, modifiers=modifiers)
    if isinstance(node, Layer):
        blocks = tuple(f(b) for b in node.blocks)
        return node if blocks == node.blocks else replace(node, blocks=blocks)
    if isinstance(node, Repeat):
        body = _map_blocks(node.body, f)
        return node if body is node.body else replace(node, body=body)
    if isinstance(node, Group):
        items = tuple(_map_blocks(n, f) for n in node.items)
        return node if items == node.items else replace(node, items=items)
    return node


def _check_nones(spec: Spec) -> None:
    """`none` only where the argument takes None: elsewhere an error where it is written, in `blocks:` or in the
    layout."""
    for name, args in spec.blocks.items():
        for arg, value in args.items():
            message = _none_refused(spec.kind_of(name), arg, value)
            if message:
                raise spec.error(message, ("blocks", name, arg))

    def check(block: Block) -> Block:
        for a in block.args:
            message = _none_refused(spec.kind_of(block.name), a.name, a.value)
            if message:
                raise spec.layout_error(message, block, span=a.span)
        return block

    _map_blocks(spec.layout, check)


# A slash or backslash before any string, comment or '(': a file or directory that is not there, never a layout
# (no layout has either outside its strings and comments).
_PATH_LIKE = re.compile(r"[^\"'#(]*[/\\]")
# A name with a file suffix (`Foo.YAML`, `model.json`): a file that is not there (a layout has a '.' only in a
# number or a string, inside parentheses).
_FILE_LIKE = re.compile(r"[^\s\"'#(),]*\.[A-Za-z][A-Za-z0-9]*\Z")


def load_spec(spec: str | os.PathLike) -> Spec:
    """A Spec from a YAML file, a saved-model directory (its spec.yaml), or a layout string.

    An os.PathLike, or a text with a '/' (outside a layout's strings and comments) or ending .yaml / .yml, is a path.
    Any other text that names something here and reads as a layout as well (a file `attn`, a saved model in
    `mamba2/`) is refused as ambiguous, never silently read as the one or the other; a directory without a
    spec.yaml (a `mamba2/` checkout) is no spec, and such a text is its layout."""
    if isinstance(spec, Spec):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ArchDSLError(f"a spec is a Spec, a YAML file, a saved-model directory or a layout string, "
                           f"not {type(spec).__name__}")
    text = os.fspath(spec)
    if isinstance(spec, str) and _both(text):
        if os.path.isdir(text) and not os.path.isfile(os.path.join(text, "spec.yaml")):
            return parse(text)
        raise _ambiguous(text)
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "spec.yaml")):
            raise ArchDSLError(f"{text} is a directory without a spec.yaml file (not a saved archdsl model)",
                               hint=hf_dir_hint(text))
        text = os.path.join(text, "spec.yaml")
    if os.path.isfile(text):
        return spec_from_yaml(read_text(text), file=text)
    if os.path.exists(text):  # /dev/zero, a FIFO, a socket: never read (it may not end)
        raise ArchDSLError(f"{text} is not a regular file (a device, FIFO or socket); a spec is a YAML file, a "
                           f"saved-model directory or a layout string")
    if _FILE_LIKE.match(text):
        raise ArchDSLError(f"no such spec file: {text}")
    if _PATH_LIKE.match(text):
        raise ArchDSLError(f"no such spec file or saved-model directory: {text} (nor a layout: '/' and '\\' "
                           f"stand in no layout outside its strings)")
    if _NAME_LIKE.match(text):  # `mamba2-2.7b`: a spec's name, which no layout reads as (a '-' or '.' outside `()`)
        try:
            return parse(text)
        except ArchDSLError:
            names = published_specs()
            if text in names:
                return spec_from_yaml(names[text].read_text(encoding="utf-8"), file=f"specs/{text}.yaml")
            close = did_you_mean(text, list(names))
            raise ArchDSLError(f"no such spec file, saved-model directory, layout or published spec: {text}",
                               hint=close if close.startswith("did you mean") else f"a spec file is given by its "
                               f"path, a published spec by its name ({', '.join(names)})") from None
    return parse(text)


def published_specs() -> dict:
    """The specs the package ships (the repository's specs/, installed as archdsl.specs), by name: `archdsl show
    mamba2-2.7b` reads specs/mamba2-2.7b.yaml from a wheel too. name → its importlib.resources file."""
    from importlib import resources

    try:
        files = resources.files("archdsl.specs").iterdir()
    except (ModuleNotFoundError, FileNotFoundError):
        return {}
    return {f.name[:-5]: f for f in sorted(files, key=lambda f: f.name) if f.name.endswith(".yaml")}


_NAME_LIKE = re.compile(r"[A-Za-z_][\w+]*(?:[-.][\w+]+)+\Z")  # a file's name: `jamba-v0.1`, `mamba2-2.7b`


def _both(text: str) -> bool:
    """Whether `text` names something here (with no '/' and no .yaml / .yml suffix, which make it a path) and reads
    as a layout as well: one that parses and names block kinds only (a layout string has no `blocks:` to give
    aliases, so a name like `out` or `model` is a path's and no layout's)."""
    if _PATH_LIKE.match(text) or text.lower().endswith((".yaml", ".yml")) or not os.path.exists(text):
        return False
    try:
        layout = parse_layout(line_breaks(text))
    except ArchDSLError:
        return False
    return all(name in BLOCKS for name in _block_names(layout))


def _block_names(layout: Layout):
    """The name of every block of `layout`, its modifiers' too (of each Layer once: a repeat lists its body once)."""
    stack = list(layout.items)
    while stack:
        node = stack.pop()
        if isinstance(node, Layer):
            yield from (b.name for b in node.blocks)
        elif isinstance(node, Repeat):
            stack.append(node.body)
        else:
            stack.extend(node.items)
    yield from (m.block.name for m in layout.modifiers)


def _ambiguous(text: str) -> ArchDSLError:
    """The error of a text that is both a path here and a layout (_both)."""
    what = "a saved model's directory" if os.path.isdir(text) else "a file"
    where = "directory" if os.path.isdir(text) else "file"
    return ArchDSLError(f"{shown(text)} is both {what} here and a layout: write ./{text} for the {where} (a path with "
                        f"a '/', or a name ending .yaml, is always a path), or rename the {where} to read "
                        f"{shown(text)} as a layout")


def hf_dir_hint(path) -> str:
    """What to do with a Hugging Face model directory (a config.json, no spec.yaml) given where an archdsl spec or
    save is read; '' for any other path."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")) or os.path.exists(os.path.join(path, "spec.yaml")):
        return ""
    import shlex

    q = shlex.quote(path)
    return (f"it holds a config.json, a Hugging Face model's: `archdsl convert --from hf {q} -o SPEC.yaml` "
            f"writes its spec, `archdsl convert --from hf {q} -o DIR --weights` a saved model with its weights "
            f"(archdsl.from_hf in Python); `archdsl generate` reads it as it is")


def saved_model(path, command: str, layout: bool = True) -> bool:
    """Whether `path` is a saved model's directory (spec.yaml + model.safetensors), whose weights `command` (run,
    bench, train) starts from. A directory with a spec.yaml and no model.safetensors is refused: read as a spec it
    would give fresh weights where saved ones were meant. Where `path` may be a layout string too (`layout`; not
    generate's MODEL), a text that is both (a saved model in `mamba2/`) is refused as load_spec refuses it."""
    if layout and isinstance(path, str) and _both(path):
        if os.path.isfile(os.path.join(path, "spec.yaml")):
            raise _ambiguous(path)
        return False  # a file (load_spec refuses it), or a directory that is no spec: the text is its layout
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return True
    if os.path.exists(os.path.join(path, "spec.yaml")):
        raise ArchDSLError(f"{command}: {path} has a spec.yaml but no model.safetensors file (a saved model has "
                           f"both); give {os.path.join(path, 'spec.yaml')} itself for fresh random weights")
    return False

def _keyed(e: ArchDSLError, key: tuple) -> ArchDSLError:
    """e with the YAML key path it is about (`spec_key`: ('norm',), ('blocks', 'attn', 'heads'), (key, '<key>') for
    a key itself), for a caller that holds the same keys in another file (a space file's `base:` mapping)."""
    e.spec_key = key
    return e


def spec_from_yaml(text: str, file: str = "<spec>") -> Spec:
    # A byte-order mark YAML skips, and a lone CR (a classic Mac file) it reads as a line break: the positions of
    # errors count lines and columns as YAML does.
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    whole = Source(text, file, file_text=text)
    root, data = read_yaml(text, file)
    if isinstance(data, str):  # a file holding a bare layout string
        source = scalar_source(text, file, root, data)
        return Spec(layout=parse_layout(data, source), source=source)
    if not isinstance(data, dict):
        raise ArchDSLError("a spec file must be a mapping of keys (name, d_model, layout, ...)"
                           f" or a layout string, not {type(data).__name__}", file=file, line=1, col=1)
    positions = key_positions(root)

    def err(message, key, hint=""):
        start = positions.get(key, 0)
        return _keyed(ArchDSLError(message, source=whole, start=start, hint=hint), key)

    for key in data:
        if key not in SPEC_KEYS:
            raise err(f"unknown spec key {shown(key)}", (str(key), "<key>"), did_you_mean(str(key), SPEC_KEYS))
    if "layout" not in data:
        raise ArchDSLError("the spec has no 'layout' key", file=file, line=1, col=1)
    layout_text = data["layout"]
    if not isinstance(layout_text, str):
        raise err(f"layout must be a string, not {type(layout_text).__name__}", ("layout",))
    layout_node = [v for k, v in root.value if k.value == "layout"][-1]  # the last one written wins, as in `data`
    layout_source = scalar_source(text, file, layout_node, layout_text)
    layout = parse_layout(layout_text, layout_source)

    values = {key: _typed(key, data[key], err) for key in SIZE_TYPES if key in data}
    blocks = _blocks(_or_empty(data.get("blocks")), err)
    return Spec(layout=layout, blocks=blocks, source=layout_source, positions=positions, **values)


def _checked(spec: Spec) -> Spec:
    """Model-level checks (Spec.__post_init__ runs them); the block-level ones run when the graph is built."""
    if not spec.name.strip():
        raise spec.error("name must not be empty (it names the model in tables, saves and exports)", ("name",))
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in spec.name):  # a line break or escape breaks tables
        raise spec.error(f"name must be one line without control characters, got {shown(spec.name)}", ("name",))
    if any(unicodedata.category(c) == "Cs" for c in spec.name):  # an argument's bytes that were not UTF-8
        raise spec.error(f"name must be text, got {shown(spec.name)} (bytes that are not UTF-8 in it)", ("name",))
    if spec.d_model <= 0:
        raise spec.error(f"d_model must be positive, got {spec.d_model}", ("d_model",))
    if spec.vocab_size <= 0:
        raise spec.error(f"vocab_size must be positive, got {spec.vocab_size}", ("vocab_size",))
    if spec.norm not in NORMS:
        raise spec.error(f"unknown norm {shown(spec.norm)}", ("norm",), did_you_mean(spec.norm, NORMS))
    if not 0 < spec.norm_eps < 1:
        raise spec.error(f"norm_eps must be in (0, 1), got {spec.norm_eps}", ("norm_eps",))
    if spec.d_model > 10**6 or spec.vocab_size > 10**8:
        raise spec.error("absurd size: d_model over 10^6 or vocab_size over 10^8",
                         ("d_model",) if spec.d_model > 10**6 else ("vocab_size",))
    return spec


def with_sizes(spec: Spec, **changes) -> Spec:
    """A copy with other model-level sizes (the graph is rebuilt on use); `blocks` too (the blocks mapping, as
    parse takes it), in place of the spec's."""
    if not isinstance(spec, Spec):
        raise ArchDSLError(f"with_sizes: expected a Spec, got {type(spec).__name__}")
    if "blocks" in changes:
        changes["blocks"] = _blocks(_or_empty(changes["blocks"]), _plain_error)
        return replace(spec, blocks=changes.pop("blocks"), **_sizes(changes))
    return replace(spec, **_sizes(changes))


def with_settings(spec: Spec, settings: list[str], flag: str = "--set") -> Spec:
    """A copy with model-level keys changed by 'KEY=VALUE' texts, as the command line's --set gives them: the
    value read as YAML (1024, true, 1e-6, rmsnorm; name's as it is written). The copy's graph is built here, so
    that every error a setting causes names it (`--set d_model=1000: ...`), a block that cannot take the new
    size with its place in the file; an error the spec has without the settings is its own. The file's positions
    of the keys changed are dropped, so that no error points at the value they replaced."""
    changes, given = {}, {}
    if isinstance(settings, str) or not isinstance(settings, (list, tuple)) \
            or not all(isinstance(t, str) for t in settings):
        raise ArchDSLError(f"{flag}: expected a list of 'KEY=VALUE' texts, got {shown(settings)}")
    for text in settings:
        key, eq, value = (part.strip() for part in text.partition("="))
        if not eq or not key:
            raise ArchDSLError(f"{flag}: expected KEY=VALUE (say d_model=1024), got {text!r}")
        if key not in SIZE_TYPES:
            hint = did_you_mean(key, list(SIZE_TYPES))  # a close name, else the list the message already gives
            raise ArchDSLError(f"{flag} {text}: {key!r} is not a model-level key ({', '.join(SIZE_TYPES)})",
                               hint=hint if hint.startswith("did you mean") else "")
        if not value and key not in ("name", "ffn"):  # (ffn= is no default FFN, as `ffn:` in a file)
            raise ArchDSLError(f"{flag} {text}: no value after '=' (say {key}={EXAMPLES[key]})")
        if key != "name":  # read as in a file: ffn=null is no default FFN, norm="rmsnorm" the name
            try:
                value = yaml.load(value, Loader=YamlLoader)
            except (yaml.YAMLError, RecursionError) as e:
                why = getattr(e, "problem", None)
                raise ArchDSLError(f"{flag} {text}: {shown(value)} is not a value" + (f" ({why})" if why else "")
                                   ) from None
        changes[key] = _typed(key, value, lambda message, _: ArchDSLError(f"{flag} {text}: {message}"))
        given[key] = text  # a key set twice: the last one counts, and is the one named
    base = replace(spec, positions={k: v for k, v in spec.positions.items() if k[0] not in changes})
    for key, value in changes.items():  # the model-level checks are of one key each: one setting at a time
        try:
            one = replace(base, **{key: value})
            if key == "ffn" and value:  # a name the blocks resolve
                from .graph import check_ffn

                check_ffn(one)
        except ArchDSLError as e:
            raise ArchDSLError(f"{flag} {given[key]}: {e.message}", hint=e.hint) from None
    new = replace(base, **changes)
    try:
        _ = new.graph
    except ArchDSLError as e:
        own = _own_error(spec)
        if str(e) == own:
            raise
        # the settings that break a spec that builds each on its own; else (a combination of them, or a spec that
        # is broken already and breaks otherwise with them) all of them
        alone = [k for k in changes if own is None and _own_error(replace(base, **{k: changes[k]})) is not None]
        raise e.prefixed(" ".join(f"{flag} {given[k]}" for k in alone or changes)) from None
    return new


def _own_error(spec: Spec) -> str | None:
    """The error that building `spec`'s graph gives, if any."""
    try:
        _ = spec.graph
    except ArchDSLError as e:
        return str(e)
    return None
