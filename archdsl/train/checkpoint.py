"""Sharded checkpoints with torch.distributed.checkpoint (DCP), and export to an archdsl save.

    RUNDIR/run.json                       the spec (YAML text and its sha256), data, settings (runfile.py)
    RUNDIR/metrics.jsonl                  one JSON object per step
    RUNDIR/checkpoints/step_00000100/     a DCP checkpoint: model + optimizer (each rank its shards),
                                          step and the data generator's state, + meta.json (with the
                                          sha256 of every entry's bytes, which DCP does not keep)

DCP stores each tensor with its global shape, so a checkpoint written by W processes loads on any
other number (FSDP2's DTensor shards are re-cut on load), and on none: `export_checkpoint` loads it
into a plain CPU model and writes spec.yaml + model.safetensors (ArchModel.save).
A checkpoint directory is written under a temporary name and renamed when every rank is done.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil

import torch
import torch.distributed as tdist

from ..errors import ArchDSLError, shown
from .runfile import json_kind, read_run

try:
    from torch.distributed.checkpoint.api import CheckpointException
except ImportError:  # pragma: no cover - older torch
    CheckpointException = RuntimeError

CKPT_DIR = "checkpoints"
HF_DIR = "hf"  # the tokenizer and generation files of the saved model a run started from (COMPANIONS)
STEP_RE = re.compile(r"^step_([0-9]{8,})$")  # step_{:08d}: past 10^8 steps, more digits


def _cause(e: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (rank → (exception, traceback)), else `e`."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))
        e = e[0] if isinstance(e, tuple) else e
    return e


def _reason(e: BaseException) -> str:
    e = _cause(e)
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def spec_sha(spec_yaml: str) -> str:
    return hashlib.sha256(spec_yaml.encode("utf-8")).hexdigest()


def checkpoints(rundir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in rundir, oldest first."""
    root = os.path.join(rundir, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = STEP_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, "meta.json")):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def read_meta(path: str) -> dict:
    try:
        return _meta(path)
    except (OSError, ValueError, KeyError, RecursionError) as e:
        raise ArchDSLError(f"{path}: not a readable archdsl checkpoint ({type(e).__name__}: {e})") from None


def _meta(path: str) -> dict:
    """meta.json of the checkpoint at `path`: an object with spec_sha256 a str and step an int (KeyError, ValueError:
    the checkpoint is damaged)."""
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise ValueError(f"a JSON {json_kind(meta)}, not an object")
    for key, ok, what in (("spec_sha256", lambda v: isinstance(v, str), "a str"),
                          ("step", lambda v: isinstance(v, int) and not isinstance(v, bool), "an int")):
        if not ok(meta[key]):  # garbled into valid JSON: check_spec and the resume would fail on it as a TypeError
            raise ValueError(f"{key} must be {what}, got {shown(meta[key])} ({json_kind(meta[key])})")
    return meta


