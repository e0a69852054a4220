"""RUNDIR as a run lays it out: run.json (archdsl/train/runfile.py), metrics.jsonl, checkpoints/, and hf/ (the
tokenizer and generation files of the saved model the run started from, where it has them). Checked before a
run writes there (check_rundir), the metrics appended a whole line at a time (MetricsLog), and what a run that failed
before its first step made, removed (remove_unstarted)."""
from __future__ import annotations

import errno
import json
import os
import shutil

from ..atomic import write_atomic
from ..errors import ArchDSLError, finite
from .checkpoint import CKPT_DIR, HF_DIR, retry_hint


def check_rundir(rundir: str) -> None:
    """ArchDSLError when what train writes in RUNDIR cannot go there, or should not: the current directory (or one
    holding it) and a saved model's or Hugging Face model's directory, which compile's and export's -o refuse too
    (the run's files would be mixed in with theirs); checkpoints/ not a directory, run.json or metrics.jsonl not a
    file."""
    from ..model.model import SAVE_FILES

    cwd, path = os.path.abspath(os.getcwd()), os.path.abspath(rundir)
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise ArchDSLError(f"-o {rundir}: is the current directory or holds it; a run writes run.json, metrics.jsonl "
                           f"and checkpoints/ into a directory of its own", hint="give one, e.g. -o runs/NAME")
    model = sorted(f for f in SAVE_FILES | {"config.json"} if os.path.exists(os.path.join(rundir, f)))
    if model:
        raise ArchDSLError(f"-o {rundir}: holds a saved model ({', '.join(model)}); a run writes run.json, "
                           f"metrics.jsonl and checkpoints/ into a directory of its own",
                           hint="give another -o RUNDIR (the model to train from is SPEC)")
    for name, want_dir in ((CKPT_DIR, True), (HF_DIR, True), ("run.json", False), ("metrics.jsonl", False)):
        path = os.path.join(rundir, name)
        if os.path.exists(path) and os.path.isdir(path) != want_dir:
            kind = "a directory" if want_dir else "a file"
            raise ArchDSLError(f"-o {rundir}: {path} is not {kind}, and train writes its {name} there",
                               hint="remove it, or write to another -o RUNDIR")


def outermost_missing(path: str) -> str | None:
    """The outermost directory of `path` (absolute) that does not exist yet; None when `path` exists."""
    path, top = os.path.abspath(path), None
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path, top = os.path.dirname(path), path
    return top


def remove_unstarted(rundir: str, made: str | None, had_ckpt: bool) -> None:
    """A new run that failed before its first step was recorded (out of memory, a batch with nothing to score,
    Ctrl-C): its run.json and empty metrics.jsonl removed, an empty checkpoints/ that was not there before, and the
    directories this run created (RUNDIR up to `made`) where they are now empty, so that the same command can be run
    again (prepare refuses a RUNDIR holding an earlier run's files) and nothing it made is left behind."""
    metrics, ckpt = os.path.join(rundir, "metrics.jsonl"), os.path.join(rundir, CKPT_DIR)
    try:
        if (os.path.isfile(metrics) and os.path.getsize(metrics)) or (os.path.isdir(ckpt) and os.listdir(ckpt)):
            return  # a step or a checkpoint: a run to keep
        for name in ("run.json", "metrics.jsonl"):
            if os.path.isfile(path := os.path.join(rundir, name)):
                os.remove(path)
        shutil.rmtree(os.path.join(rundir, HF_DIR), ignore_errors=True)
        if os.path.isdir(ckpt) and not had_ckpt:
            os.rmdir(ckpt)
        d = os.path.abspath(rundir)
        while made is not None and (d + os.sep).startswith(made + os.sep) and os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
            d = os.path.dirname(d)
    except OSError:  # the failure that brought us here is the one to tell
        pass


LOCK = ".lock"  # held by a run's first process while it writes RUNDIR (lock_rundir)


