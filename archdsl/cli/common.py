"""What the commands share: their registry, the options several take, and the checks of those options'
values (each error names the option, before any work)."""
from __future__ import annotations

import os
import unicodedata

from ..errors import ArchDSLError
from ..units import plural

COMMANDS = {}  # name → (function, one-line help, description)
ARGS = {}  # name → the function that adds the command's arguments to its parser
NEGATIVE = r"-\.?\d"  # what argparse takes for a value though it starts with '-' (build_parser sets it)


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help, fn.__doc__ or help)
        return fn
    return register


def table(rows: list[list], header: list[str], names: int = 0) -> str:
    """Columns padded to their widths: numbers to the right, text and the first `names` columns to the left."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if c[:1].isdigit() and i >= names else c.ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def read_spec(text: str, settings: list[str] | None = None):
    """SPEC as load_spec reads it, with --set's model-level keys changed."""
    from ..spec import load_spec, with_settings

    for setting in settings or []:  # errors repeat the setting: a line break (a tab is one line) would split them
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and c != "\t" for c in setting):
            raise ArchDSLError(f"--set: must be one line without control characters, got {setting!r}")
    spec = load_spec(text)
    return with_settings(spec, settings) if settings else spec


def check_apart(output: str, source: str, what: str, command: str) -> None:
    """ArchDSLError when `source`, a path a command reads (its SPEC, DIR or INPUT: `what`), is -o `output` or lies
    inside it (a directory): writing -o replaces what is there, and the input with it (compile DIR -o DIR wrote
    random weights over the saved ones). Both are compared as the file system resolves them (links, `..`); a
    `source` that is no path (a layout string) is fine. `command` names who writes, in the message."""
    if not output or not os.path.exists(source):
        return
    out, src = os.path.realpath(output), os.path.realpath(source)
    if os.path.commonpath([out, src]) != out:
        return
    where = f"is {what} itself ({source})" if src == out else f"holds {what} ({source})"
    raise ArchDSLError(f"-o {output}: {where}; {command} would replace its own input with what it writes; give "
                       f"another -o")


def model_dtype(text: str):
    """--dtype of a model (compile, run, bench, convert --weights, export-checkpoint) as torch's dtype; else
    ArchDSLError naming the option and the dtypes a model computes in, before any work."""
    from ..analysis import ALIASES, MODEL_DTYPES
    from ..errors import did_you_mean
    from ..model import DTYPES, resolve_dtype

    key = str(text).replace("torch.", "").lower()
    if key not in DTYPES:
        hint = did_you_mean(key, DTYPES)
        aliases = ", ".join(a for a, c in ALIASES.items() if c in MODEL_DTYPES)
        raise ArchDSLError(f"--dtype: unknown dtype {text!r}; give {', '.join(MODEL_DTYPES[:-1])} or "
                           f"{MODEL_DTYPES[-1]} (or {aliases})", hint=hint if hint.startswith("did you") else "")
    return resolve_dtype(key)


def device_arg(text: str, auto: bool = False):
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


def cache_dtype_arg(text: str) -> None:
    """show's and memory's --dtype (float8 too: a cache may hold it), its error naming the option."""
    from ..analysis import dtype_bytes

    try:
        dtype_bytes(text)
    except ArchDSLError as e:
        raise ArchDSLError(f"--dtype: {e.message}", hint=e.hint) from None


def add_set(p, saved: bool = False):
    """--set; `saved`: the command refuses it on a saved model directory (its weights fix the sizes)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a model-level key of the spec for this command (repeatable): d_model, vocab_size, "
                        "name, tie_embeddings, norm, norm_eps, embed_norm, residual_fp32, ffn; e.g. --set "
                        "d_model=1024 --set vocab_size=32000" + ("; refused on a saved model directory, whose "
                                                                 "weights fix its sizes" if saved else ""))

def _ssm_state_dtype(text: str) -> str:
    """--ssm-state-dtype as given, checked when it is read (a type= for argparse): an error names the option,
    before any work."""
    from ..analysis import MODEL_DTYPES, dtype_name

    try:
        dtype_name(text, "ssm_state_dtype")
    except ArchDSLError as e:
        raise ArchDSLError(f"--ssm-state-dtype: must be {', '.join(MODEL_DTYPES[:-1])} or "
                           f"{MODEL_DTYPES[-1]}, got {text!r}", hint=e.hint) from None
    return text


def add_ssm_state_dtype(p):
    p.add_argument("--ssm-state-dtype", type=_ssm_state_dtype, default=None, metavar="DTYPE",
                   help="Mamba / Mamba-2 SSM states' dtype in the cache: float32, bfloat16, float16 or float64 "
                        "(default float32, float64 in a float64 model or cache; bfloat16 halves them)")


def add_tokenizer(p, default: str):
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="the tokenizer saved with the model: a directory holding its files (tokenizer.json, "
                        "tokenizer_config.json, generation_config.json, ...: a Hugging Face model directory or a "
                        f"save) or a tokenizer.json file; checked against the vocabulary (default: {default})")


def tokenizer_note(model, given: str | None) -> str:
    """The tail of a 'wrote' line: the tokenizer and generation files saved with the model, and where from."""
    if not model.companions:
        return ""
    return f", with {', '.join(sorted(model.companions))}" + (f" from {given}" if given is not None else "")


def add_spec(p):
    p.add_argument("spec", help="a YAML spec file, a saved model directory, or a layout string")
    add_set(p)
