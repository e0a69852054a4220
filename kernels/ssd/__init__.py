"""Mamba-2 SSD scan and its decode step."""
from .op import ssd_scan, ssd_step

__all__ = ["ssd_scan", "ssd_step"]
