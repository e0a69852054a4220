"""Multi-head / grouped-query causal attention (Llama, Jamba, Bamba, NemotronH layout).

    x [B, L, d] ─q_proj─▶ [B, L, heads, head_dim]; k_proj, v_proj ─▶ [B, L, kv_heads, head_dim]
    (RoPE on q, k when `rope`) ─causal softmax(q·kᵀ/√head_dim), window─▶ o_proj ─▶ [B, L, d]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MIXER, BlockConfig, ConfigError


def mean_context(n: int, window: int | None) -> float:
    """Average number of keys a query sees over positions 1..n of a causal sequence
    (min(t, window) keys at position t)."""
    if n <= 0:
        return 0.0
    w = n if window is None else min(window, n)
    return (w * (w + 1) / 2 + (n - w) * w) / n


@dataclass(frozen=True, kw_only=True)
class AttnConfig(BlockConfig):
    kind: ClassVar[str] = "attn"
    role: ClassVar[str] = MIXER
    derived: ClassVar[dict[str, str]] = {"kv_heads": "kv", "head_dim": "hdim"}
    zero_ok: ClassVar[tuple[str, ...]] = ("kv_heads", "head_dim")

    heads: int = 8
    kv_heads: int = 0  # 0 = heads (MHA)
    head_dim: int = 0  # 0 = d_model / heads
    rope: bool = True
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # share of head_dim that is rotated (Bamba: 0.5)
    window: int | None = None  # sliding window (keys per query), None = full causal
    bias: bool = False  # q/k/v projection bias
    out_bias: bool = False

    def check(self) -> None:
        if self.head_dim == 0 and self.d_model % self.heads:
            raise ConfigError("heads", f"attn: heads {self.heads} must divide d_model {self.d_model}")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ConfigError("kv_heads", f"attn: kv_heads {self.kv_heads} must divide heads {self.heads}")
        if self.window is not None and self.window < 1:
            raise ConfigError("window", f"attn: window must be positive, got {self.window}")
        if self.rope and self.hdim % 2:
            raise ConfigError("head_dim", f"attn: RoPE needs an even head_dim, got {self.hdim}")
        if not 0 < self.rope_fraction <= 1:
            raise ConfigError("rope_fraction", f"attn: rope_fraction must be in (0, 1], got {self.rope_fraction}")
        if self.rope and int(self.hdim * self.rope_fraction) < 2:  # the rotated channels, int(f·head_dim)//2·2
            raise ConfigError("rope_fraction", f"attn: rope_fraction {self.rope_fraction} of head_dim {self.hdim} "
                              f"rotates no channel pair; give rope=false for none")
        if self.rope_theta <= 0:
            raise ConfigError("rope_theta", f"attn: rope_theta must be positive, got {self.rope_theta}")

    @property
    def hdim(self) -> int:
        return self.head_dim or self.d_model // self.heads

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    def params(self) -> int:
        d, q, k = self.d_model, self.heads * self.hdim, self.kv * self.hdim
        p = d * q + 2 * d * k + q * d
        if self.bias:
            p += q + 2 * k
        if self.out_bias:
            p += d
        return p

    def flops_per_token(self, n: int) -> int:
        """2·(projection MACs) + 2·2·heads·head_dim·c̄, where c̄ = mean keys per query over a
        causal sequence of length n (≈ n/2, or ≈ window once n ≫ window): one multiply-add
        per key for q·k and one for the weighted sum of values, for every query head (GQA shares
        the keys, not the products). The work causal attention defines: an SDPA without block
        skipping (the CPU's) computes the full [n, n] square, 4·heads·head_dim·n a token."""
        d, q, k = self.d_model, self.heads * self.hdim, self.kv * self.hdim
        return int(2 * (d * q + 2 * d * k + q * d) + 4 * self.heads * self.hdim * mean_context(n, self.window))

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """KV cache: 2·batch·min(n, window)·kv_heads·head_dim·dtype_bytes (a cache made with max_len n)."""
        keep = n if self.window is None else min(n, self.window)
        return 2 * batch * keep * self.kv * self.hdim * dtype_bytes
