"""archdsl train's guards on what a run applies, resumes and is told: a non-finite step is not applied nor
checkpointed; a resumed run keeps its warmup whatever its --steps, and a warmup share is exact; the hint after a
failed write says what works; task arguments compare as numbers; a DATA key given twice is refused; a run from a
saved model is told that its batches come from --seed alone. Tiny models on the CPU, a second or two a run."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil

import pytest
import torch

import archdsl
from archdsl.cli import main
from archdsl.errors import ArchDSLError
from archdsl.train import TrainConfig, train

TINY_SPEC = """name: tiny
d_model: 32
vocab_size: 64
tie_embeddings: true
layout: mamba2, attn
blocks:
  mamba2: {d_state: 8, expand: 2, headdim: 16, ngroups: 1, chunk_size: 16}
  attn: {heads: 2}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return str(path)


def config(spec, rundir, **kw) -> TrainConfig:
    return TrainConfig(**{"spec": spec, "data": "mqar:seq=32,pairs=4", "batch": 4, "progress": False,
                          "cpu_threads": 1, "steps": 4, "rundir": str(rundir), **kw})


def records(rundir) -> list[dict]:
    with open(os.path.join(rundir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def args(spec, rundir, *more) -> list[str]:
    return ["train", spec, "--data", "mqar:seq=32,pairs=4", "--batch", "4", "--no-progress", "--threads", "1",
            "-o", str(rundir), *more]


def refused(capsys, argv, *needles) -> str:
    """`archdsl argv` exits 2 with every needle in its error output; returns that output."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def nan_gradient_at(monkeypatch, at: int) -> None:
    """The backward of step `at` gives one gradient of NaN (an overflow), its loss finite."""
    import archdsl.train.loop as loop

    accumulate, calls = loop._accumulate, []

    def overflowing(model, *a, **kw):
        out = accumulate(model, *a, **kw)
        calls.append(1)
        if len(calls) == at:
            grad = next(model.parameters()).grad
            (grad.to_local() if hasattr(grad, "to_local") else grad).fill_(float("nan"))  # FSDP2's DTensor
        return out

    monkeypatch.setattr(loop, "_accumulate", overflowing)


def test_a_non_finite_gradient_is_not_applied_nor_checkpointed(tmp_path, spec, monkeypatch):
    """A NaN gradient norm on the last step, a --save-every step: opt.step() applied it (clip_grad_norm_ scales every
    gradient by the NaN norm), the run exited 0 with every weight NaN in its final checkpoint, and export-checkpoint
    wrote an all-NaN model. Now the run stops before the update and the save, naming the step and what was not
    finite; the last checkpoint is the clean one before it; the hint is one that can be followed."""
    run = tmp_path / "run"
    nan_gradient_at(monkeypatch, 4)
    with pytest.raises(ArchDSLError) as e:
        train(config(spec, run, save_every=2))
    message = str(e.value)
    assert message.startswith("step 4: the gradient norm is nan (with a finite loss, "), message
    assert "the update was not applied, the last checkpoint (step 2) is as it was" in message
    assert "train again into a new -o RUNDIR with a lower --lr or a smaller --grad-clip (--resume keeps" in message
    assert f"archdsl export-checkpoint {run} -o DIR, then train DIR with another --seed" in message
    assert sorted(os.listdir(run / "checkpoints")) == ["step_00000002"]  # step 4 not saved
    last = records(run)[-1]  # the step is recorded: its loss finite, its norm null
    assert last["step"] == 4 and math.isfinite(last["loss"]) and last["grad_norm"] is None
    model, step = archdsl.train.export_checkpoint(str(run), str(tmp_path / "export"))
    assert step == 2 and all(bool(p.isfinite().all()) for p in model.parameters())


def test_a_non_finite_first_step_writes_no_checkpoint_and_its_hint_says_so(tmp_path, spec, monkeypatch, capsys):
    """With no checkpoint written, the hint does not send the user to one: exit 2, and --bf16 named where it is on."""
    run = tmp_path / "run"
    nan_gradient_at(monkeypatch, 1)
    err = refused(capsys, args(spec, run, "--steps", "2", "--bf16", "--grad-clip", "0"),
                  "error: step 1: the gradient norm is nan", "no checkpoint was written",
                  "with a lower --lr, a --grad-clip (e.g. 1) or without --bf16")
    assert "export-checkpoint" not in err
    assert [r["step"] for r in records(run)] == [1] and not (run / "checkpoints").exists()


def _lrs(rundir) -> list[float]:
    return [r["lr"] for r in records(rundir)]


def test_a_resumed_run_keeps_its_warmup_whatever_its_steps(tmp_path, spec, capsys):
    """A run started with --steps 10 --warmup 0.5 (5 steps) resumed with --steps 20 --warmup 0.5 was accepted and
    warmed up again to 10 steps: the learning rate fell back to 0.7·lr after its peak and climbed again. Now the run
    keeps its 5 warmup steps and only the cosine stretches; a --warmup of this --steps that makes other steps is
    refused, naming the steps of each, and so is a --steps that ends inside the run's warmup."""
    from archdsl.train.loop import lr_at

    run = tmp_path / "run"
    assert main(args(spec, run, "--steps", "10", "--warmup", "0.5", "--stop-after", "6")) == 0
    assert main(args(spec, run, "--steps", "20", "--warmup", "0.5", "--resume", "--stop-after", "8")) == 0
    assert _lrs(run)[7] < _lrs(run)[6] < 1e-3  # past the peak (it was 0.7·lr, 0.8·lr: a warmup of 10 steps)
    refused(capsys, args(spec, run, "--steps", "20", "--warmup", "0.3", "--resume"),
            "--warmup 0.3, 6 steps (the run's: 0.5, 5 steps)")
    refused(capsys, args(spec, run, "--steps", "4", "--warmup", "0.5", "--resume"),
            f"{run}: --steps 4 ends inside the run's warmup of 5 steps (--warmup 0.5 of its first --steps 10)",
            "ask for at least 5 --steps")
    assert main(args(spec, run, "--steps", "20", "--warmup", "0.25", "--resume")) == 0  # 0.25 of 20: 5 steps too
    lrs = _lrs(run)
    # the peak at step 5, then below it: steps 7.. fall along the cosine to step 20 (step 7's is above step 6's,
    # the end of the cosine to step 10)
    assert lrs[4] == pytest.approx(1e-3) and max(lrs[5:]) < 1e-3 and all(a > b for a, b in zip(lrs[6:], lrs[7:])), lrs
    cfg = config(spec, run, steps=20, warmup=0.5)
    assert lrs[6:] == pytest.approx([lr_at(cfg, s, 5) for s in range(6, 20)])


def test_a_warmup_share_is_exact(tmp_path, spec, capsys):
    """0.29 of 100 steps warmed up 28 steps (int(0.29 * 100) of the float 28.999999999999996), and --warmup 29 on
    --resume was refused as another warmup."""
    from archdsl.train.config import warmup_steps
    from archdsl.train.loop import lr_at

    assert [warmup_steps(w, s) for w, s in ((0.29, 100), (0.57, 100), (0.58, 50), (0.69, 10000), (0.1, 20))] == \
        [29, 57, 29, 6900, 2]
    assert all(warmup_steps(a / 100, s) == a * s // 100 for a in range(100) for s in range(1, 300))
    cfg = config(spec, "run", steps=100, warmup=0.29, lr=1.0)
    assert lr_at(cfg, 27) < 1.0 and lr_at(cfg, 28) == 1.0  # the peak at the 29th step
    run = tmp_path / "run"
    assert main(args(spec, run, "--steps", "100", "--warmup", "0.29", "--stop-after", "1")) == 0
    refused(capsys, args(spec, run, "--steps", "100", "--warmup", "29", "--stop-after", "1", "--resume"),
            "already at step 1, and --stop-after 1 asks for no step after it")  # past the settings' check


def _fail_save_at(monkeypatch, at: int) -> None:
    """The `at`-th checkpoint save meets a full disk (while hashing what it wrote)."""
    import archdsl.train.checkpoint as checkpoint

    digests, calls = checkpoint._digests, []

    def full(*a, **kw):
        calls.append(1)
        if len(calls) == at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return digests(*a, **kw)

    monkeypatch.setattr(checkpoint, "_digests", full)


def test_the_hint_after_a_failed_save_says_what_works(tmp_path, spec, capsys, monkeypatch):
    """A full disk at the first save: the hint says what works, --resume, which starts the run again from step 0
    where no checkpoint was written; where a checkpoint exists it names the step --resume continues from."""
    run = tmp_path / "run"
    _fail_save_at(monkeypatch, 1)
    refused(capsys, args(spec, run, "--steps", "2", "--save-every", "1"),
            f"{run / 'checkpoints' / 'step_00000001'}: cannot write the checkpoint (No space left on device)",
            "make room, then run again with --resume (no checkpoint was written: it starts the run again from step 0)")
    monkeypatch.undo()
    assert main(args(spec, run, "--steps", "2", "--save-every", "1", "--resume")) == 0

    other = tmp_path / "other"
    _fail_save_at(monkeypatch, 2)
    refused(capsys, args(spec, other, "--steps", "2", "--save-every", "1"),
            "make room, then run again with --resume (it continues from step 1, the last complete checkpoint)")
    monkeypatch.undo()
    assert main(args(spec, other, "--steps", "2", "--save-every", "1", "--resume")) == 0


def test_the_hint_after_a_failed_metrics_write_says_what_works(tmp_path, monkeypatch):
    """The same for metrics.jsonl: no checkpoint yet → not --resume; one → --resume from its step."""
    from archdsl.train.rundir import open_metrics

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    run.mkdir()
    log = open_metrics(str(run), 0)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ArchDSLError, match=r"run again with --resume \(no checkpoint was written: it starts the run "
                                           r"again from step 0\)"):
        log.write({"step": 1, "loss": 1.0})
    done = run / "checkpoints" / "step_00000003"
    done.mkdir(parents=True)
    (done / "meta.json").write_text("{}")
    with pytest.raises(ArchDSLError, match=r"run again with --resume \(it continues from step 3, "):
        log.write({"step": 4, "loss": 1.0})
    monkeypatch.undo()
    log.close()


def test_task_arguments_compare_as_numbers(tmp_path, spec, capsys):
    """power_a=1 against a run's power_a=1.0 was refused on --resume (the arguments compared by repr: 1 ≠ 1.0); the
    two draw the same batches."""
    from archdsl.explore.probes import make_task
    from archdsl.train.data import resolved

    for a, b in (("mqar:seq=32,pairs=4,power_a=1.0", "mqar:seq=32,pairs=4,power_a=1"),
                 ("noisy_recall:seq=32,noise=0", "noisy_recall:seq=32,noise=0.0")):
        assert resolved(a, None, 64) == resolved(b, None, 64)
    one, other = (make_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=64, power_a=a) for a in (1, 1.0))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert all(torch.equal(x, y) for x, y in zip(one.batch(8, g1), other.batch(8, g2)))
    run = tmp_path / "run"
    base = ["train", spec, "--batch", "4", "--no-progress", "--threads", "1", "-o", str(run), "--steps", "4"]
    assert main([*base, "--data", "mqar:seq=32,pairs=4,power_a=1.0", "--stop-after", "1"]) == 0
    refused(capsys, [*base, "--data", "mqar:seq=32,pairs=4,power_a=1", "--stop-after", "1", "--resume"],
            "already at step 1")  # past the settings' check


@pytest.mark.parametrize("data, message", [
    ("mqar:pairs=4,pairs=8", "num_kv_pairs given twice (pairs=4, pairs=8)"),
    ("mqar:vocab=64,vocab_size=128", "vocab_size given twice (vocab=64, vocab_size=128)"),
    ("mqar:seq=32,seq_len=64", "seq_len given twice (seq=32, seq_len=64)"),
    ("mqar:seq=32,seq=64", "seq_len given twice (seq=32, seq=64)"),
])
def test_a_data_key_given_twice_is_refused(tmp_path, spec, capsys, data, message):
    """A DATA key given twice, or by its short and its long name, took the last one without a word."""
    from archdsl.train.data import parse_data

    with pytest.raises(ArchDSLError, match="given twice"):
        parse_data(data, 128)
    refused(capsys, ["train", spec, "--data", data, "--steps", "1", "--batch", "4", "--no-progress", "-o",
                     str(tmp_path / "run")], f"error: --data {data!r}: {message}")
    assert not (tmp_path / "run").exists()


def test_a_run_from_a_saved_model_is_told_its_batches_come_from_the_seed(tmp_path, spec, capsys):
    """An export of a run trained again with its --seed draws the batches the weights were trained on (the data
    generator is seeded by --seed alone), and acc is then not on fresh samples: a note says so. A run from a spec
    draws fresh weights with its batches and gets none."""
    first, saved, again = tmp_path / "first", tmp_path / "saved", tmp_path / "again"
    capsys.readouterr()
    assert main(args(spec, first, "--steps", "1")) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["export-checkpoint", str(first), "-o", str(saved)]) == 0
    assert main(["train", str(saved), *args(spec, again, "--steps", "1")[2:]]) == 0
    err = capsys.readouterr().err
    assert f"note: the batches are drawn from --seed 0 alone: if {saved} was trained on this --data with --seed 0" \
           in err and "another --seed draws new ones" in err, err


