"""Atomic writes: temporaries carry the writer's pid, and a killed writer's leftovers of the same target are
removed by the next write of it, nothing else."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from archdsl import atomic
from archdsl.atomic import atomic_dir, remove_stale_temporaries, write_atomic
from archdsl.errors import ArchDSLError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="liveness by pid is POSIX's")


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temp_name(target: str, pid: int, host: str | None = None, rand: str = "k2x_9abc") -> str:
    return f".{target}.tmp-{host or atomic._host()}-{pid}-{rand}"


def test_the_temporary_name_carries_the_writer_pid(tmp_path, monkeypatch):
    seen = []
    replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_atomic(str(tmp_path / "out.json"), "{}")
    (name,) = seen
    assert name.startswith(f".out.json.tmp-{atomic._host()}-{os.getpid()}-"), name
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    dead = dead_pid()
    stale = temp_name("results.json", dead)
    keep = [
        temp_name("results.json", os.getpid()),  # a writer still running (this one)
        temp_name("results.json", dead, host="0000beef" if atomic._host() != "0000beef" else "0000feed"),  # elsewhere
        temp_name("results.csv", dead),  # another target's
        temp_name("results.json.bak", dead),  # a target whose name begins alike
        f".results.json.tmp-{dead}",  # not of our pattern (no host, no random part)
        ".results.json.tmp-abcd1234",  # an older archdsl's name, without a pid
        "results.json.tmp-notes.txt",  # the user's own
    ]
    for name in [stale] + keep:
        (tmp_path / name).write_text("half")
    write_atomic(str(tmp_path / "results.json"), "{}")
    assert (tmp_path / "results.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["results.json"])


def test_a_killed_writers_temporary_directory_is_removed_by_the_next_save(tmp_path):
    names = frozenset({"spec.yaml", "model.safetensors"})
    dead = dead_pid()
    stale = tmp_path / temp_name("m", dead)
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    odd = tmp_path / temp_name("m", dead, rand="zz_11yy")  # holds a directory: not what a writer of ours leaves
    (odd / "sub").mkdir(parents=True)
    with atomic_dir(str(tmp_path / "m"), names) as tmp:
        for n in names:
            with open(os.path.join(tmp, n), "w") as f:
                f.write("x")
    assert sorted(os.listdir(tmp_path)) == sorted(["m", odd.name])
    assert sorted(os.listdir(tmp_path / "m")) == sorted(names)


def test_a_link_named_like_a_stale_temporary_is_left_alone(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    link = tmp_path / temp_name("out", dead_pid())
    link.symlink_to(target)
    assert remove_stale_temporaries(str(tmp_path / "out")) == []
    assert link.is_symlink() and target.read_text() == "keep"


def test_a_long_target_name_still_writes_and_sweeps(tmp_path):
    """The temporary's name holds the target's: a 250-byte target name is cut (with a hash) to stay a file name."""
    target = tmp_path / ("n" * 250)
    stale = f".{atomic._tag(str(target))}.tmp-{atomic._host()}-{dead_pid()}-abcdefgh"
    assert len(stale.encode()) < 255
    (tmp_path / stale).write_text("half")
    write_atomic(str(target), "ok")
    assert os.listdir(tmp_path) == [target.name] and target.read_text() == "ok"


def test_a_writer_killed_before_its_rename_leaves_what_the_next_write_removes(tmp_path):
    """A real SIGKILL: the child kills itself where os.replace would land the file, leaving its temporary."""
    code = ("import os, signal, sys\n"
            "from archdsl.atomic import write_atomic\n"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "write_atomic(sys.argv[1], 'new')\n")
    target = tmp_path / "results.json"
    target.write_text("old")
    child = subprocess.Popen([sys.executable, "-c", code, str(target)],
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert child.wait() == -9
    (left,) = [n for n in os.listdir(tmp_path) if n != "results.json"]
    assert left.startswith(f".results.json.tmp-{atomic._host()}-{child.pid}-") and target.read_text() == "old"
    write_atomic(str(target), "new")
    assert os.listdir(tmp_path) == ["results.json"] and target.read_text() == "new"


def test_a_process_lists_a_directory_once(tmp_path):
    """Writing 10^4 specs into one directory listed it at each write (quadratic); the writers look at what it held
    at this process's first write there, remove_stale_temporaries(path) at what it holds now."""
    write_atomic(str(tmp_path / "a.yaml"), "a")
    late = tmp_path / temp_name("b.yaml", dead_pid())
    late.write_text("half")  # left after this process first wrote here
    write_atomic(str(tmp_path / "b.yaml"), "b")
    assert late.exists()
    assert remove_stale_temporaries(str(tmp_path / "b.yaml")) == [late.name] and not late.exists()


