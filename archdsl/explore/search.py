"""Enumerate a Space, prune by budget before building anything, rank on a Pareto front.

    cons = [parse_constraint("params", "1.5B"), parse_constraint("cache_bytes", "2GiB@64k")]
    result = explore(space, cons, objectives=("params", "cache_bytes"))
    result.candidates   # survivors with their figures, ranked
    result.front        # the non-dominated ones

Figures come from archdsl.analyze (exact, nothing allocated). A *frame* (everything but
where the attention layers sit) has one set of figures: placement moves no parameter, FLOP
or cache byte, since every figure is a sum over layers and the FFNs (the default, `moe
every P`) do not depend on the mixer beside them. So a frame is analysed once, with its
first placement; over budget, it is removed with all its placements; within, its figures
are every placement's (the test suite analyses candidates of random spaces on their own and
finds the same figures). The cost is one analysis per frame and a layout parse per candidate.
"""
from __future__ import annotations

import bisect
import math
import numbers
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence

from ..analysis import analyze, dtype_bytes
from ..errors import ArchDSLError, did_you_mean, shown
from ..units import MAX_COUNT, human, parse_count, to_float
from .space import Space

METRICS = {"params": "params", "active_params": "active_params", "active": "active_params",
           "flops": "flops_per_token", "flops_per_token": "flops_per_token", "cache": "cache_bytes",
           "cache_bytes": "cache_bytes", "accuracy": "accuracy", "loss": "loss", "depth": "depth",
           "attn_fraction": "attn_fraction", "wall_time": "wall_time"}
MAXIMISE = {"accuracy"}
ANALYTIC = ("params", "active_params", "flops_per_token", "cache_bytes")
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_amount(text: str | int | float) -> float:
    """'1.5B' → 1.5e9, '2GiB' → 2**31, '300M' → 3e8, '4096' → 4096."""
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        value = to_float(text)
        if math.isnan(value):
            raise ArchDSLError(f"not an amount: {shown(text)} (write 1.5B, 300M, 2GiB or 4096)")
        if math.isinf(value):
            raise ArchDSLError(f"amount too large: {shown(text)}")
        return value
    t = str(text).strip().lower().replace("_", "")
    if "," in t and not re.match(r"[0-9]{1,3}(,[0-9]{3})+(?![0-9,])", t):  # a comma groups thousands, no more
        raise ArchDSLError(f"not an amount: {text!r} (write 1.5B, 300M, 2GiB, 4096 or 1,500,000)")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", t.replace(",", ""))
    if not m or m.group(2) not in UNITS:
        raise ArchDSLError(f"not an amount: {text!r} (write 1.5B, 300M, 2GiB or 4096)")
    try:  # exact: 2.01M is 2,010,000, not 2,009,999.9999999998
        value = float(Decimal(m.group(1)) * UNITS[m.group(2)])
    except ArithmeticError:  # an exponent past Decimal's range: far below any amount, or far above
        value = 0.0 if "e-" in m.group(1) else math.inf
    if not math.isfinite(value):
        raise ArchDSLError(f"amount too large: {text!r}")
    return value


def parse_context(text: str) -> int:
    """'64k' → 65536 (binary k, as `archdsl memory`), '4096' → 4096."""
    return parse_count(str(text))


