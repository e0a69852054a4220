"""TrainConfig: every setting of `archdsl train`, typed and checked at construction (torchtitan style).

    cfg = TrainConfig(spec="specs/demo-zamba.yaml", data="mqar:seq=256,pairs=16", steps=100, batch=32,
                      rundir="runs/zamba")

`batch` is the GLOBAL batch in sequences: each of W processes takes batch / W of them, so the same
seed gives the same losses on any number of processes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ArchDSLError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    spec: str  # a YAML spec file, a layout string, or a saved model directory (its weights are the start)
    settings: tuple[str, ...] = ()  # --set KEY=VALUE: model-level keys of the spec changed (not of a saved model)
    data: str  # "mqar:seq=256,pairs=16" or "path/train.bin[:uint16|uint32]"
    steps: int
    rundir: str
    batch: int = 32  # global batch (sequences per optimizer step, over all processes)
    micro_batch: int | None = None  # sequences per forward on each process, their gradients accumulated
    #                                 (None: the process's whole share, batch / processes)
    seq_len: int | None = None  # token files: sequence length (default 1024); tasks: their own seq
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: float = 0.1  # a share of the steps (< 1) or a number of steps
    min_lr_ratio: float = 0.1  # the cosine ends at lr · min_lr_ratio
    grad_clip: float = 1.0
    bf16: bool = False  # FSDP2 MixedPrecisionPolicy: bf16 params in compute, fp32 master weights and reduce
    grad_ckpt: bool = False  # activation checkpointing per layer
    compile: bool = False  # torch.compile each layer
    save_every: int = 0  # DCP checkpoint every K steps (0: only at the end)
    resume: bool = False  # continue from the newest checkpoint in rundir
    stop_after: int | None = None  # stop (with a checkpoint) after this step, as if interrupted; the
    #                                schedule is still that of `steps`
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present (one GPU per process: LOCAL_RANK), else CPU
    peak_tflops: float | None = None  # per device, for MFU; None: known GPUs (H100/H200 bf16 dense 989)
    progress: bool = True
    cpu_threads: int | None = None  # torch threads per process on CPU (None: leave as is)

    def __post_init__(self):
        if self.steps < 1:
            raise ArchDSLError(f"train: --steps must be positive, got {self.steps}")
        if self.batch < 1:
            raise ArchDSLError(f"train: --batch must be positive, got {self.batch}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ArchDSLError(f"train: --micro-batch must be positive, got {self.micro_batch}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ArchDSLError(f"train: --seq-len must be at least 2, got {self.seq_len}")
        if not 0 < self.lr < math.inf:
            raise ArchDSLError(f"train: --lr must be a positive number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ArchDSLError(f"train: --weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.grad_clip < math.inf:
            raise ArchDSLError(f"train: --grad-clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < math.inf:
            raise ArchDSLError(f"train: --peak-tflops must be a positive number, got {self.peak_tflops}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ArchDSLError(f"train: --threads must be at least 1, got {self.cpu_threads}")
        if self.save_every < 0:
            raise ArchDSLError(f"train: --save-every must be >= 0, got {self.save_every}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ArchDSLError(f"train: --stop-after must be in 1..--steps, got {self.stop_after}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ArchDSLError(f"train: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup < math.inf:
            raise ArchDSLError(f"train: --warmup must be >= 0, got {self.warmup}")
        if self.warmup > self.steps:  # the run would end before the learning rate reaches --lr
            raise ArchDSLError(f"train: --warmup {self.warmup:g} is longer than the run (--steps {self.steps})",
                               hint="give at most --steps warmup steps, or a share of the run below 1 (e.g. 0.1)")

    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d
