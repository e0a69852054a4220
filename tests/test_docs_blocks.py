"""docs/blocks.md keeps up with the block configs: one section per kind of BLOCKS, in the registry's order,
whose table has a row for every dataclass field but d_model (first cell the name in backticks, the default
cell the dataclass default written as below) and no row for a field the config does not have; an argument
with `choices` lists exactly those in its type cell. Reads the file and archdsl.blocks only (no torch)."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from archdsl.blocks import BLOCKS

DOC = Path(__file__).resolve().parent.parent / "docs" / "blocks.md"
HEADER = ["argument", "type", "default", "meaning"]
CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a table's pipes; `\|` inside a cell is text


def render(value) -> str:
    """A default as the doc writes it: None → none, bools → true / false, floats in their shortest form with
    the exponent unpadded (1e-6, 0.001, 10000.0), ints as they are, strings bare."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        assert math.isfinite(value), value
        mantissa, e, exponent = repr(value).partition("e")
        return mantissa + (f"e{int(exponent)}" if e else "")
    return str(value)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]


def _sections() -> dict[str, list[list[str]]]:
    """Each `## kind` heading → its table's body rows (cells), in the order of the file."""
    sections: dict[str, list[list[str]]] = {}
    kind = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            kind = line[3:].strip()
            assert kind not in sections, f"docs/blocks.md: section {kind!r} twice"
            sections[kind] = []
        elif kind is not None and line.startswith("|"):
            cells = _cells(line)
            if cells == HEADER or all(set(c) <= set("-: ") for c in cells):
                continue
            assert len(cells) == len(HEADER), f"docs/blocks.md, {kind}: row of {len(cells)} cells: {line}"
            sections[kind].append(cells)
    return sections


SECTIONS = _sections()


def _fields(kind: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(BLOCKS[kind]) if f.name != "d_model"]


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING, f"{field.name} has no default"
    return field.default_factory()


def _rows(kind: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for cells in SECTIONS.get(kind, []):
        m = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0])
        assert m, f"docs/blocks.md, {kind}: first cell {cells[0]!r} is not an argument name in backticks"
        assert m.group(1) not in rows, f"docs/blocks.md, {kind}: {m.group(1)} has two rows"
        rows[m.group(1)] = cells
    return rows


def test_one_section_per_kind_in_registry_order():
    assert list(SECTIONS) == list(BLOCKS)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_every_field_has_a_row_with_its_default(kind):
    rows = _rows(kind)
    for field in _fields(kind):
        assert field.name in rows, f"docs/blocks.md, {kind}: no row for `{field.name}`"
        written = rows[field.name][2].strip("`")
        assert written == render(_default(field)), (
            f"docs/blocks.md, {kind}.{field.name}: default {written!r}, the dataclass has {render(_default(field))!r}")
        assert rows[field.name][1] and rows[field.name][3], f"docs/blocks.md, {kind}.{field.name}: empty type or meaning"


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_no_row_for_a_field_that_does_not_exist(kind):
    names = {f.name for f in _fields(kind)}
    extra = [name for name in _rows(kind) if name not in names]
    assert not extra, f"docs/blocks.md, {kind}: rows for fields the config does not have: {extra}"


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_choices_are_the_type(kind):
    rows = _rows(kind)
    for name, allowed in getattr(BLOCKS[kind], "choices", {}).items():
        assert name in rows, f"docs/blocks.md, {kind}: no row for `{name}`"
        listed = [c.strip().strip("`") for c in rows[name][1].split("\\|")]
        assert listed == [render(v) for v in allowed], f"docs/blocks.md, {kind}.{name}: type lists {listed}, choices {allowed}"
