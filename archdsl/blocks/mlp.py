"""Position-wise FFN: plain (gelu, relu, relu2 = squared ReLU as NemotronH, silu) or gated
(swiglu, geglu: act(gate(x))·up(x), as Llama / Jamba / Bamba).

    plain:  x [B, L, d] ─up─▶ [B, L, hidden] ─act─▶ down ─▶ [B, L, d]
    gated:  x ─gate, up─▶ [B, L, hidden] each ─act(gate)·up─▶ down ─▶ [B, L, d]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import FFN, BlockConfig, ConfigError

ACTS = ("gelu", "relu", "relu2", "silu", "swiglu", "geglu")
GATED = ("swiglu", "geglu")


def ffn_params(d: int, hidden: int, act: str, bias: bool) -> int:
    gated = act in GATED
    p = (3 if gated else 2) * d * hidden
    if bias:
        p += (2 if gated else 1) * hidden + d
    return p


@dataclass(frozen=True, kw_only=True)
class MlpConfig(BlockConfig):
    kind: ClassVar[str] = "mlp"
    role: ClassVar[str] = FFN
    derived: ClassVar[dict[str, str]] = {"hidden": "width"}
    zero_ok: ClassVar[tuple[str, ...]] = ("hidden",)
    choices: ClassVar[dict] = {"act": ACTS}

    act: str = "swiglu"
    hidden: int = 0  # 0 = 4·d_model
    bias: bool = False

    def check(self) -> None:
        if self.act not in ACTS:
            raise ConfigError("act", f"mlp: act must be one of {', '.join(ACTS)}; got {self.act!r}")

    @property
    def width(self) -> int:
        return self.hidden or 4 * self.d_model

    @property
    def gated(self) -> bool:
        return self.act in GATED

    def params(self) -> int:
        return ffn_params(self.d_model, self.width, self.act, self.bias)

    def flops_per_token(self, n: int) -> int:
        """2 FLOPs per weight multiply-add: 2·(2 or 3)·d·hidden (bias adds and the activation not counted)."""
        return 2 * ffn_params(self.d_model, self.width, self.act, False)
