"""Processes and sharding: torch.distributed from torchrun's environment, FSDP2 per layer.

    env = world_from_env()                 # rank, world size, local rank — read before any work
    dist = init_distributed(env, "auto")   # nccl on CUDA (one GPU per process), gloo on CPU
    model = shard_model(model, dist, bf16=True, grad_ckpt=True, compile=False)

Alone (no torchrun) the process still makes a process group of one (a HashStore, no network), so
that one code path — FSDP2 and DCP — serves 1 and N processes, and checkpoints move between them.

Units: every Layer is one `fully_shard` unit; a shared module (Zamba's shared block, `attn(shared)`:
one object in several layers) is its own unit, sharded once before the layers, so the layers skip
its parameters and it is gathered at each use; an untied embedding and LM head are units; the
root (final norm, embedding norm, and a tied embedding = head) is the last. Activation checkpointing
wraps each layer before it is sharded (torchtitan's order), torch.compile each layer after.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn as nn

from ..errors import ArchDSLError


@dataclass(frozen=True)
class WorldEnv:
    rank: int
    world: int
    local_rank: int
    launched: bool  # under torchrun (or another launcher that sets RANK / WORLD_SIZE)


def world_from_env() -> WorldEnv:
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise ArchDSLError(f"bad torchrun environment: {e}") from None
    return WorldEnv(rank, world, local, "WORLD_SIZE" in os.environ)


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    mesh: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(env: WorldEnv, device: str = "auto") -> torch.device:
    """The device of this process: --device auto, cpu, cuda (this process's GPU: LOCAL_RANK) or cuda:N."""
    from ..model import check_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = device
    if device == "cuda" and torch.cuda.is_available():  # one GPU per process
        if env.local_rank >= torch.cuda.device_count():
            raise ArchDSLError(f"local rank {env.local_rank} but only {torch.cuda.device_count()} GPUs")
        name = f"cuda:{env.local_rank}"
    try:
        dev = check_device(name, torch.float32)  # an unknown name, no CUDA: ArchDSLError
    except ArchDSLError as e:
        raise ArchDSLError(f"--device: {e.message}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ArchDSLError(f"--device: must be auto, cpu or cuda, got {device!r}")
    return dev


def init_distributed(env: WorldEnv, device: torch.device) -> Dist:
    from torch.distributed.device_mesh import init_device_mesh

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        # NCCL bound to the process's GPU from the start: without device_id it guesses the GPU from the rank,
        # and warns so at the first barrier, also alone
        bound = dict(device_id=device) if device.type == "cuda" else {}
        if env.launched:
            tdist.init_process_group(backend, **bound)
        else:
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, **bound)
    mesh = init_device_mesh(device.type, (env.world,), mesh_dim_names=("dp",))
    return Dist(env.rank, env.world, device, mesh)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def shared_modules(model) -> list[nn.Module]:
    """Modules that sit in more than one layer (sharing groups), in first-use order."""
    seen, count = {}, {}
    for layer in model.layers:
        for m in layer.children():
            count[id(m)] = count.get(id(m), 0) + 1
            seen.setdefault(id(m), m)
    return [seen[k] for k, c in count.items() if c > 1]


def shard_model(model, dist: Dist, bf16: bool = False, grad_ckpt: bool = False, compile: bool = False):
    """Apply FSDP2 to an ArchModel in place (see the module docstring); returns the model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    kw = {"mesh": dist.mesh, "mp_policy": mp}
    shared = shared_modules(model)  # before wrapping: the wrappers hide the layers' children
    if grad_ckpt:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, layer in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(layer, preserve_rng_state=True)
    for m in shared:
        fully_shard(m, **kw)
    n = len(model.layers)
    for i, layer in enumerate(model.layers):
        # the last layer's parameters are needed again at once by backward: keep them gathered
        fully_shard(layer, reshard_after_forward=i < n - 1, **kw)
    if not model.spec.tie_embeddings:
        fully_shard(model.embeddings, **kw)
        fully_shard(model.lm_head, reshard_after_forward=False, **kw)
    fully_shard(model, **kw)
    if compile:
        allow_recompiles(len(model.layers))
        for layer in model.layers:
            layer.compile()
    return model


def allow_recompiles(layers: int) -> None:
    """Let torch.compile keep a graph for every layer of a hybrid. The layers share one forward, and Dynamo
    keeps at most `recompile_limit` graphs (8) of one function: one a layer kind (mixer, FFN, their
    settings, the first layer's missing residual), and another once the sequence length changes (then
    symbolic). Past the limit the rest ran eagerly: jamba's demo spec hit it at its second length."""
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 2 * layers + 2)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    if dist.world > 1:
        tdist.all_reduce(t)
    return t.tolist()


def broadcast_ok(ok: bool, message: str, dist: Dist | None) -> None:
    """Every rank learns whether every rank is fine; the failing ranks' first message is raised on all."""
    if dist is None or dist.world == 1:
        if not ok:
            raise ArchDSLError(message)
        return
    flag = torch.tensor([0 if ok else 1], device=dist.device)
    tdist.all_reduce(flag)
    if flag.item():
        raise ArchDSLError(message if not ok else "another rank failed its checks (see its message)")
