"""Reading a design space from a YAML file, YAML text or a mapping: load_space, space_from_yaml, space_from_dict.

    name: recall-hybrids
    base: {vocab_size: 32000, ffn: mlp, blocks: {attn: {heads: 8}}}   # or a spec file path
    mixers: [mamba2, mamba]           # the non-attention mixer of the stack
    attention: attn                   # the attention block (a kind or an alias in base.blocks)
    attn_fraction: [0, 0.25]          # or attn_count: [0, 4] (or one number)
    placements: [even, every, front, back, sandwich]
    every: {periods: [4, 8], offsets: [last]}    # for the `every` placement
    shared: [false, true]             # one parameter set for all attention layers
    moe: {every: [0, 2], experts: [8], top_k: [2], hidden: [0]}   # every 0 = no MoE
    d_model: [512, 1024]
    depth: [16, 24]

Unknown keys are named, with the nearest known one; an error in a value, raised as the Space is built (space.py), is
keyed to its place in the file (space_check.keyed_error) and shown at its line and column.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import ArchDSLError, Source, did_you_mean, shown
from ..spec import load_spec, spec_from_yaml
from ..yamlio import dump_yaml, key_positions, read_text, read_yaml
from .space import Space
from .space_check import keyed_error

BASE_KEYS = ("name", "vocab_size", "tie_embeddings", "norm", "norm_eps", "embed_norm", "residual_fp32", "ffn", "blocks",
             "d_model")
SPACE_KEYS = ("name", "base", "mixers", "attention", "attn_count", "attn_fraction", "placements", "every",
              "shared", "moe", "d_model", "depth", "probe")


def load_space(path_or_text: str | os.PathLike | dict) -> Space:
    """A Space from a YAML file, YAML text, or a mapping (the keys of the module docstring)."""
    if isinstance(path_or_text, Space):
        return path_or_text
    if isinstance(path_or_text, Mapping):
        return space_from_dict(path_or_text)
    if not isinstance(path_or_text, (str, os.PathLike)):
        raise ArchDSLError(f"a space is a Space, a mapping, a YAML file or YAML text, got {shown(path_or_text)}")
    text = os.fsdecode(path_or_text)
    if not text.strip():
        raise ArchDSLError("a space is a YAML file or YAML text, got an empty string")
    if os.path.isfile(text):
        return space_from_yaml(read_text(text), file=text)
    if os.path.isdir(text):
        raise ArchDSLError(f"{text} is a directory, not a space file")
    if os.path.exists(text):  # /dev/zero, a FIFO: never read (it may not end)
        raise ArchDSLError(f"{text} is not a regular file (a device, FIFO or socket); a space is a YAML file")
    if text.endswith((".yaml", ".yml")) or ("\n" not in text and ":" not in text):  # a space's YAML is a mapping
        raise ArchDSLError(f"no such space file: {text}")
    return space_from_yaml(text)


def space_from_yaml(text: str, file: str = "<space>") -> Space:
    for name, value in (("text", text), ("file", file)):
        if not isinstance(value, str):
            raise ArchDSLError(f"space_from_yaml: {name} must be a string, got {shown(value)}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # errors count lines as YAML and editors do (spec files too)
    whole = Source(text, file, file_text=text)
    root, data = read_yaml(text, file)
    if not isinstance(data, dict):
        raise ArchDSLError("a space file must be a mapping (mixers, attn_fraction, placements, depth, ...)",
                           file=file, line=1, col=1)
    positions = {**key_positions(root), **_entry_positions(root)}
    try:
        return space_from_dict(data, here=os.path.dirname(os.path.abspath(file)) if os.path.isfile(file) else None)
    except ArchDSLError as e:
        key = getattr(e, "space_key", None)
        while key and key not in positions:  # an entry of a value written as one item (`mixers: attn`): the value
            key = key[:-1]
        if key and e.line is None:
            raise ArchDSLError(e.message, source=whole, start=positions[key], hint=e.hint) from None
        raise


def _entry_positions(node, path: tuple = ()) -> dict[tuple, int]:
    """Offsets of the entries of every list in the composed YAML tree, by key path and index: ('mixers', 1) is the
    second mixer."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                out.update(_entry_positions(value_node, path + (str(key_node.value),)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.index
            out.update(_entry_positions(item, path + (i,)))
    return out


