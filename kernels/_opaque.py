"""The torch (CPU) paths of the recurrent ops as one operator that torch.compile does not trace into.

The torch paths of selective_scan, wkv4 and wkv6 walk time in Python loops (chunks of steps, or steps)
whose trip count follows the sequence length. Dynamo unrolls such loops, so a compiled graph would be fixed
to one length and every new length would compile again. While torch.compile traces, each op's torch path
therefore runs inside `archdsl::torch_path`, a custom operator Dynamo keeps as one node, with a fake (shape
only) twin: one graph serves every length. Its backward, `archdsl::torch_path_bwd`, runs the path again
under torch.func.vjp (eager calls keep their activations instead, and never come here).

An op registers `PATHS[name] = (run, fake)`:
    run(args, flags) -> list of output tensors, args a list of tensors or None, flags a list of floats;
    fake(args, flags) -> empty tensors of the outputs' shapes and dtypes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

PATHS: dict[str, tuple[Callable, Callable]] = {}


def torch_path(name: str, args: list, flags: list) -> list:
    """The outputs of PATHS[name]'s run(args, flags) through the opaque operator (differentiable)."""
    return torch.ops.archdsl.torch_path(name, [a for a in args if a is not None], [a is not None for a in args],
                                        [float(f) for f in flags])


def _args(tensors, present):
    """The run's argument list: tensors in the present slots, None in the others."""
    it = iter(tensors)
    return [next(it) if p else None for p in present]


def _fresh(outs, tensors):
    """Contiguous outputs that share no storage with an input (an operator's outputs may not alias its inputs,
    and Inductor holds them to the fakes' strides, which are contiguous)."""
    ptrs = {t.untyped_storage().data_ptr() for t in tensors}
    return [o.clone() if o.untyped_storage().data_ptr() in ptrs else o.contiguous() for o in outs]


# Optional tensors travel as the present ones and a mask: an operator's autograd sees tensors in a list of
# tensors, not in a list of optional tensors.
@torch.library.custom_op("archdsl::torch_path", mutates_args=())
def _torch_path(name: str, tensors: list[torch.Tensor], present: list[bool], flags: list[float]) -> list[torch.Tensor]:
    return _fresh(PATHS[name][0](_args(tensors, present), flags), tensors)


@_torch_path.register_fake
def _(name, tensors, present, flags):
    return PATHS[name][1](_args(tensors, present), flags)


@torch.library.custom_op("archdsl::torch_path_bwd", mutates_args=())
def _torch_path_bwd(name: str, tensors: list[torch.Tensor], present: list[bool], flags: list[float],
                    grads: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """The gradients of the inputs (zeros where one does not reach an output; all inputs are floating point),
    grads those of the outputs (None: unused). A custom operator runs below autograd, so the path is
    differentiated by torch.func.vjp, not by recording it."""
    outs, pull = torch.func.vjp(lambda *ts: tuple(PATHS[name][0](_args(ts, present), flags)), *tensors)
    return [g.contiguous() for g in pull(tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, grads)))]


@_torch_path_bwd.register_fake
def _(name, tensors, present, flags, grads):
    return [t.new_empty(t.shape) for t in tensors]


def _setup_context(ctx, inputs, output):
    name, tensors, present, flags = inputs
    ctx.name, ctx.present, ctx.flags = name, present, flags
    ctx.save_for_backward(*tensors)


def _backward(ctx, grads):
    grads = torch.ops.archdsl.torch_path_bwd(ctx.name, list(ctx.saved_tensors), ctx.present, ctx.flags, list(grads))
    return None, grads, None, [] if not ctx.flags else None  # AOTAutograd wants [] for an empty list, not None


_torch_path.register_autograd(_backward, setup_context=_setup_context)
