"""Zamba2's shared transformer block, an INJECT sublayer (HF `Zamba2AttentionDecoderLayer`
+ the per-layer `linear` of `Zamba2HybridLayer`).

    h [B, L, d], e = original embedding [B, L, d]
    a = attn(RMSNorm_2d(concat(h, e)))      q/k/v: Linear(2d, heads·head_dim), head_dim = 2d/heads
                                            o: Linear(heads·head_dim, d)
    m = down(gelu(gate(n)) · up(n)),  n = RMSNorm_d(a)
        [gate; up] = W_gu·n + lora_B_i(lora_A_i(n))   (per-use LoRA, rank `lora`, Linear(d, r), Linear(r, 2·hidden))
    out = linear_i(m)                        per-use Linear(d, d), no bias
    → added to the input of the layer's mixer only (the residual stream skips it).

Shared parameters (params()): both norms, attention, MLP. Per use (per_use_params()): the
LoRA on gate/up, optional LoRAs on q/k/v (`attn_lora`, HF use_shared_attention_adapter),
and the output linear. Each use keeps its own KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .attn import mean_context
from .base import INJECT, BlockConfig, ConfigError


@dataclass(frozen=True, kw_only=True)
class ZambaConfig(BlockConfig):
    kind: ClassVar[str] = "zamba"
    role: ClassVar[str] = INJECT
    derived: ClassVar[dict[str, str]] = {"kv_heads": "kv", "head_dim": "hdim", "hidden": "width"}
    zero_ok: ClassVar[tuple[str, ...]] = ("kv_heads", "head_dim", "hidden", "lora")
    choices: ClassVar[dict] = {"act": ("gelu", "silu")}

    heads: int = 32
    kv_heads: int = 0  # 0 = heads
    head_dim: int = 0  # 0 = 2·d_model / heads
    hidden: int = 0  # MLP hidden; 0 = 4·d_model
    act: str = "gelu"
    lora: int = 128  # per-use LoRA rank on gate/up; 0 = none
    attn_lora: bool = False  # per-use LoRAs (same rank) on q, k, v
    rope: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def check(self) -> None:
        if self.head_dim == 0 and (2 * self.d_model) % self.heads:
            raise ConfigError("heads", f"zamba: heads {self.heads} must divide 2·d_model = {2 * self.d_model}")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ConfigError("kv_heads", f"zamba: kv_heads {self.kv_heads} must divide heads {self.heads}")
        if self.attn_lora and not self.lora:
            raise ConfigError("attn_lora", "zamba: attn_lora needs lora > 0 (its rank)")
        if self.attn_lora and (self.heads * self.hdim != 2 * self.d_model or self.kv != self.heads):
            raise ConfigError("attn_lora", "zamba: attn_lora (HF's shared attention adapters) needs "
                              "heads·head_dim = 2·d_model and kv_heads = heads")
        if self.act not in self.choices["act"]:
            raise ConfigError("act", f"zamba: act must be gelu or silu; got {self.act!r}")
        if self.rope and self.hdim % 2:
            raise ConfigError("head_dim", f"zamba: RoPE needs an even head_dim, got {self.hdim}")
        if self.rope_theta <= 0:
            raise ConfigError("rope_theta", f"zamba: rope_theta must be positive, got {self.rope_theta}")

    @property
    def hdim(self) -> int:
        return self.head_dim or 2 * self.d_model // self.heads

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def width(self) -> int:
        return self.hidden or 4 * self.d_model

    def _attn(self) -> int:
        d2, q, k = 2 * self.d_model, self.heads * self.hdim, self.kv * self.hdim
        return d2 * q + 2 * d2 * k + q * self.d_model

    def _mlp(self) -> int:
        return 3 * self.d_model * self.width

    def params(self) -> int:
        return 2 * self.d_model + self._attn() + self.d_model + self._mlp()

    def per_use_params(self) -> int:
        d, r = self.d_model, self.lora
        p = d * d + (d * r + r * 2 * self.width if r else 0)
        if self.attn_lora:
            p += 3 * (2 * d * r + r * 2 * d)
        return p

    def flops_per_token(self, n: int) -> int:
        """One use: 2·(attention + MLP + LoRA + output-linear MACs) + attention scores and
        values 2·2·heads·head_dim·c̄ (c̄ ≈ n/2, the causal keys, see attn.mean_context and
        AttnConfig.flops_per_token). The per-use LoRAs run as their own two products (down to
        rank r, back up), not folded into the shared weights."""
        d, r = self.d_model, self.lora
        macs = self._attn() + self._mlp() + d * d + (d * r + r * 2 * self.width if r else 0)
        if self.attn_lora:
            macs += 3 * (2 * d * r + r * 2 * d)
        return int(2 * macs + 4 * self.heads * self.hdim * mean_context(n, None))

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """This use's KV cache: 2·batch·n·kv_heads·head_dim·dtype_bytes (a cache made with max_len n)."""
        return 2 * batch * n * self.kv * self.hdim * dtype_bytes
