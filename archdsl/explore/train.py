"""A small trainer for the probes: AdamW, linear warmup then cosine decay, fixed seeds,
early stop once the evaluation accuracy reaches a target, MoE balancing loss added.

    result = train_probe(spec, make_task("mqar"), TrainConfig(steps=2000, lr=1e-3))
    result.accuracy, result.loss_curve, result.wall_time

`model` may be a Spec / spec file / layout string (compiled with archdsl.compile, its
vocabulary set to the task's) or any nn.Module with forward(input_ids [B, L]) → logits
[B, L, V] and an optional `.aux_loss` scalar set by the forward.

Seeds: the weights from `seed`, the training stream from `seed + 1`, the fixed evaluation
set from `seed + 2` (every model of a comparison sees the same data). CPU runs are
bit-reproducible, which is what makes `explore --resume` give the uninterrupted result.

`dtype`, on each device (a compiled spec; a module keeps its own weights' dtype, and autocasts as below):
  float32   float32 weights and arithmetic (the default), on every device.
  float64   float64 weights and arithmetic, on every device (on CUDA the scans take their torch path, which is
            float64-exact, not the Triton kernels, which compute in float32).
  bfloat16  CUDA: float32 weights, the forward and backward under bfloat16 autocast (AdamW updates the float32
            weights). Any other device (the CPU): the weights themselves in bfloat16, updated in bfloat16.
  float16   refused: AdamW's eps (1e-8) underflows to 0 in float16, so pure float16 weights turn NaN at the first
            step where a gradient is 0 (the embedding row of a token absent from the batch), and ±inf where it is
            small; bfloat16 has float32's range in the same 16 bits.
ProbeResult records what ran: `dtype` (the arithmetic's) and `weights_dtype`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from ..errors import ArchDSLError, shown
from ..model import check_device, resolve_dtype
from ..model.modules.moe import balance_experts
from ..units import MAX_LR, MAX_LR_WHY
from .probes import IGNORE, Task, accuracy


_FLOAT_MAX = int(sys.float_info.max)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    """An int that is a finite float too (10**400 is not), or a finite float; not a bool, nan or inf."""
    return _integer(v) and abs(v) <= _FLOAT_MAX or isinstance(v, float) and math.isfinite(v)


def _count(v) -> bool:
    """A count of steps or points, below 2^63: no run ends past that, and results.json cannot write 10**5000."""
    return _integer(v) and 1 <= v < 2**63


def _size(v) -> bool:
    """A batch's size: past 2^31 torch cannot even be asked for the tensor."""
    return _count(v) and v < 2**31


