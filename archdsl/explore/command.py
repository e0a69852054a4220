"""`archdsl explore SPACE.yaml`: the command line of the explorer (wired in archdsl/cli/train_commands.py)."""
from __future__ import annotations

import math
import os
import sys

from ..errors import ArchDSLError
from ..units import MAX_LR, MAX_LR_WHY, count, parse_count, parse_seed


def add_arguments(p) -> None:
    p.add_argument("space", help="a design-space YAML file (see docs/explore.md)")
    p.add_argument("-o", "--output", metavar="OUTDIR",
                   help="output directory, new or empty (results.json, results.csv, specs/, plots); this or --resume "
                        "is required")
    p.add_argument("--resume", metavar="OUTDIR", help="continue an interrupted run in OUTDIR (same settings); "
                   "-o refuses a directory that already holds files")
    g = p.add_argument_group("budgets (AMOUNT: 1.5B, 300M; flops and cache also at a context, AMOUNT@CONTEXT, and "
                             "cache at a batch too, AMOUNT@CONTEXTxBATCH: 1G@64k, 2GiB@64k, 8GiB@128kx4)")
    for name, help in (("params", "total parameters"), ("active", "active parameters per token (MoE)"),
                       ("flops", "forward FLOPs per token"), ("cache", "decode cache bytes (KV + states)")):
        # appended, so that a flag given twice is refused by name rather than the first budget dropped in silence
        g.add_argument(f"--max-{name}", metavar="AMOUNT", action="append", help=f"at most this many {help} (once)")
        g.add_argument(f"--min-{name}", metavar="AMOUNT", action="append", help=f"at least this many {help} (once)")
    p.add_argument("--objective", default=None, metavar="NAMES",
                   help="comma-separated, minimised (accuracy maximised): params, active, flops, cache, depth, "
                        "attn_fraction, and with --probe accuracy, loss, wall_time (default params,cache; accuracy "
                        "is added with --probe)")
    p.add_argument("--context", default=None, metavar="N", help="context length for FLOPs and cache figures "
                   "(default: a cache budget's @CONTEXT, else 4k; k, m are 1024, 1024²)")
    p.add_argument("--batch", default="1", metavar="B", help="batch for cache figures (default 1)")
    p.add_argument("--dtype", default="bfloat16", help="cache dtype: bfloat16 (default), float16, float32, float64 "
                   "or float8")
    q = p.add_argument_group("probes (the options after --probe only with it; each defaults to the space file's "
                             "probe: section where it names the same task)")
    q.add_argument("--probe", nargs="?", const="", metavar="TASK",
                   help="train candidates on a probe: mqar, selective_copying, noisy_recall, fuzzy_recall "
                        "(bare --probe: the space file's probe: section)")
    q.add_argument("--steps", type=count("--steps"), metavar="N",
                   help="training steps per candidate (default 300; 1k ok)")
    q.add_argument("--probe-d-model", type=count("--probe-d-model"), metavar="D",
                   help="train at this width instead of each candidate's own (1k ok)")
    q.add_argument("--probe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a task argument, e.g. seq_len=256, num_kv_pairs=16, vocab_size=8192 (repeatable)")
    q.add_argument("--lr", type=float, help="peak learning rate, at most 1 (default 1e-3)")
    q.add_argument("--batch-size", type=count("--batch-size"), metavar="B", help="training batch (default 32; 1k ok)")
    q.add_argument("--device", help="auto (default: cuda where present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--top", type=count("--top"), metavar="K", help="probe (and print) the K best by the analytic "
                   "ranking (default: probe all, print 20)")
    p.add_argument("--seed", type=parse_seed, default=0,
                   help="seed of the probes' weights and data (0..2^63-1; default 0)")
    p.add_argument("--json", action="store_true", help="print results.json's document (config, summary, every "
                   "candidate) on stdout once the run is complete; the table and summary go to stderr")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (nor their plain lines where stderr is not a terminal)")


def _value(text: str):
    """A --probe-arg value read as the space file reads it (YAML 1.2 floats: 1e-2 is a number)."""
    import yaml

    from ..yamlio import YamlLoader

    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, RecursionError):
        return text


