from .op import add_rmsnorm

__all__ = ["add_rmsnorm"]
