"""What every block config is: a typed, validated, frozen dataclass that knows its own costs.

A config never imports torch: the analyses (parameters, FLOPs, cache bytes) run from
configs alone, before anything is allocated. The nn.Module that realises a config is
found through the registry in archdsl/blocks/__init__.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from ..units import sci

MIXER, FFN, INJECT = "mixer", "ffn", "inject"


class ConfigError(ValueError):
    """A bad block argument; `field` names it so the caller can point at it in the source."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


FLOAT32_MAX = 3.4028234663852886e38
MAX_INT = 10**15  # of an int argument: sizes past it are typos (the whole spec is refused past 10^13 parameters)


def check_steps(cfg, *names: str) -> None:
    """Step sizes (dt_min, dt_max, dt_floor) that float32, in which the models and kernels form dt, holds."""
    for name in names:
        if getattr(cfg, name) > FLOAT32_MAX:
            raise ConfigError(name, f"{cfg.kind}: {name} must be at most 3.4e38 (float32's largest: dt is formed "
                                    f"in float32), got {getattr(cfg, name)}")


@dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """Base of every block config. Subclasses set `kind`, `role` and their own fields,
    and check them in `check()` (called from __post_init__). Checked here for every block: ints
    are positive (>= 0 where listed in `zero_ok`) and at most 10^15, floats finite, and every `*eps` in (0, 1)."""

    kind: ClassVar[str] = ""
    role: ClassVar[str] = MIXER

    d_model: int

    zero_ok: ClassVar[tuple[str, ...]] = ()  # int fields that may be 0
    # fields whose written value may stand for a size worked out from the others (kv_heads 0 for heads, dt_rank
    # "auto"): field → the property that gives the value the block uses
    derived: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool):
                floor = 0 if f.name in self.zero_ok else 1
                if value < floor:
                    raise ConfigError(f.name, f"{self.kind}: {f.name} must be {'>= 0' if floor == 0 else 'positive'}, got {value}")
                takes_int = "int" in str(f.type).replace(" ", "").split("|")  # not a float field given an int
                if value > MAX_INT and takes_int:  # YAML and Python give ints of any size; float(int) overflows
                    raise ConfigError(f.name, f"{self.kind}: {f.name}: absurd size {sci(value)} (over 10^15)")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f.name, f"{self.kind}: {f.name} must be a finite number, got {value}")
            if f.name.endswith("eps") and not 0 < value < 1:
                raise ConfigError(f.name, f"{self.kind}: {f.name} must be in (0, 1), got {value}")
        self.check()

    def check(self) -> None:
        """Ranges and divisibility; raise ConfigError(field, message)."""

    # --- costs, per instance ----------------------------------------------------------
    def params(self) -> int:
        """Parameters of one instance (for a shared block: the shared set, counted once)."""
        raise NotImplementedError

    def per_use_params(self) -> int:
        """Parameters each use owns even when the block is shared (LoRA adapters, projections)."""
        return 0

    def active_params(self) -> int:
        """Parameters touched by one token (MoE: router + top-k experts)."""
        return self.params()

    def shared_active_params(self, uses: int) -> int:
        """Parameters of a shared set that one token touches over its `uses` uses in the model: the same weights each
        time, the block's active parameters (an MoE's router may send the token to other experts at each use)."""
        return self.active_params()

    def flops_per_token(self, n: int) -> int:
        """Forward FLOPs (2 per multiply-add) for one token, averaged over a sequence of length n."""
        raise NotImplementedError

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Inference cache (KV, SSM state, conv window) at batch `batch` and context `n`, with
        `dtype_bytes` an element of the model's dtype and `ssm_bytes` one of Mamba's / Mamba-2's SSM
        state (None: float32's 4, a float64 model's 8; ArchModel.set_ssm_state_dtype)."""
        return 0

    def resolved(self) -> dict:
        """Every field (d_model too) with the value the block uses: a derived one (`derived`) worked out, so that
        attn's kv_heads 0 reads as its heads and mamba's dt_rank "auto" as ceil(d_model / 16)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update((name, getattr(self, prop)) for name, prop in self.derived.items())
        return out

    def shape_key(self) -> tuple:
        """Two configs can share parameters only when these are equal: the same kind with the same resolved values
        (kv_heads 8 is kv_heads 0 when heads is 8, a default written out is the default), the same parameters
        computing the same function."""
        return (self.kind, *self.resolved().values())

    def to_args(self) -> dict:
        """Fields that differ from the defaults, for writing the config back as text/YAML; one whose default gives
        the block it gives (a derived value written out: mamba2's expand 2 where heads is not given, attn's kv_heads
        equal to its heads) is left out."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "d_model":
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if value != default and not (f.name in self.derived and self._same_with(f.name, default)):
                out[f.name] = value
        return out

    def _same_with(self, name: str, value) -> bool:
        """Whether this config with `name` set to `value` is the same block (the same resolved values)."""
        try:
            return dataclasses.replace(self, **{name: value}).resolved() == self.resolved()
        except ValueError:  # ConfigError: that value does not make a block with the others
            return False