def test_resume_with_no_checkpoint_starts_the_run_again(tmp_path, spec, capsys):
    """A run stopped before its first checkpoint (Ctrl-C, a SIGTERM, a preemption: --save-every 0 saves at the end
    only) left run.json and metrics.jsonl: a rerun was refused (an earlier run) and --resume too (no checkpoint at
    all), a dead end for a job that requeues itself with --resume. --resume now starts it again from step 0, with a
    warning, replacing those files, and gives the losses of a run that was never stopped; --resume into a new RUNDIR
    starts one; a run.json of another spec or other settings is still refused, naming it."""
    import json

    whole = tmp_path / "whole"
    assert main(args(spec, whole, "--steps", "3")) == 0
    want = [json.loads(ln)["loss"] for ln in (whole / "metrics.jsonl").read_text().splitlines()]
    run = tmp_path / "run"
    assert main(args(spec, run, "--steps", "3", "--stop-after", "1", "--save-every", "0")) == 0
    for ck in (run / "checkpoints").iterdir():  # as if stopped before the checkpoint: run.json and one metrics line
        shutil.rmtree(ck)
    refused(capsys, args(spec, run, "--steps", "3"), "wrote no checkpoint", "pass --resume to start it again")
    refused(capsys, args(spec, run, "--steps", "3", "--resume", "--lr", "0.5"), "--lr")
    other = tmp_path / "other.yaml"
    other.write_text(TINY_SPEC.replace("d_model: 32", "d_model: 16"))
    refused(capsys, args(str(other), run, "--steps", "3", "--resume"), "run.json: the run is of another spec")
    capsys.readouterr()
    assert main(args(spec, run, "--steps", "3", "--resume")) == 0
    assert "no checkpoint to resume from: the run starts from step 0 (replacing the run.json, metrics.jsonl" \
        in capsys.readouterr().err
    assert [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == want
    assert main(args(spec, tmp_path / "new", "--steps", "1", "--resume")) == 0
    assert "new: no checkpoint to resume from: the run starts from step 0\n" in capsys.readouterr().err


def test_a_second_run_into_a_rundir_in_use_is_refused(tmp_path, spec, capsys):
    """Two runs into one RUNDIR at once removed each other's temporary checkpoints, and the loser blamed a full disk.
    The first holds RUNDIR/.lock while it runs: a second is refused before it touches anything; the lock's file goes
    with the run, and a failed new run still leaves no RUNDIR behind."""
    from archdsl.train.rundir import lock_rundir, unlock_rundir

    run = tmp_path / "run"
    held = lock_rundir(str(run))
    try:
        refused(capsys, args(spec, run, "--steps", "1"), f"{run}: another archdsl train is writing into it",
                "write to another -o RUNDIR")
        assert os.listdir(run) == [".lock"]
        # a run under way that has written its files: the lock is said, not "an earlier run ... pass --resume"
        (run / "run.json").write_text("{}")
        (run / "metrics.jsonl").write_text("")
        for more in ([], ["--resume"]):
            err = refused(capsys, args(spec, run, "--steps", "1", *more), f"{run}: another archdsl train is writing")
            assert "--resume" not in err and "no checkpoint to resume from" not in err, err
        os.remove(run / "run.json")
        os.remove(run / "metrics.jsonl")
    finally:
        unlock_rundir(held)
    assert main(args(spec, run, "--steps", "1")) == 0
    assert ".lock" not in os.listdir(run)
    refused(capsys, args(spec, tmp_path / "x", "--steps", "1", "--lr", "nan"), "--lr")
    assert not (tmp_path / "x").exists()


def test_resume_takes_a_copy_of_the_runs_token_file(tmp_path, spec, capsys):
    """A token file copied elsewhere (a node's own disk, another machine) was refused on --resume as 'other --data'
    (compared by resolved path), though its tokens are the run's. The same count and data_digest resume it, with a
    warning naming both files, and the losses go on as the uninterrupted run's; another eos, or other tokens, are
    still refused."""
    import numpy as np

    tokens = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 64, 4096, dtype=np.uint16).tofile(tokens)
    copy = tmp_path / "scratch" / "train.bin"
    copy.parent.mkdir()
    shutil.copy(tokens, copy)
    run = ["train", spec, "--batch", "4", "--seq-len", "32", "--no-progress", "--threads", "1"]
    assert main([*run, "--data", str(tokens), "--steps", "3", "-o", str(tmp_path / "whole")]) == 0
    assert main([*run, "--data", str(tokens), "--steps", "3", "--stop-after", "1", "-o", str(tmp_path / "cut")]) == 0
    refused(capsys, [*run, "--data", f"{copy},eos=5", "--steps", "3", "-o", str(tmp_path / "cut"), "--resume"],
            "--resume with other settings")
    other = tmp_path / "other.bin"
    np.random.default_rng(1).integers(0, 64, 4096, dtype=np.uint16).tofile(other)
    refused(capsys, [*run, "--data", str(other), "--steps", "3", "-o", str(tmp_path / "cut"), "--resume"],
            "--resume with other settings")
    capsys.readouterr()
    assert main([*run, "--data", str(copy), "--steps", "3", "-o", str(tmp_path / "cut"), "--resume"]) == 0
    assert f"--data {copy} is not the run's token file ({tokens}) but holds the same tokens" in capsys.readouterr().err
    losses = [[json.loads(ln)["loss"] for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("whole", "cut")]
    assert losses[0] == losses[1]


def test_a_tasks_vocabulary_taken_from_the_model_is_said_so():
    """'mqar: vocab_size 64 must exceed seq_len 256' on a model of vocab_size 64 did not say where the 64 came from:
    no vocab= was given, so the task took the model's."""
    from archdsl.train.data import parse_data

    with pytest.raises(ArchDSLError, match=r"vocab_size 64 must exceed seq_len 256 \(the task's vocab_size 64 is "
                                           r"the model's\)"):
        parse_data("mqar", 64)
    with pytest.raises(ArchDSLError, match=r"must exceed seq_len 256$"):
        parse_data("mqar:vocab=64", 128)


def test_checkpoints_past_ten_to_the_eighth_steps_are_found(tmp_path):
    """step_{:08d} writes nine digits from step 10^8: they were not read back (`--resume` started again from step 0,
    replacing metrics.jsonl)."""
    from archdsl.train.checkpoint import CKPT_DIR, checkpoints

    for name in ("step_00000012", "step_100000000", "step_12"):
        (tmp_path / CKPT_DIR / name).mkdir(parents=True)
        (tmp_path / CKPT_DIR / name / "meta.json").write_text("{}")
    assert [s for s, _ in checkpoints(str(tmp_path))] == [12, 100000000]


def test_keep_last_keeps_the_newest_checkpoints_and_resumes(tmp_path):
    """--keep-last N (transformers' save_total_limit): after each save only the N newest checkpoints stay; a resume
    continues from the newest and takes the same steps as a run that kept them all."""
    from archdsl.train.checkpoint import checkpoints

    common = ["train", "mamba2(headdim=8)", "--set", "d_model=16", "--set", "vocab_size=32", "--data",
              "mqar:seq=16,pairs=2,vocab=32", "--batch", "4", "--steps", "6", "--save-every", "1", "--no-progress",
              "--threads", "1"]
    kept, full = str(tmp_path / "kept"), str(tmp_path / "full")
    assert main([*common, "-o", kept, "--keep-last", "2", "--stop-after", "4"]) == 0
    assert [s for s, _ in checkpoints(kept)] == [3, 4]
    assert sorted(os.listdir(os.path.join(kept, "checkpoints"))) == ["step_00000003", "step_00000004"]
    assert main([*common, "-o", kept, "--keep-last", "1", "--resume"]) == 0
    assert [s for s, _ in checkpoints(kept)] == [6]
    assert main([*common, "-o", full]) == 0
    assert len(checkpoints(full)) == 6
    lines = [open(os.path.join(d, "metrics.jsonl")).read().splitlines() for d in (kept, full)]
    assert [json.loads(x)["loss"] for x in lines[0]] == [json.loads(x)["loss"] for x in lines[1]]