def damage(path: str, prefix: str = "") -> str | None:
    """What keeps the checkpoint at `path` from loading, or would load garbled values ('FILE: what'): meta.json
    or DCP's .metadata that does not read, a data file that .metadata names missing or shorter than the entries it
    places there (a copy or a write cut short); with `prefix`, only the entries whose names start with it count
    ("model.": what an export reads); then the sha256 of each such entry's bytes against meta.json's, where the
    save wrote them (a checkpoint from before it did is not checked so). None when they are whole."""
    from torch.distributed.checkpoint import FileSystemReader

    meta_file = os.path.join(path, "meta.json")
    try:
        digests = _meta(path).get("sha256")
    except (OSError, ValueError, KeyError) as e:
        return f"{meta_file}: does not read ({type(e).__name__}: {e})"
    except RecursionError:
        return f"{meta_file}: does not read (nested too deeply)"
    if digests is not None and not (isinstance(digests, dict)
                                    and all(isinstance(v, str) for v in digests.values())):
        return f"{meta_file}: its sha256 map is garbled (a {type(digests).__name__})"
    try:
        metadata = FileSystemReader(path).read_metadata()
    except Exception as e:  # noqa: BLE001 - a pickle cut short or garbled raises any kind
        return f"{os.path.join(path, '.metadata')}: does not read ({_reason(e)})"
    entries = [(index.fqn, info) for index, info in (getattr(metadata, "storage_data", None) or {}).items()
               if getattr(index, "fqn", "").startswith(prefix)]
    need: dict[str, int] = {}  # data file → the bytes its entries span
    for _, info in entries:
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{file}: missing"
        if os.path.getsize(file) < size:
            return f"{file}: truncated ({os.path.getsize(file):,} of {size:,} bytes)"
    if digests is not None:
        for fqn, info in sorted(entries, key=lambda e: (e[1].relative_path, e[1].offset)):
            where = f"{os.path.join(path, info.relative_path)}: the bytes of {fqn} (offset {info.offset:,}, " \
                    f"{info.length:,} bytes)"
            key = _entry_key(info)
            if key not in digests:  # .metadata garbled into other offsets that still read
                return f"{where} are not an entry the save wrote"
            if _entry_sha(path, info) != digests[key]:
                return f"{where} are not those written (sha256 differs)"
    return None


def _entry_key(info) -> str:
    """An entry of DCP's storage (its file, offset and length) as meta.json's sha256 map names it."""
    return f"{info.relative_path}:{info.offset}:{info.length}"


def _entry_sha(path: str, info) -> str:
    """sha256 (hex) of an entry's bytes in the checkpoint at `path`."""
    h = hashlib.sha256()
    with open(os.path.join(path, info.relative_path), "rb") as f:
        f.seek(info.offset)
        left = info.length
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _digests(path: str, rank: int, world: int) -> dict[str, str]:
    """The sha256 of the entries of the checkpoint just written at `path`, every `world`-th one from `rank` (each
    rank hashes its share and writes it beside them; rank 0 gathers the files)."""
    from torch.distributed.checkpoint import FileSystemReader

    infos = sorted(FileSystemReader(path).read_metadata().storage_data.values(),
                   key=lambda i: (i.relative_path, i.offset))
    return {_entry_key(i): _entry_sha(path, i) for i in infos[rank::world]}


def resume_point(rundir: str, damaged: list[str], older_than: int | None = None,
                 doing: str = "resume", prefix: str = "") -> tuple[int, str, dict]:
    """The newest checkpoint of `rundir` (before step `older_than`) whose files look whole (those of its entries
    named `prefix`...: `damage`), with its meta; each damaged one passed over is added to `damaged` ('FILE:
    what'). ArchDSLError naming them all when none is left ('cannot {doing}')."""
    found = [c for c in checkpoints(rundir) if older_than is None or c[0] < older_than]
    if not found and not damaged:
        latest(rundir)  # no checkpoint at all: its error
    for s, path in reversed(found):
        what = damage(path, prefix)
        if what is None:
            return s, path, read_meta(path)
        damaged.append(what)
    raise ArchDSLError(f"{rundir}: cannot {doing}, every checkpoint is damaged: " + "; ".join(damaged),
                       hint="train again into another -o RUNDIR")


def latest(rundir: str, step: int | None = None) -> tuple[int, str, dict]:
    """The newest checkpoint (or the one at `step`) with its meta; ArchDSLError when there is none."""
    found = present = checkpoints(rundir)
    if step is not None:
        found = [c for c in found if c[0] == step]
    if not found and step is not None and present:  # the steps there: no look into the directory needed
        steps = [str(c[0]) for c in present]
        shown_steps = ", ".join(steps if len(steps) <= 12 else steps[:3] + ["…"] + steps[-8:])
        raise ArchDSLError(f"{rundir}: no checkpoint at step {step}; its checkpoints are at "
                           f"step{'s' if len(steps) > 1 else ''} {shown_steps}",
                           hint="give one of those to --step, or leave it out for the newest that loads")
    if not found:
        what = f"at step {step}" if step is not None else "at all"
        raise ArchDSLError(f"{rundir}: no checkpoint {what} (expected {CKPT_DIR}/step_NNNNNNNN/ from archdsl train)")
    s, path = found[-1]
    return s, path, read_meta(path)


