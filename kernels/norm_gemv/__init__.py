from .op import gemv, rms_linear

__all__ = ["gemv", "rms_linear"]
