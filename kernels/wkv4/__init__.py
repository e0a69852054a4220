"""RWKV-4 WKV: `wkv4` over a sequence and `wkv4_step` for decoding."""
from .op import wkv4, wkv4_step

__all__ = ["wkv4", "wkv4_step"]
