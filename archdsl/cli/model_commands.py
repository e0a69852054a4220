"""The commands that build a model and run it: compile (random weights, saved), run (prefill and decode timed)
and bench (forward, training step and decode step timed)."""
from __future__ import annotations

import argparse
import json
import sys

from ..atomic import check_output_dir
from ..errors import ArchDSLError
from ..units import count, human, parse_seed, plural
from .common import (ARGS, add_set, add_spec, add_ssm_state_dtype, add_tokenizer, check_apart, command, device_arg,
                     model_dtype, read_spec, table, tokenizer_note)


@command("compile", "build a spec's model with random weights and save it (spec.yaml + model.safetensors)")
def cmd_compile(args):
    """Build the PyTorch model of SPEC with random weights from --seed and save it to -o DIR. SPEC may be a saved
    model directory: its spec is read and its tokenizer files kept, but its weights are NOT used (a note on stderr
    says so); to cast or copy a trained model's weights use `archdsl export-checkpoint RUNDIR --dtype ...` (a
    training run's checkpoint) or, for a saved model, archdsl.load(DIR, dtype=...).save(OUT) in Python."""
    from ..model import compile as build
    from ..model.model import SAVE_FILES

    dtype = model_dtype(args.dtype)
    if device_arg(args.device).type == "meta":
        raise ArchDSLError(f"--device {args.device}: a compiled model is saved with its weights, and the meta "
                           f"device holds none (give cpu or cuda)")
    check_apart(args.output, args.spec, "SPEC", "compile")  # a saved model's weights lost to random ones
    if args.tokenizer is not None:  # its tokenizer taken, its trained weights replaced by random ones
        check_apart(args.output, args.tokenizer, "--tokenizer", "compile")
    spec = read_spec(args.spec, args.set)
    companions = _companions(args, spec.vocab_size)
    check_output_dir(args.output, SAVE_FILES, optional=frozenset(companions))  # before the model is built
    if _saved_dir(args.spec):  # the same name and parameter count as the trained model: told, lest it pass for it
        print(f"note: SPEC {args.spec} is a saved model: compile builds its spec with random weights from --seed "
              f"{args.seed}; its weights are not used. To cast or copy them, use `archdsl export-checkpoint RUNDIR "
              f"--dtype ...` on the training run that wrote them, or archdsl.load({args.spec!r}, dtype=...)"
              f".save(OUT) in Python", file=sys.stderr)
    model = build(spec, device=args.device, dtype=dtype, seed=args.seed)
    model.companions = companions
    model.save(args.output)
    print(f"wrote {args.output}: {model.spec.name}, {plural(model.num_params(), 'parameter')}, "
          f"{str(model.dtype).replace('torch.', '')}{tokenizer_note(model, args.tokenizer)}")


def _companions(args, vocab_size: int) -> dict[str, bytes]:
    """The tokenizer and generation files compile saves: --tokenizer's, else those of a saved model given as SPEC
    (its vocabulary is the new model's), else none. A saved model's that no longer fit (--set vocab_size smaller) are
    left behind, with a note."""
    from ..model.companions import check_vocab, read_companions, tokenizer_companions

    if args.tokenizer is not None:
        return tokenizer_companions(args.tokenizer, vocab_size)
    if not _saved_dir(args.spec):
        return {}
    companions = read_companions(args.spec)
    try:
        check_vocab(companions, vocab_size, args.spec, "SPEC")
    except ArchDSLError as e:  # a vocabulary --set made smaller, or a file of the save's that is not what it says
        print(f"note: {e.message}: its tokenizer and generation files are not saved with the model", file=sys.stderr)
        return {}
    return companions


def _saved_dir(path: str) -> bool:
    """Whether `path` is a saved model's directory (spec.yaml + model.safetensors)."""
    import os

    return os.path.isfile(os.path.join(path, "spec.yaml")) and os.path.isfile(os.path.join(path, "model.safetensors"))


