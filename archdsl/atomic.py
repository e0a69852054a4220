"""Writes that never leave a half-written file or directory behind, and never take anything but their own
earlier output: the data goes to a temporary name beside the target and is renamed onto it only once it is
complete; a directory in the way is replaced only when it holds exactly the files this write puts there
(an earlier save of the same kind: all of them, not one alone, which may be a user's own spec.yaml or
config.json) or nothing at all. What lands gets the usual permissions (the umask's),
not the private ones of a temporary file. A file written through a symbolic link is written where the link
points (its target, a link to a link followed to the end, made when it is missing), as `>` in a shell and
matplotlib do: the link stays a link (renamed onto, it became a plain file and its target kept the old data).

The temporary name of a target NAME is `.NAME.tmp-HOST-PID-RANDOM` (HOST: 8 hex digits of a hash of the
machine's name, PID: the writing process's id; a NAME too long for that is cut, with a hash of it appended).
A writer killed where it cannot clean up (SIGKILL, a power cut) leaves that file or directory behind; the
next write of the same target removes every such leftover of that target whose writer was on this machine
and is no longer running (a process lists a directory once, at its first write there: what a writer killed
after that leaves, the next process's write removes). Nothing else is touched: not another target's
temporaries, not those of a writer still alive or on another machine (a shared file system), not a
directory holding anything but plain files, and not the `.NAME.old-*` copy that a replace moves aside
(killed between its two renames, that copy is the earlier output, to put back by hand)."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ArchDSLError


def write_atomic(path: str, data: str | bytes, replace: bool = True) -> None:
    """Write `data` (text as UTF-8) to `path`, replacing it whole or not at all; with `replace=False` a file
    there (one made while this wrote, too; a link, even to nothing) is ArchDSLError and stays as it was. A
    symbolic link is written through: its target is replaced, beside which the temporary goes, and the link
    stays (see the module's docstring). Temporaries of the target that a killed writer left are removed first. A
    path holding a control character is ArchDSLError (see check_control)."""
    check_control(os.fspath(path), "write_atomic: path")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ArchDSLError(f"cannot write {path}: it is a directory")
    if not replace:
        _check_absent(path)
    path = os.path.realpath(path)  # through links: a rename onto a link replaces the link, not its target
    d = os.path.dirname(path)
    try:
        os.makedirs(d, exist_ok=True)
        remove_stale_temporaries(path, fresh=False)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror}") from None
    tmp = _tmp_name(path)  # named before it exists, so that an interrupt at any point after finds it to remove
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        if not replace:
            _check_absent(path)  # again: it may have appeared while we wrote
        os.replace(tmp, path)
    except BaseException as e:
        if not isinstance(e, FileExistsError) and os.path.exists(tmp):  # (FileExistsError: not ours, from open)
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a quota: said as every other write error is
            raise cannot_write(path, e) from None
        raise


def cannot_write(path, e: Exception) -> ArchDSLError:
    """`cannot write PATH: REASON` for a write that failed (a full disk, a file too large, a quota): an OSError's
    strerror, or the text of a writer library's own exception (safetensors' SafetensorError is no OSError) less
    its wrapping, `Error while serializing: I/O error: File too large (os error 27)` → `File too large`."""
    if isinstance(e, OSError):
        return ArchDSLError(f"cannot write {path}: {e.strerror or e}")
    reason = re.sub(r"\s*\(os error \d+\)$", "", str(e).strip())
    reason = reason.rsplit("I/O error:", 1)[-1].strip() or type(e).__name__
    return ArchDSLError(f"cannot write {path}: {reason}")


def check_output(path: str, flag: str = "-o", directory: bool = False, replace: bool = True) -> None:
    """Before any work: ArchDSLError unless `path` can become a file (or with `directory`, a directory) in a
    place archdsl may write, and holds no control character (a line break would split every message that names
    it); with `replace=False` unless nothing is there yet. Missing parent directories are fine: every writer
    creates them."""
    if not path:
        raise ArchDSLError(f"{flag}: give a path")
    check_control(path, flag)
    if os.path.isdir(path) and not directory:
        raise ArchDSLError(f"{flag} {path}: is a directory; give a file name")
    if not replace:
        _check_absent(path, flag)
    if os.path.exists(path) and directory and not os.path.isdir(path):
        raise ArchDSLError(f"{flag} {path}: exists and is not a directory")
    # where the file lands: through a link, beside its target (atomic_dir refuses a link, and names its parent)
    parent = os.path.dirname(os.path.abspath(path) if directory else os.path.realpath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ArchDSLError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):  # a read-only directory, or file system
        raise ArchDSLError(f"{flag} {path}: cannot write in {parent}: it is not writable")


def check_control(path, flag: str) -> None:
    """ArchDSLError `flag: the path ... holds the control character ...` where `path` (a str, or bytes as the file
    system's) holds one, a line break or an escape: each message naming the path would print it as it acts. The
    one check of every path archdsl writes: the CLI's -o (flag "-o"), the Python API's (flag "FUNCTION: ARGUMENT")."""
    path = os.fsdecode(path)
    bad = next((c for c in path if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ArchDSLError(f"{flag}: the path {path!r} holds the control character {bad!r}; give one without")


def check_output_dir(path: str, names: frozenset[str], flag: str = "-o",
                     optional: frozenset[str] = frozenset(), ours=None) -> None:
    """Before any work: ArchDSLError unless atomic_dir(path, names, optional, ours) may write there (see
    check_output)."""
    check_output(path, flag, directory=True)
    _check_replaceable(os.path.abspath(path), names, optional, ours)


@contextmanager
def atomic_dir(path: str, names: frozenset[str], optional: frozenset[str] = frozenset(),
               ours=None) -> Iterator[str]:
    """Yield a fresh temporary directory beside `path` to fill with files of the given `names` (and any of
    `optional`); when the block ends without an error it takes the place of `path`, else it is removed and `path`
    stays as it was. An existing `path` is replaced (moved aside, then removed) only when it is an empty directory
    or one holding all of `names` as plain files, any of `optional`, and nothing else (an earlier save); anything
    else there (another file, a subdirectory, some of `names` without the rest, the current directory or one above
    it) is ArchDSLError before anything is written. `ours` (path → None, or why the files there are not an earlier
    output of this writer's) tells an earlier output from another program's files of the same names (export's
    config.json + model.safetensors are also a transformers checkpoint's). Temporaries of `path` that a killed
    writer left are removed first (see the module's docstring). A path holding a control character is ArchDSLError
    (see check_control)."""
    check_control(os.fspath(path), "atomic_dir: path")
    path = os.path.abspath(os.fspath(path))
    _check_replaceable(path, names, optional, ours)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(path, fresh=False)
    except OSError as e:
        raise ArchDSLError(f"cannot write {path}: {e.strerror}") from None
    tmp = _tmp_name(path)  # named before it exists, as write_atomic's
    try:
        os.mkdir(tmp, 0o700)
    except FileExistsError as e:  # not ours
        raise ArchDSLError(f"cannot write {path}: {e.strerror}") from None
    except BaseException as e:  # an interrupt may land after the mkdir
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ArchDSLError(f"cannot write {path}: {e.strerror}") from None
        raise
    old = None
    try:
        yield tmp
        written = os.listdir(tmp)
        assert set(written) <= names | optional, f"atomic_dir: wrote {written}, declared {sorted(names | optional)}"
        mask = _umask()
        for name in written:
            os.chmod(os.path.join(tmp, name), 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if os.path.exists(path):
            _check_replaceable(path, names, optional, ours)  # again: it may have changed while we wrote
            old = tempfile.mkdtemp(dir=parent, prefix=f".{_tag(path)}.old-")
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old and os.path.isdir(old) and not os.path.lexists(path):  # moved aside, then the new one failed to land
            os.rename(old, path)
        raise


def _tag(path: str) -> str:
    """What stands for the target in its temporaries' names: its name, or where that would make them longer than
    a file name may be (255 bytes), its first 160 bytes and a hash of the whole."""
    base = os.fsencode(os.path.basename(path))
    if len(base) > 200:
        base = base[:160] + b"~" + hashlib.sha1(base).hexdigest()[:8].encode()
    return os.fsdecode(base)


@functools.cache
def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _tmp_name(path: str) -> str:
    """`.NAME.tmp-HOST-PID-RANDOM` beside `path` (see the module's docstring), not yet made."""
    return os.path.join(os.path.dirname(path), f".{_tag(path)}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(6)}")


def _alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one of another user's too); True where it cannot tell."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: it runs, as another user
        return True
    return True


# directory → the names of this machine's temporaries in it when this process first wrote there: listing a
# directory of 10^4 specs at every write of one made writing them quadratic
_SEEN: dict[str, set[str]] = {}
_SEEN_LOCK = threading.Lock()


def _temporaries(parent: str, fresh: bool) -> set[str]:
    with _SEEN_LOCK:
        if fresh or parent not in _SEEN:
            try:
                names = os.listdir(parent)
            except OSError:
                names = []
            marker = f".tmp-{_host()}-"
            _SEEN[parent] = {n for n in names if marker in n}
        return _SEEN[parent]


def remove_stale_temporaries(path: str, fresh: bool = True) -> list[str]:
    """Remove the temporaries of target `path` (see the module's docstring) that a writer on this machine left
    behind when it was killed: each `.NAME.tmp-HOST-PID-RANDOM` beside `path` whose HOST is this machine and
    whose PID runs no process, when it is a plain file or a directory of plain files. Returns the names removed;
    never raises (a leftover that cannot be removed stays). `fresh=False` (the writers') looks only at what the
    directory held when this process first looked: a process lists a directory once."""
    if os.name != "posix":  # os.kill(pid, 0) tells liveness on POSIX only (on Windows it would end the process)
        return []
    parent = os.path.dirname(os.path.abspath(path))
    prefix = f".{_tag(path)}.tmp-{_host()}-"
    pattern = re.compile(re.escape(prefix) + r"([0-9]{1,10})-[A-Za-z0-9_]+")
    seen = _temporaries(parent, fresh)
    removed = []
    for entry in sorted(e for e in list(seen) if e.startswith(prefix)):
        m = pattern.fullmatch(entry)
        if not m or _alive(int(m.group(1))):
            continue
        full = os.path.join(parent, entry)
        try:
            if os.path.islink(full):
                continue
            if os.path.isfile(full):
                os.unlink(full)
            elif os.path.isdir(full):
                inside = [os.path.join(full, e) for e in os.listdir(full)]
                if any(os.path.islink(f) or not os.path.isfile(f) for f in inside):
                    continue  # not what a writer of ours leaves: someone's own directory
                for f in inside:
                    os.unlink(f)
                os.rmdir(full)
            elif not os.path.lexists(full):  # gone meanwhile
                seen.discard(entry)
                continue
            else:
                continue
        except OSError:
            continue
        seen.discard(entry)
        removed.append(entry)
    return removed


def _check_replaceable(path: str, names: frozenset[str], optional: frozenset[str] = frozenset(), ours=None) -> None:
    """ArchDSLError unless `path` is absent, an empty directory, or a directory holding every one of `names` as a
    plain file, any of `optional`, and nothing else, which `ours` (if given) takes for its own: an earlier save.
    Some of them alone (a spec.yaml, a config.json, a tokenizer.json) are a user's own files, not a save to
    replace."""
    cwd = os.path.abspath(os.getcwd())
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise ArchDSLError(f"will not replace {path}: it is the current directory or holds it")
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise ArchDSLError(f"will not replace {path}: it exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):  # a copy moved aside could not be emptied; root may
        raise ArchDSLError(f"will not replace {path}: it is read-only", hint="make it writable or pick another output")
    held = set(os.listdir(path))
    links = sorted(e for e in held if e in names | optional and os.path.islink(os.path.join(path, e)))
    if links:  # replacing the directory would drop the link, and leave what it points to as it was
        raise ArchDSLError(f"will not replace {path}: {', '.join(links)} {'is a' if len(links) == 1 else 'are'} "
                           f"symbolic link{'s' if len(links) > 1 else ''}, and archdsl writes plain files there",
                           hint="pick another output or remove it")
    foreign = sorted(e for e in held if e not in names | optional or not os.path.isfile(os.path.join(path, e)))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ArchDSLError(f"will not replace {path}: it holds what this output does not write ({shown});"
                           " pick another output or remove it")
    if held and not names <= held:
        raise ArchDSLError(f"will not replace {path}: it holds {', '.join(sorted(held))} but not "
                           f"{', '.join(sorted(names - held))}: not the whole of an earlier output of archdsl's; "
                           f"pick another output or remove it")
    why = ours(path) if held and ours is not None else None
    if why:
        raise ArchDSLError(f"will not replace {path}: {why}", hint="pick another output or remove it")


def _check_absent(path: str, flag: str = "") -> None:
    """ArchDSLError when `path` exists (a link to nothing too): a file that is not an output of ours to replace."""
    if os.path.lexists(path):
        where = f"{flag} {path}" if flag else path
        raise ArchDSLError(f"{where}: exists; archdsl will not replace it", hint="pick another output or remove it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
