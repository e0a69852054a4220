"""The archdsl command line. Every subcommand has --help; bad input exits 2 with the
error's place and picture, never a traceback.

    archdsl check SPEC                 archdsl show SPEC [--seq-len N] [--json]
    archdsl fmt SPEC                   archdsl graph SPEC -o layout.svg
    archdsl memory SPEC... --seq-lens 1k,8k,64k [-o plot.png]
    archdsl convert --from megatron PATTERN | --from hf config.json [-o spec.yaml] | --from hf DIR -o OUT --weights
    archdsl export DIR --to hf -o OUT
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import signal
import sys
import unicodedata
import warnings

from .atomic import check_control, check_output, check_output_dir
from .errors import TOO_DEEP, ArchDSLError, ArchDSLWarning, out_of_memory
from .units import count, count_text, human, parse_count, parse_seed, plural

COMMANDS = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help, fn.__doc__ or help)
        return fn
    return register


# --- small helpers ---------------------------------------------------------------------
def table(rows: list[list], header: list[str], names: int = 0) -> str:
    """Columns padded to their widths: numbers to the right, text and the first `names` columns to the left."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if c[:1].isdigit() and i >= names else c.ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _spec(text: str, settings: list[str] | None = None):
    """SPEC as load_spec reads it, with --set's model-level keys changed."""
    from .spec import load_spec, with_settings

    for setting in settings or []:  # errors repeat the setting: a line break (a tab is one line) would split them
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t" for c in setting):
            raise ArchDSLError(f"--set: must be one line without control characters, got {setting!r}")
    spec = load_spec(text)
    return with_settings(spec, settings) if settings else spec


def _dtype(text: str):
    """--dtype of a model (compile, run, bench, convert --weights, export-checkpoint) as torch's dtype; else
    ArchDSLError naming the option and the dtypes a model computes in, before any work."""
    from .analysis import ALIASES, MODEL_DTYPES
    from .errors import did_you_mean
    from .model import DTYPES, resolve_dtype

    key = str(text).replace("torch.", "").lower()
    if key not in DTYPES:
        hint = did_you_mean(key, DTYPES)
        aliases = ", ".join(a for a, c in ALIASES.items() if c in MODEL_DTYPES)
        raise ArchDSLError(f"--dtype: unknown dtype {text!r}; give {', '.join(MODEL_DTYPES[:-1])} or "
                           f"{MODEL_DTYPES[-1]} (or {aliases})", hint=hint if hint.startswith("did you") else "")
    return resolve_dtype(key)


