"""Mixture-of-experts FFN: a linear router picks top_k of `experts` FFNs per token (Jamba,
Mixtral); an optional always-on shared expert (DeepSeek / NemotronH style). Mixtral is
`router: softmax, norm_topk: true`; Jamba and OLMoE leave the softmax weights as they are.

    x [B, L, d] ─router─▶ logits [B, L, experts] ─top_k─▶ Σ_k w_k·expert_k(x) (+ shared(x))

Each expert is an `mlp` with `act` and `hidden`. Jamba's router has no bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import FFN, BlockConfig, ConfigError
from .mlp import ACTS, ffn_params


@dataclass(frozen=True, kw_only=True)
class MoeConfig(BlockConfig):
    kind: ClassVar[str] = "moe"
    role: ClassVar[str] = FFN
    derived: ClassVar[dict[str, str]] = {"hidden": "width", "norm_topk": "renormalises"}
    zero_ok: ClassVar[tuple[str, ...]] = ("hidden", "shared_hidden")
    choices: ClassVar[dict] = {"act": ACTS, "router": ("softmax", "sigmoid")}

    experts: int = 8
    top_k: int = 2
    hidden: int = 0  # per expert; 0 = 4·d_model
    act: str = "swiglu"
    shared_hidden: int = 0  # hidden size of the shared expert; 0 = none
    router: str = "softmax"  # gate scores: softmax (Jamba, Mixtral, OLMoE) or sigmoid (DeepSeek-V3, NemotronH)
    norm_topk: bool | None = None  # top-k weights renormalised to sum 1 (HF's norm_topk_prob); None: sigmoid yes, softmax no
    routed_scale: float = 1.0  # the routed experts' weights times this (HF's routed_scaling_factor); not the shared expert's
    router_bias: bool = False
    score_bias: bool = False  # sigmoid router: a bias buffer added to the scores for choosing only (DeepSeek-V3, NemotronH)
    balance_rate: float = 0.0  # training, with score_bias: after each optimizer step the bias moves this much toward even loads (DeepSeek-V3's γ, 0.001)
    bias: bool = False  # expert linear biases
    aux_loss_coef: float = 0.01

    def check(self) -> None:
        if self.top_k > self.experts:
            raise ConfigError("top_k", f"moe: top_k {self.top_k} exceeds experts {self.experts}")
        if self.act not in ACTS:
            raise ConfigError("act", f"moe: act must be one of {', '.join(ACTS)}; got {self.act!r}")
        if self.router not in self.choices["router"]:
            raise ConfigError("router", f"moe: router must be softmax or sigmoid; got {self.router!r}")
        if self.score_bias and self.router != "sigmoid":
            raise ConfigError("score_bias", "moe: score_bias needs router: sigmoid")
        if self.balance_rate < 0:
            raise ConfigError("balance_rate", f"moe: balance_rate must be >= 0, got {self.balance_rate}")
        if self.balance_rate and not self.score_bias:
            raise ConfigError("balance_rate", "moe: balance_rate moves the score bias: it needs score_bias: true")
        if self.routed_scale <= 0:
            raise ConfigError("routed_scale", f"moe: routed_scale must be > 0, got {self.routed_scale}")
        if self.aux_loss_coef < 0:
            raise ConfigError("aux_loss_coef", "moe: aux_loss_coef must be >= 0")

    @property
    def renormalises(self) -> bool:
        """Whether the top-k weights are scaled to sum 1: norm_topk, else the router's convention."""
        return self.router == "sigmoid" if self.norm_topk is None else self.norm_topk

    @property
    def width(self) -> int:
        return self.hidden or 4 * self.d_model

    def _router(self) -> int:
        return self.d_model * self.experts + (self.experts if self.router_bias else 0)

    def _expert(self) -> int:
        return ffn_params(self.d_model, self.width, self.act, self.bias)

    def _shared(self) -> int:
        return ffn_params(self.d_model, self.shared_hidden, self.act, self.bias) if self.shared_hidden else 0

    def params(self) -> int:
        return self._router() + self.experts * self._expert() + self._shared()

    def active_params(self) -> int:
        return self._router() + self.top_k * self._expert() + self._shared()

    def shared_active_params(self, uses: int) -> int:
        """Shared by `uses` layers, a token is routed at each use and may reach other top_k experts each time: at
        most min(experts, uses·top_k) of them (an upper bound: the ones it does reach depend on the token)."""
        return self._router() + min(self.experts, uses * self.top_k) * self._expert() + self._shared()

    def flops_per_token(self, n: int) -> int:
        """Router + top_k experts + shared expert, 2 FLOPs per multiply-add (biases ignored): the work per
        token as the architecture defines it, and what the model computes (grouped GEMMs over the
        token-expert pairs, one expert's tokens at a time, or the chosen experts' weights gathered per
        token: no expert runs on a token that did not pick it, and there is no capacity padding)."""
        d = self.d_model
        e = ffn_params(d, self.width, self.act, False)
        s = ffn_params(d, self.shared_hidden, self.act, False) if self.shared_hidden else 0
        return 2 * (d * self.experts + self.top_k * e + s)
