"""Fused decode steps of the Mamba mixers: everything between the projections in two or three kernels."""
from .op import mamba2_step_fused, mamba_conv_step, mamba_ssm_step_fused

__all__ = ["mamba2_step_fused", "mamba_conv_step", "mamba_ssm_step_fused"]