def check_count(value, name: str) -> int:
    """A context length or a batch: an int (numpy's too) or a count as the command line writes it ('64k'),
    in 1..2^40; errors start with `name`."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
        if value > MAX_COUNT:  # said here: parse_count writes it out, and str() refuses an int of 4300 digits
            raise ArchDSLError(f"{name}: {shown(value)} is too large (at most 2^40 = {MAX_COUNT:,})")
    elif not isinstance(value, str):
        raise ArchDSLError(f"{name}: not a count: {shown(value)} (write 4096, '8k' or '1m')")
    return parse_count(value, name)


def constraint_metric(metric) -> str:
    """params, active_params, flops_per_token or cache_bytes, from one of them or an alias (active, flops, cache)."""
    key = METRICS.get(metric.replace("-", "_")) if isinstance(metric, str) else None
    if key not in ANALYTIC:
        raise ArchDSLError(f"unknown constraint metric {shown(metric)}", hint=did_you_mean(str(metric), ANALYTIC))
    return key


@dataclass(frozen=True)
class Constraint:
    """metric ≤ max (and ≥ min), measured at (batch, seq_len) when given, else at the run's context."""

    metric: str
    max: float | None = None
    min: float | None = None
    seq_len: int | None = None
    batch: int | None = None

    @property
    def label(self) -> str:
        unit = "B" if self.metric == "cache_bytes" else ""
        parts = []
        if self.min is not None:
            parts.append(f"{self.metric} ≥ {human(self.min, unit)}")
        if self.max is not None:
            parts.append(f"{self.metric} ≤ {human(self.max, unit)}")
        at = ("" if not self.seq_len else f" @ context {self.seq_len}" if self.metric == "flops_per_token"
              else f" @ batch {self.batch or 1}, context {self.seq_len}")
        return " and ".join(parts) + at

    def __post_init__(self):
        object.__setattr__(self, "metric", constraint_metric(self.metric))
        for name in ("max", "min"):
            v = getattr(self, name)
            bad = isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= to_float(v) < math.inf
            if v is not None and bad:
                raise ArchDSLError(f"constraint {name} must be a number >= 0, or None, got {shown(v)}")
            object.__setattr__(self, name, None if v is None else float(v))
        if self.max is None and self.min is None:
            raise ArchDSLError(f"a constraint on {self.metric} needs a max or a min")
        for name in ("seq_len", "batch"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_count(getattr(self, name), name))
        if self.metric in ("params", "active_params") and (self.seq_len is not None or self.batch is not None):
            raise ArchDSLError(f"{self.metric} do not depend on the context or the batch: give the budget without "
                               f"@CONTEXT (that is for flops and cache budgets)")
        if self.metric == "flops_per_token" and self.batch is not None:  # FLOPs a token: the same at any batch
            raise ArchDSLError("flops_per_token do not depend on the batch: give the budget as AMOUNT@CONTEXT, "
                               "without xBATCH (that is for cache budgets)")

    def check(self, value: float) -> bool:
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def miss(self, value: float) -> float:
        """How far `value` lies outside [min, max]: its distance to the bound it breaks, or minus its distance to
        the nearer bound where it keeps both (the smaller, the closer to the budget: for a max alone the smallest
        value, for a min alone the largest)."""
        return max(-math.inf if self.min is None else self.min - value,
                   -math.inf if self.max is None else value - self.max)


def parse_constraint(metric: str, text: str, bound: str = "max") -> Constraint:
    """'2GiB@64k' (cache at context 64k), '2GiB@64kx8' (batch 8), '1.5B' or a number → a Constraint. FLOPs a token
    take a context ('1G@64k') but no batch; parameters neither. metric: params, active_params, flops_per_token,
    cache_bytes or active, flops, cache; bound: 'max' (value ≤ amount) or 'min' (≥), both inclusive."""
    key = constraint_metric(metric)
    if bound not in ("max", "min"):
        raise ArchDSLError(f"bound must be 'max' or 'min', got {shown(bound)}")
    amount, at_sign, at = text.partition("@") if isinstance(text, str) else (text, "", "")  # a number: no context
    seq_len = batch = None
    if at_sign:  # '2GiB@' or '2GiB@64kx' leave out what they announce: an error, not a budget at the default
        ctx, x, b = at.lower().partition("x")
        seq_len = parse_context(ctx)
        batch = parse_context(b) if x else None
    if key == "cache_bytes" and isinstance(amount, str) and re.fullmatch(r"[0-9.,_e+-]+\s*b", amount.strip().lower()):
        num = amount.strip()[:-1].strip()
        raise ArchDSLError(f"{metric}: {amount.strip()!r} is ambiguous: B is billions (as in 1.5B parameters), not "
                           f"bytes; write {num}GB or {num}GiB for {num} billion bytes, or a count of bytes with no "
                           f"unit")
    value = parse_amount(amount)
    if value < 0:
        raise ArchDSLError(f"{metric}: a budget cannot be negative: {text!r}")
    return Constraint(key, **{bound: value}, seq_len=seq_len, batch=batch)


@dataclass
class Candidate:
    """One point of the space: its knobs, layout text, Spec, figures and (later) probe result."""

    id: str
    knobs: dict
    layout: str
    spec: Any
    figures: dict = field(default_factory=dict)
    probe: dict | None = None
    rank: int | None = None  # 0 = on the Pareto front
    on_front: bool = False

    def value(self, metric: str):
        if metric in self.figures:
            return self.figures[metric]
        if metric in ("accuracy", "loss", "wall_time"):
            return None if self.probe is None else self.probe.get({"loss": "final_loss"}.get(metric, metric))
        return self.knobs.get(metric)

    def to_dict(self) -> dict:
        return {"id": self.id, "layout": self.layout, "knobs": dict(self.knobs), "figures": dict(self.figures),
                "probe": self.probe, "rank": self.rank, "on_front": self.on_front}