def space_from_dict(data: dict, here: str | None = None) -> Space:
    """A Space from plain data (YAML's shape); `here` resolves a relative base path."""
    if not isinstance(data, Mapping):
        raise ArchDSLError(f"a space must be a mapping (mixers, attn_fraction, placements, depth, ...), "
                           f"got {shown(data)}")
    if here is not None and not isinstance(here, (str, os.PathLike)):
        raise ArchDSLError(f"here must be a directory path or None, got {shown(here)}")
    for key in data:
        if key not in SPACE_KEYS:
            raise keyed_error(f"unknown space key {key!r}", (str(key), "<key>"), did_you_mean(str(key), SPACE_KEYS))
    kw: dict[str, Any] = {}
    base = data.get("base")
    if isinstance(base, str) and not base.strip():
        raise keyed_error("base must be a spec file path or a mapping of spec keys, got an empty string", ("base",))
    if isinstance(base, str):
        path = base if os.path.isabs(base) or here is None else os.path.join(here, base)
        if not os.path.exists(path) and not os.path.exists(base):
            where = f" (beside the space file: {path})" if path != base else ""
            raise keyed_error(f"base: no such spec file {base!r}{where}", ("base",))
        kw["base"] = load_spec(path if os.path.exists(path) else base)
    elif isinstance(base, dict):
        for key in base:
            if key not in BASE_KEYS:
                raise keyed_error(f"unknown base key {key!r}", ("base", str(key), "<key>"),
                                  did_you_mean(str(key), BASE_KEYS))
        try:
            kw["base"] = spec_from_yaml(dump_yaml({**base, "layout": "mamba2"}), file="<base>")
        except ArchDSLError as e:  # located at its key under base: in the space file, not in this copy of them
            if getattr(e, "spec_key", None) is None:
                raise
            raise keyed_error(e.message, ("base", *e.spec_key), e.hint) from None
    elif base is not None:
        raise keyed_error("base must be a spec file path or a mapping of spec keys", ("base",))
    for key in ("name", "attention", "mixers", "placements", "shared", "d_model", "depth", "attn_count",
                "attn_fraction", "probe"):
        if key in data:
            kw[key] = data[key]
    every = data.get("every") or {}
    if not isinstance(every, dict):
        raise keyed_error("every must be a mapping {periods: [...], offsets: [...]}", ("every",))
    for k in every:
        if k not in ("periods", "offsets"):
            raise keyed_error(f"unknown every key {k!r}", ("every", str(k), "<key>"),
                              did_you_mean(str(k), ("periods", "offsets")))
    if "periods" in every:
        kw["every_periods"] = _listed(every["periods"])
    if "offsets" in every:
        kw["every_offsets"] = _listed(every["offsets"])
    moe = data.get("moe") or {}
    if not isinstance(moe, dict):
        raise keyed_error("moe must be a mapping {every: [...], experts: [...], top_k: [...], hidden: [...]}", ("moe",))
    for k, v in moe.items():
        if k not in ("every", "experts", "top_k", "hidden"):
            raise keyed_error(f"unknown moe key {k!r}", ("moe", str(k), "<key>"),
                              did_you_mean(str(k), ("every", "experts", "top_k", "hidden")))
        kw[f"moe_{k}"] = _listed(v)
    for key in ("mixers", "d_model", "depth", "shared", "placements"):
        if key in kw:
            kw[key] = _listed(kw[key])
    if kw.get("d_model") == []:  # Space's empty d_model is the base's width: in a file, leave the key out for that
        raise keyed_error("the space is empty: `d_model` lists no values (leave it out for the base's width)",
                          ("d_model",))
    try:
        return Space(**kw)
    except TypeError as e:
        raise ArchDSLError(f"bad space: {e}") from None


def _listed(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]
