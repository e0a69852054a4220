"""Progress on stderr: bars on a terminal, plain lines in a log (explore, train and run alike)."""
from __future__ import annotations

from archdsl.cli import main
from archdsl.progress import Lines, progress_bar


def test_lines_where_stderr_is_not_a_terminal(capsys):
    bar = progress_bar("train demo ×1", 5, "step", every=0.0, initial=2)
    assert isinstance(bar, Lines)  # pytest's stderr is not a terminal
    bar.set_postfix({"loss": "2.3000", "tok/s": "1,024"}, refresh=False)
    bar.update(1)
    bar.update(0)  # nothing done: no line
    bar.update(2)
    bar.close()  # the last line was printed already
    lines = capsys.readouterr().err.splitlines()
    assert [x.rsplit(",", 1)[0] for x in lines] == ["train demo ×1: 3/5 step (loss=2.3000, tok/s=1,024)",
                                                   "train demo ×1: 5/5 step (loss=2.3000, tok/s=1,024)"], lines


def test_a_run_shorter_than_the_interval_prints_nothing(capsys):
    bar = progress_bar("probe mqar", None, "cand", every=3600.0)
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""


def test_train_and_run_write_no_carriage_returns_into_a_log(tmp_path, capsys):
    """tqdm drew its bar into a log too (stderr not a terminal), a carriage return an update."""
    run = str(tmp_path / "run")
    assert main(["train", "mamba2(d_state=8, headdim=8)", "--set", "d_model=32", "--set", "vocab_size=64", "--data",
                 "mqar:seq=16,pairs=2", "--steps", "2", "--batch", "2", "-o", run]) == 0
    assert "\r" not in capsys.readouterr().err
    assert main(["run", "mamba2(d_state=8, headdim=8)", "--set", "d_model=32", "--set", "vocab_size=64",
                 "--prompt-len", "4", "--gen", "64"]) == 0
    assert "\r" not in capsys.readouterr().err