def _share(v) -> bool:
    return _number(v) and 0 <= v <= 1


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → 'bfloat16'."""
    return str(dtype).replace("torch.", "")


# each TrainConfig field: (the test its value passes, what the error says it must be)
SETTINGS = {
    "steps": (_count, "a positive integer below 2^63"),
    "batch_size": (_size, "a positive integer below 2^31"),
    "lr": (lambda v: _number(v) and v > 0, "a positive number"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
              "a pair of numbers in [0, 1), e.g. [0.9, 0.98]"),
    "warmup": (lambda v: _number(v) and v >= 0, "a number >= 0 (a share of the steps below 1, else steps)"),
    "min_lr_ratio": (_share, "a number in [0, 1]"),
    "grad_clip": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    "eval_every": (_count, "a positive integer below 2^63"),
    "eval_size": (_size, "a positive integer below 2^31"),
    "target_accuracy": (lambda v: v is None or _share(v), "a number in [0, 1], or null (no early stop)"),
    "seed": (lambda v: _integer(v) and 0 <= v < 2**63, "an integer in 0..2^63-1"),
    "device": (lambda v: isinstance(v, str), "a device name (auto, cpu, cuda, cuda:1)"),
    "dtype": (lambda v: isinstance(v, (str, torch.dtype)), "a dtype name (float32, float64 or bfloat16)"),
    "curve_points": (_count, "a positive integer below 2^63"),
    "time_limit": (lambda v: v is None or _number(v) and v > 0, "a positive number of seconds, or null"),
    "cpu_threads": (lambda v: v is None or _size(v), "a positive integer below 2^31, or null (torch's own thread "
                    "count)"),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: float = 0.1  # a share of the steps (< 1) or a number of steps
    min_lr_ratio: float = 0.1  # the cosine ends at lr · min_lr_ratio
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_size: int = 256
    target_accuracy: float | None = 0.99  # early stop at this evaluation accuracy; None: never
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    dtype: str = "float32"  # float32, float64 or bfloat16 (on CUDA: autocast over float32 weights); see the module
    curve_points: int = 200  # the loss curve is kept at most this long (means over windows)
    time_limit: float | None = None  # seconds: stop (after an evaluation) once training has run this long
    cpu_threads: int | None = 1  # tiny models run several times faster on one thread than on a shared pool

    def __post_init__(self):
        """Every setting's type and range (ArchDSLError naming it), then the warmup against the steps."""
        for f in fields(self):
            value = getattr(self, f.name)
            ok, what = SETTINGS[f.name]
            if not ok(value):
                raise ArchDSLError(f"train: {f.name} must be {what}, got {shown(value)}")
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.lr > MAX_LR:
            raise ArchDSLError(f"train: lr must be at most {MAX_LR:g} ({MAX_LR_WHY}), got {self.lr:g}")
        if self.warmup > max(1, self.steps):
            raise ArchDSLError(f"train: warmup must be a share of the steps below 1 or at most steps "
                               f"({self.steps}) steps, got {self.warmup:g}")
        try:
            dtype = resolve_dtype(self.dtype)
        except ArchDSLError as e:
            raise ArchDSLError(f"train: dtype: {e.message}", hint=e.hint) from None
        if dtype == torch.float16:
            raise ArchDSLError(f"train: dtype {shown(self.dtype)}: pure float16 weights do not train: AdamW's eps "
                               f"(1e-8) underflows to 0 in float16, so a weight whose gradient is 0 turns NaN at the "
                               f"first step (and a small one ±inf)",
                               hint="give bfloat16 (float32's range in 16 bits; on CUDA it autocasts over float32 "
                                    "weights) or float32")
        object.__setattr__(self, "dtype", dtype_name(dtype))  # one name for each: bf16 and bfloat16 are one setting

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class ProbeResult:
    task: str
    accuracy: float  # the last evaluation
    best_accuracy: float
    final_loss: float  # mean training loss over the last window
    steps: int  # steps run (fewer than asked when stopped early)
    stopped_early: bool
    wall_time: float  # seconds, training and evaluation
    params: int
    device: str
    loss_curve: list = field(default_factory=list)  # [step, mean loss since the previous point]
    eval_curve: list = field(default_factory=list)  # [step, accuracy]
    diverged: bool = False  # the loss became inf or NaN: training stopped there, after one last evaluation
    dtype: str = ""  # the arithmetic's dtype: bfloat16 under autocast, else the weights'
    weights_dtype: str = ""  # the dtype the weights were held (and updated) in

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    """auto: CUDA when present, else the CPU; else the device named, checked (ArchDSLError if it is unknown,
    absent, or the meta device)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = check_device(device, torch.float32)
    if dev.type == "meta":
        raise ArchDSLError(f"train: device {device!r}: the probes train on real tokens; the meta device holds no "
                           f"data (give cpu or cuda)")
    return dev


def lr_lambda(cfg: TrainConfig):
    warm = int(cfg.warmup * cfg.steps) if cfg.warmup < 1 else int(cfg.warmup)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def autocasts(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training runs under bfloat16 autocast: bfloat16 on CUDA (over float32 weights)."""
    return device.type == "cuda" and cfg.dtype == "bfloat16"


