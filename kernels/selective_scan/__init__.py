"""Mamba-1 selective scan and its decode step."""
from .op import selective_scan, selective_state_update

__all__ = ["selective_scan", "selective_state_update"]