def check_spec(meta: dict, spec_yaml: str, path: str, rundir: str | None = None,
               settings: tuple[str, ...] | list[str] | None = None, what: str = "the checkpoint") -> None:
    """ArchDSLError unless the checkpoint at `path` (its `meta`; `what` it is, as the message says) is of the spec
    `spec_yaml`. With `rundir` and this run's --set `settings`, the message names the run's --set where they differ
    (a resume that left one out)."""
    if meta["spec_sha256"] != spec_sha(spec_yaml):
        old = meta.get("spec_name", "?")
        why = ""
        if rundir is not None:
            try:
                was = read_run(rundir).get("config", {}).get("settings") or []
            except ArchDSLError:
                was = None
            now = list(settings or [])
            if isinstance(was, list) and was != now:
                said = lambda s: " ".join(f"--set {x}" for x in s) if s else "no --set"  # noqa: E731
                why = f"; the run was started with {said(was)}, this run has {said(now)}"
        raise ArchDSLError(f"{path}: {what} is of another spec ({old!r}, sha256 "
                           f"{meta['spec_sha256'][:12]}…) than this run's (sha256 {spec_sha(spec_yaml)[:12]}…){why}",
                           hint="resume with the spec and the --set the run was started with (its run.json: "
                                "\"config\"), or start a new RUNDIR")


def _state(model, opt, step: int, gen: torch.Generator):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd,
            "extra": {"step": torch.tensor(step, dtype=torch.int64), "data_rng": gen.get_state()}}


def save_checkpoint(rundir: str, step: int, model, opt, gen: torch.Generator, meta: dict, rank: int) -> str:
    """Every rank calls this, in the process group (parallel.init_distributed); returns the checkpoint's path,
    RUNDIR/checkpoints/step_NNNNNNNN, written under a temporary name and renamed when complete."""
    import torch.distributed.checkpoint as dcp

    root = os.path.join(rundir, CKPT_DIR)
    final = os.path.join(root, f"step_{step:08d}")
    tmp = os.path.join(root, f".tmp_step_{step:08d}")
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        tdist.barrier()
        dcp.save(_state(model, opt, step, gen), checkpoint_id=tmp)
        tdist.barrier()
        world = tdist.get_world_size()
        with open(os.path.join(tmp, f".sha256.{rank}.json"), "w", encoding="utf-8") as f:  # this rank's share
            json.dump(_digests(tmp, rank, world), f)
        tdist.barrier()
        if rank == 0:
            digests = {}
            for r in range(world):  # gathered through the files, as the checkpoint is: no collective of objects
                share = os.path.join(tmp, f".sha256.{r}.json")
                with open(share, encoding="utf-8") as f:
                    digests.update(json.load(f))
                os.remove(share)
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump({**meta, "step": step, "sha256": digests}, f, indent=2)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        tdist.barrier()
    except BaseException as e:  # Ctrl-C (or a failure) mid-save: no half-written checkpoint stays behind
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        # DCP's CheckpointException is a BaseException wrapping each rank's own: Ctrl-C stays a KeyboardInterrupt,
        # any other failure of the save (a full disk: OSError, or torch.save's zip writer's RuntimeError "unexpected
        # pos") is said naming the checkpoint, not as DCP's traceback
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(_cause(e), KeyboardInterrupt):  # SIGTERM's subclass too
            raise _cause(e) from None
        if isinstance(e, (OSError, CheckpointException)):
            raise ArchDSLError(f"{final}: cannot write the checkpoint ({_save_reason(e)})",
                               hint=retry_hint(rundir)) from None
        raise
    return final


