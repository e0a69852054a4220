"""The commands on a spec alone: check, show, fmt, graph, memory; convert (a spec from a Megatron pattern or a
Hugging Face config, a saved model from its weights) and export (a saved model to Hugging Face)."""
from __future__ import annotations

import json
import re
import sys
import unicodedata

from ..atomic import check_output, check_output_dir
from ..errors import ArchDSLError, Source
from ..spec import Spec
from ..units import count, count_text, human, parse_count, plural
from .common import (ARGS, NEGATIVE, add_set, add_spec, add_ssm_state_dtype, cache_dtype_arg, check_apart, command,
                     model_dtype, read_spec, table)


@command("check", "validate a spec file or layout string")
def cmd_check(args):
    """Parse and verify SPEC (a YAML file, a saved model directory or a layout string)."""
    spec = read_spec(args.spec, args.set)
    _ = spec.graph
    from ..graph import num_layers

    print(f"ok: {spec.name}: {plural(num_layers(spec.graph), 'layer')}")




@command("show", "per-layer table and totals: params, active params, FLOPs/token, cache bytes")
def cmd_show(args):
    """Print each layer (index, mixer, ffn, sharing group, params, FLOPs/token, cache bytes) and the totals."""
    from ..analysis import analyze, has_ssm_states, ssm_states_dtype

    cache_dtype_arg(args.dtype)
    spec = read_spec(args.spec, args.set)
    rep = analyze(spec, seq_len=args.seq_len, batch=args.batch, dtype=args.dtype, ssm_state_dtype=args.ssm_state_dtype)
    head = 0 if spec.tie_embeddings else spec.vocab_size * spec.d_model  # an untied LM head, in embedding_params
    if args.json:
        layers = [{"index": r.index, "mixer": r.mixer or None, "ffn": r.ffn or None, "inject": r.inject or None,
                   "shared": r.shared or None, "params": r.params, "active_params": r.active_params,
                   "flops_per_token": r.flops_per_token, "cache_bytes": r.cache_bytes} for r in rep.layers]
        print(json.dumps({"name": rep.name, "seq_len": rep.seq_len, "batch": rep.batch, "dtype": rep.dtype,
                          "ssm_state_dtype": rep.ssm_state_dtype, "layers": layers, "params": rep.params,
                          "active_params": rep.active_params, "embedding_params": rep.embedding_params,
                          "lm_head_params": head, "flops_per_token": rep.flops_per_token,
                          "cache_bytes": rep.cache_bytes}, indent=2))
        return
    rows = [[r.index, (r.inject + " → " if r.inject else "") + (r.mixer or "-"), r.ffn or "-", r.shared or "-",
             f"{r.params:,}", human(r.flops_per_token), human(r.cache_bytes, "B")] for r in rep.layers]
    print(table(rows, ["layer", "mixer", "ffn", "shared", "params", "FLOPs/tok", "cache"]))
    print()
    print(f"{rep.name}: {plural(len(rep.layers), 'layer')}")
    print(f"  params          {rep.params:>18,}  ({human(rep.params)})")
    print(f"  active params   {rep.active_params:>18,}  ({human(rep.active_params)})")
    if head:  # untied: the table and the LM head, each vocab_size × d_model
        print(f"  embedding       {rep.embedding_params - head:>18,}")
        print(f"  LM head         {head:>18,}  (untied)")
    else:
        print(f"  embedding       {rep.embedding_params:>18,}  (tied: the LM head too)")
    print(f"  FLOPs/token     {rep.flops_per_token:>18,}  ({human(rep.flops_per_token)}, at context {rep.seq_len:,})")
    states = f", SSM states {ssm_states_dtype(rep.dtype, rep.ssm_state_dtype)}" if has_ssm_states(spec) else ""
    print(f"  cache           {rep.cache_bytes:>18,}  ({human(rep.cache_bytes, 'B')} at batch {rep.batch:,}, "
          f"context {rep.seq_len:,}, {rep.dtype}{states})")


