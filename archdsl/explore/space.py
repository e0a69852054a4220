"""A design space of hybrid layouts (a Space, built in Python or read from YAML by space_file.py) and its
candidates as real Specs.

A candidate is one point of the product: its layout is written in the layout language
(`3×(3×mamba2, attn), moe(experts=8) every 2`) and wrapped in a Spec with the base's fixed
parts (vocabulary, norm, default FFN, per-kind block defaults). Placements of k attention
layers among D:
  even      centres of k equal segments: i = floor((j + ½)·D/k)
  every     i % N == K for each period N and offset K of `every` (count from the layout)
  front     0 .. k-1             back   D-k .. D-1
  sandwich  ceil(k/2) at the front, floor(k/2) at the back
"""
from __future__ import annotations

import functools
import itertools
import numbers
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from ..blocks import BLOCKS, MIXER
from ..errors import ArchDSLError, Source, did_you_mean, shown
from ..graph import MAX_LAYERS
from ..language import parse_layout
from ..spec import Spec, spec_from_yaml
from ..yamlio import dump_yaml
from ..units import MAX_COUNT
from .space_check import check_probe, field_key, finite_number, keyed_error, plain_value

PLACEMENTS = ("even", "every", "front", "back", "sandwich")
OFFSET_NAMES = ("first", "mid", "last")
# the largest value of each integer knob, and why: checked first, so that no huge number reaches a message or a loop
_LAYERS = f"the {MAX_LAYERS} layers a layout may expand to"
LIMITS = {"attn_count": (MAX_LAYERS, _LAYERS), "depth": (MAX_LAYERS, _LAYERS), "every_periods": (MAX_LAYERS, _LAYERS),
          "every_offsets": (MAX_LAYERS, _LAYERS), "moe_every": (MAX_LAYERS, _LAYERS),
          "d_model": (10**6, "10^6, the widest a spec may be"),
          "moe_experts": (MAX_COUNT, "2^40, more than any model holds"),
          "moe_top_k": (MAX_COUNT, "2^40, more than any model holds"),
          "moe_hidden": (MAX_COUNT, "2^40, more than any model holds")}