@dataclass
class Exploration:
    """explore's result: survivors ranked (front first), the front, and how many were enumerated and removed."""

    candidates: list[Candidate]  # survivors, ranked
    front: list[Candidate]
    enumerated: int
    removed: dict[str, int]  # constraint label → candidates it removed (first failing)
    violated: dict[str, int]  # constraint label → candidates violating it (any)
    objectives: tuple[str, ...]
    context: int
    batch: int


def norm_objectives(objectives: str | Iterable[str]) -> tuple[str, ...]:
    """Metric names or aliases (cache, flops, active) → their metrics, once each; a string is split at its commas
    as --objective is: 'params' is one objective, 'params,cache' two."""
    names = objectives.split(",") if isinstance(objectives, str) else objectives
    if not isinstance(names, Iterable) or isinstance(names, (bytes, bytearray)):
        raise ArchDSLError(f"objectives must be metric names, e.g. ('params', 'cache') or 'params,cache', "
                           f"got {shown(objectives)}")
    out = []
    for o in names:
        if isinstance(o, str) and not o.strip():
            raise ArchDSLError(f"an empty name in {shown(objectives)}; give e.g. params,cache")
        key = METRICS.get(o.strip().replace("-", "_")) if isinstance(o, str) else None
        if key is None:
            raise ArchDSLError(f"unknown objective {shown(o)}", hint=did_you_mean(str(o), METRICS))
        if key not in out:
            out.append(key)
    if not out:
        raise ArchDSLError("give at least one objective (params, active_params, flops, cache, accuracy, loss)")
    return tuple(out)


CONSTRAINT_TEXT = re.compile(r"\s*([a-z_-]+)\s*(<=|>=|≤|≥)(.*)", re.IGNORECASE | re.DOTALL)


def norm_constraints(constraints) -> list[Constraint]:
    """Constraints, or their text: 'params<=1.5B', 'cache<=2GiB@64k', 'active>=100M' (bounds are inclusive, as
    --max-params and --min-params). One constraint may stand alone; None is none."""
    if constraints is None:
        return []
    if isinstance(constraints, (str, Constraint)):
        constraints = [constraints]
    if not isinstance(constraints, Iterable):
        raise ArchDSLError(f"constraints must be a list of Constraints (parse_constraint) or of texts such as "
                           f"'params<=1.5B', got {shown(constraints)}")
    out = []
    for c in constraints:
        if isinstance(c, str):
            m = CONSTRAINT_TEXT.fullmatch(c)
            if not m:
                raise ArchDSLError(f"constraints: not a constraint: {c!r} (write params<=1.5B, cache<=2GiB@64k or "
                                   f"active>=100M: bounds are inclusive)")
            try:
                c = parse_constraint(m.group(1), m.group(3).strip(), "max" if m.group(2) in ("<=", "≤") else "min")
            except ArchDSLError as e:
                raise ArchDSLError(f"constraints {m.string.strip()!r}: {e.message}", hint=e.hint) from None
        elif not isinstance(c, Constraint):
            raise ArchDSLError(f"constraints: not a constraint: {shown(c)} (give parse_constraint('params', '1.5B') "
                               f"or 'params<=1.5B')")
        out.append(c)
    return out


def check_args(space, constraints, objectives, context, batch, dtype) -> tuple:
    """explore's arguments, each checked and named before any candidate is enumerated; returns
    (constraints, objectives, context, batch) as explore uses them."""
    if not isinstance(space, Space):
        raise ArchDSLError(f"space must be a Space (load_space reads one from a file, YAML text or a mapping), "
                           f"got {shown(space)}")
    constraints = norm_constraints(constraints)
    objectives = norm_objectives(objectives)
    context, batch = check_count(context, "context"), check_count(batch, "batch")
    dtype_bytes(dtype)
    return constraints, objectives, context, batch