def _add_show(p):
    add_spec(p)
    p.add_argument("--seq-len", type=count("--seq-len"), default=2048, metavar="N",
                   help="context length for the FLOPs and the cache (default 2048; 8k, 1.5k, 1m: k, m are 1024, "
                        "1024²)")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences the cache holds (default 1)")
    p.add_argument("--dtype", default="bfloat16", help="cache dtype: bfloat16 (default), float16, float32, float64 "
                   "or float8 (an fp8 KV cache, an estimate); bf16, fp16, fp32 ok")
    add_ssm_state_dtype(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")




@command("fmt", "print the canonical text of the layout")
def cmd_fmt(args):
    """Print the layout in canonical form (sublayers in the order they run): fmt(fmt(x)) == fmt(x)."""
    from ..graph import canonical_text

    spec = read_spec(args.spec, args.set)
    _ = spec.graph  # what check refuses (an unknown block, an index out of range) is no layout to print
    print(canonical_text(spec))


@command("graph", "draw the layout (.svg, .png, .pdf, .dot, .mmd)")
def cmd_graph(args):
    """Draw the layers as a strip coloured by kind, sharing shown."""
    from ..draw import check_path, draw

    check_output(args.output)
    check_path(args.output)
    check_apart(args.output, args.spec, "SPEC", "graph")
    spec = read_spec(args.spec, args.set)
    draw(spec, args.output, every_layer=args.every_layer)
    print(f"wrote {args.output}")


def _add_graph(p):
    add_spec(p)
    p.add_argument("-o", "--output", required=True,
                   help="output file: .svg, .png, .pdf, .dot or .mmd (missing directories are created)")
    p.add_argument("--every-layer", action="store_true",
                   help="draw each layer (default: .dot and .mmd draw three or more alike blocks of layers in a row "
                        "once, × k; .svg, .png and .pdf wrap the layers in rows of up to 32 (a whole number of the "
                        "layout's periods) and draw three or more alike rows in a row once, × k)")


@command("memory", "inference cache bytes against context length")
def cmd_memory(args):
    """Cache bytes of one or several specs at each context length, as a table (or --json), and a plot with -o."""
    from ..analysis import analyze_lengths
    from ..draw import PLOT_FORMATS, check_path

    if args.output is not None:  # an empty one too: "-o: give a path", not a plot silently left out
        check_output(args.output)
        check_path(args.output, PLOT_FORMATS)
        for spec in args.specs:
            check_apart(args.output, spec, "SPEC", "memory")
    cache_dtype_arg(args.dtype)
    from ..analysis import dtype_name, has_ssm_states

    # by their canonical names, as show gives them: fp8 is float8, in the JSON and on the plot
    dtype = dtype_name(args.dtype)
    states = None if args.ssm_state_dtype is None else dtype_name(args.ssm_state_dtype, "ssm_state_dtype")
    specs = [read_spec(s, args.set) for s in args.specs]
    lens = _seq_lens(args.seq_lens)
    data = {label: [r.cache_bytes for r in analyze_lengths(s, lens, batch=args.batch, dtype=dtype,
                                                           ssm_state_dtype=states)]
            for label, s in zip(_labels(specs), specs)}
    if args.output:  # first: a plot that cannot be written is the error alone, no table printed before it
        from ..draw import plot_memory

        plot_memory(lens, data, args.output, batch=args.batch, dtype=dtype, ssm_state_dtype=states,
                    ssm_states=any(has_ssm_states(s) for s in specs))
    if args.json:
        print(json.dumps({"seq_lens": lens, "batch": args.batch, "dtype": dtype, "ssm_state_dtype": states,
                          "cache_bytes": data}, indent=2))
    else:
        rows = [[name] + [human(b, "B") for b in values] for name, values in data.items()]
        print(table(rows, ["spec"] + [count_text(n) for n in lens], names=1))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr if args.json else sys.stdout)


def _seq_lens(text: str) -> list[int]:
    """--seq-lens as lengths, in the order given; an empty entry (`1k,,2k`, a trailing comma) is refused, as
    explore's --objective refuses one: it is a length left out by mistake, not one to skip."""
    if not text.strip():
        raise ArchDSLError("--seq-lens: give at least one length, e.g. 1k,8k,64k")
    parts = text.split(",")
    if any(not x.strip() for x in parts):
        raise ArchDSLError(f"--seq-lens: an empty length in {text!r}; give lengths between the commas, e.g. "
                           f"1k,8k,64k")
    return [parse_count(x, "--seq-lens") for x in parts]