def _add_compile(p):
    add_spec(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to write: spec.yaml + model.safetensors (an earlier save there is replaced "
                        "atomically, unless it holds files this one would drop, such as its tokenizer.json: give "
                        "--tokenizer DIR again; SPEC's own directory, or one holding SPEC, is refused)")
    p.add_argument("--dtype", default="float32", help="the weights' dtype: float32 (default), bfloat16, float16 or "
                                                      "float64")
    p.add_argument("--device", default="cpu", help="where the weights are made: cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=parse_seed, default=0, help="seed of the random weights (0..2^63-1; default 0)")
    add_tokenizer(p, "a saved model's, when SPEC is one; else none")


@command("run", "time prefill and decoding of a spec or a saved model on random tokens")
def cmd_run(args):
    """Prefill --prompt-len random tokens, decode --gen more one at a time; print tokens/s and cache bytes."""
    import time

    import torch

    from ..analysis import has_ssm_states
    from ..model.decoding import graph_runner, sample

    model = _model(args)
    states = has_ssm_states(model.spec)  # (--ssm-state-dtype changes nothing of a model without them)
    dev = model.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    ids = torch.randint(0, model.spec.vocab_size, (args.batch, args.prompt_len), generator=gen).to(dev)
    with torch.no_grad():
        # captured once (outside the timings), then replayed per token; on CUDA unless --no-cuda-graph (_model
        # refuses --cuda-graph elsewhere), eagerly where the default's capture fails (a warning); no steps, no graph
        graphed = dev.type == "cuda" and model.cuda_graph is not False and args.gen > 0
        runner = graph_runner(model, args.batch, args.prompt_len + args.gen, "run", exact=True) if graphed else None
        graphed = runner is not None
        if graphed:
            cache = runner.cache
            cache.reset()
        else:
            cache = model.init_cache(args.batch, max_len=args.prompt_len + args.gen)
        if args.warmup:  # the first calls compile the Triton kernels and fill the allocator: not timed
            spare = model.init_cache(args.batch, max_len=args.prompt_len + 2)
            model.step(sample(model(ids, spare, logits_to_keep=1)[:, -1], 0), spare)
            del spare
        sync()
        t0 = time.perf_counter()
        logits = model(ids, cache, logits_to_keep=1)[:, -1]
        sync()
        t_prefill = time.perf_counter() - t0
        steps = range(args.gen)
        if args.gen >= 64 and not args.json and sys.stderr.isatty():  # elsewhere (a log) the timings say it all
            from tqdm import tqdm

            steps = tqdm(steps, desc="decode", unit="tok", leave=False)
        t0 = time.perf_counter()
        generated = []
        for _ in steps:
            tok = sample(logits, 0)
            generated.append(tok)
            logits = runner(tok) if graphed else model.step(tok, cache)
        sync()
        t_decode = time.perf_counter() - t0
    first = [int(t[0]) for t in generated]
    result = {"name": model.spec.name, "device": str(dev), "dtype": str(model.dtype).replace("torch.", ""),
              "batch": args.batch, "prompt_len": args.prompt_len, "gen": args.gen, "warmup": args.warmup,
              "prefill_tokens_per_s": args.batch * args.prompt_len / t_prefill,
              "decode_tokens_per_s": args.batch * args.gen / t_decode if args.gen else None,
              "cache_bytes": cache.nbytes(),
              "ssm_state_dtype": str(model.ssm_state_dtype).replace("torch.", "") if states else None,
              "params": model.num_params(), "fusions": sorted(model.fusions),
              "cuda_graph": graphed, "generated": first}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['name']}: {plural(result['params'], 'parameter')} on {result['device']} ({result['dtype']}), "
          f"batch {args.batch}{', decode from a CUDA graph' if graphed else ''}")
    tokens = lambda n: f"{n:>8,} {'token' if n == 1 else 'tokens':<6}"  # noqa: E731 - the columns stay aligned
    print(f"  prefill  {tokens(args.prompt_len)}   {result['prefill_tokens_per_s']:>14,.1f} tokens/s")
    if args.gen:
        print(f"  decode   {tokens(args.gen)}   {result['decode_tokens_per_s']:>14,.1f} tokens/s")
        shown = " ".join(map(str, first[:16])) + (" …" if len(first) > 16 else "")
        print(f"  greedy continuation of sequence 0: {shown}")
    states = f", SSM states {result['ssm_state_dtype']}" if args.ssm_state_dtype and states else ""
    print(f"  cache    {cache.nbytes():>18,} bytes ({human(cache.nbytes(), 'B')}) at "
          f"{plural(args.prompt_len + args.gen, 'token')}{states}")