def _device(text: str, auto: bool = False):
    """--device as torch reads it, checked before any work: cpu, cuda, cuda:N, mps where torch has it (with `auto`,
    auto too, returned as None) and one this machine has; else ArchDSLError on one line naming the option."""
    import torch

    if auto and text == "auto":
        return None
    mps = torch.backends.mps.is_built()
    names = ["auto"] * auto + ["cpu", "cuda", "cuda:N"] + ["mps"] * mps
    give = f"give {', '.join(names[:-1])} or {names[-1]}"
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ArchDSLError(f"--device: unknown device {text!r}; {give}") from None
    if dev.type == "meta":  # shapes without data: each command says why it will not do
        return dev
    if dev.type == "mps" and not mps:
        raise ArchDSLError(f"--device {text}: this build of torch has no MPS support; {give}")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ArchDSLError(f"--device {text}: archdsl does not run on {dev.type} devices; {give}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not n:
            raise ArchDSLError(f"--device {text}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= n:
            raise ArchDSLError(f"--device {text}: this machine has {plural(n, 'CUDA device')} (cuda:0"
                               f"{f'..cuda:{n - 1}' if n > 1 else ''})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ArchDSLError(f"--device {text}: MPS is not available on this machine")
    return dev


def _cache_dtype(text: str) -> None:
    """show's and memory's --dtype (float8 too: a cache may hold it), its error naming the option."""
    from .analysis import dtype_bytes

    try:
        dtype_bytes(text)
    except ArchDSLError as e:
        raise ArchDSLError(f"--dtype: {e.message}", hint=e.hint) from None


def _add_set(p, saved: bool = False):
    """--set; `saved`: the command refuses it on a saved model directory (its weights fix the sizes)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a model-level key of the spec for this command (repeatable): d_model, vocab_size, "
                        "name, tie_embeddings, norm, norm_eps, embed_norm, residual_fp32, ffn; e.g. --set "
                        "d_model=1024 --set vocab_size=32000" + ("; refused on a saved model directory, whose "
                                                                 "weights fix its sizes" if saved else ""))


# --- commands --------------------------------------------------------------------------
@command("check", "validate a spec file or layout string")
def cmd_check(args):
    """Parse and verify SPEC (a YAML file, a saved model directory or a layout string)."""
    spec = _spec(args.spec, args.set)
    _ = spec.graph
    from .graph import num_layers

    print(f"ok: {spec.name}: {plural(num_layers(spec.graph), 'layer')}")


def _add_check(p):
    p.add_argument("spec", help="a YAML spec file, a saved model directory, or a layout string")
    _add_set(p)


@command("show", "per-layer table and totals: params, active params, FLOPs/token, cache bytes")
def cmd_show(args):
    """Print each layer (index, mixer, ffn, sharing group, params, FLOPs/token, cache bytes) and the totals."""
    from .analysis import analyze

    _cache_dtype(args.dtype)
    rep = analyze(_spec(args.spec, args.set), seq_len=args.seq_len, batch=args.batch, dtype=args.dtype,
                  ssm_state_dtype=args.ssm_state_dtype)
    if args.json:
        layers = [{"index": r.index, "mixer": r.mixer or None, "ffn": r.ffn or None, "inject": r.inject or None,
                   "shared": r.shared or None, "params": r.params, "active_params": r.active_params,
                   "flops_per_token": r.flops_per_token, "cache_bytes": r.cache_bytes} for r in rep.layers]
        print(json.dumps({"name": rep.name, "seq_len": rep.seq_len, "batch": rep.batch, "dtype": rep.dtype,
                          "ssm_state_dtype": rep.ssm_state_dtype, "layers": layers, "params": rep.params,
                          "active_params": rep.active_params, "embedding_params": rep.embedding_params,
                          "flops_per_token": rep.flops_per_token, "cache_bytes": rep.cache_bytes}, indent=2))
        return
    rows = [[r.index, (r.inject + " → " if r.inject else "") + (r.mixer or "-"), r.ffn or "-", r.shared or "-",
             f"{r.params:,}", human(r.flops_per_token), human(r.cache_bytes, "B")] for r in rep.layers]
    print(table(rows, ["layer", "mixer", "ffn", "shared", "params", "FLOPs/tok", "cache"]))
    print()
    print(f"{rep.name}: {plural(len(rep.layers), 'layer')}")
    print(f"  params          {rep.params:>18,}  ({human(rep.params)})")
    print(f"  active params   {rep.active_params:>18,}  ({human(rep.active_params)})")
    print(f"  embedding       {rep.embedding_params:>18,}")
    print(f"  FLOPs/token     {rep.flops_per_token:>18,}  ({human(rep.flops_per_token)}, at context {rep.seq_len:,})")
    states = f", SSM states {rep.ssm_state_dtype}" if rep.ssm_state_dtype else ""
    print(f"  cache           {rep.cache_bytes:>18,}  ({human(rep.cache_bytes, 'B')} at batch {rep.batch}, "
          f"context {rep.seq_len:,}, {rep.dtype}{states})")


def _add_show(p):
    _add_check(p)
    p.add_argument("--seq-len", type=count("--seq-len"), default=2048, metavar="N",
                   help="context length for the FLOPs and the cache (default 2048; 8k, 1.5k, 1m: k, m are 1024, "
                        "1024²)")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences the cache holds (default 1)")
    p.add_argument("--dtype", default="bfloat16", help="cache dtype: bfloat16 (default), float16, float32, float64 "
                   "or float8 (an fp8 KV cache, an estimate); bf16, fp16, fp32 ok")
    _add_ssm_state_dtype(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _ssm_state_dtype(text: str) -> str:
    """--ssm-state-dtype as given, checked when it is read (a type= for argparse): an error names the option,
    before any work."""
    from .analysis import MODEL_DTYPES, dtype_name

    try:
        dtype_name(text, "ssm_state_dtype")
    except ArchDSLError as e:
        raise ArchDSLError(f"--ssm-state-dtype: ssm_state_dtype must be {', '.join(MODEL_DTYPES[:-1])} or "
                           f"{MODEL_DTYPES[-1]}, got {text!r}", hint=e.hint) from None
    return text


def _add_ssm_state_dtype(p):
    p.add_argument("--ssm-state-dtype", type=_ssm_state_dtype, default=None, metavar="DTYPE",
                   help="Mamba / Mamba-2 SSM states' dtype in the cache: float32, bfloat16, float16 or float64 "
                        "(default float32, float64 in a float64 model or cache; bfloat16 halves them)")


@command("fmt", "print the canonical text of the layout")
def cmd_fmt(args):
    """Print the layout in canonical form (sublayers in the order they run): fmt(fmt(x)) == fmt(x)."""
    from .graph import canonical_text

    spec = _spec(args.spec, args.set)
    _ = spec.graph  # what check refuses (an unknown block, an index out of range) is no layout to print
    print(canonical_text(spec))


@command("graph", "draw the layout (.svg, .png, .pdf, .dot, .mmd)")
def cmd_graph(args):
    """Draw the layers as a strip coloured by kind, sharing shown."""
    from .draw import check_path, draw

    check_output(args.output)
    check_path(args.output)
    spec = _spec(args.spec, args.set)
    draw(spec, args.output, every_layer=args.every_layer)
    print(f"wrote {args.output}")


def _add_graph(p):
    _add_check(p)
    p.add_argument("-o", "--output", required=True,
                   help="output file: .svg, .png, .pdf, .dot or .mmd (missing directories are created)")
    p.add_argument("--every-layer", action="store_true",
                   help="draw each layer (default: three or more alike blocks of layers in a row are drawn once, × k)")


@command("memory", "inference cache bytes against context length")
def cmd_memory(args):
    """Cache bytes of one or several specs at each context length, as a table (or --json), and a plot with -o."""
    from .analysis import analyze_lengths
    from .draw import PLOT_FORMATS, check_path

    if args.output:
        check_output(args.output)
        check_path(args.output, PLOT_FORMATS)
    _cache_dtype(args.dtype)
    specs = [_spec(s, args.set) for s in args.specs]
    lens = [parse_count(x, "--seq-lens") for x in args.seq_lens.split(",") if x.strip()]
    if not lens:
        raise ArchDSLError("--seq-lens: give at least one length, e.g. 1k,8k,64k")
    data = {label: [r.cache_bytes for r in analyze_lengths(s, lens, batch=args.batch, dtype=args.dtype,
                                                           ssm_state_dtype=args.ssm_state_dtype)]
            for label, s in zip(_labels(args.specs, specs), specs)}
    if args.output:  # first: a plot that cannot be written is the error alone, no table printed before it
        from .draw import plot_memory

        plot_memory(lens, data, args.output, batch=args.batch, dtype=args.dtype)
    if args.json:
        print(json.dumps({"seq_lens": lens, "batch": args.batch, "dtype": args.dtype,
                          "ssm_state_dtype": args.ssm_state_dtype, "cache_bytes": data}, indent=2))
    else:
        rows = [[name] + [human(b, "B") for b in values] for name, values in data.items()]
        print(table(rows, ["spec"] + [count_text(n) for n in lens], names=1))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr if args.json else sys.stdout)


def _labels(texts: list[str], specs: list) -> list[str]:
    """A distinct row name for each argument: the spec's name; where several share one, a layout string
    goes by its layout text, and what still repeats (a file given twice) gets #2, #3, ..."""
    names = [s.name for s in specs]
    labels = [s.layout_text if names.count(s.name) > 1 and not os.path.exists(t) else s.name
              for t, s in zip(texts, specs)]
    out: list[str] = []
    for label in labels:
        unique, k = label, 1
        while unique in out:
            k += 1
            unique = f"{label}#{k}"
        out.append(unique)
    return out


def _add_memory(p):
    p.add_argument("specs", nargs="+", help="spec files, saved model directories or layout strings")
    _add_set(p)
    p.add_argument("--seq-lens", default="1k,8k,64k,512k", metavar="N,N,...",
                   help="comma-separated context lengths (default 1k,8k,64k,512k; k, m are 1024, 1024²)")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences the cache holds (default 1)")
    p.add_argument("--dtype", default="bfloat16", help="cache dtype, as show's: bfloat16 (default), float16, "
                   "float32, float64 or float8")
    _add_ssm_state_dtype(p)
    p.add_argument("-o", "--output", metavar="PLOT",
                   help="also write a plot (.png, .svg or .pdf; missing directories are created)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


@command("convert", "a Megatron hybrid pattern or a Hugging Face config.json → a spec (--weights: a saved model)")
def cmd_convert(args):
    """Write the spec YAML that reproduces the source (to stdout, or -o FILE); with --weights (--from hf), import
    the weights too and save an archdsl model to -o DIR."""
    if args.name is not None and not args.name.strip():
        raise ArchDSLError("--name: give a name (it is empty)")
    if args.name is not None and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in args.name):
        # as a spec's name: said of --name here, not of the converted YAML or the source config
        raise ArchDSLError(f"--name: must be one line without control characters, got {args.name!r}")
    if args.dtype is not None and not args.weights:
        raise ArchDSLError("--dtype needs --weights: it is the dtype of the saved model (a spec has none)")
    if args.output is not None and not args.weights:  # a spec file of the user's, maybe edited since: never replaced
        check_output(args.output, replace=False)
    if args.weights:
        if args.source != "hf":
            raise ArchDSLError("--weights needs --from hf (a model directory with safetensors)")
        if args.output is None:
            raise ArchDSLError("--weights needs -o DIR: where to save the archdsl model")
        from .convert.hf_io import from_hf
        from .model.model import SAVE_FILES

        dtype = None if args.dtype is None else _dtype(args.dtype)
        check_output_dir(args.output, SAVE_FILES)  # before the weights are read
        _, model = from_hf(args.input, weights=True, dtype=dtype, name=args.name)
        model.save(args.output)
        print(f"wrote {args.output} ({plural(model.num_params(), 'parameter')})", file=sys.stderr)
        return
    if args.source == "megatron":
        from .convert.megatron import pattern_to_layout
        from .spec import dump_yaml, spec_from_yaml

        data = {"name": args.name or "megatron-hybrid", "layout": pattern_to_layout(args.input)}
        text = dump_yaml(data)
        spec_from_yaml(text, file="<converted>").graph  # refuse to write what would not load
    else:
        from .convert.hf import convert_config

        text, _ = convert_config(args.input, args.name)  # checked to the graph: what would not load is refused
    if args.output:
        from .atomic import write_atomic

        try:
            write_atomic(args.output, text, replace=False)
        except OSError as e:
            raise ArchDSLError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _add_convert(p):
    p.add_argument("--from", dest="source", required=True, choices=["megatron", "hf"],
                   help="what INPUT is: megatron, a Megatron-LM hybrid override pattern (M mamba2, * attn, - mlp, "
                        "E moe); hf, a Hugging Face config.json or model directory")
    p.add_argument("input", help="the Megatron pattern (e.g. 'M-M*-') or a config.json / model directory")
    p.add_argument("--name", help="the spec's name (default: megatron-hybrid; for hf, the last part of the "
                                  "config's _name_or_path, else the directory's name)")
    p.add_argument("-o", "--output",
                   help="write the spec here instead of stdout (a new file: an existing one is refused; with "
                        "--weights: the model directory, replaced atomically)")
    p.add_argument("--weights", action="store_true",
                   help="also import the safetensors weights and save an archdsl model (spec.yaml + model.safetensors) "
                        "to -o DIR; needs --from hf and -o")
    p.add_argument("--dtype", default=None, help="only with --weights: the saved model's dtype, float32, bfloat16, "
                   "float16 or float64 (default: the checkpoint's)")


@command("export", "a saved archdsl model → a Hugging Face model directory (config.json + safetensors)")
def cmd_export(args):
    """Write DIR's model (spec.yaml + model.safetensors) to -o OUT as a Hugging Face checkpoint that transformers
    loads with its own class (Mamba, FalconMamba, Mamba2, Bamba, NemotronH, Llama, ...)."""
    from .convert.hf_io import export_hf

    check_output_dir(args.output, HF_FILES)  # before the model is loaded
    if args.model_type is not None:
        from .convert.weights import FAMILIES
        from .errors import did_you_mean

        if args.model_type not in FAMILIES:
            raise ArchDSLError(f"--model-type: archdsl exports no model_type {args.model_type!r}",
                               hint=did_you_mean(args.model_type, FAMILIES))
    out = export_hf(args.input, args.output, model_type=args.model_type)
    print(f"wrote {out}", file=sys.stderr)


HF_FILES = frozenset({"config.json", "model.safetensors"})  # what export_hf writes


def _add_export(p):
    p.add_argument("input", metavar="DIR", help="a saved archdsl model directory (archdsl compile, convert --weights, "
                                                "export-checkpoint)")
    p.add_argument("--to", dest="target", required=True, choices=["hf"],
                   help="the format to write: hf, a Hugging Face model directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the directory to write (config.json + model.safetensors; replaced atomically)")
    p.add_argument("--model-type", default=None,
                   help="the HF model_type: mamba, falcon_mamba, mamba2, bamba, nemotron_h, llama, jamba, zamba2 or "
                        "rwkv; it must be the family the spec is (default: inferred from the spec)")


@command("compile", "build a spec's model and save it (spec.yaml + model.safetensors)")
def cmd_compile(args):
    """Build the PyTorch model of SPEC with random weights from --seed and save it to -o DIR."""
    from .model import compile as build
    from .model.model import SAVE_FILES

    dtype = _dtype(args.dtype)
    if _device(args.device).type == "meta":
        raise ArchDSLError(f"--device {args.device}: a compiled model is saved with its weights, and the meta "
                           f"device holds none (give cpu or cuda)")
    check_output_dir(args.output, SAVE_FILES)  # before the model is built: a big one takes minutes
    model = build(_spec(args.spec, args.set), device=args.device, dtype=dtype, seed=args.seed)
    model.save(args.output)
    print(f"wrote {args.output}: {model.spec.name}, {plural(model.num_params(), 'parameter')}, "
          f"{str(model.dtype).replace('torch.', '')}")


def _add_compile(p):
    _add_check(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to write: spec.yaml + model.safetensors (replaced atomically)")
    p.add_argument("--dtype", default="float32", help="the weights' dtype: float32 (default), bfloat16, float16 or "
                                                      "float64")
    p.add_argument("--device", default="cpu", help="where the weights are made: cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=parse_seed, default=0, help="seed of the random weights (0..2^63-1; default 0)")


@command("run", "time prefill and decoding of a spec or a saved model on random tokens")
def cmd_run(args):
    """Prefill --prompt-len random tokens, decode --gen more one at a time; print tokens/s and cache bytes."""
    import time

    import torch

    from .model.model import sample

    model = _model(args)
    dev = model.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    ids = torch.randint(0, model.spec.vocab_size, (args.batch, args.prompt_len), generator=gen).to(dev)
    with torch.no_grad():
        graphed = args.cuda_graph and args.gen > 0  # _model allows --cuda-graph on CUDA alone; no steps, no graph
        if graphed:  # capture once (outside the timings), then replay per token
            runner = model._graph_runner(args.batch, args.prompt_len + args.gen)
            cache = runner.cache
            cache.reset()
        else:
            cache = model.init_cache(args.batch, max_len=args.prompt_len + args.gen)
        if args.warmup:  # the first calls compile the Triton kernels and fill the allocator: not timed
            spare = model.init_cache(args.batch, max_len=args.prompt_len + 2)
            model.step(sample(model(ids, spare)[:, -1], 0), spare)
            del spare
        sync()
        t0 = time.perf_counter()
        logits = model(ids, cache)[:, -1]
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
              "cache_bytes": cache.nbytes(), "ssm_state_dtype": str(model.ssm_state_dtype).replace("torch.", ""),
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
    states = f", SSM states {result['ssm_state_dtype']}" if args.ssm_state_dtype else ""
    print(f"  cache    {cache.nbytes():>18,} bytes ({human(cache.nbytes(), 'B')}) at "
          f"{plural(args.prompt_len + args.gen, 'token')}{states}")


@command("bench", "time a model's forward pass, training step and decode step (medians, with FLOP/s and GB/s)")
def cmd_bench(args):
    """Time --cases of a spec or saved model at --batch × --seq-len random tokens: the forward pass and the
    training step (forward + backward of the cross entropy; no optimizer) as medians of do_bench on CUDA
    (wall clock on the CPU), beside the analyzer's FLOPs; decoding as the median of --gen single steps after a
    --seq-len prompt (replayed from a CUDA graph on CUDA unless --no-cuda-graph), beside the bytes a step must read
    (weights and cache)."""
    from .bench import CASES, bench, format_rows

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases:
        raise ArchDSLError(f"--cases: name at least one of forward, train, decode, got {args.cases!r}")
    for c in cases:  # before the model is built: a big one takes minutes
        if c not in CASES:
            from .errors import did_you_mean

            raise ArchDSLError(f"--cases: unknown case {c!r}", hint=did_you_mean(c, CASES))
    model = _model(args)
    rows = bench(model, batch=args.batch, seq_len=args.seq_len, gen=args.gen, cases=cases,
                 cuda_graph=args.cuda_graph, seed=args.seed)
    head = {"name": model.spec.name, "params": model.num_params(), "device": str(model.device),
            "dtype": str(model.dtype).replace("torch.", ""),
            "ssm_state_dtype": str(model.ssm_state_dtype).replace("torch.", ""), "batch": args.batch,
            "seq_len": args.seq_len, "cuda_graph": args.cuda_graph}
    if args.json:
        print(json.dumps({**head, "rows": [r.to_dict() for r in rows]}, indent=2))
        return
    print(f"{head['name']}: {plural(head['params'], 'parameter')} on {head['device']} ({head['dtype']}), "
          f"batch {args.batch}, {plural(args.seq_len, 'token')}"
          f"{', decode from a CUDA graph' if args.cuda_graph else ''}"
          f"{', SSM states ' + head['ssm_state_dtype'] if args.ssm_state_dtype else ''}")
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
    _add_set(p, saved=True)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (default; a saved model keeps its own), bfloat16, float16 "
                                                  "or float64")
    p.add_argument("--seed", type=parse_seed, default=0,
                   help=f"seed of {seed_of} and, for a spec, of the random weights (a saved model keeps its own; "
                        f"0..2^63-1, default 0)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="decode steps replayed from a CUDA graph, CUDA only (default: on for --device cuda; "
                        "--no-cuda-graph steps eagerly, a kernel launch at a time from Python)")
    _add_ssm_state_dtype(p)
    p.add_argument("--fuse", default=None, metavar="NAMES",
                   help="only these fusions, comma-separated (add_norm, qkv, epilogue, step, norm_gemv, pdl, "
                        "recompute; default: all; not with --no-fuse)")
    p.add_argument("--no-fuse", action="store_true", help="switch every fusion off (not with --fuse)")


def _model(args):
    """The model run and bench time: a saved model directory loaded, or a spec compiled (--seed its weights),
    with --device, --dtype, --fuse / --no-fuse and --cuda-graph."""
    from .model import compile as build
    from .model import load as load_model
    from .model import resolve_dtype
    from .spec import saved_model

    fuse = _fuse(args)
    if args.dtype is not None and not args.dtype.strip():  # not the default: a saved model would keep its own
        raise ArchDSLError("--dtype: give a dtype (it is empty): float32, bfloat16, float16 or float64")
    dtype = None if args.dtype is None else _dtype(args.dtype)
    if _device(args.device).type == "meta":  # shapes without data: nothing to time, no tokens to decode
        raise ArchDSLError(f"--device {args.device}: run and bench compute on real tokens; the meta device holds "
                           f"no data (give cpu or cuda)")
    if args.cuda_graph is None:
        args.cuda_graph = str(args.device).startswith("cuda")
    if args.cuda_graph and not str(args.device).startswith("cuda"):
        raise ArchDSLError(f"--cuda-graph needs a CUDA device (--device cuda), got --device {args.device}")
    if saved_model(args.spec, args.command):
        if args.set:
            raise ArchDSLError(f"--set: {args.spec} is a saved model, whose weights fix its sizes; give its "
                               f"spec.yaml for fresh random weights at other sizes")
        model = load_model(args.spec, device=args.device, dtype=dtype, fuse=fuse,
                           ssm_state_dtype=args.ssm_state_dtype)
        model.cuda_graph = args.cuda_graph
        _warn_not_finite(model, args.spec)
        return model
    return build(_spec(args.spec, args.set), device=args.device, dtype=dtype or resolve_dtype("float32"),
                 seed=args.seed, cuda_graph=args.cuda_graph, fuse=fuse, ssm_state_dtype=args.ssm_state_dtype)


def _warn_not_finite(model, path: str) -> None:
    """A warning on stderr when the weights loaded from `path` hold NaN or inf: so would the outputs, shown as
    tokens (argmax of NaN logits is 0) with nothing else amiss."""
    import torch

    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]
    if bad:
        verb = "holds" if len(bad) == 1 else "hold"
        print(f"warning: {path}: {plural(len(bad), 'weight tensor')} {verb} NaN or inf (the first: {bad[0]}); so "
              f"will what the model computes", file=sys.stderr)


def _fuse(args):
    """--fuse NAMES / --no-fuse as compile(fuse=) takes it: True (the default), False, or a set of names."""
    from .errors import did_you_mean
    from .model import FUSIONS

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


@command("explore", "enumerate hybrid layouts under budgets: Pareto front, recall probes, plots")
def cmd_explore(args):
    """Enumerate the layouts of a design space, cost them exactly, keep those within the budgets,
    rank them on a Pareto front, optionally train the best on a recall probe (MQAR, ...), and write
    results.json, results.csv, every candidate's spec and plots into OUTDIR. See docs/explore.md."""
    from .explore.command import explore_command

    if args.device is not None:
        _device(args.device, auto=True)
    explore_command(args)


def _add_explore(p):
    from .explore.command import add_arguments

    add_arguments(p)


@command("train", "train a spec on 1..N processes (torchrun): FSDP2, DCP checkpoints, metrics")
def cmd_train(args):
    """Train SPEC (a spec file, layout string, or saved model directory) on DATA for --steps steps,
    alone or under `torchrun --nproc-per-node G archdsl train ...` (FSDP2 per layer). --batch is the
    global batch. Writes RUNDIR/run.json, metrics.jsonl and checkpoints/. See docs/training.md."""
    from .train import TrainConfig, train

    _device(args.device, auto=True)
    check_control(args.output, "-o")  # as -o, not as TrainConfig's rundir
    cfg = TrainConfig(spec=args.spec, settings=tuple(args.set), data=args.data, steps=args.steps, rundir=args.output,
                      batch=args.batch, micro_batch=args.micro_batch, seq_len=args.seq_len, lr=args.lr,
                      warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, bf16=args.bf16,
                      grad_ckpt=args.grad_ckpt, compile=args.compile, save_every=args.save_every, resume=args.resume,
                      stop_after=args.stop_after, seed=args.seed, device=args.device, peak_tflops=args.peak_tflops,
                      progress=not args.no_progress, cpu_threads=args.threads)
    out = train(cfg)
    if out.get("losses") and int(__import__("os").environ.get("RANK", 0)) == 0:
        last = max(out["losses"])
        print(f"{args.output}: step {last}, loss {out['losses'][last]:.4f}, {out['wall_s']:.1f} s "
              f"on {plural(out['world_size'], 'process', 'processes')}")


def _add_train(p):
    p.add_argument("spec", help="a YAML spec file, a layout string, or a saved model directory (its weights)")
    _add_set(p, saved=True)
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
    from .train import export_checkpoint

    skipped: list[str] = []
    _dtype(args.dtype)  # named as the option's, before the checkpoint is read
    check_control(args.output, "-o")  # as -o, not as export_checkpoint's out
    model, step = export_checkpoint(args.rundir, args.output, step=args.step, dtype=args.dtype, skipped=skipped)
    if skipped:
        print(f"warning: skipped {plural(len(skipped), 'damaged checkpoint')} (" + "; ".join(skipped)
              + f"); exported step {step}", file=sys.stderr)
    print(f"wrote {args.output}: {model.spec.name} at step {step}, {plural(model.num_params(), 'parameter')}")


def _add_export_checkpoint(p):
    p.add_argument("rundir", help="a directory written by archdsl train")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="directory to write: spec.yaml + model.safetensors (replaced atomically)")
    p.add_argument("--step", type=int, default=None, metavar="K",
                   help="the checkpoint at this step (default: the newest that loads)")
    p.add_argument("--dtype", default="float32", help="dtype of the saved weights: float32 (default), bfloat16, "
                                                      "float16 or float64")


ARGS = {"check": _add_check, "show": _add_show, "fmt": _add_check, "graph": _add_graph,
        "memory": _add_memory, "convert": _add_convert, "compile": _add_compile, "run": _add_run}
ARGS["bench"] = _add_bench
ARGS["explore"] = _add_explore
ARGS["export"] = _add_export
ARGS["train"] = _add_train
ARGS["export-checkpoint"] = _add_export_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archdsl", description=__doc__.split("\n\n")[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"archdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, help, doc) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=doc)
        ARGS.get(name, lambda p: None)(p)
        p.set_defaults(fn=fn)
    return parser


def _drop_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of what could not be written
    raises nothing more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (captured in tests)
        pass


# what each command can make smaller when the memory runs out (the options it has); the others get no hint
OOM_HINTS = {"run": "a smaller --batch or --prompt-len + --gen, or a smaller model (--set d_model=...)",
             "bench": "a smaller --batch or --seq-len, or a smaller model (--set d_model=...)",
             "compile": "a smaller model (--set d_model=..., --set vocab_size=...) or --dtype bfloat16",
             "convert": "--dtype bfloat16 (half the bytes of float32)",
             "export": "",
             "explore": "a smaller --batch-size, --probe-d-model or --probe-arg seq_len=...",
             "train": "a smaller --batch or sequence (--seq-len, or seq= in --data), --grad-ckpt, or --bf16",
             "export-checkpoint": "--dtype bfloat16 (half the bytes of float32)",
             "graph": "fewer layers, or a .dot file (text: no image to hold)"}


class _ClosedStdout(io.TextIOBase):
    """sys.stdout of a process started with it closed (`>&-`), where Python leaves None: a write fails as
    one to a bad descriptor does, and is said as an error, not an AttributeError's traceback."""

    def write(self, text):
        raise OSError(errno.EBADF, "standard output is closed")


def _saying(shown):
    """warnings.showwarning for the CLI: an ArchDSLWarning as `warning: ...`, others as `shown` shows them."""
    def say(message, category, *where):
        if issubclass(category, ArchDSLWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *where)
    return say


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill's default signal) raised as Ctrl-C's KeyboardInterrupt is: the stack unwinds, so that an
    atomic write cut short removes its temporary file or directory instead of leaving it half-written."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    shown = warnings.showwarning
    warnings.showwarning = _saying(shown)
    term = signal.getsignal(signal.SIGTERM)
    try:
        return _run(parser, argv)
    finally:
        warnings.showwarning = shown
        if signal.getsignal(signal.SIGTERM) is _terminate:
            signal.signal(signal.SIGTERM, term)


def _run(parser, argv) -> int:
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return 2
        # train leaves SIGTERM to torchrun's ways (its checkpoints clean up after a kill on their own)
        if args.command != "train" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            try:
                signal.signal(signal.SIGTERM, _terminate)
            except ValueError:  # not the main thread: signals are the main thread's alone
                pass
        args.fn(args)
        sys.stdout.flush()  # a failed write to stdout shows here, not as a traceback at exit
        return 0
    except ArchDSLError as e:  # an argument's non-UTF-8 byte (a lone surrogate) shown as its escape, on any stream
        print(f"error: {e}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
        return 2
    except RecursionError:  # input nested past the stack where no reader names its file (each that can does)
        print(f"error: input {TOO_DEEP}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        hint = OOM_HINTS.get(getattr(args, "command", None), "")
        print(f"error: out of memory: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
              + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        return 2
    except BrokenPipeError:
        _drop_stdout()
        return 0
    except OSError as e:  # the system refused (stdout on a full disk or /dev/full, say): said, not a traceback
        _drop_stdout()
        where = f" ({e.filename})" if e.filename else " (writing the output)" if e.errno == errno.ENOSPC else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, _Terminated) else "interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, _Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