def check_flags(args) -> None:
    """Each budget flag given once, and the numeric and device options, each named in its error; before anything is
    read or written (the counts, --steps, --batch-size, --probe-d-model and --top, are checked as argparse reads
    them)."""
    for name in ("params", "active", "flops", "cache"):
        for bound in ("min", "max"):
            texts = getattr(args, f"{bound}_{name}") or []
            if len(texts) > 1:
                raise ArchDSLError(f"--{bound}-{name} given {len(texts)} times ({', '.join(texts)}): give each budget "
                                   f"flag once", hint="for budgets of one metric at several contexts, use the Python "
                                   "API: explore(space, ['cache<=600KiB@4k', 'cache<=1MiB@64k'])")
    if args.lr is not None and not 0 < args.lr < math.inf:
        raise ArchDSLError(f"--lr: must be a positive number, got {args.lr}")
    if args.lr is not None and args.lr > MAX_LR:
        raise ArchDSLError(f"--lr: must be at most {MAX_LR:g} ({MAX_LR_WHY}), got {args.lr:g}")
    if args.device is not None and args.device != "auto":
        import torch

        from ..model import check_device

        try:
            dev = check_device(args.device, torch.float32)
        except ArchDSLError as e:
            raise ArchDSLError(f"--device: {e.message}") from None
        if dev.type == "meta":
            raise ArchDSLError(f"--device {args.device}: the probes train on real tokens; the meta device holds no "
                               f"data (give cpu or cuda)")
    from ..analysis import dtype_bytes

    try:
        dtype_bytes(args.dtype)
    except ArchDSLError as e:
        raise ArchDSLError(f"--dtype: {e.message}", hint=e.hint) from None
    if args.objective is not None:
        from .search import norm_objectives

        try:
            norm_objectives(args.objective)
        except ArchDSLError as e:
            raise ArchDSLError(f"--objective: {e.message}", hint=e.hint) from None


def explore_command(args) -> None:
    from ..atomic import check_output
    from .runner import ProbeSpec, run
    from .search import parse_constraint
    from .space_file import load_space

    outdir = args.resume or args.output
    if not outdir:
        raise ArchDSLError("explore: give -o OUTDIR (or --resume OUTDIR)")
    if args.resume and args.output and args.output != args.resume:
        raise ArchDSLError("explore: --resume OUTDIR and -o name different directories")
    flag = "--resume" if args.resume else "-o"
    check_output(outdir, flag, directory=True)  # an -o that holds files is refused by run, for the API alike
    check_flags(args)
    space = load_space(args.space)
    constraints = []
    for name in ("params", "active", "flops", "cache"):
        for bound in ("min", "max"):
            for text in getattr(args, f"{bound}_{name}") or []:
                try:
                    constraints.append(parse_constraint(name, text, bound))
                except ArchDSLError as e:
                    flag = f"--{bound}-{name}" + (f" {text}" if text.strip() else "")
                    raise ArchDSLError(f"{flag}: {e.message}", hint=e.hint) from None
    if args.context:
        context = parse_count(args.context, "--context")
    else:
        context = next((c.seq_len for c in constraints if c.metric == "cache_bytes" and c.seq_len), 4096)
    pdef = dict(space.probe or {})
    task = None
    if args.probe is not None:
        task = args.probe or pdef.get("task")
        if not task:
            raise ArchDSLError("--probe: name a task (mqar, selective_copying, noisy_recall, fuzzy_recall); "
                               "the space file has no probe: task")
        from .probes import ALIASES

        if args.probe and ALIASES.get(pdef.get("task"), pdef.get("task")) not in (None, ALIASES.get(task, task)):
            pdef = {}  # the space's probe settings belong to its own task (`copy` is `selective_copying`)
    pdef.pop("task", None)
    probe = None
    if task:
        train = dict(pdef.pop("train", {}) or {})
        d_model = args.probe_d_model or pdef.pop("d_model", None)
        pdef.pop("d_model", None)
        task_args = dict(pdef.pop("args", {}) or {})
        where = " / ".join(w for w, given in (("space probe: args", task_args), ("--probe-arg", args.probe_arg))
                           if given) or "--probe"
        for kv in args.probe_arg:
            k, eq, v = kv.partition("=")
            if not eq:
                raise ArchDSLError(f"--probe-arg wants KEY=VALUE, got {kv!r}")
            task_args[k.strip()] = _value(v)
        for key, flag in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                          ("device", args.device)):
            if flag is not None:
                train[key] = flag
        if pdef:
            raise ArchDSLError(f"space probe: unknown keys {', '.join(map(repr, pdef))}; "
                               "valid: task, args, d_model, train")
        probe = ProbeSpec(task=task, task_args=task_args, d_model=d_model, train=train)
        from .probes import make_task

        try:
            make_task(task, **task_args)  # bad task arguments before any work
        except ArchDSLError as e:
            raise ArchDSLError(f"{where}: {e.message}", hint=e.hint) from None
    else:  # the probe's settings without a probe would be ignored in silence: refused, each named
        for flag, given in (("--steps", args.steps is not None), ("--probe-d-model", args.probe_d_model is not None),
                            ("--probe-arg", bool(args.probe_arg)), ("--lr", args.lr is not None),
                            ("--batch-size", args.batch_size is not None), ("--device", args.device is not None)):
            if given:
                raise ArchDSLError(f"{flag} needs --probe (e.g. --probe mqar)")
    objectives = (args.objective or "params,cache").split(",")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    run(space, constraints, objectives, outdir, probe=probe, top=args.top, seed=args.seed, context=context,
        batch=parse_count(args.batch, "--batch"), dtype=args.dtype, resume=bool(args.resume),
        progress=False if args.no_progress else (True if sys.stderr.isatty() else "lines"), log=log)
    if args.json:  # the document just written, as written: one source for the file and stdout
        with open(os.path.join(outdir, "results.json"), encoding="utf-8") as f:
            sys.stdout.write(f.read())