def check_constraints(constraints: Sequence[Constraint]) -> None:
    """Contradictions that need no candidate: min above max on one metric."""
    for c in constraints:
        if c.min is not None and c.max is not None and c.min > c.max:
            raise ArchDSLError(f"contradictory constraints: {c.label}")
    by_metric: dict[tuple, list[Constraint]] = {}
    for c in constraints:
        by_metric.setdefault((c.metric, c.seq_len, c.batch), []).append(c)
    for cs in by_metric.values():
        low = max((c for c in cs if c.min is not None), key=lambda c: c.min, default=None)
        high = min((c for c in cs if c.max is not None), key=lambda c: c.max, default=None)
        if low is not None and high is not None and low.min > high.max:  # said as the budgets are: 2.00M, 1.00 KiB
            raise ArchDSLError(f"contradictory constraints: {replace(low, max=None).label} and "
                               f"{replace(high, min=None).label}")


def figures_of(spec, constraints: Sequence[Constraint], context: int, batch: int, dtype: str) -> dict:
    """params, active_params, flops_per_token, cache_bytes at (batch, context), plus each
    constraint's own measurement under `at[label]`."""
    reps = {}

    def rep(n, b):
        if (n, b) not in reps:
            reps[(n, b)] = analyze(spec, seq_len=n, batch=b, dtype=dtype)
        return reps[(n, b)]

    r = rep(context, batch)
    out = {"params": r.params, "active_params": r.active_params, "flops_per_token": r.flops_per_token,
           "cache_bytes": r.cache_bytes, "layers": len(r.layers)}
    at = {}
    for c in constraints:
        at[c.label] = getattr(rep(c.seq_len or context, c.batch or batch), c.metric)
    out["at"] = at
    return out


def failing(figs: dict, constraints: Sequence[Constraint]) -> list[Constraint]:
    return [c for c in constraints if not c.check(figs["at"][c.label])]


def enumerate_space(space: Space, constraints: Sequence[Constraint] = (), context: int = 4096, batch: int = 1,
                    dtype: str = "bfloat16", progress=None):
    """Generate, prune and analyse. Returns (survivors, enumerated, removed, violated, best, invalid):
    best[label] is the value seen closest to that constraint's interval (Constraint.miss: the smallest for a max
    alone, the largest for a min alone), for error messages."""
    # a cache budget at a context (2GiB@64k) without a batch is checked at the run's batch: its label says which
    constraints = [replace(c, batch=c.batch or batch) if c.seq_len and c.metric == "cache_bytes" else c
                   for c in constraints]
    check_constraints(constraints)
    seen: set[tuple] = set()  # (frame, attention indices) and (width, layout): each model once
    survivors: list[Candidate] = []
    removed: dict[str, int] = {}
    violated: dict[str, int] = {}
    best: dict[str, float] = {}
    invalid: list[str] = []
    read: dict[int, Any] = {}  # a spec read from YAML, per width: the others swap in their name and layout
    n = 0
    for fi, frame in enumerate(space.frames()):
        placements = []
        for pname, idx in space.placements_of(frame):
            key = (tuple(sorted(frame.items())), idx)  # the same layers by two placements: keep the first
            if key in seen:
                continue
            layout = space.layout_text(frame, pname, idx)
            if (frame["d_model"], layout) in seen:  # the same model from two frames: the layout is the model
                continue
            seen.update((key, (frame["d_model"], layout)))
            placements.append((pname, idx, layout))
        if not placements:
            continue
        if progress is not None:
            progress.update(len(placements))
        # one analysis for the frame: placement moves no parameter, FLOP or cache byte
        first = placements[0]
        try:
            frame_spec = space.spec(frame, first[2], f"{space.name}-c{n:04d}", like=read.get(frame["d_model"]))
            read.setdefault(frame["d_model"], frame_spec)
            figs = figures_of(frame_spec, constraints, context, batch, dtype)
        except ArchDSLError as e:
            n += len(placements)
            label = "invalid block configuration"
            removed[label] = removed.get(label, 0) + len(placements)
            invalid.append(f"{first[2]} at d_model {frame['d_model']}: {e.message}")
            continue
        models = _models(frame, frame_spec)
        if models in seen:  # an earlier frame's models under other names: a mixer's alias, MoE hidden at its default
            continue
        seen.add(models)
        n0 = n
        n += len(placements)
        for c in constraints:
            v = figs["at"][c.label]
            if c.label not in best or c.miss(v) < c.miss(best[c.label]):
                best[c.label] = v
        bad = failing(figs, constraints)
        if bad:
            removed[bad[0].label] = removed.get(bad[0].label, 0) + len(placements)
            for c in bad:
                violated[c.label] = violated.get(c.label, 0) + len(placements)
            continue
        for j, (pname, idx, layout) in enumerate(placements):
            cid = f"c{n0 + j:04d}"
            # the frame's figures hold for every placement: no graph is built here, no YAML read again, and no
            # candidate keeps the frame's graph (a thousand graphs of two thousand layers fill gigabytes)
            spec = space.spec(frame, layout, f"{space.name}-{cid}", like=frame_spec)
            knobs = dict(frame, placement=pname, attn_layers=list(idx))
            survivors.append(Candidate(cid, knobs, spec.layout_text, spec, dict(figs, at=dict(figs["at"]))))
    return survivors, n, removed, violated, best, invalid


