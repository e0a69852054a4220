"""Depthwise causal conv1d and its decode step."""
from .op import causal_conv1d, causal_conv1d_update

__all__ = ["causal_conv1d", "causal_conv1d_update"]
