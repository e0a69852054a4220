"""The training loop of `archdsl train`: AdamW, linear warmup then cosine, FSDP2 on 1..N processes.

    summary = train(TrainConfig(spec=..., data="mqar:seq=64,pairs=4", steps=200, batch=32, rundir="runs/a"))

Order of events on every rank: every check (spec, data file, world size divides the batch,
checkpoint of the same spec) → process group → model built on the CPU from the seed (the same
weights on any number of processes) → sharded → optimizer → checkpoint loaded → steps.
The loss of a step is the mean cross entropy over every scored token of the GLOBAL batch: each
rank sums its rows' losses and divides by the global count (known on every rank, as every rank
draws the whole batch), times W because FSDP averages gradients over ranks. So W processes compute
the gradient of one process up to the order of the sums. The MoE balancing loss counts expert
assignments over the global batch too (archdsl/model/modules/moe.py), so it matches as well.

With --micro-batch M each rank runs its rows M at a time, a forward and a backward each, and the gradients
accumulate before the one optimizer step: the cross entropy still sums over the rows and divides by the global
count, so the step is the same one (up to the order of the sums) at a fraction of the activations' memory.
The MoE balancing loss is then the mean of the micro-batches', each over its own M rows alone (as Megatron-Core's
per-micro-batch loss: the same groups of rows, so the same loss, on any number of processes), and DeepSeek-V3's
balancing counts the loads of all of them, on every rank.
"""
from __future__ import annotations

import collections
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from ..atomic import atomic_dir, cannot_write, check_output, write_atomic
from ..errors import ArchDSLError, warn
from ..model import saved_dtype
from ..model.companions import read_companions, write_companions
from ..model.modules.moe import Moe, balance_experts
from ..model.packed import refusal, unpacked_blocks
from .checkpoint import (CKPT_DIR, HF_DIR, check_spec, checkpoints, load_checkpoint, prune_checkpoints, remove_partial,
                         resume_point, save_checkpoint, spec_sha)
from .config import TrainConfig
from .data import IGNORE, data_key, parse_data
from .parallel import all_reduce_sum, init_distributed, pick_device, shard_model, shutdown, world_from_env
from .rundir import (check_rundir, check_unlocked, clear_start, lock_rundir, open_metrics, outermost_missing,
                     remove_unstarted, unlock_rundir)
from .runfile import check_settings, read_run

PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0}  # dense bf16 tensor-core peaks per GPU


def lr_at(cfg: TrainConfig, step: int, warm: int | None = None) -> float:
    """Learning rate of 0-based step `step` (0..steps - 1): linear warmup up to lr at step warm - 1, then cosine
    down to lr · min_lr_ratio at the last step (torchtitan's count: the decay's first step is already below the
    peak). `warm`: the warmup in steps (None: the config's, cfg.warmup_steps(); a resumed run keeps the run's,
    runfile.check_settings, whatever its --steps)."""
    warm = cfg.warmup_steps() if warm is None else warm
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm + 1) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12
    return None


def _saved(spec: str) -> bool:
    """Whether SPEC is a saved model directory (its weights are the start; spec.saved_model)."""
    from ..spec import saved_model

    return saved_model(spec, "train")


RECENT = 50  # steps whose mean speed the progress line shows (metrics.jsonl has each step's)


