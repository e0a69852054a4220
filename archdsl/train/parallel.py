"""Processes and sharding: torch.distributed from torchrun's environment, FSDP2 per layer.

    env = world_from_env()                 # rank, world size, local rank — read before any work
    dist = init_distributed(env, "auto")   # nccl on CUDA (one GPU per process), gloo on CPU
    model = shard_model(model, dist, bf16=True, grad_ckpt=True, compile=False)

Alone (no torchrun, or a torchrun of one) the process still makes a process group of one (a HashStore,
no network), so that one code path — FSDP2 and DCP — serves 1 and N processes, and checkpoints move
between them. A group the caller made before is used, and left for the caller to destroy.

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
    launched: bool  # WORLD_SIZE set: under torchrun (or another launcher)


def world_from_env() -> WorldEnv:
    """This process's place from torchrun's environment, checked before any work: WORLD_SIZE an int of at least 1
    (unset: 1), RANK and LOCAL_RANK (unset: RANK) in 0..WORLD_SIZE-1, and where WORLD_SIZE > 1 MASTER_ADDR and
    MASTER_PORT (a port number), which the env:// rendezvous needs. ArchDSLError naming the variable: a stray
    environment or another launcher failed as a ZeroDivisionError or at the rendezvous, as a traceback."""
    env = os.environ

    def integer(name: str, default: int) -> int:
        try:
            return int(env[name]) if name in env else default
        except ValueError:
            raise ArchDSLError(f"bad torchrun environment: {name}={env[name]}: must be an integer") from None

    world = integer("WORLD_SIZE", 1)
    if world < 1:
        raise ArchDSLError(f"bad torchrun environment: WORLD_SIZE={world}: the number of processes must be at least 1")
    rank = integer("RANK", 0)
    local = integer("LOCAL_RANK", rank)
    size = f"WORLD_SIZE={world}" if "WORLD_SIZE" in env else "WORLD_SIZE unset: 1"
    for name, value in (("RANK", rank), ("LOCAL_RANK", local)):
        if not 0 <= value < world:
            raise ArchDSLError(f"bad torchrun environment: {name}={value}: must be in 0..{world - 1} ({size})")
    if world > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ArchDSLError(f"bad torchrun environment: {name} is not set ({size}: the processes meet at "
                                   f"MASTER_ADDR:MASTER_PORT, the env:// rendezvous)",
                                   hint="launch with torchrun, which sets them (or set both)")
        port = env["MASTER_PORT"]
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ArchDSLError(f"bad torchrun environment: MASTER_PORT={port}: must be a port number in 1..65535")
    return WorldEnv(rank, world, local, "WORLD_SIZE" in env)


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    mesh: object
    owns_group: bool = True  # made by init_distributed (shutdown destroys it), not found initialised by the caller

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
    """The process group (made unless the caller made one: then it is used, and `shutdown` leaves it) and a 1-D
    device mesh over it. More than one process meets through torchrun's env:// rendezvous; one alone needs none
    (a HashStore)."""
    from torch.distributed.device_mesh import init_device_mesh

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not tdist.is_initialized()
    if owns:
        # NCCL bound to the process's GPU from the start: without device_id it guesses the GPU from the rank,
        # and warns so at the first barrier, also alone
        bound = dict(device_id=device) if device.type == "cuda" else {}
        if env.world > 1:
            try:
                tdist.init_process_group(backend, **bound)
            except (ValueError, tdist.DistError) as e:  # the rendezvous: torchrun's variables checked, not reached
                raise ArchDSLError(f"cannot join the process group at {os.environ.get('MASTER_ADDR')}:"
                                   f"{os.environ.get('MASTER_PORT')} (rank {env.rank} of {env.world}): "
                                   f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
        else:
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, **bound)
    try:
        mesh = init_device_mesh(device.type, (env.world,), mesh_dim_names=("dp",))
    except BaseException:
        if owns:
            tdist.destroy_process_group()
        raise
    return Dist(env.rank, env.world, device, mesh, owns)


def shutdown(dist: Dist | None = None) -> None:
    """Destroy the process group `dist` made (None: whatever group there is); one the caller made stays."""
    if tdist.is_initialized() and (dist is None or dist.owns_group):
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
