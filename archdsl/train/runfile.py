"""RUNDIR/run.json: the spec and the settings a run was started with, written by the loop and read back by
`--resume` (whose settings must resolve as the run's did: check_settings) and `export_checkpoint` (the spec).

    {"spec_yaml": ..., "spec_sha256": ..., "spec_name": ..., "data": ..., "data_tokens": ... (a token file's count,
     else null), "data_digest": ... (TokenFile.digest, else null), "start_dtype": ... (the dtype of the saved model
     the run started from, else null), "config": TrainConfig.to_dict(), "world_size": ...}

Read, its shape is checked (read_run): JSON of the wrong shape is an ArchDSLError naming the file, not a
TypeError in a reader.
"""
from __future__ import annotations

import json
import math
import os
import re

from ..errors import ArchDSLError, shown, warn
from ..units import plural


# the settings that fix a run's data stream and its optimisation: a resumed run keeps them (--steps may change;
# so may --save-every, --keep-last, --stop-after, --device, --grad-ckpt, --compile, --threads, the number of processes)
FIXED = {"data": "--data", "batch": "--batch", "seq_len": "--seq-len", "lr": "--lr", "warmup": "--warmup",
         "weight_decay": "--weight-decay", "grad_clip": "--grad-clip", "bf16": "--bf16", "seed": "--seed",
         "betas": "betas", "min_lr_ratio": "min_lr_ratio"}


def check_settings(rundir: str, settings: dict, vocab_size: int | None = None, data=None, say: bool = True) -> int:
    """ArchDSLError naming every setting of FIXED that differs from those in RUNDIR/run.json, as each resolves rather
    than as it was written: DATA and the sequence length as the data source takes them (data.resolved: a token file
    however named and its default length, a task's arguments however spelt), the warmup as written or by its steps
    (those of this run's --steps against the run's warmup steps, which a resumed run keeps). A task's
    defaults depend on the spec's `vocab_size` (None: DATA compared by data_key, the length as given). Also an
    ArchDSLError when this run's --steps would end inside the run's warmup. Returns the warmup in steps the resumed
    run keeps: the run's, as it resolved when it started, whatever this run's --steps (a share of a changed --steps
    would re-enter the warmup after its peak, or end it early); this run's own where run.json holds no warmup.
    `data`: this run's data source (parse_data's); a token file (the same, by data_key) that holds another number of
    tokens than run.json says the run started with is refused too: the windows would be drawn from other tokens; a
    copy of it elsewhere (_copied) is the same DATA, with a warning where `say` (one process of several)."""
    from .config import warmup_steps
    from .data import data_key, resolved

    run = read_run(rundir)
    old, new = run.get("config", {}), settings
    warm = _warmup(old)

    def resolve(config: dict) -> tuple[str, int | None]:
        if vocab_size is not None:
            try:
                return resolved(config["data"], config.get("seq_len"), vocab_size)
            except ArchDSLError:  # an old run's task that no longer parses: compared as written
                pass
        return data_key(config["data"]), config.get("seq_len")

    # (the run's, this run's) as they resolve, where that differs from what was written
    res = dict(zip(("data", "seq_len"), zip(resolve(old), resolve(new)))) if "data" in old else {}

    moved = []  # the run's token file, where this run's is a copy of it elsewhere

    def same(key: str) -> bool:
        if key == "data" and key in res and res[key][0] != res[key][1] and _copied(run, res[key][0], data):
            moved.append(res[key][0])
            return True
        if key in res:
            return res[key][0] == res[key][1]
        if key == "warmup" and warm is not None:  # as written (it keeps the run's steps), or making those steps
            return old[key] == new[key] or warmup_steps(new[key], new["steps"]) == warm
        return old[key] == new[key]

    told = lambda v: ("unset" if v is None else repr(v) if isinstance(v, str)  # noqa: E731
                      else ("on" if v else "off") if isinstance(v, bool) else str(v))

    def said(key: str, mine: bool) -> str:
        """This run's (mine) or the run's value of `key` as the message tells it: DATA as written, the sequence
        length as it resolves (an unset one as the default it takes), the warmup with the steps it makes (this
        run's of its --steps, the run's of its first --steps)."""
        if key == "seq_len" and key in res:
            return told(res[key][1 if mine else 0])
        if key == "warmup" and warm is not None:
            return f"{told(new[key])}, {plural(warmup_steps(new[key], new['steps']), 'step')}" if mine \
                else f"{told(old[key])}, {plural(warm, 'step')}"
        return told(new[key] if mine else old.get(key))

    changed = [f"{flag} {said(key, True)} (the run's: {said(key, False)})" for key, flag in FIXED.items()
               if (key in old or key in res) and not same(key)]
    if changed:
        raise ArchDSLError(f"{rundir}: --resume with other settings than the run was started with: "
                           + "; ".join(changed),
                           hint="resume with the run's settings (its run.json, \"config\"), or start a new RUNDIR")
    if moved and say:
        warn(f"{rundir}: --data {data.path} is not the run's token file ({moved[0]}) but holds the same tokens (their "
             f"count and run.json's data_digest): the run goes on with it")
    was = _data_tokens(run)
    if was is not None and getattr(data, "tokens", None) is not None and len(data.tokens) != was:
        width = data.tokens.dtype.itemsize
        raise ArchDSLError(f"{rundir}: --resume with a token file that changed since the run started: --data "
                           f"{data.path} holds {len(data.tokens):,} {data.dtype} tokens ({len(data.tokens) * width:,} "
                           f"bytes), the run's held {was:,} ({was * width:,} bytes); the resumed run would draw its "
                           f"windows from other tokens",
                           hint="restore the token file the run was started with, or start a new RUNDIR")
    digest = run.get("data_digest")
    if digest is not None and getattr(data, "tokens", None) is not None and data.digest() != digest:
        raise ArchDSLError(f"{rundir}: --resume with a token file that changed since the run started: --data "
                           f"{data.path} holds as many tokens as the run's ({len(data.tokens):,}), but other ones "
                           f"(their digest differs from run.json's data_digest); the resumed run "
                           f"would draw its windows from other tokens",
                           hint="restore the token file the run was started with, or start a new RUNDIR")
    if warm is not None and warm > new["steps"]:  # as a new run's --warmup longer than --steps is refused
        raise ArchDSLError(f"{rundir}: --steps {new['steps']} ends inside the run's warmup of {plural(warm, 'step')} "
                           f"(--warmup {told(old['warmup'])} of its first --steps {old['steps']}), before the "
                           f"learning rate reaches --lr", hint=f"ask for at least {warm} --steps")
    return warmup_steps(new["warmup"], new["steps"]) if warm is None else warm


