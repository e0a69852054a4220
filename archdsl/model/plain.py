"""Whether a sublayer may be bypassed by a fast path that reads its weights.

Several fast paths read a sublayer's `.weight` and `.bias` instead of calling it: Mamba's projections on the
steps-contiguous layout (modules/steps_linear.py), attention's one q/k/v GEMM, the fused Triton decode steps
and the norms folded into a GEMV. A tool that wraps or replaces the sublayer (PEFT's LoRA, forward hooks,
torch.ao's quantize_dynamic, accelerate's offloading hooks, a parametrization) changes what calling it
computes, and only a call honours that. So each fast path asks `plain(module, cls)` first and, where it says
no, calls the module as an unfused path would: the same function, no longer the fast one.
"""
from __future__ import annotations

import torch.nn as nn
from torch.nn.modules import module as _module


def plain(mod, cls: type = nn.Linear) -> bool:
    """Whether calling `mod` computes no more than `cls.forward` over its own parameters: it is exactly a `cls`
    (not a subclass: a LoRA layer, a quantized or parametrized Linear), its instance's forward is not replaced
    (accelerate's hooks), and no hook of its own or torch's global module hooks would run (the conditions of
    nn.Module.__call__'s no-hook shortcut). A few attribute reads: cheap, and traced by torch.compile."""
    return (type(mod) is cls and "forward" not in mod.__dict__
            and not (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or mod._backward_pre_hooks
                     or _module._global_forward_hooks or _module._global_forward_pre_hooks
                     or _module._global_backward_hooks or _module._global_backward_pre_hooks))


def all_plain(mod: nn.Module, *names: str) -> bool:
    """Whether each of mod's Linear sublayers `names` is plain()."""
    return all(plain(getattr(mod, name)) for name in names)