def build_model(model, task: Task, cfg: TrainConfig, device: torch.device):
    """A compiled ArchModel for a spec (vocabulary = the task's) with its weights in cfg.dtype (float32 where it
    autocasts: bfloat16 on CUDA), or the module itself, moved to the device in its own dtype."""
    if isinstance(model, torch.nn.Module):
        return model.to(device)
    import archdsl
    from ..spec import load_spec, with_sizes

    spec = with_sizes(load_spec(model), vocab_size=task.vocab_size)
    dtype = "float32" if autocasts(cfg, device) else cfg.dtype
    return archdsl.compile(spec, device=device, dtype=dtype, seed=cfg.seed)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits as the loss and the accuracy read them: bfloat16 in float32; float32 and float64 as they are."""
    return logits if logits.dtype == torch.float64 else logits.float()


def scored_logits(model, x, y):
    """(logits, labels) at the scored positions only: [n, V], [n] for an ArchModel (the head runs on
    those n rows alone: MQAR scores 16 of 256), [B, L, V], [B, L] for any other module."""
    from ..model.model import ArchModel

    if isinstance(model, ArchModel):
        mask = y != IGNORE
        return model(x, logits_mask=mask), y[mask]
    return model(x), y


def evaluate(model, data, device, autocast) -> float:
    correct = total = 0
    model.eval()
    with torch.no_grad(), autocast():
        for x, y in data:
            logits, labels = scored_logits(model, x.to(device), y.to(device))
            c, t = accuracy(_wide(logits), labels)
            correct, total = correct + c, total + t
    model.train()
    return correct / max(1, total)


def train_probe(model, task: Task, cfg: TrainConfig = TrainConfig(), progress=None) -> ProbeResult:
    """Train `model` on `task` and report accuracy, loss curve and wall time. `progress`, if
    given, is called as progress(step, loss_or_None, accuracy_or_None) after each step (both set
    at an evaluation step, both None otherwise)."""
    if not isinstance(task, Task):
        raise ArchDSLError(f"train_probe: task must be a Task (make_task('mqar', ...)), got {shown(task)}")
    if not isinstance(cfg, TrainConfig):
        raise ArchDSLError(f"train_probe: cfg must be a TrainConfig, got {shown(cfg)}")
    if progress is not None and not callable(progress):
        raise ArchDSLError(f"train_probe: progress must be None or a function (step, loss, accuracy), "
                           f"got {shown(progress)}")
    device = pick_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _train(model, task, cfg, device, progress)
    finally:
        torch.set_num_threads(threads)


def _train(model, task, cfg, device, progress) -> ProbeResult:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArchDSLError("train: CUDA is not available on this machine")
    use_bf16 = autocasts(cfg, device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else torch.autocast("cpu", enabled=False)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        net = build_model(model, task, cfg, device)
        net.train()
        gen_device = device if task.name == "mqar" else torch.device("cpu")
        train_gen = torch.Generator(device=gen_device).manual_seed(cfg.seed + 1)
        eval_gen = torch.Generator(device=gen_device).manual_seed(cfg.seed + 2)
        chunk = min(cfg.eval_size, 256)
        eval_data = [task.batch(min(chunk, cfg.eval_size - i), eval_gen, train=False)
                     for i in range(0, cfg.eval_size, chunk)]
        params = sum(p.numel() for p in net.parameters())
        weights = next((p.dtype for p in net.parameters() if p.is_floating_point()), None)
        weights_dtype = dtype_name(weights) if weights is not None else ""
        dtype = "bfloat16" if use_bf16 else weights_dtype
        from ..train.loop import decays  # archdsl train's rule: weight matrices, not the dynamics (A_log, time_*)

        decay = [p for n, p in net.named_parameters() if decays(n, p)]
        no_decay = [p for n, p in net.named_parameters() if not decays(n, p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas,
                                **({"fused": True} if device.type == "cuda" else {}))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        window = max(1, math.ceil(cfg.steps / cfg.curve_points))
        losses, curve, evals = [], [], []
        best = acc = 0.0
        stopped = diverged = False
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step = 0
        for step in range(1, cfg.steps + 1):
            x, y = task.batch(cfg.batch_size, train_gen, train=True)
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, labels = scored_logits(net, x, y)
                loss = F.cross_entropy(_wide(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=IGNORE)
                aux = getattr(net, "aux_loss", None)
                total = loss + aux if isinstance(aux, torch.Tensor) and aux.requires_grad else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            balance_experts(net)
            sched.step()
            losses.append(loss.detach())
            if len(losses) == window or step == cfg.steps:
                curve.append([step, float(torch.stack(losses).mean())])
                losses = []
                diverged = not math.isfinite(curve[-1][1])  # checked once a window: no sync at every step
            done_eval = None
            out_of_time = cfg.time_limit is not None and time.perf_counter() - t0 > cfg.time_limit
            if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time or diverged:
                acc = evaluate(net, eval_data, device, autocast)
                best = max(best, acc)
                evals.append([step, acc])
                done_eval = acc
            if progress is not None:
                progress(step, float(loss) if done_eval is not None else None, done_eval)
            if done_eval is not None and cfg.target_accuracy is not None and acc >= cfg.target_accuracy:
                stopped = step < cfg.steps
                break
            if out_of_time or diverged:  # a diverged run stays diverged: the steps left would only cost time
                break
        if losses:
            curve.append([step, float(torch.stack(losses).mean())])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    final_loss = curve[-1][1] if curve else float("nan")
    return ProbeResult(task.name, acc, best, final_loss, step, stopped, wall, params, str(device), curve, evals,
                       diverged=diverged, dtype=dtype, weights_dtype=weights_dtype)