@command("bench", "time a model's forward pass, training step and decode step (medians, with FLOP/s and GB/s)")
def cmd_bench(args):
    """Time --cases of a spec or saved model at --batch × --seq-len random tokens: the forward pass and the
    training step (forward + backward of the cross entropy; no optimizer) as medians of do_bench on CUDA
    (wall clock on the CPU), beside the analyzer's FLOPs; decoding as the median of --gen single steps after a
    --seq-len prompt (replayed from a CUDA graph on CUDA unless --no-cuda-graph), beside the bytes a step must read
    (weights and cache)."""
    from ..analysis import has_ssm_states
    from ..bench import CASES, bench, format_rows

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases:
        raise ArchDSLError(f"--cases: name at least one of forward, train, decode, got {args.cases!r}")
    for c in cases:  # before the model is built: a big one takes minutes
        if c not in CASES:
            from ..errors import did_you_mean

            raise ArchDSLError(f"--cases: unknown case {c!r}", hint=did_you_mean(c, CASES))
    model = _model(args)
    rows = bench(model, batch=args.batch, seq_len=args.seq_len, gen=args.gen, cases=cases,
                 cuda_graph=args.cuda_graph, seed=args.seed)
    graphed = any(r.cuda_graph for r in rows)  # what the decode row did: no decode row, or eager steps, is False
    states = has_ssm_states(model.spec)
    head = {"name": model.spec.name, "params": model.num_params(), "device": str(model.device),
            "dtype": str(model.dtype).replace("torch.", ""),
            "ssm_state_dtype": str(model.ssm_state_dtype).replace("torch.", "") if states else None,
            "batch": args.batch, "seq_len": args.seq_len, "cuda_graph": graphed}
    if args.json:
        print(json.dumps({**head, "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    print(f"{head['name']}: {plural(head['params'], 'parameter')} on {head['device']} ({head['dtype']}), "
          f"batch {args.batch}, {plural(args.seq_len, 'token')}"
          f"{', decode from a CUDA graph' if graphed else ''}"
          f"{', SSM states ' + head['ssm_state_dtype'] if args.ssm_state_dtype and states else ''}")
    print(table(format_rows(rows), ["case", "tokens", "ms", "tokens/s", "work", "achieved"]))


def _add_bench(p):
    p.add_argument("spec", help="a YAML spec file, a layout string, or a saved model directory")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences a call takes (default 1)")
    p.add_argument("--seq-len", type=count("--seq-len"), default=2048, metavar="N",
                   help="tokens a forward / training call takes, and the decode prompt (default 2048; 4k ok)")
    p.add_argument("--gen", type=count("--gen"), default=64, metavar="N",
                   help="decode steps timed (default 64; at least 1)")
    p.add_argument("--cases", default="forward,train,decode",
                   help="some of forward, train, decode, comma-separated (default: all three)")
    _add_model_args(p, seed_of="the random tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_model_args(p, seed_of: str):
    """The options _model reads: --set, --device, --dtype, --seed, --cuda-graph, --ssm-state-dtype, --fuse / --no-fuse
    (run, bench)."""
    add_set(p, saved=True)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (default; a saved model keeps its own), bfloat16, float16 "
                                                  "or float64")
    p.add_argument("--seed", type=parse_seed, default=0,
                   help=f"seed of {seed_of} and, for a spec, of the random weights (a saved model keeps its own; "
                        f"0..2^63-1, default 0)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="decode steps replayed from a CUDA graph, CUDA only (default: on for --device cuda, eager "
                        "with a warning where a step cannot be captured; --no-cuda-graph steps eagerly, a kernel "
                        "launch at a time from Python)")
    add_ssm_state_dtype(p)
    p.add_argument("--fuse", default=None, metavar="NAMES",
                   help="only these fusions, comma-separated (add_norm, qkv, epilogue, step, norm_gemv, pdl, "
                        "recompute; default: all; not with --no-fuse)")
    p.add_argument("--no-fuse", action="store_true", help="switch every fusion off (not with --fuse)")


def _model(args):
    """The model run and bench time: a saved model directory loaded, or a spec compiled (--seed its weights),
    with --device, --dtype, --fuse / --no-fuse and --cuda-graph."""
    from ..model import compile as build
    from ..model import load as load_model
    from ..model import resolve_dtype, warn_not_finite
    from ..spec import saved_model

    fuse = _fuse(args)
    if args.dtype is not None and not args.dtype.strip():  # not the default: a saved model would keep its own
        raise ArchDSLError("--dtype: give a dtype (it is empty): float32, bfloat16, float16 or float64")
    dtype = None if args.dtype is None else model_dtype(args.dtype)
    if device_arg(args.device).type == "meta":  # shapes without data: nothing to time, no tokens to decode
        raise ArchDSLError(f"--device {args.device}: run and bench compute on real tokens; the meta device holds "
                           f"no data (give cpu or cuda)")
    if args.cuda_graph and not str(args.device).startswith("cuda"):
        raise ArchDSLError(f"--cuda-graph needs a CUDA device (--device cuda), got --device {args.device}")
    if saved_model(args.spec, args.command):
        if args.set:
            raise ArchDSLError(f"--set: {args.spec} is a saved model, whose weights fix its sizes; give its "
                               f"spec.yaml for fresh random weights at other sizes")
        model = load_model(args.spec, device=args.device, dtype=dtype, fuse=fuse,
                           ssm_state_dtype=args.ssm_state_dtype)
        model.cuda_graph = args.cuda_graph
        warn_not_finite(model, args.spec)
        return model
    return build(read_spec(args.spec, args.set), device=args.device, dtype=dtype or resolve_dtype("float32"),
                 seed=args.seed, cuda_graph=args.cuda_graph, fuse=fuse, ssm_state_dtype=args.ssm_state_dtype)


def _fuse(args):
    """--fuse NAMES / --no-fuse as compile(fuse=) takes it: True (the default), False, or a set of names."""
    from ..errors import did_you_mean
    from ..model import FUSIONS

    if args.fuse is None:
        return not args.no_fuse
    if args.no_fuse:
        raise ArchDSLError("--fuse and --no-fuse contradict each other: give one of them")
    names = [n.strip() for n in args.fuse.split(",") if n.strip()]
    if not names:
        raise ArchDSLError(f"--fuse: no fusion named; give some of {', '.join(FUSIONS)}, or --no-fuse for none")
    for n in names:
        if n not in FUSIONS:
            raise ArchDSLError(f"--fuse: unknown fusion {n!r}", hint=did_you_mean(n, FUSIONS))
    return set(names)


def _add_run(p):
    p.add_argument("spec", help="a YAML spec file, a layout string, or a saved model directory")
    p.add_argument("--prompt-len", type=count("--prompt-len"), default=128, metavar="N",
                   help="random prompt tokens to prefill (default 128; 1k ok)")
    p.add_argument("--gen", type=count("--gen", minimum=0), default=128, metavar="N",
                   help="tokens to decode after the prompt (default 128; 0: none)")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences run together (default 1)")
    _add_model_args(p, seed_of="the random prompt")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="run one untimed prefill and decode step first (kernel compilation, allocator); default on")
    p.add_argument("--json", action="store_true", help="print one JSON object")


ARGS.update({"compile": _add_compile, "run": _add_run, "bench": _add_bench})
