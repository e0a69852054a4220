"""RWKV mixers and channel-mix, laid out as the HF implementations.

rwkv4 — HF `RwkvSelfAttention` (RWKV-4): token shift with per-channel mixes time_mix_{k,v,r},
    key/value/receptance Linear(d, A), WKV with decay w = -exp(time_decay) [A] and bonus
    u = time_first [A], output Linear(A, d).
rwkv6 — "Finch" (RWKV-6 paper; HF-hub `Rwkv6SelfAttention`): data-dependent token shift
    (ddlerp) with time_maa_{x,w,k,v,r,g} [d] and a LoRA time_maa_w1 [d, 5·mix_lora],
    time_maa_w2 [5, mix_lora, d]; data-dependent decay time_decay [A] + LoRA
    time_decay_w1 [d, decay_lora], time_decay_w2 [decay_lora, A]; bonus time_faaaa [H, K];
    receptance/key/value/gate Linear(d, A), output Linear(A, d); ln_x GroupNorm(H, A) (affine) of the
    WKV output itself, eps 1e-5·head_size_divisor² (RWKV-LM x060, HF-hub: o is not divided).
    HF-hub sizes: mix_lora 32, decay_lora 64 (7B and up: 64, 128).
cmix — channel-mix: time_mix_k, time_mix_r [d]; key Linear(d, hidden), value
    Linear(hidden, d), receptance Linear(d, d); out = σ(r)·value(relu(key)²).
    Hidden default: 4·d (version 4), int(3.5·d) // 32 · 32 (version 6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import FFN, MIXER, BlockConfig, ConfigError


@dataclass(frozen=True, kw_only=True)
class Rwkv4Config(BlockConfig):
    kind: ClassVar[str] = "rwkv4"
    role: ClassVar[str] = MIXER
    derived: ClassVar[dict[str, str]] = {"attn_dim": "adim"}
    zero_ok: ClassVar[tuple[str, ...]] = ("attn_dim",)

    attn_dim: int = 0  # 0 = d_model

    @property
    def adim(self) -> int:
        return self.attn_dim or self.d_model

    def params(self) -> int:
        d, A = self.d_model, self.adim
        return 2 * A + 3 * d + 3 * d * A + A * d

    def flops_per_token(self, n: int) -> int:
        """2·(4·d·A) for the projections + 10·A for the WKV recurrence as the paper writes it, per channel:
        wkv = (a + e^(u+k)·v) / (b + e^(u+k)) (5: u+k, ·v, two adds, the division) and the state
        a = e^-w·a + e^k·v, b = e^-w·b + e^k (5); exps and the stabilising max not counted."""
        return 2 * 4 * self.d_model * self.adim + 10 * self.adim

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Previous token [B, d] in the model dtype + WKV state (num, den, max) [B, 3, A] in fp32 (float64 in a float64 model)."""
        return batch * self.d_model * dtype_bytes + batch * 3 * self.adim * max(4, dtype_bytes)


@dataclass(frozen=True, kw_only=True)
class Rwkv6Config(BlockConfig):
    kind: ClassVar[str] = "rwkv6"
    role: ClassVar[str] = MIXER
    derived: ClassVar[dict[str, str]] = {"attn_dim": "adim"}
    zero_ok: ClassVar[tuple[str, ...]] = ("attn_dim",)

    head_size: int = 64
    attn_dim: int = 0  # 0 = d_model
    mix_lora: int = 32  # TIME_MIX_EXTRA_DIM
    decay_lora: int = 64  # TIME_DECAY_EXTRA_DIM
    head_size_divisor: int = 8  # ln_x eps = 1e-5 · divisor²

    def check(self) -> None:
        if self.adim % self.head_size:
            raise ConfigError("head_size", f"rwkv6: head_size {self.head_size} must divide attn_dim {self.adim}")

    @property
    def adim(self) -> int:
        return self.attn_dim or self.d_model

    @property
    def heads(self) -> int:
        return self.adim // self.head_size

    def params(self) -> int:
        d, A, m, w = self.d_model, self.adim, self.mix_lora, self.decay_lora
        ddlerp = 6 * d + d * 5 * m + 5 * m * d
        decay = A + d * w + w * A
        bonus = A  # time_faaaa [H, K]
        proj = 4 * d * A + A * d  # r, k, v, g, output
        return ddlerp + decay + bonus + proj + 2 * A  # ln_x weight + bias

    def flops_per_token(self, n: int) -> int:
        """2·(ddlerp LoRA + decay LoRA + 5 projections) + 7·A·head_size for the WKV per token as the paper
        writes it, over the state [H, K, V]: kᵀv, the read-out r·(S + diag(u)·kᵀv) (a multiply, an add, a
        multiply-add) and S = diag(w)·S + kᵀv (a multiply and an add): 7 per element, as the step computes."""
        d, A, m, w = self.d_model, self.adim, self.mix_lora, self.decay_lora
        return 2 * (d * 5 * m + 5 * m * d + d * w + w * A + 5 * d * A) + 7 * A * self.head_size

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Previous token [B, d] in the model dtype + WKV state [B, H, K, V] in fp32 (float64 in a float64 model)."""
        return batch * self.d_model * dtype_bytes + batch * self.adim * self.head_size * max(4, dtype_bytes)


@dataclass(frozen=True, kw_only=True)
class CmixConfig(BlockConfig):
    kind: ClassVar[str] = "cmix"
    role: ClassVar[str] = FFN
    derived: ClassVar[dict[str, str]] = {"hidden": "width"}
    zero_ok: ClassVar[tuple[str, ...]] = ("hidden",)
    choices: ClassVar[dict] = {"version": (4, 6)}

    version: int = 4
    hidden: int = 0  # 0 = 4·d (v4) or int(3.5·d)//32·32 (v6)

    def check(self) -> None:
        if self.version not in (4, 6):
            raise ConfigError("version", f"cmix: version must be 4 or 6, got {self.version}")
        if self.width == 0:  # int(3.5·d) // 32 · 32 below d_model 10: an FFN of no channels
            raise ConfigError("hidden", f"cmix: version 6's default hidden int(3.5·d_model)//32·32 is 0 at d_model "
                              f"{self.d_model}; give hidden")

    @property
    def width(self) -> int:
        if self.hidden:
            return self.hidden
        return 4 * self.d_model if self.version == 4 else int(self.d_model * 3.5) // 32 * 32

    def params(self) -> int:
        d, h = self.d_model, self.width
        return 2 * d + 2 * d * h + d * d

    def flops_per_token(self, n: int) -> int:
        d, h = self.d_model, self.width
        return 2 * (2 * d * h + d * d)

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Previous token [B, d] for the token shift."""
        return batch * self.d_model * dtype_bytes