def _busy(rundir: str, path: str) -> ArchDSLError:
    return ArchDSLError(f"{rundir}: another archdsl train is writing into it ({path} is held)",
                        hint="wait for it to end, or write to another -o RUNDIR")


def check_unlocked(rundir: str) -> None:
    """ArchDSLError where another archdsl train holds RUNDIR/.lock now: said before the checks of what the directory
    holds, whose advice (--resume) is for a run that has ended. A probe, let go at once: every process of a run
    probes before their rendezvous, and the lock is taken after it (lock_rundir)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    path = os.path.join(rundir, LOCK)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # none there (a new RUNDIR), or not readable: lock_rundir says what is wrong
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _busy(rundir, path) from None
    except OSError:  # a filesystem without locks
        pass
    finally:
        os.close(fd)


def lock_rundir(rundir: str):
    """RUNDIR created where missing, and RUNDIR/.lock held (flock) for the run: a second run into it is an
    ArchDSLError before it writes anything (two runs removed each other's temporary checkpoints, and the loser blamed
    a full disk). Returns what unlock_rundir takes; None where the system or the filesystem has no locks."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    path = os.path.join(rundir, LOCK)
    try:
        os.makedirs(rundir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ArchDSLError(f"-o {rundir}: cannot create the run directory: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(rundir, path) from None
    except OSError:  # a filesystem without locks (some network ones): as before, unlocked
        os.close(fd)
        return None
    return fd, path


def unlock_rundir(held) -> None:
    """The lock of lock_rundir released, its file removed (a failed run's RUNDIR can then be removed when empty)."""
    if held is None:
        return
    fd, path = held
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def clear_start(rundir: str) -> None:
    """A run started again from step 0 (--resume where no checkpoint was written): the run.json, metrics.jsonl and
    hf/ of its first start removed, so that it writes its own (an hf/ of another start model is not carried on)."""
    for name in ("run.json", "metrics.jsonl"):
        if os.path.isfile(path := os.path.join(rundir, name)):
            os.remove(path)
    shutil.rmtree(os.path.join(rundir, HF_DIR), ignore_errors=True)


def open_metrics(rundir: str, start: int) -> "MetricsLog":
    """RUNDIR/metrics.jsonl opened for appending; a resumed run (start > 0) keeps the records up to its step."""
    path = os.path.join(rundir, "metrics.jsonl")
    kept = []
    if start and os.path.isfile(path):  # a resumed run drops what came after its checkpoint
        with open(path, encoding="utf-8") as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except (ValueError, RecursionError):  # a line cut short when the run was stopped, or garbage
                    continue
                step = rec.get("step") if isinstance(rec, dict) else None
                if isinstance(step, int) and not isinstance(step, bool) and step <= start:  # else garbage
                    kept.append(ln if ln.endswith("\n") else ln + "\n")
    write_atomic(path, "".join(kept))  # the history is replaced whole: a kill now loses none of it
    return MetricsLog(path)


class MetricsLog:
    """RUNDIR/metrics.jsonl, appended a whole line at a time. A write that fails (a full disk) is cut back to the end
    of the line before it and said naming the file: it left a line cut mid-object, and the CLI blamed stdout."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self.size = os.fstat(self.fd).st_size
        except OSError as e:
            raise ArchDSLError(f"{path}: cannot open the metrics file ({e.strerror or e})") from None

    def write(self, rec: dict) -> None:
        line = (json.dumps(finite(rec), allow_nan=False) + "\n").encode("utf-8")  # a NaN loss as null
        try:
            done = 0
            while done < len(line):  # a short write (the disk filling) goes on to the error of the next one
                n = os.write(self.fd, line[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise ArchDSLError(f"{self.path}: cannot write the metrics of step {rec['step']} ({e.strerror or e})",
                               hint=retry_hint(os.path.dirname(self.path))) from None
        self.size += len(line)

    def close(self) -> None:
        os.close(self.fd)
