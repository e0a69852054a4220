"""The commands that train: explore (layouts under budgets, trained on recall probes), train (1..N processes)
and export-checkpoint (a run's checkpoint to an ordinary save)."""
from __future__ import annotations

import os
import sys

from ..atomic import check_control
from ..errors import ArchDSLError
from ..units import count, parse_seed, plural
from .common import ARGS, add_set, add_tokenizer, check_apart, command, device_arg, model_dtype, tokenizer_note


@command("explore", "enumerate hybrid layouts under budgets: Pareto front, recall probes, plots")
def cmd_explore(args):
    """Enumerate the layouts of a design space, cost them exactly, keep those within the budgets,
    rank them on a Pareto front, optionally train the best on a recall probe (MQAR, ...), and write
    results.json, results.csv, every candidate's spec and plots into OUTDIR. See docs/explore.md."""
    from ..explore.command import explore_command

    if args.device is not None:
        device_arg(args.device, auto=True)
    explore_command(args)


def _add_explore(p):
    from ..explore.command import add_arguments

    add_arguments(p)


@command("train", "train a spec on 1..N processes (torchrun): FSDP2, DCP checkpoints, metrics")
def cmd_train(args):
    """Train SPEC (a spec file, layout string, or saved model directory) on DATA for --steps steps,
    alone or under `torchrun --nproc-per-node G archdsl train ...` (FSDP2 per layer). --batch is the
    global batch. Writes RUNDIR/run.json, metrics.jsonl and checkpoints/. See docs/training.md."""
    from ..train import TrainConfig, train

    device_arg(args.device, auto=True)
    check_control(args.output, "-o")  # as -o, not as TrainConfig's rundir
    cfg = TrainConfig(spec=args.spec, settings=tuple(args.set), data=args.data, steps=args.steps, rundir=args.output,
                      batch=args.batch, micro_batch=args.micro_batch, seq_len=args.seq_len, lr=args.lr,
                      warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, bf16=args.bf16,
                      grad_ckpt=args.grad_ckpt, compile=args.compile, save_every=args.save_every,
                      keep_last=args.keep_last, resume=args.resume,
                      stop_after=args.stop_after, seed=args.seed, device=args.device, peak_tflops=args.peak_tflops,
                      progress=not args.no_progress, cpu_threads=args.threads)
    out = train(cfg)
    if out.get("losses") and int(os.environ.get("RANK", 0)) == 0:
        last = max(out["losses"])
        print(f"{args.output}: step {last}, loss {out['losses'][last]:.4f}, {out['wall_s']:.1f} s "
              f"on {plural(out['world_size'], 'process', 'processes')}")


