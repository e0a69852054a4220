"""Block registry: name → typed config dataclass (the nn.Modules live elsewhere).

    make_config("attn", {"heads": 32, "kv_heads": 8}, d_model=4096) → AttnConfig(...)

Arguments are checked here against the dataclass fields (unknown names with the closest
valid ones, types, choices) and then by the config's own check() (ranges, divisibility).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing

from ..errors import did_you_mean, shown
from .attn import AttnConfig
from .base import FFN, INJECT, MIXER, BlockConfig, ConfigError
from .mamba import MambaConfig
from .mamba2 import Mamba2Config
from .mlp import MlpConfig
from .moe import MoeConfig
from .rwkv import CmixConfig, Rwkv4Config, Rwkv6Config
from .s4d import S4dConfig
from .zamba import ZambaConfig

BLOCKS: dict[str, type[BlockConfig]] = {
    "mamba": MambaConfig,
    "mamba2": Mamba2Config,
    "attn": AttnConfig,
    "mlp": MlpConfig,
    "moe": MoeConfig,
    "rwkv6": Rwkv6Config,
    "rwkv4": Rwkv4Config,
    "cmix": CmixConfig,
    "s4d": S4dConfig,
    "zamba": ZambaConfig,
}

NORMS = ("rmsnorm", "layernorm")

__all__ = ["BLOCKS", "NORMS", "MIXER", "FFN", "INJECT", "BlockConfig", "ConfigError",
           "make_config", "norm_params", "arg_names"]


def norm_params(norm: str, d_model: int) -> int:
    """Parameters of one pre-norm: RMSNorm has a weight [d], LayerNorm a weight and a bias."""
    if norm == "rmsnorm":
        return d_model
    if norm == "layernorm":
        return 2 * d_model
    raise ConfigError("norm", f"unknown norm {shown(norm)}; valid: {', '.join(NORMS)}")


def arg_names(kind: str) -> list[str]:
    """The argument names a block kind accepts (d_model comes from the spec)."""
    return [f.name for f in dataclasses.fields(BLOCKS[kind]) if f.name != "d_model"]


def _accepts(tp, value) -> bool:
    """Whether `value` (from YAML or the layout text) fits the annotated field type."""
    if tp is typing.Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(t, value) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


@functools.cache
def type_hints(kind: str) -> dict:
    """The field types of block `kind`'s config (typing.get_type_hints is slow: evaluated once a kind)."""
    return typing.get_type_hints(BLOCKS[kind])


def make_config(kind: str, args: dict, d_model: int) -> BlockConfig:
    """Build and validate the config of block `kind` from `args`; raises ConfigError(field, msg)."""
    if kind not in BLOCKS:
        raise ConfigError("kind", f"unknown block {shown(kind)}; {did_you_mean(kind, BLOCKS)}")
    cls = BLOCKS[kind]
    hints = type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "d_model"}
    choices = getattr(cls, "choices", {})
    values = {}
    for name, value in args.items():
        if name not in fields:
            raise ConfigError(name, f"{kind}: unknown argument {shown(name)}; {did_you_mean(name, fields)}")
        tp = hints[name]
        if not _accepts(tp, value):
            raise ConfigError(name, f"{kind}: {name} must be {_type_name(tp)}, got {shown(value)}")
        if isinstance(value, int) and not isinstance(value, bool) and float in typing.get_args(tp) + (tp,) \
                and int not in typing.get_args(tp) + (tp,):
            value = float(value)
        if name in choices and value not in choices[name]:
            raise ConfigError(name, f"{kind}: {name} must be one of {', '.join(map(str, choices[name]))}; "
                                    f"got {shown(value)}")
        values[name] = value
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
        raise ConfigError("d_model", f"d_model must be a positive int, got {shown(d_model)}")
    return cls(d_model=d_model, **values)
