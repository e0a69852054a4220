"""The layout's abstract syntax tree: frozen dataclasses that keep their source spans.

    4×(7×mamba2, attn(shared)), moe every 2

    Layout(items=(Repeat(4, Group((Repeat(7, Layer((Block('mamba2'),))),
                                   Layer((Block('attn', (Arg('shared', True),)),)),))),),
           modifiers=(Modifier(Block('moe'), every=2),))

Spans are excluded from equality, so two trees that say the same thing compare equal
wherever their text stood.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Value = Union[int, float, bool, str, None]  # None: `none`, an argument unset


@dataclass(frozen=True)
class Span:
    """Character offsets [start, end) into the layout text."""

    start: int
    end: int


NOSPAN = Span(0, 0)


@dataclass(frozen=True, eq=False)
class Arg:
    """`name=value`. Equal when name, value and the value's type are: `rope=1` is not `rope` (1 == True in
    Python), `heads=16.0` is not `heads=16`."""

    name: str
    value: Value
    span: Span = field(default=NOSPAN, compare=False, repr=False)

    def _key(self) -> tuple:
        return self.name, type(self.value), self.value

    def __eq__(self, other) -> bool:
        return isinstance(other, Arg) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclass(frozen=True)
class Block:
    """One sublayer item: `attn(heads=16, window=4096)`. Bare flags (`shared`) are `True`, `window=none` None."""

    name: str
    args: tuple[Arg, ...] = ()
    span: Span = field(default=NOSPAN, compare=False, repr=False)

    def arg(self, name: str, default: Value | None = None) -> Value | None:
        for a in self.args:
            if a.name == name:
                return a.value
        return default

    def config_args(self) -> dict[str, Value]:
        """The arguments that configure the block (sharing is the graph's business)."""
        return {a.name: a.value for a in self.args if a.name != "shared"}

    @property
    def shared(self) -> str | None:
        """The sharing group: `shared` → the block's own name, `shared=a` → 'a', else None."""
        value = self.arg("shared")
        if value is None or value is False:
            return None
        return self.name if value is True else str(value)


@dataclass(frozen=True)
class Layer:
    """Sublayers of one layer joined by `+`: `mamba2+mlp` is a mixer with its FFN."""

    blocks: tuple[Block, ...]
    span: Span = field(default=NOSPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Repeat:
    """`7×body`."""

    count: int
    body: "Node"
    span: Span = field(default=NOSPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Group:
    """`(a, b, c)`."""

    items: tuple["Node", ...]
    span: Span = field(default=NOSPAN, compare=False, repr=False)


Node = Union[Layer, Repeat, Group]


@dataclass(frozen=True)
class Modifier:
    """`moe every 2`, `attn every 8 offset 4`, `zamba(shared) at 6 12 18`.

    `every N` selects 0-based layers i with i % N == offset (default N-1);
    `at i j k` selects those indices."""

    block: Block
    every: int | None = None
    offset: int | None = None
    at: tuple[int, ...] | None = None
    span: Span = field(default=NOSPAN, compare=False, repr=False)

    def selects(self, i: int) -> bool:
        if self.at is not None:
            return i in self.at
        offset = self.every - 1 if self.offset is None else self.offset
        return i % self.every == offset


@dataclass(frozen=True)
class Layout:
    items: tuple[Node, ...]
    modifiers: tuple[Modifier, ...] = ()
    span: Span = field(default=NOSPAN, compare=False, repr=False)
