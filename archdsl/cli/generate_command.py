"""`archdsl generate MODEL PROMPT`: text in, text out, with a model's trained weights (a saved archdsl model or a
Hugging Face model directory) and its tokenizer.json, read by the `tokenizers` library."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata

from ..errors import ArchDSLError
from ..units import count, parse_seed, plural
from .common import ARGS, command, device_arg, model_dtype


@command("generate", "continue a text prompt with a saved model or a Hugging Face model directory (its tokenizer)")
def cmd_generate(args):
    """Tokenize PROMPT with the model's tokenizer.json (or --tokenizer's), generate up to --max-new-tokens tokens
    (greedy by default; --temperature, --top-k, --top-p or --min-p samples, --seed fixes the draws),
    stop at an end-of-text id (--eos; by default the model directory's generation_config.json or config.json
    eos_token_id), and print the prompt with its continuation. MODEL: a directory that `archdsl compile`,
    `convert --weights` or `export-checkpoint` wrote, or a Hugging Face model directory (config.json +
    safetensors) read as `convert --from hf --weights` reads it."""
    from ..model.decoding import check_sampling
    from ..spec import saved_model

    try:  # before anything is read: the sampling options, named as options
        check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.seed, args.top_p,
                       args.repetition_penalty, args.min_p, args.min_new_tokens)
    except ArchDSLError as e:
        option = re.sub(r"^generate: (\w+)", lambda m: "--" + m.group(1).replace("_", "-") + ":", e.message)
        raise ArchDSLError(option.replace("must be None or ", "must be ")) from None  # an option left out is None
    dtype = None if args.dtype is None else model_dtype(args.dtype)
    device = device_arg(args.device)
    if device.type == "meta":
        raise ArchDSLError(f"--device {args.device}: generate computes on real tokens; the meta device holds no data "
                           f"(give cpu or cuda)")
    if args.cuda_graph and device.type != "cuda":
        raise ArchDSLError(f"--cuda-graph needs a CUDA device (--device cuda), got --device {args.device}")
    hf = _is_hf_dir(args.model)
    if not hf and not saved_model(args.model, "generate", layout=False):
        raise ArchDSLError(f"MODEL: {args.model} is neither a saved model (spec.yaml + model.safetensors) nor a "
                           f"Hugging Face model directory (config.json + safetensors): text needs trained weights")
    tokenizer, tokenizer_file = _tokenizer(args.model if args.tokenizer is None else args.tokenizer,
                                           args.tokenizer is None)
    eos = _eos(args.eos, args.model)
    if args.min_new_tokens and not eos:
        raise ArchDSLError(f"--min-new-tokens {args.min_new_tokens} holds back the end-of-text ids, and there are none "
                           f"(" + ("--eos none" if args.eos is not None else "MODEL names no eos_token_id") +
                           "): give --eos IDS, or leave --min-new-tokens out")
    if any(unicodedata.category(c) == "Cs" for c in args.prompt):  # bytes that were not UTF-8 (Latin-1 text, say)
        raise ArchDSLError(f"PROMPT: not UTF-8 text: {args.prompt.encode('utf-8', 'surrogateescape')[:40]!r}")
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        raise ArchDSLError(f"PROMPT: the tokenizer makes no token of {args.prompt!r}: give some text")
    vocab = _spec(args.model, hf).vocab_size  # the ids checked before the weights are read
    if max(ids) >= vocab:
        raise ArchDSLError(f"PROMPT: the tokenizer gives id {max(ids)}, past the model's vocabulary of {vocab:,}: a "
                           f"tokenizer of another model?")
    if eos and max(eos) >= vocab:
        raise ArchDSLError(f"--eos: id {max(eos)} is past the model's vocabulary of {vocab:,}" +
                           ("" if args.eos is not None else " (read from MODEL's generation_config.json or "
                                                            "config.json; --eos none for no end-of-text id)"))
    known = tokenizer.get_vocab_size()  # its added tokens too
    if known < vocab - vocab // 64:  # a model's vocabulary padded a little past its tokenizer's (Qwen2's 151,936 for
        # 151,665 ids, Pythia's 50,304 for 50,277) is common, and a trained model never emits those ids
        print(f"warning: {tokenizer_file}: the tokenizer has {known:,} ids, the model's vocabulary {vocab:,} (a "
              f"tokenizer of another model?): a generated id the tokenizer lacks has no text", file=sys.stderr)
    import torch

    from ..model import warn_not_finite

    model = _load(args.model, hf, device, dtype)
    warn_not_finite(model, args.model)
    model.cuda_graph = args.cuda_graph  # None: a CUDA graph on a card, eager steps where it does not capture
    prompt = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                         top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                         eos_token_id=eos, min_new_tokens=args.min_new_tokens)
    new = out[0, len(ids):].tolist()
    stopped = bool(eos) and bool(new) and new[-1] in eos
    undecoded = sorted({i for i in new if tokenizer.id_to_token(i) is None})  # decode() leaves them out silently
    if args.json:
        print(json.dumps({"model": model.spec.name, "prompt": args.prompt, "prompt_ids": ids, "new_ids": new,
                          "continuation": tokenizer.decode(new), "text": tokenizer.decode(ids + new),
                          "eos": eos, "stopped_at_eos": stopped, "undecoded_ids": undecoded}, indent=2))
        return
    print(tokenizer.decode(ids + new))
    if undecoded:
        shown = ", ".join(map(str, undecoded[:10])) + (", ..." if len(undecoded) > 10 else "")
        print(f"warning: {plural(len(undecoded), 'generated id')} the tokenizer lacks, left out of the text: {shown}",
              file=sys.stderr)


def _is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory: config.json and no spec.yaml (an archdsl save has spec.yaml)."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))
            and not os.path.exists(os.path.join(path, "spec.yaml")))


def _spec(path: str, hf: bool):
    """MODEL's spec, from its config.json or spec.yaml alone."""
    if hf:
        from ..convert.hf import from_hf

        return from_hf(path)
    from ..spec import load_spec

    return load_spec(os.path.join(path, "spec.yaml"))  # a directory (named `mamba2`, say), never a layout