def _copied(run: dict, was: str, data) -> bool:
    """Whether this run's token file `data` is the run's, `was` (its data_key), moved or copied: the same dtype and
    eos, as many tokens as run.json's data_tokens and its data_digest (a copy on a node's own disk, a resume on
    another machine: the resolved paths differ)."""
    from .data import _parts

    if getattr(data, "tokens", None) is None or not run.get("data_digest"):
        return False
    _, dtype, eos = _parts(was)
    if (dtype or "uint16") != data.dtype or eos != (None if data.eos is None else str(data.eos)):
        return False
    return _data_tokens(run) == len(data.tokens) and run["data_digest"] == data.digest()


def _data_tokens(run: dict) -> int | None:
    """The number of tokens in the run's token file when it started: run.json's "data_tokens", or (a run.json
    written before it was kept) the count its "data" description gives ('PATH: 7,168 uint16 tokens, ...'); None
    for a task, or where neither says."""
    n = run.get("data_tokens")
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    found = re.search(r": ([\d,]+) uint(?:16|32) tokens, max \d+", run.get("data") or "") \
        if isinstance(run.get("data"), str) else None
    return int(found.group(1).replace(",", "")) if found else None


def _warmup(config: dict) -> int | None:
    """The warmup in steps that run.json's `config` resolved to when the run started (its --warmup of its first
    --steps); None where it holds neither."""
    from .config import warmup_steps

    return warmup_steps(config["warmup"], config["steps"]) if "warmup" in config and "steps" in config else None


def read_run(rundir: str) -> dict:
    """RUNDIR/run.json: an object holding the spec's YAML text ("spec_yaml") and the run's settings ("config", an
    object whose settings of FIXED have TrainConfig's types); ArchDSLError naming the file and what is wrong."""
    path = os.path.join(rundir, "run.json")
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ArchDSLError(f"{rundir}: not an archdsl train run directory (run.json: {e})") from None
    what = _run_damage(run)
    if what is not None:  # valid JSON of the wrong shape: a TypeError, KeyError or AttributeError in its readers
        raise ArchDSLError(f"{path}: {what}", hint="the run's run.json is damaged: restore it (archdsl train wrote "
                                                   "it), or train into another -o RUNDIR")
    return run


def _run_damage(run) -> str | None:
    """What is wrong with the shape of run.json's content `run` (None: nothing its readers need)."""
    from dataclasses import fields

    from .config import FIELDS, KINDS, TrainConfig

    if not isinstance(run, dict):
        return f"a JSON {json_kind(run)}, not an object"
    if "spec_yaml" not in run:
        return '"spec_yaml" is missing (the YAML text of the spec the run trains)'
    if not isinstance(run["spec_yaml"], str):
        return f'"spec_yaml" must be a str, got {shown(run["spec_yaml"])} ({json_kind(run["spec_yaml"])})'
    n = run.get("data_tokens")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return f'"data_tokens" must be a non-negative int or null, got {shown(n)} ({json_kind(n)})'
    digest = run.get("data_digest")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        return f'"data_digest" must be a sha256 in hex (64 digits) or null, got {shown(digest)}'
    start = run.get("start_dtype")
    if start is not None and start not in ("float32", "bfloat16", "float16", "float64"):
        return f'"start_dtype" must be float32, bfloat16, float16, float64 or null, got {shown(start)}'
    config = run.get("config", {})
    if not isinstance(config, dict):
        return f'"config" must be an object, got {shown(config)} ({json_kind(config)})'
    optional = {f.name for f in fields(TrainConfig) if f.default is None}
    for key in [*FIXED, "steps"]:  # those a resume compares (steps: a warmup's share of them)
        kind = "str" if FIELDS[key] == "path" else FIELDS[key]  # a path is a str in JSON
        ok, what, _ = KINDS[kind]
        value = config.get(key)
        if key in config and not (value is None and key in optional) and not ok(value):
            return f"config.{key} must be {what}{' or null' if key in optional else ''}, got {shown(value)} " \
                   f"({json_kind(value)})"
        if kind == "number" and value is not None and not math.isfinite(value):  # json reads Infinity and NaN
            return f"config.{key} must be a finite number, got {value}"
    return None


def json_kind(v) -> str:
    """A JSON value's kind as a message names it: null, not NoneType."""
    return "null" if v is None else type(v).__name__
