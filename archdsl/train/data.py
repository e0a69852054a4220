"""DATA for `archdsl train`: a synthetic task from the explore probes or a flat binary token file.

    mqar:seq=256,pairs=16          (any archdsl.explore.probes task; short names: seq, pairs, vocab, tokens)
    data/train.bin                 (uint16 tokens, as nanoGPT's prepare.py writes them)
    data/train.bin:uint32          (uint32 tokens, for vocabularies over 65536)
    data/train.bin,eos=50256       (documents that end with token 50256, packed: seq_idx tells the model where
                                    each starts, and the token after an eos is not scored)

Every source draws the GLOBAL batch from one seeded CPU generator on every process; each process
keeps its rows (rank·B/W ... (rank+1)·B/W). The stream is therefore the same on any number of
processes, and its position is the generator's state (saved in checkpoints).
Files are checked (exists, size a multiple of the token width, long enough, every token below
the model's vocabulary) before any work starts.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ArchDSLError, did_you_mean, shown

IGNORE = -100  # labels not scored (F.cross_entropy's ignore_index)
SHORT = {"seq": "seq_len", "pairs": "num_kv_pairs", "vocab": "vocab_size", "tokens": "num_tokens_to_copy",
         "noise": "frac_noise"}
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
DEFAULT_SEQ_LEN = 1024


@dataclass
class TaskData:
    """A synthetic probe (archdsl.explore.probes.Task)."""
    task: object
    text: str

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def batch(self, n: int, gen: torch.Generator):
        """(inputs [n, L], labels [n, L], None) int64; labels -100 where nothing is scored; no packing."""
        return (*self.task.batch(n, gen, train=True), None)

    def describe(self) -> str:
        return f"{self.task.name} {self.task.to_dict()}"


@dataclass
class TokenFile:
    """A flat memmapped token file; windows of seq_len + 1 at uniformly drawn offsets (nanoGPT). With `eos`,
    the documents in a window are packed sequences: each token's seq_idx counts the eos tokens before it
    in its row, and the label of an eos input (the next document's first token) is not scored."""
    path: str
    dtype: str
    seq_len: int
    tokens: np.ndarray
    max_token: int
    text: str
    eos: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.max_token + 1

    def batch(self, n: int, gen: torch.Generator):
        L = self.seq_len
        starts = torch.randint(len(self.tokens) - L, (n,), generator=gen).tolist()
        rows = np.stack([np.asarray(self.tokens[s:s + L + 1], dtype=np.int64) for s in starts])
        t = torch.from_numpy(rows)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if self.eos is None:
            return x, y, None
        ends = x == self.eos
        seq = torch.cumsum(ends, 1) - ends.long()  # the eos closes its own document
        return x, y.masked_fill(ends, IGNORE), seq

    def digest(self) -> str:
        """sha256 of 64 evenly spaced runs of 4,096 tokens (of every token, in a file shorter than that): cheap at
        any size, and another for a file rewritten with other tokens of the same count (a retokenisation, another
        shard), which a resume must not draw its windows from."""
        import hashlib

        n, run, k = len(self.tokens), 4096, 64
        h = hashlib.sha256()
        starts = [0] if n <= run * k else [(n - run) * i // (k - 1) for i in range(k)]
        for s in starts:
            h.update(np.ascontiguousarray(self.tokens[s:s + (n if n <= run * k else run)]).tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        packed = f", documents packed at eos {self.eos}" if self.eos is not None else ""
        return f"{self.path}: {len(self.tokens):,} {self.dtype} tokens, max {self.max_token}{packed}"


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _task(text: str, seq_len: int | None, vocab_size: int):
    from ..explore.probes import ALIASES, TASKS, make_task

    name, _, rest = text.partition(":")
    kwargs, written = {}, {}  # field → value, and → the KEY=VALUE that gave it
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ArchDSLError(f"--data {text!r}: expected KEY=VALUE, got {item!r}")
        field = SHORT.get(key.strip(), key.strip())
        if field in written:  # pairs=4,pairs=8 or seq=32,seq_len=64: the last one was taken without a word
            raise ArchDSLError(f"--data {text!r}: {field} given twice ({written[field]}, {item})",
                               hint=f"give {field} once")
        kwargs[field], written[field] = _value(val.strip()), item
    if seq_len is not None:
        if "seq_len" in kwargs and kwargs["seq_len"] != seq_len:
            raise ArchDSLError(f"--data {text!r} has seq={kwargs['seq_len']} but --seq-len is {seq_len}")
        kwargs["seq_len"] = seq_len
    cls = TASKS[ALIASES.get(name, name)]
    fields = [f.name for f in dataclasses.fields(cls)]
    for field, item in written.items():  # named as given, with the short names beside the task's own
        if field not in fields:
            key = item.partition("=")[0].strip()
            raise ArchDSLError(f"--data {text!r}: unknown argument {key!r} of {name}",
                               hint=did_you_mean(key, [*(k for k, f in SHORT.items() if f in fields), *fields]))
    from_model = "vocab_size" not in kwargs  # the task's vocabulary is then the model's (up to the task's default)
    kwargs.setdefault("vocab_size", min(vocab_size, cls.vocab_size) if name != "mqar" else min(vocab_size, 8192))
    try:
        task = make_task(name, **kwargs)
    except ArchDSLError as e:
        said = (f" (the task's vocab_size {kwargs['vocab_size']} is the model's)"
                if from_model and kwargs["vocab_size"] == vocab_size and f"vocab_size {vocab_size}" in e.message
                else "")
        raise ArchDSLError(f"--data {text!r}: {e.message}{said}", hint=e.hint) from None
    if task.vocab_size > vocab_size:
        raise ArchDSLError(f"--data {text!r}: the task's vocabulary ({task.vocab_size}) exceeds the model's "
                           f"vocab_size ({vocab_size})", hint="give vocab=N in the task or a larger vocab_size")
    return TaskData(task, text)


def _parts(text: str) -> tuple[str, str | None, str | None]:
    """'PATH[:DTYPE][,eos=ID]' → (PATH, DTYPE or None, ID's text or None); a ':' not followed by a token dtype
    stays in PATH."""
    m = re.search(r",\s*eos\s*=(?!.*,\s*eos\s*=)", text)  # the last `,eos=`, spaces allowed: 't.bin, eos=5'
    has_eos = m is not None
    head, eos = (text[:m.start()], text[m.end():].strip()) if has_eos else (text, "")
    path = head if has_eos else text
    head, has_dtype, dtype = path.rpartition(":")
    if has_dtype and dtype in TOKEN_DTYPES:
        return head, dtype, eos if has_eos else None
    return path, None, eos if has_eos else None


def _check_options(text: str, path: str, eos: str | None) -> None:
    """ArchDSLError for options after a token file that are not `,eos=ID` once: `train.bin,foo=1` was 'no such data
    file: train.bin,foo=1' and `train.bin,eos=0,eos=1` 'no such data file: train.bin,eos=0', the file being there.
    The file is the text before the first comma whose head (less a :DTYPE) is an existing file; a file whose own
    name holds commas, given whole, is taken as it stands."""
    if os.path.isfile(path) and (eos is None or "," not in eos):
        return
    for i, c in enumerate(text):
        if c != ",":
            continue
        head = text[:i]
        base, has_dtype, dtype = head.rpartition(":")
        if not (os.path.isfile(head) or (has_dtype and dtype in TOKEN_DTYPES and os.path.isfile(base))):
            continue
        seen = {}
        for item in text[i + 1:].split(","):
            key, eq, _ = item.partition("=")
            key = key.strip()
            if not eq:
                raise ArchDSLError(f"--data {text!r}: expected an option KEY=VALUE after the token file {head}, got "
                                   f"{item!r}", hint="a token file takes PATH[:uint16|uint32][,eos=ID]")
            if key != "eos":
                raise ArchDSLError(f"--data {text!r}: unknown option {key!r} of the token file {head}",
                                   hint="a token file takes one option, eos=ID (PATH[:uint16|uint32][,eos=ID])")
            if key in seen:
                raise ArchDSLError(f"--data {text!r}: {key} given twice ({seen[key]}, {item})", hint=f"give {key} once")
            seen[key] = item
        return


def _file(text: str, seq_len: int | None, vocab_size: int) -> TokenFile:
    path, dtype, eos = _parts(text)
    _check_options(text, path, eos)
    eos = _eos(text, eos, vocab_size)
    given = dtype is not None
    if dtype is None:
        if vocab_size > 1 << 16 and os.path.isfile(path):  # uint16 cannot hold its ids: uint32 read as halves
            raise ArchDSLError(f"--data {text!r}: the model's vocabulary of {vocab_size:,} ids does not fit uint16 "
                               f"tokens, the default: say which the file holds",
                               hint=f"{path}:uint32 (Llama 3's, Qwen's ids), or {path}:uint16 for ids below 65,536")
        dtype = "uint16"
        _, sep, tail = path.rpartition(":")
        if sep and tail and not os.path.exists(path) and "/" not in tail and "." not in tail:
            raise ArchDSLError(f"--data {text!r}: unknown token dtype {tail!r}", hint=did_you_mean(tail, TOKEN_DTYPES))
    if os.path.isdir(path):
        raise ArchDSLError(f"--data: {path} is a directory; give a token file (or a task: mqar:..., selective_copying:...)")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ArchDSLError(f"--data: {path} is not a regular file (a device, FIFO or socket)")
    if not os.path.isfile(path):
        head = path.partition(",")[0]  # `train.bin,foo=1` names train.bin, not the whole text
        if head != path and not os.path.exists(head):
            raise ArchDSLError(f"--data {text!r}: no such data file: {head}",
                               hint="a token file takes PATH[:uint16|uint32][,eos=ID]")
        raise ArchDSLError(f"--data: no such data file: {path}")
    if _reads_as_text(path):
        raise ArchDSLError(f"--data {path}: reads as text, not as {dtype} token ids",
                           hint="tokenize it first: a token file holds the ids in binary, as numpy's tofile writes "
                                "them (nanoGPT's prepare.py)")
    width = np.dtype(TOKEN_DTYPES[dtype]).itemsize
    size = os.path.getsize(path)
    if size % width:
        raise ArchDSLError(f"--data {path}: {size:,} byte{'s' if size != 1 else ''} is not a whole number of "
                           f"{dtype} tokens ({width} bytes each): truncated or not a {dtype} token file")
    L = seq_len or DEFAULT_SEQ_LEN
    n = size // width
    if n < L + 1:  # one window is L inputs and their L labels: L + 1 tokens
        raise ArchDSLError(f"--data {path}: {n:,} token{'s' if n != 1 else ''}, fewer than one sequence of {L} + 1")
    tokens = np.memmap(path, dtype=TOKEN_DTYPES[dtype], mode="r")
    head = np.asarray(tokens[:1 << 16])
    if not given and len(head) >= 64 and not head[1::2].any() and head[0::2].any():
        raise ArchDSLError(f"--data {path}: every second uint16 token of the first {len(head):,} is 0, as in uint32 "
                           f"ids read two halves at a time", hint=f"give {path}:uint32 if it holds uint32 ids")
    top, scored = 0, eos is None
    for i in range(0, n, 1 << 26):  # chunked: a file of many GB is scanned without loading it
        part = tokens[i:i + (1 << 26)]
        top = max(top, int(part.max()))
        scored = scored or bool((part != eos).any())
    if not scored:
        raise ArchDSLError(f"--data {text}: every token is the eos token {eos}: no document to score")
    if top >= vocab_size:
        raise ArchDSLError(f"--data {path}: token {top} is outside the model's vocabulary ({vocab_size})",
                           hint="wrong dtype (uint16 vs uint32)?" if dtype == "uint32" or top > 65535
                           else "a larger vocab_size in the spec")
    return TokenFile(path, dtype, L, tokens, top, text, eos)


def _reads_as_text(path: str) -> bool:
    """Whether the file's first 64 KiB read as text: UTF-8 (a byte-order mark first, or not) of printable characters,
    whitespace and text's control characters (form feed, escape) with no NUL. Token ids do not: a small
    vocabulary's high bytes are 0 (NUL), a large one's make byte runs UTF-8 refuses."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not a character cut at the 64 KiB mark
            return False
        text = head[:e.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    odd = sum(not (c.isprintable() or c.isspace()) for c in text)  # text's own controls: a form feed, an escape
    return bool(text) and "\0" not in text and odd <= len(text) // 100


def _eos(text: str, eos: str | None, vocab_size: int) -> int | None:
    """DATA's eos option (its text, or None) as a token id, checked against the vocabulary."""
    if eos is None:
        return None
    if not (eos.isascii() and eos.isdigit()):
        raise ArchDSLError(f"--data {text!r}: eos= needs a token id, a non-negative integer, got {eos!r}")
    if int(eos) >= vocab_size:
        raise ArchDSLError(f"--data {text!r}: eos token {eos} is outside the model's vocabulary ({vocab_size})")
    return int(eos)


def data_key(text: str) -> str:
    """DATA text as a resumed run compares it: a token file's path resolved (the same file, however it was
    named: relative, absolute, through a link), its dtype spelt out (`:uint16` is the default's) and its eos id
    as a number (`eos=050256` is 50256); a task's text as it stands."""
    path, dtype, eos = _parts(text)
    if not os.path.isfile(path):
        return text
    if eos is not None and eos.isascii() and eos.isdigit():
        eos = str(int(eos))
    return (os.path.realpath(path) + (f":{dtype}" if dtype and dtype != "uint16" else "")
            + (f",eos={eos}" if eos is not None else ""))


def resolved(text: str, seq_len: int | None, vocab_size: int) -> tuple[str, int]:
    """(DATA as a resumed run compares it, the sequence length it gives) for DATA `text` with --seq-len `seq_len` and a
    spec of `vocab_size` tokens, as parse_data resolves them without reading a file: a token file by data_key and its
    length (None: 1024); a task by its name and every argument but the length, defaults spelt out, and its length (its
    seq=, or `seq_len`, or its default), so that `mqar:seq=32,pairs=4`, `mqar:pairs=4` with --seq-len 32 and
    `mqar:num_kv_pairs=4,seq_len=32` are one. ArchDSLError where a task's text does not parse."""
    if not _is_task(text):
        return data_key(text), seq_len or DEFAULT_SEQ_LEN
    task = _task(text, seq_len, vocab_size).task
    floats = {f.name for f in dataclasses.fields(task) if f.type in (float, "float")}
    # make_task keeps a float field written as an integer (power_a=1) an int: as a float, 1 and 1.0 are one argument
    # (their batches are the same)
    args = {k: float(v) if k in floats else v for k, v in task.to_dict().items() if k not in ("task", "seq_len")}
    return f"{task.name}:" + ",".join(f"{k}={v!r}" for k, v in sorted(args.items())), task.seq_len


def _is_task(text: str) -> bool:
    """Whether DATA `text` names a probe task (a file of that name is a file)."""
    from ..explore.probes import ALIASES, TASKS

    name = text.partition(":")[0]
    return ALIASES.get(name, name) in TASKS and not os.path.exists(text)


def parse_data(text: str, vocab_size: int, seq_len: int | None = None):
    """A data source for DATA text (a str or os.PathLike; see the module docstring) and a model of `vocab_size`
    tokens: a TaskData or a TokenFile, whose `batch(n, gen)` gives (inputs, labels, seq_idx or None). `seq_len`:
    a token file's length (None: 1024), a task's (None: its own seq). ArchDSLError for anything wrong."""
    from ..explore.probes import ALIASES, TASKS
    from .config import _integer

    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str):
        raise ArchDSLError(f"parse_data: text must be a str or os.PathLike, got {shown(text)} ({type(text).__name__})")
    if not (_integer(vocab_size) and vocab_size >= 1):
        raise ArchDSLError(f"parse_data: vocab_size must be a positive int, got {shown(vocab_size)} "
                           f"({type(vocab_size).__name__})")
    if seq_len is not None and not (_integer(seq_len) and seq_len >= 2):
        raise ArchDSLError(f"parse_data: seq_len must be an int of at least 2 or None, got {shown(seq_len)} "
                           f"({type(seq_len).__name__})")
    vocab_size, seq_len = int(vocab_size), None if seq_len is None else int(seq_len)
    name = text.partition(":")[0]
    if _is_task(text):
        return _task(text, seq_len, vocab_size)
    path = _parts(text)[0]
    looks_like_file = os.path.exists(text) or os.path.exists(path) or "/" in text or "." in name or os.sep in text
    if not looks_like_file:
        raise ArchDSLError(f"--data {text!r}: neither a probe task nor a token file",
                           hint=did_you_mean(name, list(TASKS) + list(ALIASES)) or
                           "tasks: " + ", ".join(TASKS) + "; files: PATH.bin[:uint16|uint32][,eos=ID]")
    return _file(text, seq_len, vocab_size)