def test_a_failed_write_is_an_archdsl_error_and_leaves_nothing(tmp_path, monkeypatch):
    """An OSError while writing (a full disk) was raised raw; now ArchDSLError naming the file, no temporary left."""
    target = tmp_path / "out.json"
    target.write_text("old")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(ArchDSLError, match="cannot write .*out.json: No space left on device"):
        write_atomic(str(target), "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("make", ["open", "mkdir"])
def test_an_interrupt_just_after_the_temporary_is_made_leaves_nothing(tmp_path, monkeypatch, make):
    """Ctrl-C landing right after the temporary file (or directory) exists, before the writer holds its name: it was
    made by tempfile, outside the cleanup, and stayed (explore's specs/ kept an empty `.cNNNN.yaml.tmp-...`)."""
    real = getattr(os, make)

    def then_interrupt(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(os, make, then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        if make == "open":
            write_atomic(str(tmp_path / "out" / "a.yaml"), "x")
        else:
            with atomic_dir(str(tmp_path / "out" / "run"), {"a"}):
                pass
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\t", "\u2028"])
def test_a_path_with_a_control_character_is_refused_naming_the_argument(tmp_path, char):
    """The CLI refused `-o $'out\\n.png'`; write_atomic and atomic_dir wrote it (and each message naming it then
    printed on two lines). They refuse it now, by the CLI's own check, naming the argument, and write nothing."""
    target = str(tmp_path / f"out{char}x")
    with pytest.raises(ArchDSLError) as e:
        write_atomic(target, "x")
    assert str(e.value) == f"write_atomic: path: the path {target!r} holds the control character {char!r}; give one " \
                           f"without"
    with pytest.raises(ArchDSLError) as e:
        with atomic_dir(target, frozenset({"a"})):
            raise AssertionError("atomic_dir went on")
    assert str(e.value).startswith(f"atomic_dir: path: the path {target!r} holds the control character {char!r}")
    with pytest.raises(ArchDSLError) as e:
        atomic.check_output(target)  # the CLI's -o: the one check, its message alike
    assert str(e.value).startswith(f"-o: the path {target!r} holds the control character {char!r}")
    assert list(tmp_path.iterdir()) == []


def test_a_link_is_written_through_and_stays_a_link(tmp_path):
    """`-o link.svg` replaced the link with a plain file and left its target's old data: now the target is
    written (a link to a link followed to the end, a missing target made), beside it the temporary, and the link
    stays; replace=False still refuses a link, one to nothing too."""
    from archdsl.atomic import check_output

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "target.svg"
    target.write_text("old")
    (tmp_path / "mid.svg").symlink_to(target)
    link = tmp_path / "link.svg"
    link.symlink_to("mid.svg")
    check_output(str(link))
    write_atomic(str(link), "new")
    assert link.is_symlink() and os.readlink(link) == "mid.svg" and target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["link.svg", "mid.svg", "real"] and os.listdir(tmp_path / "real") == [
        "target.svg"]
    dangling = tmp_path / "dangling.dot"
    dangling.symlink_to(tmp_path / "new" / "t.dot")
    write_atomic(str(dangling), "made")
    assert dangling.is_symlink() and (tmp_path / "new" / "t.dot").read_text() == "made"
    for path in (link, dangling):
        with pytest.raises(ArchDSLError, match="exists; archdsl will not replace it"):
            write_atomic(str(path), "x", replace=False)
    assert target.read_text() == "new"


def test_check_output_looks_where_a_link_points(tmp_path):
    """check_output judges the directory a link's target lands in, not the link's: a link to a path under a file
    is refused before any work, as that path itself is."""
    from archdsl.atomic import check_output

    (tmp_path / "afile").write_text("x")
    (tmp_path / "l.png").symlink_to(tmp_path / "afile" / "t.png")
    with pytest.raises(ArchDSLError, match="afile is a file, not a directory"):
        check_output(str(tmp_path / "l.png"))


def test_a_directory_holding_part_of_a_save_is_not_replaced(tmp_path):
    """A directory holding a lone spec.yaml (a user's hand-written spec) or config.json counted as an earlier save
    and was replaced: only the whole set of the writer's files is one. An empty directory and a whole save are."""
    names = frozenset({"spec.yaml", "model.safetensors"})

    def save(target):
        with atomic_dir(str(target), names) as tmp:
            for n in names:
                with open(os.path.join(tmp, n), "w") as f:
                    f.write("new")

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "spec.yaml").write_text("# my notes\n")
    with pytest.raises(ArchDSLError, match=r"mine: it holds spec.yaml but not model.safetensors: not the whole of an "
                                           r"earlier output of archdsl's; pick another output or remove it"):
        save(tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == ["spec.yaml"]
    assert (tmp_path / "mine" / "spec.yaml").read_text() == "# my notes\n"
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty")
    save(tmp_path / "empty")  # now a whole earlier save: replaced
    assert sorted(os.listdir(tmp_path / "empty")) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine"]


def test_optional_files_are_replaced_with_an_earlier_save_but_are_no_save_alone(tmp_path):
    """A save with its tokenizer (optional names) is an earlier save to replace; the optional files alone (a
    tokenizer.json of the user's) are not, nor is anything else beside them."""
    names, optional = frozenset({"spec.yaml", "model.safetensors"}), frozenset({"tokenizer.json"})
    out = tmp_path / "m"
    out.mkdir()
    for name in ("spec.yaml", "model.safetensors", "tokenizer.json"):
        (out / name).write_text("old")
    with atomic_dir(str(out), names, optional) as tmp:
        for name in names:
            open(os.path.join(tmp, name), "w").close()
    assert sorted(os.listdir(out)) == ["model.safetensors", "spec.yaml"]
    own = tmp_path / "own"
    own.mkdir()
    (own / "tokenizer.json").write_text("mine")
    with pytest.raises(ArchDSLError, match="not the whole of an earlier output"):
        with atomic_dir(str(own), names, optional):
            pass
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArchDSLError, match=r"holds what this output does not write \(notes.txt\)"):
        with atomic_dir(str(out), names, optional):
            pass
    assert (own / "tokenizer.json").read_text() == "mine" and (out / "notes.txt").exists()


def test_a_link_among_the_names_is_refused_as_a_link(tmp_path):
    """A save whose tokenizer.json is a symbolic link (to a tokenizer shared by several saves): replacing the directory
    would drop the link, so it is refused, saying so (it was 'holds what archdsl does not write there')."""
    names, optional = frozenset({"spec.yaml", "model.safetensors"}), frozenset({"tokenizer.json"})
    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).write_text("old")
    (tmp_path / "shared.json").write_text("{}")
    (out / "tokenizer.json").symlink_to(tmp_path / "shared.json")
    with pytest.raises(ArchDSLError, match=r"tokenizer.json is a symbolic link, and archdsl writes plain files there"):
        with atomic_dir(str(out), names, optional):
            pass
    assert (out / "tokenizer.json").is_symlink() and (tmp_path / "shared.json").read_text() == "{}"


def test_a_link_among_the_required_names_is_refused_too(tmp_path):
    names = frozenset({"spec.yaml", "model.safetensors"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    (tmp_path / "shared.yaml").write_text("mine")
    (out / "spec.yaml").symlink_to(tmp_path / "shared.yaml")
    with pytest.raises(ArchDSLError, match=r"spec.yaml is a symbolic link, and archdsl writes plain files there"):
        with atomic_dir(str(out), names):
            pass
    assert (out / "spec.yaml").is_symlink() and (tmp_path / "shared.yaml").read_text() == "mine"


def test_a_directory_under_a_name_of_the_output_is_refused(tmp_path):
    names, optional = frozenset({"spec.yaml", "model.safetensors"}), frozenset({"tokenizer.json"})
    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).write_text("old")
    (out / "tokenizer.json").mkdir()
    (out / "tokenizer.json" / "keep.txt").write_text("mine")
    with pytest.raises(ArchDSLError, match=r"holds what this output does not write \(tokenizer.json\)"):
        with atomic_dir(str(out), names, optional):
            pass
    assert (out / "tokenizer.json" / "keep.txt").read_text() == "mine"