def prepare(cfg: TrainConfig):
    """Every check that can fail on bad input, with no side effects; the same answer on every rank. Returns (env,
    spec, its YAML, the data source, device, (step, path, damaged ones passed over) of the checkpoint to resume
    from or None, the warmup in steps: a resumed run's as the run resolved it when it started)."""
    from ..spec import load_spec, with_settings

    check_output(cfg.rundir, "-o", directory=True)
    check_rundir(cfg.rundir)
    env = world_from_env()
    spec = load_spec(cfg.spec)
    if cfg.settings:
        if _saved(cfg.spec):
            raise ArchDSLError(f"--set: {cfg.spec} is a saved model, whose weights fix its sizes; give its "
                               f"spec.yaml to train fresh random weights at other sizes")
        spec = with_settings(spec, list(cfg.settings))
    _ = spec.graph
    data = parse_data(cfg.data, spec.vocab_size, cfg.seq_len)
    unpacked = unpacked_blocks(spec) if getattr(data, "eos", None) is not None else []
    if unpacked:
        raise refusal(f"--data {cfg.data}: packing documents (eos=)", *unpacked[0])
    if cfg.batch % env.world:
        raise ArchDSLError(f"train: the global batch {cfg.batch} is not divisible by the world size {env.world}",
                           hint=f"use a batch that is a multiple of {env.world}, or another number of processes")
    share = cfg.batch // env.world
    if cfg.micro_batch is not None and share % cfg.micro_batch:
        raise ArchDSLError(f"train: --micro-batch {cfg.micro_batch} does not divide each process's share of the batch, "
                           f"{share} sequences (--batch {cfg.batch} over {env.world} "
                           f"process{'es' if env.world > 1 else ''})",
                           hint=f"give a --micro-batch that divides {share}")
    spec_yaml = spec.to_yaml()
    resume_from, warm = None, cfg.warmup_steps()
    check_unlocked(cfg.rundir)  # a run writing there now: said first, not as an earlier run to --resume
    found = [f for f in ("run.json", "metrics.jsonl", HF_DIR) if os.path.exists(os.path.join(cfg.rundir, f))]
    saved = checkpoints(cfg.rundir)
    if cfg.resume and not saved:  # nothing to continue: the run starts from step 0
        if found and os.path.exists(os.path.join(cfg.rundir, "run.json")):  # the same run: its spec and settings
            run = read_run(cfg.rundir)
            check_spec({"spec_sha256": spec_sha(run["spec_yaml"]), "spec_name": run.get("spec_name", "?")}, spec_yaml,
                       os.path.join(cfg.rundir, "run.json"), cfg.rundir, cfg.settings, what="the run")
            warm = check_settings(cfg.rundir, cfg.to_dict(), spec.vocab_size, data, say=env.rank == 0)
        if env.rank == 0:
            warn(f"{cfg.rundir}: no checkpoint to resume from: the run starts from step 0"
                 + (f" (replacing the {', '.join(found)} of its start, which wrote none)" if found else ""))
    elif cfg.resume:
        damaged: list[str] = []
        s, path, meta = resume_point(cfg.rundir, damaged)
        check_spec(meta, spec_yaml, path, cfg.rundir, cfg.settings)
        warm = check_settings(cfg.rundir, cfg.to_dict(), spec.vocab_size, data, say=env.rank == 0)
        if s >= (cfg.stop_after or cfg.steps):
            if cfg.stop_after is not None and cfg.stop_after < cfg.steps:  # --steps would go on: the stop is the limit
                limit, hint = f"--stop-after {cfg.stop_after}", f"give a --stop-after past {s}, or leave it out"
            else:
                limit, hint = f"--steps {cfg.steps}", f"ask for more --steps than {s} to continue"
            raise ArchDSLError(f"{path}: the run is already at step {s}, and {limit} asks for no step after it",
                               hint=hint)
        resume_from = (s, path, damaged)  # those passed over are told once the run has loaded one
    elif saved:
        raise ArchDSLError(f"{cfg.rundir}: holds checkpoints of an earlier run",
                           hint="pass --resume to continue it, or write to another -o RUNDIR")
    elif found:
        raise ArchDSLError(f"{cfg.rundir}: holds an earlier run ({', '.join(found)}) that wrote no checkpoint",
                           hint="pass --resume to start it again from step 0 (its files replaced), or write to "
                                "another -o RUNDIR")
    device = pick_device(env, cfg.device)
    if cfg.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ArchDSLError(f"--bf16: {torch.cuda.get_device_name(device)} has no bfloat16")
    return env, spec, spec_yaml, data, device, resume_from, warm