def _add_train(p):
    p.add_argument("spec", help="a YAML spec file, a layout string, or a saved model directory (its weights)")
    add_set(p, saved=True)
    p.add_argument("--data", required=True, help="a probe task (mqar:seq=256,pairs=16, selective_copying:..., "
                   "noisy_recall:..., fuzzy_recall:...) or a token file PATH.bin[:uint16|uint32][,eos=N] (eos: documents packed)")
    p.add_argument("--steps", type=count("--steps"), required=True, metavar="N",
                   help="optimizer steps in all (a resumed run continues; 10k ok)")
    p.add_argument("-o", "--output", required=True, metavar="RUNDIR",
                   help="run directory: run.json, metrics.jsonl, checkpoints/ (one holding checkpoints needs --resume)")
    p.add_argument("--batch", type=count("--batch"), default=32, metavar="B",
                   help="global batch in sequences, split over the processes (default 32; 1k ok)")
    p.add_argument("--micro-batch", type=count("--micro-batch"), default=None, metavar="M",
                   help="sequences per forward on each process, the gradients accumulated to one step of --batch; "
                        "must divide the process's share (default: the whole share)")
    p.add_argument("--seq-len", type=count("--seq-len"), default=None, metavar="N",
                   help="sequence length (default: a token file 1024, a task its own seq; with a task's seq= the "
                        "two must agree; 4k ok)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate, at most 1 (default 1e-3; cosine to 0.1·lr after warmup)")
    p.add_argument("--warmup", type=float, default=0.1,
                   help="warmup steps (at most --steps), or a share of --steps if < 1 (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay, on weight matrices only (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="gradient norm clipping (default 1.0; 0: no clipping)")
    p.add_argument("--bf16", action="store_true", help="bf16 compute (FSDP2 mixed precision), fp32 master weights")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing per layer")
    p.add_argument("--compile", action="store_true", help="torch.compile each layer")
    p.add_argument("--save-every", type=count("--save-every", minimum=0), default=0, metavar="K",
                   help="checkpoint every K steps, and at the end (default 0: only at the end; 1k ok)")
    p.add_argument("--keep-last", type=count("--keep-last"), default=None, metavar="N",
                   help="keep the N newest checkpoints, removing each older one once a newer save is complete "
                        "(transformers' save_total_limit; default: keep all)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in RUNDIR that loads (a damaged one is passed over "
                        "with a warning)")
    p.add_argument("--stop-after", type=count("--stop-after"), default=None, metavar="K",
                   help="stop after step K with a checkpoint (the schedule stays that of --steps; 1k ok)")
    p.add_argument("--seed", type=parse_seed, default=0,
                   help="seed of the random weights (of a spec) and of the data (0..2^63-1; default 0)")
    p.add_argument("--device", default="auto",
                   help="auto (default: cuda where present, else cpu), cpu, cuda or cuda:N (one GPU per process)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device peak TFLOP/s for MFU (default: 989 on H100/H200, 312 on A100; no MFU elsewhere)")
    p.add_argument("--threads", type=count("--threads"), default=None, metavar="N",
                   help="torch CPU threads per process, on the CPU only (default: torch's)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (nor its plain line every 30 s where stderr is not a terminal)")


@command("export-checkpoint", "a training run's checkpoint → an ordinary archdsl save (spec.yaml + model.safetensors)")
def cmd_export_checkpoint(args):
    """Load the newest checkpoint of RUNDIR that loads (or the one at --step K), whatever number of processes
    wrote it, and save the model to -o DIR as `archdsl compile` would. Damaged checkpoints passed over are named."""
    from ..train import export_checkpoint

    skipped: list[str] = []
    if args.dtype is not None:
        model_dtype(args.dtype)  # named as the option's, before the checkpoint is read
    check_control(args.output, "-o")  # as -o, not as export_checkpoint's out
    check_apart(args.output, args.rundir, "RUNDIR", "export-checkpoint")
    try:
        model, step = export_checkpoint(args.rundir, args.output, step=args.step, dtype=args.dtype, skipped=skipped,
                                        tokenizer=args.tokenizer)
    except ArchDSLError as e:  # said as the option's, not as the function's argument
        if e.message.startswith("export_checkpoint: tokenizer"):
            raise ArchDSLError("--tokenizer" + e.message[len("export_checkpoint: tokenizer"):], hint=e.hint) from None
        raise
    if skipped:
        print(f"warning: skipped {plural(len(skipped), 'damaged checkpoint')} (" + "; ".join(skipped)
              + f"); exported step {step}", file=sys.stderr)
    print(f"wrote {args.output}: {model.spec.name} at step {step}, {plural(model.num_params(), 'parameter')}, "
          f"{str(model.dtype).replace('torch.', '')}{tokenizer_note(model, args.tokenizer)}")


def _add_export_checkpoint(p):
    p.add_argument("rundir", help="a directory written by archdsl train")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to write: spec.yaml + model.safetensors (replaced atomically)")
    p.add_argument("--step", type=int, default=None, metavar="K",
                   help="the checkpoint at this step (default: the newest that loads)")
    p.add_argument("--dtype", default=None, help="dtype of the saved weights: float32, bfloat16, float16 or float64 "
                                                 "(default: that of the saved model the run started from, else "
                                                 "float32)")
    add_tokenizer(p, "the tokenizer and generation files of the saved model the run started from, if any")


ARGS.update({"explore": _add_explore, "train": _add_train, "export-checkpoint": _add_export_checkpoint})