def retry_hint(rundir: str) -> str:
    """What to do after a write into RUNDIR failed (a full disk): --resume where a complete checkpoint is there to
    continue from; else --resume starts the run again from step 0 (a plain rerun is refused while its run.json and
    metrics.jsonl are there: prepare)."""
    found = checkpoints(rundir)
    if found:
        return (f"a full disk? make room, then run again with --resume (it continues from step {found[-1][0]}, the "
                f"last complete checkpoint)")
    return ("a full disk? make room, then run again with --resume (no checkpoint was written: it starts the run "
            "again from step 0)")


def _save_reason(e: BaseException) -> str:
    """Why a save failed, for its message: an OSError's own words (No space left on device), else the exception."""
    cause = _cause(e)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    why = _reason(cause)
    return why + ": a short write, as on a full disk" if "unexpected pos" in why else why


def prune_checkpoints(rundir: str, keep: int) -> list[int]:
    """Remove all but the `keep` newest complete checkpoints of rundir (rank 0, after a save is complete): each is
    first renamed to a temporary name, which remove_partial clears should the removal be cut short, so a checkpoint
    is whole or gone. Returns the steps removed."""
    removed = []
    for step, path in checkpoints(rundir)[:-keep]:
        gone = os.path.join(os.path.dirname(path), f".tmp_step_{step:08d}")
        os.replace(path, gone)
        shutil.rmtree(gone, ignore_errors=True)
        removed.append(step)
    return removed


