from .op import rms_linear

__all__ = ["rms_linear"]
