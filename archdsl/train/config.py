"""TrainConfig: every setting of `archdsl train`, typed and checked at construction (torchtitan style).

    cfg = TrainConfig(spec="specs/demo-zamba.yaml", data="mqar:seq=256,pairs=16", steps=100, batch=32,
                      rundir="runs/zamba")

`batch` is the GLOBAL batch in sequences: each of W processes takes batch / W of them, so the same
seed gives the same losses on any number of processes.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

from ..atomic import check_control
from ..errors import ArchDSLError, shown
from ..units import MAX_COUNT, MAX_LR, MAX_LR_WHY, MAX_SEED, to_float


def _integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy's integers too, not True


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _path(v) -> bool:
    return isinstance(v, str) or (isinstance(v, os.PathLike) and isinstance(os.fspath(v), str))


# each kind of field: (the test its value passes, what the error says it must be, the value kept)
KINDS = {
    "int": (_integer, "an int", int),
    "number": (_number, "a number", to_float),
    "bool": (lambda v: isinstance(v, bool), "True or False", bool),
    "str": (lambda v: isinstance(v, str), "a str", str),
    "path": (_path, "a str or os.PathLike", os.fspath),
    "strs": (lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v), "a tuple of str", tuple),
    "pair": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(x) for x in v),
             "a pair of numbers", lambda v: tuple(to_float(x) for x in v)),
}
# each field's kind; one whose default is None may also be None
FIELDS = {"spec": "path", "settings": "strs", "data": "path", "steps": "int", "rundir": "path", "batch": "int",
          "micro_batch": "int", "seq_len": "int", "lr": "number", "weight_decay": "number", "betas": "pair",
          "warmup": "number", "min_lr_ratio": "number", "grad_clip": "number", "bf16": "bool", "grad_ckpt": "bool",
          "compile": "bool", "save_every": "int", "keep_last": "int", "resume": "bool", "stop_after": "int",
          "seed": "int",
          "device": "str", "peak_tflops": "number", "progress": "bool", "cpu_threads": "int"}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    spec: str  # a YAML spec file, a layout string, or a saved model directory (its weights are the start)
    settings: tuple[str, ...] = ()  # --set KEY=VALUE: model-level keys of the spec changed (not of a saved model)
    data: str  # "mqar:seq=256,pairs=16" or "path/train.bin[:uint16|uint32][,eos=ID]" (archdsl/train/data.py)
    steps: int
    rundir: str
    batch: int = 32  # global batch (sequences per optimizer step, over all processes)
    micro_batch: int | None = None  # sequences per forward on each process, their gradients accumulated
    #                                 (None: the process's whole share, batch / processes)
    seq_len: int | None = None  # token files: sequence length (default 1024); tasks: their own seq, or this
    #                             where given (a seq= in data must then agree)
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
    keep_last: int | None = None  # keep the N newest checkpoints, removing older ones after each save (None: all)
    resume: bool = False  # continue from the newest checkpoint in rundir
    stop_after: int | None = None  # stop (with a checkpoint) after this step, as if interrupted; the
    #                                schedule is still that of `steps`
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N; auto: CUDA when present (one GPU per process:
    #                       LOCAL_RANK), else CPU
    peak_tflops: float | None = None  # per device, for MFU; None: known GPUs (H100/H200 bf16 dense 989)
    progress: bool = True
    cpu_threads: int | None = None  # torch threads per process on CPU (None: leave as is)

    def __post_init__(self):
        """Every field's type (ArchDSLError naming it; numpy's numbers kept as Python's), then its range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            ok, what, kept = KINDS[FIELDS[f.name]]
            if not ok(value):
                raise ArchDSLError(f"train: {f.name} must be {what}{' or None' if f.default is None else ''}, "
                                   f"got {shown(value)} ({type(value).__name__})")
            object.__setattr__(self, f.name, kept(value))
        check_control(self.rundir, "train: rundir")  # the CLI's -o is checked as -o before the config is built
        for flag, value in (("--steps", self.steps), ("--batch", self.batch), ("--micro-batch", self.micro_batch),
                            ("--seq-len", self.seq_len), ("--save-every", self.save_every)):
            if value is not None and value > MAX_COUNT:  # 10^30 steps trained at lr 1e-32 until stopped
                raise ArchDSLError(f"train: {flag} {value} is too large (at most 2^40 = {MAX_COUNT:,})")
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
        if self.lr > MAX_LR:
            raise ArchDSLError(f"train: --lr must be at most {MAX_LR:g} ({MAX_LR_WHY}), got {self.lr:g}")
        if not 0 <= self.weight_decay < math.inf:
            raise ArchDSLError(f"train: --weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.grad_clip < math.inf:
            raise ArchDSLError(f"train: --grad-clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < math.inf:
            raise ArchDSLError(f"train: --peak-tflops must be a positive number, got {self.peak_tflops}")
        if self.cpu_threads is not None and not 1 <= self.cpu_threads < 2**31:  # torch takes a C int
            raise ArchDSLError(f"train: --threads must be at least 1 (and below 2^31), got {self.cpu_threads}")
        if self.save_every < 0:
            raise ArchDSLError(f"train: --save-every must be >= 0, got {self.save_every}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ArchDSLError(f"train: --keep-last must be >= 1 (the newest checkpoint is what --resume continues "
                               f"from), got {self.keep_last}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise ArchDSLError(f"train: --stop-after must be in 1..--steps, got {self.stop_after}")
        if not 0 <= self.seed <= MAX_SEED:  # seed + 1 seeds the data's generator
            raise ArchDSLError(f"train: --seed must be in 0..2^63-1 (a signed 64-bit integer), got {self.seed}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ArchDSLError(f"train: betas must be two numbers in [0, 1), got {shown(self.betas)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ArchDSLError(f"train: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup < math.inf:
            raise ArchDSLError(f"train: --warmup must be >= 0, got {self.warmup}")
        if self.warmup > self.steps:  # the run would end before the learning rate reaches --lr
            raise ArchDSLError(f"train: --warmup {self.warmup:g} is longer than the run (--steps {self.steps})",
                               hint="give at most --steps warmup steps, or a share of the run below 1 (e.g. 0.1)")

    def warmup_steps(self) -> int:
        """The warmup in steps of a new run: a share below 1 of `steps` (rounded down), else `warmup` steps (rounded
        down). A resumed run keeps the warmup steps it resolved to when it started (runfile.check_settings)."""
        return warmup_steps(self.warmup, self.steps)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (as run.json's "config" keeps them)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def warmup_steps(warmup: float, steps: int) -> int:
    """A warmup (a share below 1 of `steps`, else a number of steps) in steps, rounded down. The share is taken as
    its shortest decimal (0.29 as 29/100), so 0.29 of 100 steps is 29: the float product 28.999999999999996 was
    floored to 28."""
    return int(Fraction(repr(float(warmup))) * steps) if warmup < 1 else int(warmup)