def _models(frame: dict, spec) -> tuple:
    """What a frame's models are, whatever their blocks are called: its counts, and the resolved configuration
    (shape_key: a default written out is the default) of every block of every layer of its first placement's model
    (`spec`; the other placements move the attention layers alone). Two frames alike in it give the same models at
    the same placements."""
    from ..analysis import layers

    blocks = tuple(tuple(repr(s.config.shape_key()) for s in subs) for subs in layers(spec.graph))
    return "models", frame["d_model"], frame["depth"], frame["attn_count"], frame["shared"], blocks


def empty_error(space: Space, n: int, removed: dict, violated: dict, best: dict, invalid: list) -> ArchDSLError:
    if n == 0:
        depths = ", ".join(str(d) for d in space.depth)
        rng = (f"attn_count {list(space.attn_count)}" if space.attn_count is not None
               else f"attn_fraction {list(space.attn_fraction or (0, 0.5))}")
        return ArchDSLError(f"the space is empty: {rng} allows no attention-layer count (or placement) "
                            f"at depth {depths}")
    lines = [f"no candidate satisfies the constraints: {n} enumerated, all removed"]
    labels = list(removed) + [k for k in violated if k not in removed]
    for label, count in sorted(((k, removed.get(k, 0)) for k in labels), key=lambda kv: -kv[1]):
        extra = ""
        if label in best:
            unit = "B" if label.startswith("cache") else ""
            extra = f" (best seen: {human(best[label], unit)})"
        lines.append(f"  {label}: removed {count}, violated by {violated.get(label, count)}{extra}")
    if invalid:
        lines.append(f"  first invalid: {invalid[0]}")
    return ArchDSLError("\n".join(lines))


# --- Pareto ---------------------------------------------------------------------------------
def _key(c: Candidate, objectives) -> tuple:
    vals = []
    for o in objectives:
        v = c.value(o)
        v = float("inf") if v is None or v != v else float(v)  # unprobed or NaN (a diverged loss): the worst
        vals.append(-v if o in MAXIMISE and v != float("inf") else v)
    return tuple(vals)


def dominates(a: tuple, b: tuple) -> bool:
    """a is no worse anywhere and better somewhere (all minimised)."""
    points = []
    for name, p in (("a", a), ("b", b)):
        p = tuple(p) if isinstance(p, Iterable) and not isinstance(p, str) else p  # a generator is read once
        if not isinstance(p, tuple) or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in p):
            raise ArchDSLError(f"dominates: {name} must be a point, a tuple of numbers, got {shown(p)}")
        points.append(p)
    a, b = points
    if len(a) != len(b):
        raise ArchDSLError(f"dominates: points of different lengths: {shown(a)} and {shown(b)}")
    return _dominates(a, b)


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _candidates(cands) -> list[Candidate]:
    if isinstance(cands, (str, Candidate)) or not isinstance(cands, Iterable):
        raise ArchDSLError(f"cands must be a list of Candidates (an Exploration's candidates), got {shown(cands)}")
    cands = list(cands)
    for c in cands:
        if not isinstance(c, Candidate):
            raise ArchDSLError(f"cands must be a list of Candidates (an Exploration's candidates); one is {shown(c)}")
    return cands


def pareto_ranks(cands: Sequence[Candidate], objectives: Sequence[str]) -> list[int]:
    """Non-dominated sorting: rank 0 is the front, rank 1 the front of the rest, ...

    A point's rank is one more than the highest rank of the points that dominate it (0 when none
    does), and only a point before it in sorted order can dominate it; so one pass over the distinct
    points, sorted, ranks them all. Distinct: the placements of a frame share one point."""
    return _pareto_ranks(_candidates(cands), norm_objectives(objectives))


