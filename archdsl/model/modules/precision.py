"""Parameters a 16-bit model keeps in float32 (S4D's SSM parameters, a sigmoid router's weight): a module's _apply
takes their values before the cast, then puts them back.

    was = {name: self._parameters[name].data for name in NAMES}
    super()._apply(fn, recurse)
    keep_float32(self, was)
"""
from __future__ import annotations

import torch
import torch.nn as nn


def keep_float32(module: nn.Module, was: dict[str, torch.Tensor]) -> None:
    """Each parameter of `was` (name → its data before the cast) that the cast made bfloat16 or float16 holds its
    old values again, in float32 on its new device (its gradient too): the Parameter object stays, so optimizers
    and ties still hold it."""
    for name, old in was.items():
        p = module._parameters[name]
        if p.dtype in (torch.bfloat16, torch.float16):
            p.data = old.to(p.device, torch.float32)
            if p.grad is not None:
                p.grad = p.grad.float()
