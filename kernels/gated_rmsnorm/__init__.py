from .op import gated_rmsnorm

__all__ = ["gated_rmsnorm"]