def _resume(cfg: TrainConfig, spec_yaml: str, first: tuple[int, str, list[str]], model, opt, gen,
            is_main: bool) -> int:
    """Load the checkpoint `first` (step, path, the damaged ones prepare passed over), or where it fails to load,
    the newest earlier one that loads; returns its step. A warning names each one passed over. A failed load leaves
    weights half-loaded: the next one loads every tensor again."""
    s, path, damaged = first[0], first[1], list(first[2])
    while True:
        try:
            start = load_checkpoint(path, model, opt, gen)
        except ArchDSLError as e:
            damaged.append(e.message)
            s, path, meta = resume_point(cfg.rundir, damaged, older_than=s)
            check_spec(meta, spec_yaml, path, cfg.rundir, cfg.settings)
            continue
        if damaged and is_main:
            print(f"warning: skipped {len(damaged)} damaged checkpoint{'s' if len(damaged) > 1 else ''} ("
                  + "; ".join(damaged) + f"); resuming from step {s} ({path})", file=sys.stderr)
        return start


def build(cfg: TrainConfig, spec, dist):
    """The model (CPU, fp32, from the seed or from a saved model's weights), sharded."""
    from ..model import compile as compile_model
    from ..model import load as load_model
    from ..model import warn_not_finite

    if not _saved(cfg.spec):
        model = compile_model(spec, device="cpu", seed=cfg.seed)
    else:
        model = load_model(cfg.spec, dtype="float32")
        if dist.is_main and not cfg.resume:  # the start of a new run (a resumed one loads its checkpoint)
            warn_not_finite(model, cfg.spec)
            # the data stream is seeded by --seed alone (seed + 1): an export of a run trained again with its seed
            # replays that run's batches; told, not changed, so that a run is its settings' (and resumes bit-exact)
            print(f"note: the batches are drawn from --seed {cfg.seed} alone: if {cfg.spec} was trained on this "
                  f"--data with --seed {cfg.seed} (an export of such a run), this run draws the batches it was "
                  f"trained on, and acc is not on fresh samples; another --seed draws new ones", file=sys.stderr)
    model.train()
    return shard_model(model, dist, bf16=cfg.bf16, grad_ckpt=cfg.grad_ckpt, compile=cfg.compile)


# state-space dynamics (mamba_ssm's `_no_weight_decay` A_log, S4's A kept at wd 0) and RWKV's time_* mixes and
# decays (RWKV-LM decays only `.weight` matrices): decay would pull them to 0, i.e. A = -1, w = exp(-1), no mixing
NO_DECAY = ("A_log", "log_A_real", "A_imag", "time_")


def decays(name: str, p) -> bool:
    """Whether weight decay applies to parameter `name`: a matrix (two dims over 1: a [1, 1, D] mix is a vector)
    that is not a dynamics parameter of NO_DECAY."""
    return sum(n > 1 for n in p.shape) >= 2 and not name.rpartition(".")[2].startswith(NO_DECAY)