def remove_partial(rundir: str) -> None:
    """Remove the temporary checkpoint directories of saves cut short by a signal that left no time to clean up
    (SIGTERM, SIGKILL). Rank 0, before the first step: no save of this run is under way."""
    root = os.path.join(rundir, CKPT_DIR)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".tmp_step_"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_checkpoint(path: str, model, opt, gen: torch.Generator) -> int:
    """Load model + optimizer + data generator state in place (any world size); returns the step."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, opt, 0, gen)
    groups = copy.deepcopy(state["optim"]["param_groups"])  # this run's: its settings are the checkpoint's (check_settings)
    try:
        dcp.load(state, checkpoint_id=path)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException  # noqa: BLE001 - a damaged checkpoint: name it rather than show DCP's internals
        raise ArchDSLError(f"{path}: cannot load the checkpoint ({_reason(e)})",
                           hint="a file of it is missing or damaged; resume from an earlier one") from None
    # the parameters' moments are keyed by name; the groups are taken as this run makes them, so that a checkpoint
    # grouped by an earlier rule (weight decay on every matrix) loads into today's groups
    state["optim"]["param_groups"] = groups
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    gen.set_state(state["extra"]["data_rng"])
    return int(state["extra"]["step"])


def export_checkpoint(rundir: str, out: str, step: int | None = None, dtype: str | None = None,
                      skipped: list[str] | None = None, tokenizer: str | None = None):
    """A run's checkpoint (newest, or at `step`) → an ordinary archdsl save in `out`; returns (model, step).

    Without `step`, a damaged checkpoint (files cut short or missing, or a load that fails) is passed over for the
    newest earlier one that loads, as `train --resume` does; each one passed over is added to `skipped` ('FILE:
    what'). With `step`, that checkpoint or an ArchDSLError. `dtype` of the saved weights: float32, bfloat16, float16,
    float64 (or an alias: bf16, fp16, ...; or a torch.dtype); None (the default): the dtype of the saved model the
    run started from (a bfloat16 checkpoint fine-tuned stays bfloat16), else float32 (the run's master weights').
    The tokenizer and generation files of the saved model the run started from (RUNDIR/hf) go with the weights;
    `tokenizer` (a directory holding them, or a tokenizer.json file; see tokenizer_companions) gives others in their
    place, as for a run started from random weights. `out` is written as `ArchModel.save` writes (whole or not at
    all); a directory holding anything else is refused."""
    import numbers

    from ..atomic import check_control, check_output_dir
    from ..errors import check_path
    from ..model import compile as build
    from ..model import resolve_dtype
    from ..model.companions import companion_names, read_companions, tokenizer_companions
    from ..model.model import SAVE_FILES
    from ..spec import spec_from_yaml

    rundir = check_path("export_checkpoint: rundir", rundir, "run directory")
    if out != "":  # an empty one is check_output_dir's to refuse, as -o's
        out = check_path("export_checkpoint: out", out, "directory to write")
        check_control(out, "export_checkpoint: out")
    if step is not None and (not isinstance(step, numbers.Integral) or isinstance(step, bool)):
        raise ArchDSLError(f"export_checkpoint: step must be an int or None (the newest that loads), got {shown(step)} "
                           f"({type(step).__name__})")
    step = None if step is None else int(step)
    try:  # an unknown dtype told before the checkpoint is read
        if dtype is not None:
            resolve_dtype(dtype)
    except ArchDSLError as e:
        raise ArchDSLError(f"export_checkpoint: dtype: {e.message}", hint=e.hint) from None
    if skipped is not None and not isinstance(skipped, list):
        raise ArchDSLError(f"export_checkpoint: skipped must be a list (the damaged checkpoints passed over are "
                           f"added to it) or None, got {type(skipped).__name__}")
    if tokenizer is None:  # before anything is read: where the save goes is the user's to fix first
        check_output_dir(out, SAVE_FILES, optional=companion_names(os.path.join(rundir, HF_DIR)))
        run = read_run(rundir)
        companions = None
    else:  # the tokenizer checked against the run's vocabulary, then where the save goes
        tokenizer = check_path("export_checkpoint: tokenizer", tokenizer, "tokenizer's path")
        run = read_run(rundir)
        vocab = spec_from_yaml(run["spec_yaml"], file=os.path.join(rundir, "run.json")).vocab_size
        companions = tokenizer_companions(tokenizer, vocab, "export_checkpoint: tokenizer")
        check_output_dir(out, SAVE_FILES, optional=frozenset(companions))
    damaged = [] if skipped is None else skipped
    if step is None:
        s, path, meta = resume_point(rundir, damaged, doing="export", prefix="model.")
    else:
        s, path, meta = latest(rundir, step)
        what = damage(path, "model.")
        if what is not None:  # said as the steps without --step say it, not as the load's bare exception
            raise ArchDSLError(f"{rundir}: cannot export step {s}, its checkpoint is damaged: {what}",
                               hint="leave out --step to export the newest checkpoint that loads")
    spec = spec_from_yaml(run["spec_yaml"], file=os.path.join(rundir, "run.json"))
    while True:
        check_spec(meta, run["spec_yaml"], path)
        model = build(spec, device="cpu", dtype="float32", seed=0)
        try:
            _load_model(path, model)
            break
        except ArchDSLError as e:
            if step is not None:
                raise
            damaged.append(e.message)
            s, path, meta = resume_point(rundir, damaged, older_than=s, doing="export", prefix="model.")
    dtype = resolve_dtype(dtype if dtype is not None else run.get("start_dtype") or "float32")
    if dtype != model.dtype:
        model = model.to(dtype)
    model.companions = read_companions(os.path.join(rundir, HF_DIR)) if companions is None else companions
    model.save(out)
    return model, s


def _load_model(path: str, model) -> None:
    """The model weights of the checkpoint at `path` into `model` (on one process); ArchDSLError naming the path."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    msd = get_model_state_dict(model)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": msd}, checkpoint_id=path)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP raises many kinds; the user needs the path and the reason
        raise ArchDSLError(f"{path}: cannot load the checkpoint ({_reason(e)})") from None
    set_model_state_dict(model, msd)