def _pareto_ranks(cands: list[Candidate], objectives: tuple[str, ...]) -> list[int]:
    """pareto_ranks of arguments already checked. A point's rank is the longest chain of points dominating one
    another above it (peeling fronts gives the same), over the distinct points in ascending order, where whatever
    dominates a point comes before it."""
    keys = [_key(c, objectives) for c in cands]
    points = sorted(set(keys))
    ranks = dict(zip(points, (_chains_2d if len(objectives) <= 2 else _chains)(points)))
    return [ranks[k] for k in keys]


def _chains_2d(points: list[tuple]) -> list[int]:
    """_pareto_ranks' chains for one or two objectives in O(n log n): taken in order, an earlier point dominates a
    later one exactly where its last objective is no larger, so with least[r] the least last objective among the
    points of rank r so far (non-decreasing in r), a point's rank is the count of ranks whose least is ≤ its own.
    (A pair loop took 167 s over 13,800 points.)"""
    least: list[float] = []
    out = []
    for p in points:
        r = bisect.bisect_right(least, p[-1])
        least[r:r + 1] = [p[-1]]
        out.append(r)
    return out


def _chains(points: list[tuple]) -> list[int]:
    """_pareto_ranks' chains for three objectives or more: each point against all the points before it at once."""
    import torch

    pts = torch.tensor(points, dtype=torch.float64)
    ranks = torch.zeros(len(points), dtype=torch.long)
    for i in range(1, len(points)):
        above = (pts[:i] <= pts[i]).all(1)  # (distinct points: no worse everywhere is better somewhere)
        if above.any():
            ranks[i] = ranks[:i][above].max() + 1
    return ranks.tolist()


def rank(cands: list[Candidate], objectives: Sequence[str], eligible: Callable | None = None) -> list[Candidate]:
    """Set rank / on_front in place over the `eligible` ones (default: all); return all sorted:
    by rank, then objectives in order, then id. Ineligible ones (not probed) come last."""
    cands, objectives = _candidates(cands), norm_objectives(objectives)
    if eligible is not None and not callable(eligible):
        raise ArchDSLError(f"eligible must be a function of a Candidate, or None, got {shown(eligible)}")
    pool = [c for c in cands if eligible is None or eligible(c)]
    rest = [c for c in cands if not (eligible is None or eligible(c))]
    for c, r in zip(pool, _pareto_ranks(pool, objectives)):
        c.rank, c.on_front = r, r == 0
    for c in rest:
        c.rank, c.on_front = None, False
    pool.sort(key=lambda c: (c.rank, _key(c, objectives), len(c.id), c.id))  # c10000 after c9999
    rest.sort(key=lambda c: (_key(c, [o for o in objectives if o in ANALYTIC] or ["params"]), len(c.id), c.id))
    return pool + rest


def explore(space: Space, constraints: Sequence[Constraint | str] | None = (),
            objectives: str | Sequence[str] = ("params", "cache_bytes"), context: int | str = 4096,
            batch: int | str = 1, dtype: str = "bfloat16", progress=None) -> Exploration:
    """Enumerate `space`, keep what meets every constraint, rank on the Pareto front of `objectives`
    (analytic ones: params, active_params, flops_per_token, cache_bytes, depth, attn_fraction; accuracy, loss and
    wall_time are kept in .objectives but rank nothing until probed (runner.run); with none analytic, params ranks).
    constraints: Constraints or texts ('params<=1.5B'); objectives: names or 'params,cache'; context and batch:
    ints or counts ('64k'). Bad arguments are named before anything is enumerated; an empty result
    raises ArchDSLError naming the constraint that removed everything."""
    constraints, objectives, context, batch = check_args(space, constraints, objectives, context, batch, dtype)
    if progress is not None and not callable(getattr(progress, "update", None)):
        raise ArchDSLError(f"progress must be None or a bar with update(n) (tqdm's), got {shown(progress)}")
    survivors, n, removed, violated, best, invalid = enumerate_space(space, constraints, context, batch, dtype,
                                                                     progress)
    if not survivors:
        raise empty_error(space, n, removed, violated, best, invalid)
    analytic = tuple(o for o in objectives if o not in ("accuracy", "loss", "wall_time"))
    ranked = rank(survivors, analytic or ("params",))
    return Exploration(ranked, [c for c in ranked if c.on_front], n, removed, violated, objectives, context, batch)