def _load(path: str, hf: bool, device, dtype):
    """The model with MODEL's weights (an HF directory, or a saved model), on `device`, in `dtype` (None: as
    saved)."""
    if hf:
        from ..convert.hf_io import from_hf

        return from_hf(path, weights=True, device=device, dtype=dtype)[1]
    from ..model import load

    return load(path, device=device, dtype=dtype)


def _tokenizer(path: str, beside_model: bool):
    """(the tokenizers.Tokenizer, its file) of a tokenizer.json file, or of the one in directory `path`."""
    where = "MODEL" if beside_model else "--tokenizer"
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ArchDSLError(f"{where}: no tokenizer.json in {path}" + (" (give --tokenizer DIR or FILE)" if beside_model
                                                                      else ""))
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ArchDSLError("generate reads tokenizer.json with the tokenizers library, which is not installed: "
                           "pip install tokenizers") from None
    try:
        return Tokenizer.from_file(file), file
    except Exception as e:  # the library's own error type (a Rust panic's message) for a file it cannot read
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArchDSLError(f"{where}: {file} is not a tokenizer.json the tokenizers library reads ({first})") from None


def _eos(text: str | None, model: str) -> list[int] | None:
    """--eos as ids: "none", a comma-separated list, or (not given) the model directory's eos_token_id, from
    generation_config.json, else config.json; None where there is none."""
    if text is not None:
        if text.strip().lower() == "none":
            return None
        try:
            ids = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ArchDSLError(f"--eos: expected token ids separated by commas, or none, got {text!r}") from None
        if not ids or min(ids) < 0:
            raise ArchDSLError(f"--eos: expected token ids >= 0 separated by commas, or none, got {text!r}")
        return ids
    from ..yamlio import read_text

    for name in ("generation_config.json", "config.json"):
        file = os.path.join(model, name)
        if not os.path.isfile(file):
            continue
        try:
            value = json.loads(read_text(file)).get("eos_token_id")
        except (ValueError, AttributeError):  # not JSON, or not an object: no eos read from it
            continue
        values = [value] if isinstance(value, int) else value if isinstance(value, list) else []
        ids = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
        if ids:
            return ids
    return None


def _add_generate(p):
    p.add_argument("model", metavar="MODEL",
                   help="a saved archdsl model directory, or a Hugging Face model directory (config.json + "
                        "safetensors)")
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="a tokenizer.json file or a directory holding one (default: MODEL's)")
    p.add_argument("--max-new-tokens", type=count("--max-new-tokens", minimum=0), default=64, metavar="N",
                   help="tokens to generate at most (default 64)")
    p.add_argument("--min-new-tokens", type=count("--min-new-tokens", minimum=0), default=None, metavar="N",
                   help="no end-of-text id before N new tokens (needs an eos id)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="0: greedy; above 0: sampling from softmax(logits / T) (default: greedy, or 1 with --top-k, "
                        "--top-p or --min-p)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sample from the K likeliest tokens only (0: no cut, as transformers')")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample from the likeliest tokens whose probability reaches P (nucleus)")
    p.add_argument("--min-p", type=float, default=None, metavar="P",
                   help="sample from the tokens at least P times as likely as the likeliest (min-p; 0: no cut)")
    p.add_argument("--repetition-penalty", type=float, default=None, metavar="THETA",
                   help="divide (multiply, where negative) the logits of tokens already in the text by THETA (1: off)")
    p.add_argument("--seed", type=parse_seed, default=None, metavar="S",
                   help="seed of the draws when sampling (0..2^63-1)")
    p.add_argument("--eos", default=None, metavar="IDS",
                   help="end-of-text token ids, comma-separated, or none (default: MODEL's generation_config.json "
                        "or config.json eos_token_id)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or float64 (default: as saved)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="decode steps replayed from a CUDA graph, CUDA only (default: on for --device cuda from 8 "
                        "new tokens, eager with a warning where a step cannot be captured)")
    p.add_argument("--json", action="store_true", help="print one JSON object: ids, continuation, text")


ARGS.update({"generate": _add_generate})