def _labels(specs: list) -> list[str]:
    """A distinct row name for each argument: the spec's name; a layout string goes by its layout text where it
    has no name of its own (`--set name=...`) or shares one, and what still repeats (a file given twice) gets
    #2, #3, ..."""
    names = [s.name for s in specs]
    labels = [s.layout_text if (names.count(s.name) > 1 or s.name == Spec.name) and s.source.file == Source.file
              else s.name for s in specs]  # (a file's, a saved model's or a published spec's keeps its name)
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
    add_set(p)
    p.add_argument("--seq-lens", default="1k,8k,64k,512k", metavar="N,N,...",
                   help="comma-separated context lengths (default 1k,8k,64k,512k; k, m are 1024, 1024²)")
    p.add_argument("--batch", type=count("--batch"), default=1, metavar="B",
                   help="sequences the cache holds (default 1)")
    p.add_argument("--dtype", default="bfloat16", help="cache dtype, as show's: bfloat16 (default), float16, "
                   "float32, float64 or float8")
    add_ssm_state_dtype(p)
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
        from ..convert.hf_io import from_hf
        from ..model.companions import companion_names
        from ..model.model import SAVE_FILES

        dtype = None if args.dtype is None else model_dtype(args.dtype)
        check_apart(args.output, args.input, "INPUT", "convert --weights")
        # before the weights are read; the model carries the HF directory's tokenizer and generation files (a
        # generation_config.json made of config.json's token ids where it has none)
        check_output_dir(args.output, SAVE_FILES,
                         optional=companion_names(args.input) | {"generation_config.json"})
        _, model = from_hf(args.input, weights=True, dtype=dtype, name=args.name)
        model.save(args.output)
        print(f"wrote {args.output} ({plural(model.num_params(), 'parameter')})", file=sys.stderr)
        return
    if args.source == "megatron":
        from ..convert.megatron import NOTE, pattern_to_spec
        from ..spec import spec_from_yaml
        from ..yamlio import dump_yaml

        text = NOTE + dump_yaml(pattern_to_spec(args.input, args.name or "megatron-hybrid"))
        spec_from_yaml(text, file="<converted>").graph  # refuse to write what would not load
    else:
        from ..convert.hf import convert_config

        text, _ = convert_config(args.input, args.name)  # checked to the graph: what would not load is refused
    if args.output:
        from ..atomic import write_atomic

        try:
            write_atomic(args.output, text, replace=False)
        except OSError as e:
            raise ArchDSLError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _add_convert(p):
    # a Megatron pattern starting with '-' (an MLP layer) is INPUT, not an option: no option has its characters;
    # all '-' from three on ('--' alone ends the options, as in every command line)
    p._negative_number_matcher = re.compile(NEGATIVE + r"|-[-M*E|/GD+]*[M*E|/GD+]|---+$")
    p.add_argument("--from", dest="source", required=True, choices=["megatron", "hf"],
                   help="what INPUT is: megatron, a Megatron-Core hybrid layer pattern (--hybrid-layer-pattern, "
                        "formerly --hybrid-override-pattern: M mamba2, * attn, - mlp, E moe, | a pipeline stage's "
                        "end; the MTP layers after / are left out), its layout with Megatron's hybrid defaults and "
                        "archdsl's sizes; hf, a Hugging Face config.json or model directory")
    p.add_argument("input", help="the Megatron pattern (e.g. 'M-M*-'; one starting with '-' too) or a config.json / "
                                 "model directory")
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
    from ..convert.hf_io import HF_FILES, export_hf, not_an_export
    from ..model.companions import companion_names

    check_apart(args.output, args.input, "DIR", "export")
    # before the model is loaded, with the tokenizer and generation files it carries
    check_output_dir(args.output, HF_FILES, optional=companion_names(args.input), ours=not_an_export)
    if args.model_type is not None:
        from ..convert.weights import FAMILIES
        from ..errors import did_you_mean

        if args.model_type not in FAMILIES:
            raise ArchDSLError(f"--model-type: archdsl exports no model_type {args.model_type!r}",
                               hint=did_you_mean(args.model_type, FAMILIES))
    export_hf(args.input, args.output, model_type=args.model_type)
    print(f"wrote {args.output}", file=sys.stderr)  # as given, as compile's and convert's lines say it


def _add_export(p):
    p.add_argument("input", metavar="DIR", help="a saved archdsl model directory (archdsl compile, convert --weights, "
                                                "export-checkpoint)")
    p.add_argument("--to", dest="target", required=True, choices=["hf"],
                   help="the format to write: hf, a Hugging Face model directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the directory to write (config.json + model.safetensors; an earlier export there is "
                        "replaced atomically; DIR itself, or one holding it, is refused)")
    p.add_argument("--model-type", default=None,
                   help="the HF model_type: mamba, falcon_mamba, mamba2, bamba, nemotron_h, llama, jamba, zamba2 or "
                        "rwkv; it must be the family the spec is (default: inferred from the spec)")


ARGS.update({"check": add_spec, "show": _add_show, "fmt": add_spec, "graph": _add_graph, "memory": _add_memory,
             "convert": _add_convert, "export": _add_export})
