"""RWKV-6 (Finch) WKV: `wkv6` over a sequence and `wkv6_step` for decoding."""
from .op import wkv6, wkv6_step

__all__ = ["wkv6", "wkv6_step"]