@dataclass(frozen=True, kw_only=True)
class Space:
    """The product of these knobs, less what the constraints remove."""

    name: str = "space"
    base: Spec | None = None  # fixed parts: sizes, norm, default FFN, block defaults (its layout is unused)
    mixers: tuple[str, ...] = ("mamba2",)
    attention: str = "attn"
    attn_count: tuple[int, int] | None = None  # inclusive range of attention layers
    attn_fraction: tuple[float, float] | None = None  # inclusive range of attention layers / depth
    placements: tuple[str, ...] = ("even",)
    every_periods: tuple[int, ...] = ()  # empty: every period 2..depth
    every_offsets: tuple[int | str, ...] = ("last",)  # ints, or first / mid / last of the period
    shared: tuple[bool, ...] = (False,)
    moe_every: tuple[int, ...] = (0,)  # 0: no MoE
    moe_experts: tuple[int, ...] = (8,)
    moe_top_k: tuple[int, ...] = (2,)
    moe_hidden: tuple[int, ...] = (0,)  # 0: the moe block's default
    d_model: tuple[int, ...] = ()  # empty: the base's d_model
    depth: tuple[int, ...] = (8,)
    probe: dict = field(default_factory=dict)  # defaults for probing (see probes.ProbeConfig)

    def __post_init__(self):
        for name in ("mixers", "placements", "every_periods", "every_offsets", "shared", "moe_every",
                     "moe_experts", "moe_top_k", "moe_hidden", "d_model", "depth"):
            value = getattr(self, name)
            if isinstance(value, (str, dict)) or not hasattr(value, "__iter__"):  # one value (None too), not a list
                value = (value,)
            object.__setattr__(self, name, tuple(map(plain_value, value)))
        for name in ("attn_count", "attn_fraction"):
            value = getattr(self, name)
            if finite_number(value):
                value = (value, value)
            elif hasattr(value, "tolist") and not isinstance(value, numbers.Number):  # a numpy array
                value = value.tolist()
            if isinstance(value, (list, tuple)):
                value = tuple(map(plain_value, value))
            object.__setattr__(self, name, value)
        if isinstance(self.name, numbers.Real) and not isinstance(self.name, bool) and abs(self.name) < 10**15:
            object.__setattr__(self, "name", str(plain_value(self.name)))  # YAML's `name: 2024`
        self.check()

    # --- validation ---------------------------------------------------------------------
    def check(self) -> None:
        if self.base is not None and not isinstance(self.base, Spec):
            raise keyed_error(f"base must be a Spec (archdsl.parse, archdsl.load_spec) or None, got {shown(self.base)}",
                              ("base",))
        base = self.base_spec
        for name in ("mixers", "placements", "shared", "moe_every", "moe_experts", "moe_top_k", "moe_hidden", "depth"):
            if not getattr(self, name):
                raise keyed_error(f"the space is empty: `{name}` lists no values", field_key(name))
        if not isinstance(self.name, str):
            raise keyed_error(f"name must be a string, got {shown(self.name)}", ("name",))
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") for c in self.name):  # as a spec's name
            raise keyed_error(f"name must be one line of text without control characters, got {self.name!r}", ("name",))
        for name, (top, why) in LIMITS.items():
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else ():
                if isinstance(v, int) and v > top:
                    raise keyed_error(f"{name} {shown(v)} is past {why}", field_key(name))
        self._check_kinds(base)
        _check_base(base)
        for p in self.placements:
            if not isinstance(p, str) or p not in PLACEMENTS:
                raise keyed_error(f"unknown placement {shown(p)}", ("placements",), did_you_mean(shown(p), PLACEMENTS))
        if self.attn_count is not None and self.attn_fraction is not None:
            raise keyed_error("give attn_count or attn_fraction, not both", ("attn_fraction",))
        for name, rng, top in (("attn_count", self.attn_count, None), ("attn_fraction", self.attn_fraction, 1)):
            if rng is None:
                continue
            if not (isinstance(rng, tuple) and len(rng) == 2 and all(finite_number(v) for v in rng)):
                got = list(rng) if isinstance(rng, tuple) else rng
                raise keyed_error(f"{name} must be a number or a [min, max] pair of numbers, got {shown(got)}",
                                  field_key(name))
            lo, hi = rng
            if name == "attn_count" and not all(isinstance(v, int) for v in rng):
                raise keyed_error(f"attn_count counts layers: give integers, got {list(rng)}", field_key(name))
            if lo < 0 or (top is not None and hi > top):
                raise keyed_error(f"{name} [{shown(lo)}, {shown(hi)}] is out of range"
                                  + (" [0, 1]" if top else " (>= 0)"), field_key(name))
            if lo > hi:
                raise keyed_error(f"contradictory {name}: min {lo} > max {hi}", (name,))
        for name in ("depth", "moe_experts", "moe_top_k") + (("d_model",) if self.d_model else ()):
            for v in getattr(self, name):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise keyed_error(f"{name} values must be positive integers, got {shown(v)}", field_key(name))
        for name in ("moe_every", "moe_hidden"):
            for v in getattr(self, name):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise keyed_error(f"{name} values must be integers >= 0, got {shown(v)}", field_key(name))
        for v in self.every_periods:  # `attn every 1` is all layers, and a period 0 selects none
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise keyed_error(f"every periods must be integers >= 2, got {shown(v)}", field_key("every_periods"))
        if not self.every_offsets:
            raise keyed_error("the space is empty: `every.offsets` lists no values", field_key("every_offsets"))
        for v in self.every_offsets:
            if not (v in OFFSET_NAMES or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)):
                raise keyed_error(f"every offset must be an integer >= 0 or one of {', '.join(OFFSET_NAMES)}; "
                                  f"got {shown(v)}", field_key("every_offsets"))
        self._check_offsets()
        if any(not isinstance(v, bool) for v in self.shared):
            raise keyed_error(f"shared takes true / false, got {shown(list(self.shared))}", ("shared",))
        if max(self.moe_every) > 0 and not any(k <= e for k in self.moe_top_k for e in self.moe_experts):
            raise keyed_error(f"contradictory moe: every top_k {list(self.moe_top_k)} exceeds every expert "
                              f"count {list(self.moe_experts)}", ("moe", "top_k"))
        if 0 not in self.moe_every and min(self.moe_every) > max(self.depth):  # else a misleading "space is empty"
            raise keyed_error(f"the space is empty: moe every {list(self.moe_every)} selects no layer at depth "
                              f"{', '.join(map(str, self.depth))} (add 0 for no MoE, or a period up to the depth)",
                              ("moe", "every"))
        check_probe(self.probe)

    def _check_kinds(self, base: Spec) -> None:
        """mixers: mixer kinds other than attention; attention: a block of kind attn. Each error keyed to its entry.
        Every entry resolves (a kind, or an alias that ends at one) before any is compared with another: a mixer of
        kind attn is compared with the `attention` block, which must resolve first."""
        entries = [(("mixers", i), kind) for i, kind in enumerate(self.mixers)] + [(("attention",), self.attention)]
        for key, kind in entries:
            if not isinstance(kind, str):
                raise keyed_error(f"{key[0]} takes block kinds or aliases of base.blocks, got {shown(kind)}", key)
        resolved = {}
        for key, kind in entries:
            try:
                resolved[key] = resolve_kind(base, kind)
            except ArchDSLError as e:
                raise keyed_error(e.message, key, e.hint) from None
        for key, kind in entries:
            if BLOCKS[resolved[key]].role != MIXER:
                raise keyed_error(f"{kind!r} is a {BLOCKS[resolved[key]].role} block, not a mixer", key,
                                  "mixers and attention take mixer kinds: "
                                  + ", ".join(k for k, c in BLOCKS.items() if c.role == MIXER))
        if resolved[("attention",)] != "attn":
            raise keyed_error(f"attention {self.attention!r} is not an attention block (kind attn)", ("attention",))
        attention = _definition(base, self.attention)
        for key, kind in entries[:-1]:
            if resolved[key] == "attn" and _definition(base, kind) == attention:
                # its layers would be the attention layers the knobs count and place: the same model under other knobs
                same = "" if kind == self.attention else f" (the same block as {self.attention!r})"
                raise keyed_error(f"mixers: {kind!r} is the attention block{same}; mixers lists the other mixers of "
                                  f"the stack", key, "attention layers are the `attention` block, counted by "
                                  "attn_count (or attn_fraction) and placed by placements; another attention "
                                  "block (a sliding-window alias) may be a mixer")

    def _check_offsets(self) -> None:
        """Every integer `every` offset K is below some period N (`every N offset K` needs K < N): else no placement
        ever uses it, in silence. Without periods, they are 2..depth."""
        periods = self.every_periods or (max(self.depth),)
        for i, K in enumerate(self.every_offsets):
            if isinstance(K, int) and not isinstance(K, bool) and K >= max(periods):
                which = (f"every period listed ({', '.join(map(str, self.every_periods))})" if self.every_periods
                         else f"every period up to the depth ({max(self.depth)})")
                raise keyed_error(f"every offset {K} is at or past {which}: `every N offset K` needs K < N",
                                  ("every", "offsets", i), "give an offset below a period, or first / mid / last")

    @property
    def base_spec(self) -> Spec:
        return self.base if self.base is not None else Spec(layout=_EMPTY_LAYOUT)

    @property
    def widths(self) -> tuple[int, ...]:
        return self.d_model or (self.base_spec.d_model,)

    def counts(self, depth: int) -> list[int]:
        """Attention-layer counts allowed at this depth."""
        if self.attn_count is not None:
            lo, hi = self.attn_count
            return [k for k in range(depth + 1) if lo <= k <= hi]
        lo, hi = self.attn_fraction if self.attn_fraction is not None else (0.0, 0.5)
        return [k for k in range(depth + 1) if lo - 1e-9 <= k / depth <= hi + 1e-9]

    # --- enumeration ----------------------------------------------------------------------
    def frames(self) -> Iterator[dict]:
        """Everything but the placement: the figures (params, FLOPs, cache) depend on nothing
        else, so constraints can prune a frame before any of its placements is built."""
        moes = [(0, None, None, None)]
        if any(p > 0 for p in self.moe_every):
            moes = [(0, None, None, None)] if 0 in self.moe_every else []
            moes += [(p, e, k, h) for p in self.moe_every if p > 0 for e in self.moe_experts
                     for k in self.moe_top_k if k <= e for h in self.moe_hidden]
        for d, depth, mixer, moe, shared in itertools.product(self.widths, self.depth, self.mixers, moes, self.shared):
            if moe[0] > depth:
                continue  # `moe every N` past the depth would select no layer
            for k in self.counts(depth):
                if shared and k < 2 and False in self.shared:
                    continue  # sharing one layer (or none) is no sharing: the unshared frame has it
                yield {"mixer": mixer if k < depth else self.attention, "d_model": d, "depth": depth,
                       "attn_count": k, "attn_fraction": round(k / depth, 6), "shared": shared and k >= 2,
                       "moe_every": moe[0], "moe_experts": moe[1], "moe_top_k": moe[2], "moe_hidden": moe[3]}

    def placements_of(self, frame: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(placement name, attention indices) for a frame; every-N placements may give another
        count than the frame's, so they are returned only when the count matches."""
        D, k = frame["depth"], frame["attn_count"]
        if k == 0 or k == D:
            yield ("none" if k == 0 else "all"), tuple(range(k)) if k else ()
            return
        for p in self.placements:
            if p == "even":
                yield p, tuple(sorted({int((j + 0.5) * D / k) for j in range(k)}))
            elif p == "front":
                yield p, tuple(range(k))
            elif p == "back":
                yield p, tuple(range(D - k, D))
            elif p == "sandwich":
                yield p, tuple(range((k + 1) // 2)) + tuple(range(D - k // 2, D))
            elif p == "every":
                for N, K in _every_by_count(D, self.every_periods, self.every_offsets).get(k, ()):
                    yield f"every {N} offset {K}", tuple(range(K, D, N))

    def layout_text(self, frame: dict, placement: str, idx: tuple[int, ...]) -> str:
        """The candidate's layout in the layout language."""
        D = frame["depth"]
        attn = self.attention + ("(shared)" if frame["shared"] and len(idx) > 1 else "")
        if placement.startswith("every "):
            N, K = placement.split()[1], placement.split()[3]
            text = f"{D}×{frame['mixer']}, {attn} every {N} offset {K}"
        else:
            chosen = set(idx)  # not `i in idx`: D·k steps for many attention layers
            kinds = [attn if i in chosen else frame["mixer"] for i in range(D)]
            text = _compress(kinds)
        if frame["moe_every"]:
            args = [f"experts={frame['moe_experts']}", f"top_k={frame['moe_top_k']}"]
            if frame["moe_hidden"]:
                args.append(f"hidden={frame['moe_hidden']}")
            text += f", moe({', '.join(args)}) every {frame['moe_every']}"
        return text

    def spec(self, frame: dict, layout: str, name: str, like: Spec | None = None) -> Spec:
        """The candidate as a Spec with the base's fixed parts (block errors surface on .graph).
        `like`: another candidate's spec at the same width, which differs only in its name and layout:
        those are swapped in, rather than the whole spec written and read again as YAML."""
        if like is not None:
            source = Source(layout, f"<{name}>")
            return replace(like, name=name, layout=parse_layout(layout, source), source=source, positions={})
        base = self.base_spec
        data = {k: v for k, v in base.to_dict().items() if k != "layout"}
        data.update(name=name, d_model=frame["d_model"], layout=layout)
        return spec_from_yaml(dump_yaml(data), file=f"<{name}>")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.base is not None:
            out["base"] = {k: v for k, v in self.base.to_dict().items() if k != "layout"}
        out.update(mixers=list(self.mixers), attention=self.attention)
        if self.attn_count is not None:
            out["attn_count"] = list(self.attn_count)
        if self.attn_fraction is not None:
            out["attn_fraction"] = list(self.attn_fraction)
        out.update(placements=list(self.placements),
                   every={"periods": list(self.every_periods), "offsets": list(self.every_offsets)},
                   shared=list(self.shared),
                   moe={"every": list(self.moe_every), "experts": list(self.moe_experts),
                        "top_k": list(self.moe_top_k), "hidden": list(self.moe_hidden)},
                   d_model=list(self.widths), depth=list(self.depth))
        if self.probe:
            out["probe"] = dict(self.probe)
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


_EMPTY_LAYOUT = parse_layout("mamba2", Source("mamba2"))  # a one-layer layout: the base's is never used


def _definition(base: Spec, name: str) -> tuple[str, dict]:
    """(kind, arguments) of a kind or an alias of the base's `blocks:`: an alias's own arguments over those of what it
    names, down to the kind's entry in `blocks:`. A name that does not resolve (unknown, an alias whose kind is
    missing or not a name, a circle of aliases) is resolve_kind's ArchDSLError, never a KeyError or an endless walk."""
    resolve_kind(base, name)  # from here on, every step of the walk is a known alias and the walk ends at a kind
    args: dict = {}
    while True:
        entry = base.blocks.get(name, {})
        args = {**{k: v for k, v in entry.items() if k != "kind"}, **args}
        if name in BLOCKS:
            return name, args
        name = entry["kind"]


def resolve_kind(base: Spec, name: str) -> str:
    """A block kind from a kind or an alias of the base's `blocks:`; ArchDSLError if unknown."""
    if not isinstance(name, str):
        raise ArchDSLError(f"a block kind must be a name (a kind or an alias of base.blocks), got {shown(name)}")
    seen = []
    kind = name
    while kind not in BLOCKS:
        if kind in seen:
            raise ArchDSLError(f"block alias {name!r} goes round in a circle: {' → '.join(seen + [kind])}")
        alias = base.blocks.get(kind)
        if alias is None or "kind" not in alias:
            valid = set(BLOCKS) | {a for a, v in base.blocks.items() if "kind" in v}
            where = f" (alias {name!r} → {' → '.join(seen[1:] + [kind])})" if seen else ""
            raise ArchDSLError(f"unknown block kind {kind!r}{where}", hint=did_you_mean(kind, valid))
        seen.append(kind)
        kind = alias["kind"]
        if not isinstance(kind, str):
            raise ArchDSLError(f"block alias {seen[-1]!r}: kind must be a block kind's name, got {shown(kind)}")
    return kind


def _check_base(base: Spec) -> None:
    """The base's `blocks:` (kinds, argument names and values) and `ffn:`, as the space is read: else a typo there
    fails every candidate alike ("no candidate satisfies ... first invalid"). A base given as a mapping of the space
    file is keyed to its place there; a spec file's errors point into that file."""
    from ..graph import check_blocks, check_ffn

    try:
        check_blocks(base)
        check_ffn(base)
    except ArchDSLError as e:
        text = base.source.file_text
        if base.source.file != "<base>" or text is None:
            raise
        key: tuple = ()
        if e.line is not None and e.col is not None:  # the deepest key at the error's offset in the base's YAML
            offset = sum(len(line) + 1 for line in text.split("\n")[:e.line - 1]) + e.col - 1
            key = max((k for k, v in base.positions.items() if v == offset), key=len, default=())
        raise keyed_error(f"base: {e.message}", ("base",) + key, e.hint) from None


@functools.lru_cache(maxsize=16)
def _every_by_count(D: int, periods: tuple[int, ...], offsets: tuple) -> dict[int, list[tuple[int, int]]]:
    """(N, K) of each `every N offset K` at depth D, by the number of layers it selects (the i with
    i % N == K: len(range(K, D, N)) of them), in the order of the periods, then the offsets. Cached: the
    frames of one depth share it, and none scans the D layers for each of the D periods again."""
    out: dict[int, list[tuple[int, int]]] = {}
    for N in periods or range(2, D + 1):
        if N < 2 or N > D:
            continue
        for off in offsets:
            K = {"first": 0, "mid": N // 2, "last": N - 1}.get(off, off)
            if K < N:
                out.setdefault(len(range(K, D, N)), []).append((N, K))
    return out


def _compress(kinds: list[str]) -> str:
    """['m','m','a','m','m','a'] → '2×(2×m, a)': the shortest period, then run lengths."""
    D = len(kinds)
    period = next(p for p in range(1, D + 1) if D % p == 0 and kinds == kinds[:p] * (D // p))
    unit = kinds[:period]
    runs = [(len(list(g)), k) for k, g in itertools.groupby(unit)]
    body = ", ".join(k if n == 1 else f"{n}×{k}" for n, k in runs)
    if period == D:
        return body
    return f"{D // period}×{body}" if len(runs) == 1 else f"{D // period}×({body})"