def make_optimizer(cfg: TrainConfig, model, device):
    named = list(model.named_parameters())
    decay = [p for n, p in named if decays(n, p)]
    rest = [p for n, p in named if not decays(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas,
                             foreach=device.type == "cuda")


def train(cfg: TrainConfig) -> dict:
    """Run (or continue, `resume`) a training run; bad input is refused (ArchDSLError) before anything is written.
    Returns a summary: {"losses": {step: loss} of the steps this call ran, "start": the step it resumed from (0 for a
    new run), "steps", "world_size", "wall_s", "params" (the model's parameter count), "rundir"}. A process group the
    caller made before is used and left as it is; one train makes is destroyed when it returns."""
    if not isinstance(cfg, TrainConfig):  # its fields are checked when it is built, before anything is written
        raise ArchDSLError(f"train: expected a TrainConfig, got {type(cfg).__name__}",
                           hint="build one with archdsl.train.TrainConfig(spec=..., data=..., steps=..., rundir=...)")
    env, spec, spec_yaml, data, device, resume_from, warm = prepare(cfg)
    threads = torch.get_num_threads()
    if cfg.cpu_threads and device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    made = outermost_missing(cfg.rundir)  # what os.makedirs will create: RUNDIR and missing parents
    had_ckpt = os.path.isdir(os.path.join(cfg.rundir, CKPT_DIR))
    dist = init_distributed(env, device)
    try:
        held = lock_rundir(cfg.rundir) if dist.is_main else None  # another run's: refused before anything is touched
    except BaseException:
        shutdown(dist)
        raise
    try:
        if cfg.resume and not resume_from and dist.is_main:  # started again: its start's files, no checkpoint's
            clear_start(cfg.rundir)
        return _run(cfg, spec, spec_yaml, data, dist, resume_from, warm)
    except BaseException:
        unlock_rundir(held)
        held = None
        if dist.is_main and not resume_from:
            remove_unstarted(cfg.rundir, made, had_ckpt)
        raise
    finally:
        unlock_rundir(held)
        shutdown(dist)  # the group it made: one the caller made is theirs
        torch.set_num_threads(threads)


def _grad_norm(params, clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _save(cfg, step, model, opt, gen, meta, dist) -> None:
    save_checkpoint(cfg.rundir, step, model, opt, gen, meta, dist.rank)
    if cfg.keep_last is not None and dist.is_main:
        prune_checkpoints(cfg.rundir, cfg.keep_last)


def _skip(cfg, step, lr, dist, metrics, bar) -> None:
    """A step whose batch has no scored token (every label an eos: a token file padded with runs of eos): no
    update, an ArchDSLWarning and a metrics.jsonl line {"step", "lr", "skipped"}; a checkpoint as any step's."""
    if dist.is_main:
        warn(f"train: step {step}: the batch has no scored tokens (every label is the data's eos): the step is "
             f"skipped, no update")
    if metrics is not None:
        metrics.write({"step": step, "lr": lr, "skipped": "no scored tokens", "world_size": dist.world})
    if bar is not None:
        bar.update(1)


def _not_finite(cfg: TrainConfig, step: int, loss: float, gnorm: float) -> ArchDSLError:
    """The error of a step whose loss or gradient norm is not finite, raised before its update: the weights, and
    so every checkpoint, stay those of the step before. Its hint is one the user can follow: --resume keeps --lr
    and the other settings of the run, and replays the same batches."""
    what = f"the loss is {loss}" if not math.isfinite(loss) else \
        f"the gradient norm is {gnorm} (with a finite loss, {loss:.4f}: the backward pass gave inf or NaN)"
    found = checkpoints(cfg.rundir)
    kept = f"the last checkpoint (step {found[-1][0]}) is as it was" if found else "no checkpoint was written"
    ways = ["a lower --lr", "a smaller --grad-clip" if cfg.grad_clip else "a --grad-clip (e.g. 1)"]
    ways += ["without --bf16"] if cfg.bf16 else []
    keep = (f"; to keep its progress, start that run from the checkpoint's weights: archdsl export-checkpoint "
            f"{cfg.rundir} -o DIR, then train DIR with another --seed (the same one draws the batches those weights "
            f"were trained on)" if found else "")
    return ArchDSLError(f"step {step}: {what}; the update was not applied, {kept}",
                        hint=f"train again into a new -o RUNDIR with {', '.join(ways[:-1])} or {ways[-1]} (--resume "
                             f"keeps the run's --lr and replays the same batches){keep}")


def _accumulate(model, x, y, seq, count: int, world: int, micro: int, V: int):
    """Forward and backward over this rank's rows x, y [rows, L] (seq [rows, L] or None), `micro` rows at a time,
    the gradients accumulating: the loss is each part's summed cross entropy · world / count (count: the scored
    tokens of the global batch), plus the MoE balancing loss over the parts. Returns this rank's summed cross
    entropy, its correct predictions, and the mean balancing loss of the parts (None without one)."""
    parts = range(0, x.shape[0], micro)
    ce_sum = correct = 0.0
    aux_sum = None
    for m0 in parts:
        xm, ym = x[m0:m0 + micro], y[m0:m0 + micro]
        logits = model(xm, seq_idx=None if seq is None else seq[m0:m0 + micro])
        ce = F.cross_entropy(logits.float().reshape(-1, V), ym.reshape(-1), ignore_index=IGNORE, reduction="sum")
        loss = ce * (world / count)
        aux = model.aux_loss
        if isinstance(aux, torch.Tensor) and aux.requires_grad:
            loss = loss + aux / len(parts)
            aux_sum = float(aux.detach()) + (aux_sum or 0.0)
        loss.backward()
        with torch.no_grad():
            mask = ym != IGNORE
            correct += float((logits.argmax(-1)[mask] == ym[mask]).sum())
        ce_sum += float(ce.detach())
    return ce_sum, correct, None if aux_sum is None else aux_sum / len(parts)


def _run(cfg, spec, spec_yaml, data, dist, resume_from, warm: int) -> dict:
    from ..analysis import analyze

    import warnings

    # Layer returns (h, pending residual) views; nothing downstream writes into them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    torch.manual_seed(cfg.seed)
    model = build(cfg, spec, dist)
    opt = make_optimizer(cfg, model, dist.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = _resume(cfg, spec_yaml, resume_from, model, opt, gen, dist.is_main) if resume_from else 0
    meta = {"spec_name": spec.name, "spec_sha256": spec_sha(spec_yaml), "data": cfg.data, "batch": cfg.batch,
            "world_size": dist.world}
    L = data.seq_len
    flops_tok = 3 * analyze(spec, seq_len=L).flops_per_token  # forward + backward ≈ 3 forwards
    peak = peak_flops(cfg, dist.device)
    metrics = None
    if dist.is_main:
        try:
            os.makedirs(cfg.rundir, exist_ok=True)
        except OSError as e:
            raise ArchDSLError(f"-o {cfg.rundir}: cannot create the run directory: {e.strerror or e}") from None
        if not resume_from:  # a token file kept by its resolved path: a resume from another directory finds it
            config = cfg.to_dict() | {"data": data_key(cfg.data)}
            write_atomic(os.path.join(cfg.rundir, "run.json"), json.dumps(
                {"spec_yaml": spec_yaml, "spec_sha256": meta["spec_sha256"], "spec_name": spec.name,
                 "data": data.describe(),
                 "data_tokens": len(data.tokens) if getattr(data, "tokens", None) is not None else None,
                 "data_digest": data.digest() if getattr(data, "tokens", None) is not None else None,
                 "start_dtype": saved_dtype(cfg.spec) if _saved(cfg.spec) else None,  # export-checkpoint's default
                 "config": config, "world_size": dist.world}, indent=2))
            start_files = read_companions(cfg.spec) if _saved(cfg.spec) else {}
            if start_files:  # the start's tokenizer and generation files, for export-checkpoint to carry on (prepare
                hf = os.path.join(cfg.rundir, HF_DIR)  # refused an hf/ there before: this one is the run's own)
                try:
                    with atomic_dir(hf, frozenset(start_files)) as tmp:
                        write_companions(start_files, tmp)
                except OSError as e:
                    raise cannot_write(hf, e) from None
        remove_partial(cfg.rundir)
        metrics = open_metrics(cfg.rundir, start)
    per_rank = cfg.batch // dist.world
    lo = dist.rank * per_rank
    micro = cfg.micro_batch or per_rank
    if cfg.micro_batch is not None:  # each micro-batch balances its own rows: the same groups on any number of ranks
        for m in model.modules():
            if isinstance(m, Moe):
                m.balance_over_ranks = False
    V = spec.vocab_size
    bar = None
    if dist.is_main and cfg.progress:  # a bar on a terminal, else a line every 30 s (a log, a batch job)
        from ..progress import progress_bar

        bar = progress_bar(f"train {spec.name} ×{dist.world}", cfg.steps, "step", every=30.0, initial=start)
    sync = (lambda: torch.cuda.synchronize(dist.device)) if dist.device.type == "cuda" else (lambda: None)
    losses = {}
    recent = collections.deque(maxlen=RECENT)  # the last steps' times, for the progress line's speed
    t_run = time.perf_counter()
    try:
        last = cfg.stop_after or cfg.steps
        for step in range(start + 1, last + 1):
            t0 = time.perf_counter()
            lr = lr_at(cfg, step - 1, warm)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y, seq = data.batch(cfg.batch, gen)
            count = int((y != IGNORE).sum())
            if count == 0:  # every label an eos (a file padded with eos): nothing to learn, and the same on resume
                _skip(cfg, step, lr, dist, metrics, bar)
                if (cfg.save_every and step % cfg.save_every == 0) or step == last:
                    _save(cfg, step, model, opt, gen, meta, dist)
                continue
            x, y = x[lo:lo + per_rank].to(dist.device), y[lo:lo + per_rank].to(dist.device)
            seq = None if seq is None else seq[lo:lo + per_rank].to(dist.device)
            ce, correct, aux = _accumulate(model, x, y, seq, count, dist.world, micro, V)
            gnorm = _grad_norm(model.parameters(), cfg.grad_clip)  # the global norm (a float: the step's sync)
            # the balancing loss of each rank's rows, the experts' loads global: their mean is the whole batch's
            ce_sum, n_correct, aux_sum = all_reduce_sum([ce, correct, aux or 0.0], dist)
            # the same on every rank (global sums): a non-finite loss or gradient norm is not applied (a NaN norm
            # makes clip_grad_norm_ scale every gradient by NaN), so no NaN reaches the weights or a checkpoint
            bad = not (math.isfinite(ce_sum) and math.isfinite(gnorm))
            if not bad:
                opt.step()
                balance_experts(model)
            opt.zero_grad(set_to_none=True)
            sync()
            dt = time.perf_counter() - t0
            tok_s = cfg.batch * L / dt
            rec = {"step": step, "loss": ce_sum / count, "acc": n_correct / count, "lr": lr, "grad_norm": gnorm,
                   "tokens_per_s": tok_s, "tokens_per_s_per_device": tok_s / dist.world,
                   "mfu": flops_tok * tok_s / dist.world / peak if peak else None, "step_s": dt,
                   "world_size": dist.world}
            if aux is not None:
                rec["aux_loss"] = aux_sum / dist.world
            losses[step] = rec["loss"]
            if metrics is not None:
                metrics.write(rec)
            if bar is not None:  # speed over the last steps (one step's swings, ×20 on a loaded host, misled)
                recent.append(dt)
                mean_tok_s = cfg.batch * L * len(recent) / sum(recent)
                post = {"loss": f"{rec['loss']:.4f}", "tok/s": f"{mean_tok_s:,.0f}"}
                if peak:
                    post["MFU"] = f"{100 * flops_tok * mean_tok_s / dist.world / peak:.1f}%"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
            if bad:
                raise _not_finite(cfg, step, rec["loss"], gnorm)
            if (cfg.save_every and step % cfg.save_every == 0) or step == last:
                _save(cfg, step, model, opt, gen, meta, dist)
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    return {"losses": losses, "start": start, "steps": cfg.steps, "world_size": dist.world,
            "wall_s": time.perf_counter() - t_run, "params": sum(p.numel() for p in model.parameters()),
            "rundir": cfg.rundir}
