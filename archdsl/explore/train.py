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
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ArchDSLError
from ..model.modules.moe import balance_experts
from .probes import IGNORE, Task, accuracy


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
    dtype: str = "float32"  # compute dtype of the weights; on CUDA "bfloat16" autocasts instead
    curve_points: int = 200  # the loss curve is kept at most this long (means over windows)
    time_limit: float | None = None  # seconds: stop (after an evaluation) once training has run this long
    cpu_threads: int | None = 1  # tiny models run several times faster on one thread than on a shared pool

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.eval_size < 1:
            raise ArchDSLError("train: steps, batch_size, eval_every and eval_size must be positive")
        if not 0 < self.lr < math.inf:
            raise ArchDSLError(f"train: lr must be a positive number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf or not 0 <= self.grad_clip < math.inf:
            raise ArchDSLError(f"train: weight_decay and grad_clip must be >= 0, got {self.weight_decay}, "
                               f"{self.grad_clip}")
        if not 0 <= self.warmup <= max(1, self.steps):
            raise ArchDSLError(f"train: warmup must be a share of the steps below 1 or at most steps "
                               f"({self.steps}) steps, got {self.warmup:g}")

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

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(device: str = "auto") -> torch.device:
    """auto: CUDA when present, else the CPU; else the device named, checked (ArchDSLError if it is unknown
    or absent)."""
    from ..model import check_device

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device, torch.float32)


def lr_lambda(cfg: TrainConfig):
    warm = int(cfg.warmup * cfg.steps) if cfg.warmup < 1 else int(cfg.warmup)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def build_model(model, task: Task, cfg: TrainConfig, device: torch.device):
    """A compiled ArchModel for a spec (vocabulary = the task's), or the module itself."""
    if isinstance(model, torch.nn.Module):
        return model.to(device)
    import archdsl
    from ..spec import load_spec, with_sizes

    spec = with_sizes(load_spec(model), vocab_size=task.vocab_size)
    dtype = cfg.dtype if device.type == "cpu" else "float32"
    return archdsl.compile(spec, device=device, dtype=dtype, seed=cfg.seed)


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
            c, t = accuracy(logits.float(), labels)
            correct, total = correct + c, total + t
    model.train()
    return correct / max(1, total)


def train_probe(model, task: Task, cfg: TrainConfig = TrainConfig(), progress=None) -> ProbeResult:
    """Train `model` on `task` and report accuracy, loss curve and wall time. `progress`, if
    given, is called as progress(step, loss, accuracy_or_None) after each step."""
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
    use_bf16 = device.type == "cuda" and cfg.dtype in ("bfloat16", "bf16")

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
        stopped = False
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step = 0
        for step in range(1, cfg.steps + 1):
            x, y = task.batch(cfg.batch_size, train_gen, train=True)
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, labels = scored_logits(net, x, y)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
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
            done_eval = None
            out_of_time = cfg.time_limit is not None and time.perf_counter() - t0 > cfg.time_limit
            if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
                acc = evaluate(net, eval_data, device, autocast)
                best = max(best, acc)
                evals.append([step, acc])
                done_eval = acc
            if progress is not None:
                progress(step, float(loss) if done_eval is not None else None, done_eval)
            if done_eval is not None and cfg.target_accuracy is not None and acc >= cfg.target_accuracy:
                stopped = step < cfg.steps
                break
            if out_of_time:
                break
        if losses:
            curve.append([step, float(torch.stack(losses).mean())])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    final_loss = curve[-1][1] if curve else float("nan")
    return ProbeResult(task.name, acc, best, final_loss, step, stopped, wall, params, str(device), curve, evals)
