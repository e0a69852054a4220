from .op import gated_rmsnorm, gated_rmsnorm_linear

__all__ = ["gated_rmsnorm", "gated_rmsnorm_linear"]
