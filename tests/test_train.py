"""archdsl train on the CPU: it learns MQAR; 2 gloo processes (FSDP2) give 1 process's losses, with
a shared (Zamba) block, activation checkpointing and MoE; checkpoint → resume (2 → 1 processes) ==
uninterrupted; export-checkpoint; bad input exits 2 before any work, on every rank."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import archdsl
from archdsl.cli import main
from archdsl.train import TrainConfig, train
from archdsl.units import plural

ZAMBA = """name: tiny-zamba
d_model: 32
vocab_size: 64
tie_embeddings: true
layout: 4×mamba2, zamba(shared, lora=4) at 1 3
blocks:
  mamba2: {d_state: 8, expand: 2, headdim: 16, ngroups: 1, chunk_size: 16}
  zamba: {heads: 2, hidden: 64}
"""
# MoE with its balancing loss on (f_e over the global batch: 2 processes == 1)
JAMBA = """name: tiny-jamba
d_model: 32
vocab_size: 64
tie_embeddings: false
ffn: mlp
layout: 4×mamba, attn every 4 offset 2, moe every 2 offset 1
blocks:
  mamba: {d_state: 8, d_conv: 4, expand: 2}
  attn: {heads: 2, kv_heads: 1, rope: false}
  mlp: {act: swiglu, hidden: 64}
  moe: {experts: 4, top_k: 2, hidden: 64, aux_loss_coef: 0.1}
"""
# DeepSeek-V3-style routing: sigmoid scores, a score bias moved toward balance after each step, no balancing loss
BALANCED = JAMBA.replace("moe: {experts: 4, top_k: 2, hidden: 64, aux_loss_coef: 0.1}",
                         "moe: {experts: 4, top_k: 2, hidden: 64, aux_loss_coef: 0, router: sigmoid, score_bias: true,"
                         " balance_rate: 0.01}")
HYBRID = """name: tiny-hybrid
d_model: 64
vocab_size: 64
tie_embeddings: true
layout: mamba2, attn, mamba2, attn
blocks:
  mamba2: {d_state: 16, expand: 2, headdim: 16, ngroups: 1, chunk_size: 16}
  attn: {heads: 4}
"""
DATA = "mqar:seq=32,pairs=4,vocab=64"
COMMON = ["--data", DATA, "--steps", "10", "--batch", "8", "--no-progress", "--threads", "1"]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def losses(rundir, key: str = "loss") -> dict[int, float]:
    with open(os.path.join(rundir, "metrics.jsonl")) as f:
        return {r["step"]: r[key] for r in map(json.loads, f)}


def rel(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(abs(a[k] - b[k]) / abs(a[k]) for k in a)


def refused(capsys, argv, *needles) -> str:
    """`archdsl argv` exits 2 with every needle in its error output; returns that output."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    return err


def torchrun(args, nproc=2, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                        "-m", "archdsl", "train", *args], capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_learns_mqar(tmp_path):
    spec = write(tmp_path, "h.yaml", HYBRID)
    out = train(TrainConfig(spec=spec, data=DATA, steps=150, batch=32, lr=3e-3, warmup=10, rundir=str(tmp_path / "r"),
                            progress=False, cpu_threads=1))
    with open(tmp_path / "r" / "metrics.jsonl") as f:
        rec = [json.loads(ln) for ln in f]
    assert len(rec) == 150 and out["losses"][150] == rec[-1]["loss"]
    first = np.mean([r["loss"] for r in rec[:5]])
    last = np.mean([r["loss"] for r in rec[-10:]])
    acc = np.mean([r["acc"] for r in rec[-10:]])
    chance = 1 / 32  # values are drawn from 32 tokens
    print(f"MQAR: loss {first:.3f} → {last:.3f}, accuracy {acc:.3f} (chance {chance:.3f})")
    assert last < first - 1.0 and acc > 4 * chance
    assert all(k in rec[0] for k in ("tokens_per_s", "mfu", "lr", "grad_norm"))


def test_two_processes_match_one_shared_block_ckpt_resume_export(tmp_path):
    spec = write(tmp_path, "z.yaml", ZAMBA)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["train", spec, *COMMON, "-o", one, "--save-every", "5"]) == 0
    # 2 processes, activation checkpointing on: a shared block gathered at each use, and recomputed
    torchrun([spec, *COMMON, "-o", two, "--save-every", "5", "--grad-ckpt"])
    a, b = losses(one), losses(two)
    print(f"zamba 1 vs 2 processes: max relative difference {rel(a, b):.2e}")
    assert rel(a, b) < 1e-4
    assert len(os.listdir(os.path.join(two, "checkpoints", "step_00000005"))) >= 3  # a shard per rank + meta
    # resume the 2-process run at step 5 in 1 process, and the 1-process run in 1 process
    for src, name in ((two, "resumed21"), (one, "resumed11")):
        dst = str(tmp_path / name)
        shutil.copytree(src, dst)
        shutil.rmtree(os.path.join(dst, "checkpoints", "step_00000010"))
        assert main(["train", spec, *COMMON, "-o", dst, "--resume"]) == 0
        c = losses(dst)
        print(f"{name}: max relative difference to the uninterrupted run {rel(a, c):.2e}")
        assert rel(a, c) < 1e-4
    # export both runs' final checkpoints: the same weights, loadable, the same logits
    assert main(["export-checkpoint", one, "-o", str(tmp_path / "e1")]) == 0
    assert main(["export-checkpoint", two, "-o", str(tmp_path / "e2")]) == 0
    m1, m2 = archdsl.load(str(tmp_path / "e1")), archdsl.load(str(tmp_path / "e2"))
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), n
    fresh = archdsl.compile(spec, seed=0)
    assert not torch.equal(fresh.layers[0].mixer.in_proj.weight, m1.layers[0].mixer.in_proj.weight)  # trained
    shared = [layer.inject for layer in m1.layers if layer.inject is not None]
    assert len(shared) == 2 and shared[0] is shared[1]


@pytest.mark.parametrize("text", [JAMBA, BALANCED], ids=["aux_loss", "balance_rate"])
def test_moe_two_processes_match_one(tmp_path, text):
    """The balancing loss, or the score bias's steps (balance_rate), see the loads of the global batch."""
    spec = write(tmp_path, "j.yaml", text)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["train", spec, *COMMON, "-o", one]) == 0
    torchrun([spec, *COMMON, "-o", two])
    print(f"MoE 1 vs 2 processes: max relative difference {rel(losses(one), losses(two)):.2e}")
    assert rel(losses(one), losses(two)) < 1e-4
    if text is JAMBA:  # the logged balancing loss is the whole batch's, not rank 0's share (1e-3 off)
        aux = [losses(run, "aux_loss") for run in (one, two)]
        assert rel(*aux) < 1e-5, aux
    if text is BALANCED:  # 10 steps of ±0.01 from zero, the same on both
        assert main(["export-checkpoint", one, "-o", str(tmp_path / "m1")]) == 0
        assert main(["export-checkpoint", two, "-o", str(tmp_path / "m2")]) == 0
        b1, b2 = (archdsl.load(tmp_path / m).layers[1].ffn.router.e_score_correction_bias for m in ("m1", "m2"))
        assert torch.equal(b1, b2) and b1.abs().max() > 0 and b1.abs().max() <= 0.1 + 1e-6


def test_moe_micro_batches_balance_the_same_rows_on_any_number_of_processes(tmp_path):
    """With --micro-batch the balancing loss is each micro-batch's own, over its M rows: 2 processes of 2 micro-batches
    of 2 rows balance the groups 1 process of 4 micro-batches does (the loads had been all-reduced across the
    processes, so a group was M × processes rows: 1.3e-3 apart, the first step's aux_loss 0.40885 against 0.40615)."""
    spec = write(tmp_path, "j.yaml", JAMBA)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    assert main(["train", spec, *COMMON, "-o", one, "--micro-batch", "2"]) == 0
    torchrun([spec, *COMMON, "-o", two, "--micro-batch", "2"])
    assert rel(losses(one), losses(two)) < 1e-5
    aux = [losses(run, "aux_loss") for run in (one, two)]
    assert rel(*aux) < 1e-5, aux


@pytest.mark.parametrize("text", [HYBRID, BALANCED], ids=["hybrid", "balance_rate"])
def test_micro_batches_take_the_same_steps(tmp_path, text):
    """--micro-batch 2 (4 forwards and backwards a step, the gradients accumulated) gives the losses of the whole
    batch at once, and with DeepSeek-V3's balancing the same score biases (the loads of every micro-batch); in 2
    processes (each its 4 rows as 2 micro-batches of 2) too."""
    spec = write(tmp_path, "s.yaml", text)
    runs = {name: str(tmp_path / name) for name in ("whole", "micro", "micro2")}
    assert main(["train", spec, *COMMON, "-o", runs["whole"]]) == 0
    assert main(["train", spec, *COMMON, "-o", runs["micro"], "--micro-batch", "2"]) == 0
    torchrun([spec, *COMMON, "-o", runs["micro2"], "--micro-batch", "2"])
    for name in ("micro", "micro2"):
        print(f"{name}: max relative difference to the whole batch {rel(losses(runs['whole']), losses(runs[name])):.2e}")
        assert rel(losses(runs["whole"]), losses(runs[name])) < 1e-4
    with open(os.path.join(runs["micro"], "run.json")) as f:
        assert json.load(f)["config"]["micro_batch"] == 2
    if text is BALANCED:
        biases = []
        for name in runs:
            assert main(["export-checkpoint", runs[name], "-o", str(tmp_path / f"m_{name}")]) == 0
            biases.append(archdsl.load(tmp_path / f"m_{name}").layers[1].ffn.router.e_score_correction_bias)
        assert biases[0].abs().max() > 0 and all(torch.equal(biases[0], b) for b in biases[1:])


def test_micro_batch_must_divide_each_share(tmp_path, capsys):
    """Refused before any work, with the share it must divide (on one process and on two)."""
    spec = write(tmp_path, "s.yaml", HYBRID)
    refused(capsys, ["train", spec, *COMMON, "-o", str(tmp_path / "r"), "--micro-batch", "3"],
            "--micro-batch 3 does not divide each process's share of the batch, 8 sequences", "divides 8")
    r = torchrun([spec, *COMMON, "-o", str(tmp_path / "r2"), "--micro-batch", "8"], check=False)
    assert r.returncode != 0 and "share of the batch, 4 sequences (--batch 8 over 2 processes)" in r.stderr, r.stderr
    refused(capsys, ["train", spec, *COMMON, "-o", str(tmp_path / "r"), "--micro-batch", "0"], "--micro-batch")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("which, extra", [("zamba", ["--grad-ckpt"]), ("jamba", []), ("jamba", ["--bf16"])])
def test_gpu_two_gpus_match_one(tmp_path, which, extra):
    """FSDP2 over NCCL, one GPU a process: 2 processes give 1 process's losses on the card (the Triton kernels,
    the shared block gathered at each use, MoE's balancing loss over the global batch); with --bf16 as well,
    within bf16's rounding. Then the 2-GPU run resumes from its step-5 checkpoint in 1 process on the GPU."""
    spec = write(tmp_path, f"{which}.yaml", ZAMBA if which == "zamba" else JAMBA)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    args = [spec, *COMMON, "--device", "cuda", "--save-every", "5", *extra]
    assert main(["train", *args, "-o", one]) == 0
    torchrun([*args, "-o", two])
    a, b = losses(one), losses(two)
    tol = 2e-2 if "--bf16" in extra else 1e-3
    print(f"{which} {extra} 1 vs 2 GPUs: max relative difference {rel(a, b):.2e}")
    assert rel(a, b) < tol
    shutil.rmtree(os.path.join(two, "checkpoints", "step_00000010"))
    assert main(["train", *args, "-o", two, "--resume"]) == 0
    print(f"resumed 2 → 1 GPU: {rel(a, losses(two)):.2e}")
    assert rel(a, losses(two)) < tol


def test_token_file_and_bad_inputs(tmp_path, capsys):
    spec = write(tmp_path, "z.yaml", ZAMBA)
    rng = np.random.default_rng(0)
    good = tmp_path / "train.bin"
    rng.integers(0, 64, 4096, dtype=np.uint16).tofile(good)
    args = ["--steps", "3", "--batch", "4", "--seq-len", "32", "--no-progress", "--threads", "1"]
    assert main(["train", spec, "--data", str(good), *args, "-o", str(tmp_path / "ok")]) == 0
    assert len(losses(str(tmp_path / "ok"))) == 3

    bad = lambda argv, *needles: refused(capsys, argv, *needles)  # noqa: E731

    run = lambda data, out="x": ["train", spec, "--data", data, *args, "-o", str(tmp_path / out)]  # noqa: E731
    bad(run(str(tmp_path / "missing.bin")), "no such data file")
    bad(run(str(tmp_path)), f"--data: {tmp_path} is a directory")
    bad(run(os.devnull), f"--data: {os.devnull} is not a regular file")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00" * 100 + b"\x01")
    bad(run(str(odd)), "not a whole number of uint16 tokens")
    wide = tmp_path / "wide.bin"
    rng.integers(0, 64, 4096, dtype=np.uint32).tofile(wide)
    assert main(["train", spec, "--data", f"{wide}:uint32", *args, "-o", str(tmp_path / "ok32")]) == 0
    bad(run(str(wide)), "every second uint16 token of the first 8,192 is 0", f"give {wide}:uint32")  # read as pairs
    for name, text in (("ascii.txt", "the state space model " * 400), ("utf8.md", "état d'espace — 状態 " * 400),
                       ("bom.txt", "\ufeff" + "the state space model " * 400),  # a BOM, a form feed: taken as ids
                       ("ff.txt", "the state \x0cspace model " * 400)):
        (tmp_path / name).write_text(text, encoding="utf-8")  # trained as byte pairs, loss 10.8, where in vocab
        bad(run(str(tmp_path / name)), f"--data {tmp_path / name}: reads as text, not as uint16 token ids",
            "tokenize it first")
    big = tmp_path / "big.bin"
    np.full(4096, 100, dtype=np.uint16).tofile(big)
    bad(run(str(big)), "token 100 is outside the model's vocabulary (64)")
    bad(run(f"{wide}:int8"), "unknown token dtype")
    short = tmp_path / "short.bin"
    np.arange(10, dtype=np.uint16).tofile(short)
    bad(run(str(short)), "fewer than one sequence")
    bad(run("mqar:seq=32,pears=4"), "unknown argument 'pears'")
    bad(run("mqra:seq=32"), "mqar")
    bad(run("mqar:seq=32,pairs=4,vocab=128"), "exceeds the model's vocab_size")
    # a checkpoint of another spec; an existing run without --resume
    other = write(tmp_path, "o.yaml", ZAMBA.replace("lora=4", "lora=8"))
    bad(["train", other, "--data", str(good), *args, "-o", str(tmp_path / "ok"), "--resume"], "another spec")
    bad(["train", spec, "--data", str(good), *args, "-o", str(tmp_path / "ok")], "--resume")
    bad(["export-checkpoint", str(tmp_path / "nothing"), "-o", str(tmp_path / "e")], "run.json")
    dmg = tmp_path / "dmg"
    shutil.copytree(tmp_path / "ok", dmg)
    os.remove(dmg / "checkpoints" / "step_00000003" / "__0_0.distcp")
    resume = ["train", spec, "--data", str(good), *args, "-o", str(dmg), "--resume"]
    bad([a if a != "3" else "5" for a in resume], "cannot resume, every checkpoint is damaged", "__0_0.distcp: missing")
    bad(["export-checkpoint", str(dmg), "-o", str(tmp_path / "e")], "cannot export, every checkpoint is damaged",
        "__0_0.distcp: missing")
    bad(["export-checkpoint", str(dmg), "--step", "3", "-o", str(tmp_path / "e")],
        "cannot export step 3, its checkpoint is damaged", "__0_0.distcp: missing")
    # a vocabulary past uint16 with no dtype given: uint32 ids had been read as their 16-bit halves
    llama = write(tmp_path, "l.yaml", ZAMBA.replace("vocab_size: 64", "vocab_size: 128256"))
    assert "vocab_size: 128256" in open(llama).read()
    bad(["train", llama, "--data", str(wide), *args, "-o", str(tmp_path / "x")],
        "the model's vocabulary of 128,256 ids does not fit uint16 tokens", f"{wide}:uint32")
    assert main(["train", spec, "--data", f"{good}, eos=5", *args, "-o", str(tmp_path / "spaced")]) == 0  # a space
    assert not os.path.exists(tmp_path / "x")  # nothing was written by the failed runs


def test_a_batch_of_eos_alone_is_a_skipped_step(tmp_path, capsys):
    """A token file padded with a run of eos: a batch whose every label is eos stopped the run ('the batch has no
    scored tokens'), and --resume drew the same batch again. It is a step skipped with a warning and a metrics line,
    checkpointed as any step, and a resume goes on past it."""
    spec = write(tmp_path, "z.yaml", ZAMBA)
    docs = np.concatenate([np.tile(np.array([3, 4, 5, 0], dtype=np.uint16), 40), np.zeros(2000, dtype=np.uint16),
                           np.tile(np.array([6, 7, 0], dtype=np.uint16), 40)])
    data = tmp_path / "padded.bin"
    docs.tofile(data)
    argv = ["train", spec, "--data", f"{data},eos=0", "--steps", "6", "--batch", "1", "--seq-len", "8",
            "--save-every", "2", "--no-progress", "--threads", "1", "-o", str(tmp_path / "r")]
    assert main([*argv, "--stop-after", "4"]) == 0
    assert re.search("warning: train: step [1-4]: the batch has no scored tokens .* the step is skipped, no update",
                     capsys.readouterr().err)
    with open(tmp_path / "r" / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and any(r.get("skipped") for r in lines)
    assert all(("loss" in r) != ("skipped" in r) for r in lines)
    assert main([*argv, "--resume"]) == 0
    with open(tmp_path / "r" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]


def test_set_changes_the_spec_trained_and_a_resume_must_repeat_it(tmp_path, capsys):
    spec = write(tmp_path, "h.yaml", HYBRID)
    args = [spec, "--data", DATA, "--steps", "2", "--batch", "4", "--no-progress", "--threads", "1"]
    run = str(tmp_path / "run")
    assert main(["train", *args, "--set", "d_model=32", "--stop-after", "1", "-o", run]) == 0
    with open(os.path.join(run, "run.json")) as f:
        saved = json.load(f)
    assert "d_model: 32" in saved["spec_yaml"] and saved["config"]["settings"] == ["d_model=32"]
    refused(capsys, ["train", *args, "--resume", "-o", run], "spec")  # the file's d_model 64: another model
    assert main(["train", *args, "--set", "d_model=32", "--resume", "-o", run]) == 0
    refused(capsys, ["train", *args, "--set", "d_model=30", "-o", str(tmp_path / "r2")], "--set d_model=30:")
    assert main(["export-checkpoint", run, "-o", str(tmp_path / "m")]) == 0
    refused(capsys, ["train", str(tmp_path / "m"), *args[1:], "--set", "d_model=64", "-o", str(tmp_path / "r3")],
            "--set: ", "is a saved model")


def test_world_size_must_divide_batch_on_every_rank(tmp_path):
    """Every rank refuses a batch that the world size does not divide before it joins the process group,
    so no rank waits for another. Under torchrun the job fails; the first rank to exit gets the other
    stopped, printed or not, so each rank is also run alone in its torchrun environment, with no peer
    to meet: it must fail the same way, at once."""
    spec = write(tmp_path, "z.yaml", ZAMBA)
    args = [spec, "--data", DATA, "--steps", "2", "--batch", "7", "--no-progress", "-o", str(tmp_path / "w")]
    msg = "global batch 7 is not divisible by the world size 2"
    r = torchrun(args, check=False)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
        one = subprocess.run([sys.executable, "-m", "archdsl", "train", *args], capture_output=True, text=True,
                             env=env, timeout=120)
        assert one.returncode != 0 and one.stderr.count(msg) == 1, one.stderr
    assert not os.path.exists(tmp_path / "w")


def test_compiled_layers_of_a_hybrid_stay_compiled():
    """--compile compiles each layer; the layers share one forward, of which torch.compile keeps a graph a layer
    kind and length regime (static, then symbolic). Jamba's demo spec passed the default limit of 8 at its
    second length, and the rest of its layers ran eagerly; now every call stays compiled (a hit would raise)."""
    import torch._dynamo

    from archdsl.train.parallel import allow_recompiles

    # config.patch, not monkeypatch: undoing a monkeypatched Dynamo setting deletes it (torch 2.13), which broke
    # every later torch.compile in the process
    with torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True):
        model = archdsl.compile(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs",
                                             "demo-jamba.yaml"), seed=0)
        allow_recompiles(len(model.layers))
        torch._dynamo.reset()
        for layer in model.layers:
            layer.compile(backend="eager")
        for L in (8, 12, 16):
            model(torch.randint(0, 100, (2, L))).square().mean().backward()


@pytest.mark.parametrize("flags, message", [
    (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--threads", "0"], "--threads: must be a positive count, got '0'"),
    (["--threads", "4g"], "--threads must be at least 1 (and below 2^31), got 4294967296"),
    (["--peak-tflops", "-1"], "--peak-tflops must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--lr", "1e300"], "--lr must be at most 1 (AdamW"),  # passed, then a RuntimeError at the first step
    (["--warmup", "20"], "--warmup 20 is longer than the run (--steps 10)"),
    (["--seed", "99999999999999999999999"], "--seed: must be in 0..2^63-1"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--device", "meta"], "--device: must be auto, cpu or cuda"),
    (["--seq-len", "64q"], "--seq-len: not a count: '64q'"),
    (["--data", "mqar:seq=abc"], "--data 'mqar:seq=abc': mqar: seq_len must be an integer"),
    (["--data", "mqar:seq=32,pairs=1.5"], "num_kv_pairs must be an integer"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, capsys, flags, message):
    argv = ["train", "mamba2(d_state=8, headdim=8)", "--data", "mqar:seq=32,pairs=2", "--steps", "10",
            "--no-progress", "-o", str(tmp_path / "run")]
    if flags[0] == "--data":
        argv[3] = flags[1]
    else:
        argv += flags
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


# A model this small trains a step in milliseconds and saves a checkpoint of kilobytes (the default d_model 768 and
# vocabulary of 50280 saved 650 MB a run: the suite wrote 12 GB).
SMALL = ("d_model=32", "vocab_size=512")
SET_SMALL = ["--set", SMALL[0], "--set", SMALL[1]]
TINY = dict(spec="mamba2(d_state=8, headdim=8)", settings=SMALL, data="mqar:seq=32,pairs=2", batch=2, progress=False,
            cpu_threads=1)


@pytest.mark.parametrize("kw, message", [
    (dict(steps=1.5), "train: steps must be an int, got 1.5 (float)"),  # trained until range(); left run.json
    (dict(steps="10"), "train: steps must be an int, got '10' (str)"),
    (dict(steps=None), "train: steps must be an int, got None (NoneType)"),
    (dict(steps=True), "train: steps must be an int, got True (bool)"),  # trained 1 step
    (dict(batch=np.float64(2)), "train: batch must be an int, got"),
    (dict(micro_batch=1.0), "train: micro_batch must be an int or None, got 1.0 (float)"),
    (dict(save_every=None), "train: save_every must be an int, got None"),
    (dict(stop_after="1"), "train: stop_after must be an int or None, got '1' (str)"),
    (dict(seq_len=True), "train: seq_len must be an int or None, got True (bool)"),
    (dict(cpu_threads=1.5), "train: cpu_threads must be an int or None, got 1.5 (float)"),
    (dict(cpu_threads=2**40), "train: --threads must be at least 1 (and below 2^31), got 1099511627776"),
    (dict(betas=(0.9,)), "train: betas must be a pair of numbers, got (0.9,) (tuple)"),
    (dict(betas=(2.0, -1)), "train: betas must be two numbers in [0, 1), got (2.0, -1.0)"),
    (dict(betas=(0.9, float("nan"))), "train: betas must be two numbers in [0, 1), got (0.9, nan)"),
    (dict(seed=2**64 - 1), "train: --seed must be in 0..2^63-1 (a signed 64-bit integer), got 18446744073709551615"),
    (dict(seed=-1), "train: --seed must be in 0..2^63-1"),
    (dict(seed="x"), "train: seed must be an int, got 'x' (str)"),
    (dict(lr="1e-3"), "train: lr must be a number, got '1e-3' (str)"),
    (dict(lr=10**400), "train: --lr must be a positive number, got inf"),
    (dict(warmup=None), "train: warmup must be a number, got None"),
    (dict(weight_decay=True), "train: weight_decay must be a number, got True (bool)"),
    (dict(grad_clip=[1]), "train: grad_clip must be a number, got [1] (list)"),
    (dict(min_lr_ratio="0"), "train: min_lr_ratio must be a number"),
    (dict(peak_tflops="989"), "train: peak_tflops must be a number or None, got '989' (str)"),
    (dict(progress="no"), "train: progress must be True or False, got 'no' (str)"),  # was taken as True
    (dict(compile=1), "train: compile must be True or False, got 1 (int)"),
    (dict(bf16=None), "train: bf16 must be True or False"),
    (dict(grad_ckpt=0), "train: grad_ckpt must be True or False"),
    (dict(resume="yes"), "train: resume must be True or False"),
    (dict(device=None), "train: device must be a str, got None (NoneType)"),
    (dict(data=None), "train: data must be a str or os.PathLike, got None (NoneType)"),
    (dict(spec=3), "train: spec must be a str or os.PathLike, got 3 (int)"),
    (dict(rundir=b"run"), "train: rundir must be a str or os.PathLike, got b'run' (bytes)"),
    (dict(settings="d_model=32"), "train: settings must be a tuple of str, got 'd_model=32' (str)"),
    (dict(steps=10**30), "train: --steps 1000000000000000000000000000000 is too large (at most 2^40"),  # ran forever
    (dict(batch=10**30), "train: --batch 1000000000000000000000000000000 is too large"),  # torch's TypeError
    (dict(save_every=2**41), "train: --save-every 2199023255552 is too large"),
])
def test_config_fields_of_a_wrong_type_are_refused_before_anything_is_written(tmp_path, kw, message):
    """The Python API's TrainConfig checks every field's type, not only its range: a float --steps trained until
    range() failed and left run.json behind, so that the retry was refused; a str seed, a bool step count, a short
    betas failed in torch or json, or silently did something else."""
    kw = {**TINY, "steps": 2, "rundir": str(tmp_path / "run"), **kw}
    with pytest.raises(archdsl.ArchDSLError) as e:
        train(TrainConfig(**kw))
    assert message in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_every_config_field_has_a_kind():
    from dataclasses import fields

    from archdsl.train.config import FIELDS, KINDS

    assert list(FIELDS) == [f.name for f in fields(TrainConfig)] and set(FIELDS.values()) <= set(KINDS)
    with pytest.raises(archdsl.ArchDSLError, match="train: expected a TrainConfig, got dict"):
        train({"spec": "mamba2", "data": "mqar", "steps": 1, "rundir": "run"})


def test_numpy_numbers_are_taken_and_export_checkpoint_checks_its_arguments(tmp_path):
    """numpy's integers and floats are kept as Python's (np.int64 steps failed writing run.json, leaving an empty
    run directory); export_checkpoint refuses a step that is not an int (step="1" said 'no checkpoint at step 1')
    and a rundir or out that is not a path, before anything is read or written."""
    from archdsl.train import export_checkpoint

    run = tmp_path / "run"
    cfg = TrainConfig(**{**TINY, "steps": np.int64(2), "seed": np.uint64(3), "lr": np.float32(1e-3),
                         "betas": [0.9, 0.95], "settings": ["d_model=16"]}, rundir=run)
    assert (type(cfg.steps), type(cfg.seed), type(cfg.lr), cfg.betas, cfg.settings, cfg.rundir) == \
        (int, int, float, (0.9, 0.95), ("d_model=16",), str(run))
    train(cfg)
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["steps"] == 2 and config["seed"] == 3 and config["betas"] == [0.9, 0.95]
    out = tmp_path / "e"
    for kw, message in ((dict(step="1"), "export_checkpoint: step must be an int or None (the newest that loads), "
                                         "got '1' (str)"),
                        (dict(step=True), "export_checkpoint: step must be an int or None"),
                        (dict(rundir=None), "export_checkpoint: rundir: expected a run directory (str or "
                                            "os.PathLike), got NoneType"),
                        (dict(rundir=""), "export_checkpoint: rundir: expected a run directory, got an empty string"),
                        (dict(out=3), "export_checkpoint: out: expected a directory to write (str or os.PathLike), "
                                      "got int"),
                        (dict(dtype="int7"), "export_checkpoint: dtype: unknown dtype 'int7'"),
                        (dict(skipped=()), "export_checkpoint: skipped must be a list")):
        with pytest.raises(archdsl.ArchDSLError) as e:
            export_checkpoint(**{"rundir": run, "out": out, **kw})
        assert message in str(e.value), str(e.value)
        assert not out.exists()
    assert export_checkpoint(run, out, step=np.int64(2))[1] == 2


def test_a_new_run_that_fails_before_its_first_step_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure before the first step is recorded (out of memory, Ctrl-C) removes the run.json and empty
    metrics.jsonl the run wrote, and the run directory it created, so that the same call can be made again; a
    run directory that was there before stays."""
    import archdsl.train.loop as loop

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    kept = tmp_path / "kept"
    kept.mkdir()
    for run in (tmp_path / "new", kept):
        monkeypatch.setattr(loop, "_accumulate", no_memory)
        with pytest.raises(RuntimeError, match="allocate"):
            train(TrainConfig(**TINY, steps=1, rundir=str(run)))
        assert not (tmp_path / "new").exists() and os.listdir(kept) == []
        monkeypatch.undo()
    train(TrainConfig(**TINY, steps=1, rundir=str(kept)))
    assert sorted(losses(kept)) == [1]


def test_run_directory_must_be_a_directory(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    base = ["train", "mamba2(d_state=8, headdim=8)", "--data", "mqar:seq=32,pairs=2", "--steps", "1", "--no-progress"]
    for out, message in ((tmp_path / "afile", "exists and is not a directory"),
                         (tmp_path / "afile" / "run", "is a file, not a directory")):
        assert main([*base, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "x"


def test_run_directory_is_neither_the_current_directory_nor_a_saved_model(tmp_path, capsys, monkeypatch):
    """-o . and -o on a saved model's or a Hugging Face model's directory are refused, as compile's -o refuses them
    (the run's files went in among the others'); a run directory is resumed into as before."""
    base = ["train", "mamba2(d_state=8, headdim=8)", *SET_SMALL, "--data", "mqar:seq=32,pairs=2", "--steps", "1",
            "--batch", "2", "--no-progress", "--threads", "1"]
    saved, hf = tmp_path / "saved", tmp_path / "hf"
    assert main(["compile", "mamba2(d_state=8, headdim=8)", "--set", "d_model=16", "-o", str(saved)]) == 0
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for out, message in ((".", "-o .: is the current directory or holds it"),
                         (str(tmp_path), "is the current directory or holds it"),
                         (str(saved), f"-o {saved}: holds a saved model (model.safetensors, spec.yaml)"),
                         (str(hf), f"-o {hf}: holds a saved model (config.json)")):
        err = refused(capsys, [*base, "-o", out], message)
        assert "Traceback" not in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path / "sub") == [] and sorted(os.listdir(saved)) == ["model.safetensors", "spec.yaml"]
    run = str(tmp_path / "run")
    assert main([*base, "-o", run]) == 0
    assert main([*base, "--steps", "2", "-o", run, "--resume"]) == 0
    assert sorted(losses(run)) == [1, 2]


def test_a_nan_loss_is_null_in_the_metrics_and_nan_weights_are_warned_of(tmp_path, capsys):
    """A saved model whose weights hold NaN: train warns of them before step 1 (as run and bench do; it said only
    `the loss is nan`), and metrics.jsonl stays strict JSON (it held a bare NaN, which strict readers refuse)."""
    saved, run = str(tmp_path / "m"), str(tmp_path / "run")
    assert main(["compile", "mamba2(d_state=8, headdim=8)", "--set", "d_model=16", "--set", "vocab_size=64",
                 "-o", saved]) == 0
    model = archdsl.load(saved)
    with torch.no_grad():
        model.embeddings.weight.fill_(float("nan"))
    model.save(saved)
    err = refused(capsys, ["train", saved, "--data", "mqar:seq=32,pairs=2", "--steps", "2", "--batch", "2",
                           "--no-progress", "--threads", "1", "-o", run], "step 1: the loss is nan")
    assert err.startswith(f"warning: {saved}: 1 weight tensor holds NaN or inf (the first: embeddings.weight)"), err

    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")

    with open(os.path.join(run, "metrics.jsonl")) as f:
        records = [json.loads(line, parse_constant=refuse) for line in f]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in records] == [(1, None, None)]


def test_packed_documents(tmp_path, capsys, monkeypatch):
    """--data FILE,eos=ID packs the documents of every window: seq_idx counts the eos tokens before each token
    in its row and the token after an eos is not scored; a hybrid of Mamba-2 and attention and a Jamba (Mamba-1,
    attention, MoE) and an RWKV-4 train on it; a model with a block that cannot pack (none does now: PACKS taken from
    S4D here) is refused before any work, as are bad eos ids."""
    from archdsl.train.data import IGNORE, parse_data
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, 4096, dtype=np.uint16)
    tokens[rng.random(4096) < 0.05] = 0  # documents of ~20 tokens, ended by 0
    path = tmp_path / "docs.bin"
    tokens.tofile(path)
    data = parse_data(f"{path},eos=0", 64, 32)
    x, y, seq = data.batch(4, torch.Generator().manual_seed(0))
    ends = x == 0
    assert ends.any() and torch.equal(seq[:, 1:] - seq[:, :-1], ends[:, :-1].long()) and (seq[:, 0] == 0).all()
    assert (y[ends] == IGNORE).all() and (y[~ends] != IGNORE).all()
    assert parse_data(str(path), 64, 32).batch(4, torch.Generator().manual_seed(0))[2] is None

    hybrid = write(tmp_path, "h.yaml", HYBRID)
    args = ["--steps", "3", "--batch", "4", "--seq-len", "32", "--no-progress", "--threads", "1"]
    assert main(["train", hybrid, "--data", f"{path},eos=0", *args, "-o", str(tmp_path / "packed")]) == 0
    assert main(["train", hybrid, "--data", str(path), *args, "-o", str(tmp_path / "plain")]) == 0
    packed, plain = losses(str(tmp_path / "packed")), losses(str(tmp_path / "plain"))
    assert all(np.isfinite(v) for v in packed.values()) and packed[1] != plain[1]
    with open(tmp_path / "packed" / "run.json") as f:
        assert "documents packed at eos 0" in json.load(f)["data"]

    jamba = write(tmp_path, "j.yaml", JAMBA)
    assert main(["train", jamba, "--data", f"{path},eos=0", *args, "-o", str(tmp_path / "jamba")]) == 0
    assert all(np.isfinite(v) for v in losses(str(tmp_path / "jamba")).values())

    bad = lambda argv, *needles: refused(capsys, argv, *needles)  # noqa: E731
    rwkv4 = write(tmp_path, "r.yaml", "name: tiny-rwkv4\nd_model: 32\nvocab_size: 64\nlayout: rwkv4+cmix, attn\n"
                                      "blocks:\n  rwkv4: {}\n  cmix: {version: 4}\n  attn: {heads: 2}\n")
    assert main(["train", rwkv4, "--data", f"{path},eos=0", *args, "-o", str(tmp_path / "rwkv4")]) == 0
    from archdsl.model.modules import MODULES
    monkeypatch.setattr(MODULES["s4d"], "PACKS", False)
    s4d = write(tmp_path, "s.yaml", "name: tiny-s4d\nd_model: 32\nvocab_size: 64\nlayout: s4d, attn\n"
                                   "blocks:\n  s4d: {d_state: 8}\n  attn: {heads: 2}\n")
    bad(["train", s4d, "--data", f"{path},eos=0", *args, "-o", str(tmp_path / "x")],
        "packing documents (eos=): layer 0's s4d carries its state from one sequence into the next")
    bad(["train", hybrid, "--data", f"{path},eos=64", *args, "-o", str(tmp_path / "x")], "eos token 64 is outside")
    bad(["train", hybrid, "--data", f"{path},eos=-1", *args, "-o", str(tmp_path / "x")], "eos= needs a token id")
    only_eos = tmp_path / "eos.bin"
    np.full(4096, 5, dtype=np.uint16).tofile(only_eos)
    bad(["train", hybrid, "--data", f"{only_eos},eos=5", *args, "-o", str(tmp_path / "x")],
        "every token is the eos token 5")
    assert not os.path.exists(tmp_path / "x")
    # a file named without a dot or a slash, found as such with its options
    shutil.copy(path, tmp_path / "tokens")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for data in ("tokens,eos=0", "tokens:uint16", "tokens:uint16,eos=0"):
            assert parse_data(data, 64, 32).path == "tokens"
    finally:
        os.chdir(cwd)


def test_resume_refuses_other_settings_and_survives_a_cut_metrics_line(tmp_path, capsys):
    """--resume with another --data, --batch, --seq-len, --lr or --bf16 than the run's is refused before any work,
    the checkpoints untouched (it went on silently: another data stream and schedule under the same run); --steps
    may change. A metrics.jsonl whose last line was cut short by the interruption resumes (it was a traceback),
    and the resumed run's losses are those of the uninterrupted run."""
    spec = write(tmp_path, "z.yaml", ZAMBA)
    tokens = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 64, 4096, dtype=np.uint16).tofile(tokens)
    other = tmp_path / "other.bin"
    np.random.default_rng(1).integers(0, 64, 4096, dtype=np.uint16).tofile(other)
    args = ["--data", str(tokens), "--steps", "4", "--batch", "4", "--seq-len", "32", "--no-progress", "--threads", "1"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main(["train", spec, *args, "-o", full]) == 0
    assert main(["train", spec, *args, "-o", cut, "--stop-after", "2"]) == 0
    before = sorted(os.listdir(os.path.join(cut, "checkpoints")))
    changed = {"--data": str(other), "--batch": "8", "--seq-len": "16", "--lr": "0.01"}
    for flag, value in changed.items():
        argv = [a if prev != flag else value for prev, a in zip([None, *args], args)]
        argv += [] if flag in args else [flag, value]
        err = refused(capsys, ["train", spec, *argv, "-o", cut, "--resume"], "--resume with other settings",
                      f"{flag} ")
        assert "Traceback" not in err
    refused(capsys, ["train", spec, *args, "--bf16", "-o", cut, "--resume"], "--bf16 on (the run's: off)")
    assert sorted(os.listdir(os.path.join(cut, "checkpoints"))) == before
    cwd = os.getcwd()  # the same file by another name is the same data: it was refused as another --data
    os.chdir(tmp_path)
    try:
        link = tmp_path / "link.bin"
        link.symlink_to(tokens)
        # the default dtype spelt out is the same data too (it was refused as another --data)
        for name in ("train.bin", "./train.bin", str(link), "train.bin:uint16"):
            assert main(["train", spec, *[name if a == str(tokens) else a for a in args], "-o", cut, "--resume",
                         "--steps", "2"]) == 2
            assert "already at step 2, and --steps 2 asks" in capsys.readouterr().err  # past the settings' check
        # where --stop-after is what ends the run, the message names it (it said to ask for more --steps)
        assert main(["train", spec, *args, "-o", cut, "--resume", "--stop-after", "2"]) == 2
        err = capsys.readouterr().err
        assert "already at step 2, and --stop-after 2 asks for no step after it" in err
        assert "give a --stop-after past 2, or leave it out" in err
        rel_run = "rel"  # a run started with a relative path resumes from another directory
        assert main(["train", spec, *["train.bin" if a == str(tokens) else a for a in args], "-o", rel_run,
                     "--stop-after", "1"]) == 0
        with open(os.path.join(rel_run, "run.json")) as f:
            assert json.load(f)["config"]["data"] == os.path.realpath(tokens)
        os.mkdir("elsewhere")
        os.chdir("elsewhere")
        assert main(["train", spec, *["../train.bin" if a == str(tokens) else a for a in args], "-o",
                     os.path.join("..", rel_run), "--resume", "--steps", "1"]) == 2
        assert "already at step 1" in capsys.readouterr().err
    finally:
        os.chdir(cwd)
    with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "lo')  # killed while writing step 3's line
    assert main(["train", spec, *args, "-o", cut, "--resume"]) == 0
    assert losses(cut) == losses(full)


def test_data_key_names_a_token_file_one_way(tmp_path):
    """A resumed run compares DATA by data_key: the same file, dtype and eos however they are written."""
    from archdsl.train.data import data_key

    tokens = tmp_path / "train.bin"
    np.zeros(64, dtype=np.uint16).tofile(tokens)
    key = data_key(str(tokens) + ",eos=50")
    for text in (str(tokens) + ":uint16,eos=50", str(tokens) + ",eos=050", str(tmp_path / "." / "train.bin") + ",eos=50"):
        assert data_key(text) == key
    assert data_key(str(tokens)) != key and data_key(str(tokens) + ":uint32") != data_key(str(tokens))
    assert data_key("mqar:seq=32") == "mqar:seq=32"


def test_resume_passes_over_damaged_checkpoints(tmp_path, capsys):
    """--resume from a run whose newest checkpoints are damaged (a file cut short, bytes garbled in its framing or
    inside a tensor, meta.json cut) continues from the newest one that loads, with a warning naming each one passed
    over, and its losses are the uninterrupted run's; it failed outright (or, for bytes inside a tensor, loaded
    them). export-checkpoint passes over the same ones to the same step (those whose damage touches the model's
    entries). When none loads: exit 2 naming each, the run directory untouched."""
    spec = write(tmp_path, "z.yaml", ZAMBA)
    args = ["--data", DATA, "--steps", "4", "--batch", "4", "--no-progress", "--threads", "1"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert main(["train", spec, *args, "-o", full]) == 0
    assert main(["train", spec, *args, "-o", cut, "--save-every", "1", "--stop-after", "3"]) == 0
    step = lambda run, s, name="": os.path.join(run, "checkpoints", f"step_{s:08d}", name)  # noqa: E731

    def cut_short(path, size=1000):
        with open(path, "r+b") as f:
            f.truncate(size)

    def garble(path):  # the length stays: only loading finds it
        with open(path, "r+b") as f:
            f.write(b"\0" * 4096)

    def model_end(path):  # where the file's last model entry ends: the optimizer's and the data's come after
        from torch.distributed.checkpoint import FileSystemReader
        entries = FileSystemReader(path).read_metadata().storage_data.items()
        return max(info.offset + info.length for index, info in entries if index.fqn.startswith("model."))

    def flip_inside(run):  # 8 bytes in the middle of the largest model tensor: the framing stays, the values change
        from torch.distributed.checkpoint import FileSystemReader
        entries = FileSystemReader(step(run, 3)).read_metadata().storage_data.items()
        info = max((info for index, info in entries if index.fqn.startswith("model.")), key=lambda i: i.length)
        with open(step(run, 3, info.relative_path), "r+b") as f:
            f.seek(info.offset + info.length // 2)
            f.write(b"\x7f" * 8)

    cases = {"truncated": (lambda r: cut_short(step(r, 3, "__0_0.distcp")),
                           [step("{r}", 3, "__0_0.distcp") + ": truncated (1,000 of "], 2),
             "garbled": (lambda r: garble(step(r, 3, "__0_0.distcp")),
                         [step("{r}", 3, "__0_0.distcp") + ": the bytes of optim."], 2),
             "inside": (flip_inside, [step("{r}", 3, "__0_0.distcp") + ": the bytes of model."], 2),
             "tail": (lambda r: cut_short(step(r, 3, "__0_0.distcp"), model_end(step(r, 3))),
                      [step("{r}", 3, "__0_0.distcp") + ": truncated ("], 2),
             "two": (lambda r: (cut_short(step(r, 3, "meta.json"), 10), garble(step(r, 2, "__0_0.distcp"))),
                     [step("{r}", 3, "meta.json") + ": does not read (JSONDecodeError", step("{r}", 2)[:-1]], 1)}
    for name, (damage, named, start) in cases.items():
        run = str(tmp_path / name)
        shutil.copytree(cut, run)
        damage(run)
        capsys.readouterr()
        # export reads the model's tensors alone, which the garbled bytes (the optimizer's first entries) and a
        # file cut short after the model's entries (a full disk on the last save) leave whole
        exported = ((named, start) if name == "truncated" else ([], 3) if name in ("garbled", "tail")
                    else (named[:1], 2))
        assert main(["export-checkpoint", run, "-o", str(tmp_path / f"export-{name}")]) == 0, name
        got = capsys.readouterr()
        assert f"at step {exported[1]}," in got.out, got
        if exported[0]:
            assert got.err.startswith(f"warning: skipped {plural(len(exported[0]), 'damaged checkpoint')} ("), got
            assert all(n.format(r=run) in got.err for n in exported[0]), got.err
            assert got.err.rstrip().endswith(f"; exported step {exported[1]}"), got.err
        else:
            assert got.err == "", got.err
        assert main(["train", spec, *args, "-o", run, "--resume"]) == 0, name
        err = capsys.readouterr().err
        assert err.startswith(f"warning: skipped {len(named)} damaged checkpoint"), err
        assert all(n.format(r=run) in err for n in named), err
        assert err.rstrip().endswith(f"; resuming from step {start} ({step(run, start)[:-1]})"), err
        assert losses(run) == losses(full), name
    bad = str(tmp_path / "bad")
    shutil.copytree(cut, bad)
    for s in (1, 2, 3):
        cut_short(step(bad, s, "__0_0.distcp"), 5 * s)
    before = {p: os.path.getsize(os.path.join(d, p)) for d, _, ps in os.walk(bad) for p in ps}
    err = refused(capsys, ["train", spec, *args, "-o", bad, "--resume"], f"error: {bad}: cannot resume, every "
                  f"checkpoint is damaged: {step(bad, 3, '__0_0.distcp')}: truncated (15 of ",
                  f"{step(bad, 1, '__0_0.distcp')}: truncated (5 of ", "train again into another -o RUNDIR")
    assert "Traceback" not in err and "warning" not in err
    refused(capsys, ["export-checkpoint", bad, "-o", str(tmp_path / "e")], f"error: {bad}: cannot export, every "
            f"checkpoint is damaged: {step(bad, 3, '__0_0.distcp')}: truncated (15 of ")
    refused(capsys, ["export-checkpoint", bad, "--step", "2", "-o", str(tmp_path / "e")], f"error: {bad}: cannot "
            f"export step 2, its checkpoint is damaged: {step(bad, 2, '__0_0.distcp')}: truncated (10 of ")
    assert not os.path.exists(tmp_path / "e")
    assert {p: os.path.getsize(os.path.join(d, p)) for d, _, ps in os.walk(bad) for p in ps} == before


def test_run_directory_contents_are_checked_before_any_work(tmp_path, capsys):
    """checkpoints/ a file (the run trained every step, then failed writing its checkpoint: exit 1), metrics.jsonl
    a directory, or the run.json of an earlier run that wrote no checkpoint (overwritten, with its metrics): exit 2
    before any work, nothing changed. A token file of exactly one window (seq-len + 1 tokens) trains; it was
    refused as 'fewer than one sequence of 32 + 1'."""
    tokens = tmp_path / "train.bin"
    np.arange(33, dtype=np.uint16).tofile(tokens)
    base = ["train", "mamba2(d_state=8, headdim=8)", *SET_SMALL, "--data", str(tokens), "--seq-len", "32",
            "--steps", "1", "--batch", "2", "--no-progress", "--threads", "1"]
    assert main([*base, "-o", str(tmp_path / "one")]) == 0
    for name, make, message in (("checkpoints", lambda p: p.write_text("x"), "checkpoints is not a directory"),
                                ("metrics.jsonl", lambda p: p.mkdir(), "metrics.jsonl is not a file"),
                                ("run.json", lambda p: p.write_text("{}"), "holds an earlier run")):
        rundir = tmp_path / f"r-{name}"
        rundir.mkdir()
        make(rundir / name)
        err = refused(capsys, [*base, "-o", str(rundir)], message)
        assert "Traceback" not in err and os.listdir(rundir) == [name]


def test_weight_decay_spares_vectors_and_dynamics(tmp_path):
    """AdamW's weight decay falls on weight matrices only: not on Mamba's A_log [D, N] (mamba_ssm's
    `_no_weight_decay`), S4D's log_A_real / A_imag, RWKV's time_* mixes and decays ([1, 1, D] vectors,
    RWKV-LM decays `.weight` matrices only); those were decayed to 0 (A = -1, no token shift)."""
    from archdsl.train.loop import make_optimizer

    spec = write(tmp_path, "m.yaml", "name: wd\nd_model: 32\nvocab_size: 64\nlayout: mamba, rwkv6(head_size=16)+cmix, "
                 "s4d, attn+moe\n")
    model = archdsl.compile(archdsl.load_spec(spec), device="cpu", seed=0)
    cfg = TrainConfig(spec=spec, data=DATA, steps=1, rundir=str(tmp_path / "r"), weight_decay=0.1)
    decay, rest = make_optimizer(cfg, model, torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    name = {id(p): n.rpartition(".")[2] for n, p in model.named_parameters()}
    decayed = {name[id(p)] for p in decay["params"]}
    assert decayed == {"weight", "C", "gate_up_proj", "down_proj"}, decayed
    spared = {name[id(p)] for p in rest["params"]}
    assert {"A_log", "log_A_real", "A_imag", "time_maa_x", "time_decay", "time_faaaa", "time_maa_k"} <= spared
    assert all(p.dim() >= 2 for p in decay["params"])


def test_a_checkpoint_grouped_by_the_old_decay_rule_resumes(tmp_path, monkeypatch):
    """A run whose checkpoint grouped the optimizer by the earlier rule (decay on every matrix: A_log, log_A_real
    in the decay group) resumes under today's groups; it failed in AdamW's step with KeyError 'betas'."""
    import archdsl.train.loop as loop

    spec = write(tmp_path, "m.yaml", "name: wd\nd_model: 32\nvocab_size: 64\nlayout: mamba, s4d, attn\n")
    args = ["train", spec, "--data", DATA, "--steps", "4", "--batch", "4", "--no-progress", "--threads", "1",
            "--save-every", "2", "-o", str(tmp_path / "r")]
    monkeypatch.setattr(loop, "decays", lambda name, p: p.dim() >= 2)
    assert main([*args, "--stop-after", "2"]) == 0
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert sorted(losses(str(tmp_path / "r"))) == [1, 2, 3, 4]


def test_interrupted_checkpoint_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    """Ctrl-C while a checkpoint is being written: its temporary directory is removed (it stayed, a
    half-written .tmp_step_N); one left by a SIGKILL is removed when the run resumes; the resumed run's
    losses are those of the uninterrupted run."""
    import torch.distributed.checkpoint as dcp

    spec = write(tmp_path, "z.yaml", ZAMBA)
    kw = dict(spec=spec, data=DATA, steps=4, batch=2, save_every=2, progress=False, cpu_threads=1)
    train(TrainConfig(**kw, rundir=str(tmp_path / "full")))
    save = dcp.save

    def interrupted(state, checkpoint_id):
        save(state, checkpoint_id=checkpoint_id)
        if checkpoint_id.endswith("step_00000004"):
            raise KeyboardInterrupt

    monkeypatch.setattr(dcp, "save", interrupted)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**kw, rundir=str(cut)))
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_00000002"]
    monkeypatch.setattr(dcp, "save", save)
    (cut / "checkpoints" / ".tmp_step_00000003").mkdir()  # a save killed by SIGKILL
    train(TrainConfig(**kw, rundir=str(cut), resume=True))
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_00000002", "step_00000004"]
    assert losses(cut) == losses(tmp_path / "full")


def test_a_checkpoint_save_that_fails_is_said_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A full disk or Ctrl-C while DCP writes a checkpoint: exit 2 naming the checkpoint and the cause, or 130
    'interrupted', and no temporary directory left. DCP wraps every rank's exception in its CheckpointException (a
    BaseException), which escaped the CLI as a traceback."""
    import errno

    def fsync(exc):
        def f(fd):
            raise exc
        return f

    args = ["train", "mamba2(d_state=8, headdim=8)", *SET_SMALL, "--data", DATA, "--steps", "1", "--batch", "2",
            "--no-progress", "--threads", "1"]
    full = f"error: {tmp_path / 'r0' / 'checkpoints' / 'step_00000001'}: cannot write the checkpoint (No space left " \
           f"on device)"
    for exc, rc, message in ((OSError(errno.ENOSPC, "No space left on device"), 2, full),
                             (KeyboardInterrupt(), 130, "interrupted")):
        rundir = tmp_path / f"r{rc // 130}"
        monkeypatch.setattr(os, "fsync", fsync(exc))  # DCP syncs each file it writes
        capsys.readouterr()
        assert main([*args, "-o", str(rundir)]) == rc
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert os.listdir(rundir / "checkpoints") == []


def test_the_schedule_ends_at_its_floor():
    """Linear warmup to lr at the warmup's last step, then cosine to lr · min_lr_ratio at the run's last step
    (torchtitan's count); the cosine started one step late, held the peak twice and ended at 0.186·lr."""
    from archdsl.train.loop import lr_at

    cfg = TrainConfig(spec="mamba2", data="mqar", steps=10, rundir="run", warmup=5, lr=1.0)
    lrs = [lr_at(cfg, s) for s in range(10)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # below the peak from the first step after the warmup
    assert lr_at(TrainConfig(spec="mamba2", data="mqar", steps=1, rundir="run", warmup=0, lr=1.0), 0) == 0.1


@pytest.mark.parametrize("meta, why", [("[]", "does not read (ValueError: a JSON list, not an object)"),
                                       ('"x"', "does not read (ValueError: a JSON str, not an object)"),
                                       ("[" * 100000, "does not read"),
                                       (None, "its sha256 map is garbled (a str)")])
def test_a_meta_json_of_the_wrong_shape_is_damage(tmp_path, meta, why):
    """JSON that is not an object was a TypeError traceback (resume, export); nested too deeply, an error naming no
    file; a garbled sha256 map was taken for an old checkpoint's and nothing was checked."""
    from archdsl.train.checkpoint import damage

    run = str(tmp_path / "run")
    train(TrainConfig(**{**TINY, "steps": 1, "rundir": run}))
    path = os.path.join(run, "checkpoints", "step_00000001")
    meta_file = os.path.join(path, "meta.json")
    if meta is None:
        old = json.loads(open(meta_file).read())
        meta = json.dumps({**old, "sha256": "x"})
    with open(meta_file, "w") as f:
        f.write(meta)
    assert damage(path).startswith(f"{meta_file}: {why}"), damage(path)


def test_a_failed_new_run_removes_only_what_it_made(tmp_path, monkeypatch):
    """A new run failing before its first step removes the missing parents of RUNDIR it made (a/b/c left a/b
    behind), and keeps an empty checkpoints/ that was there before it (it was removed)."""
    import archdsl.train.loop as loop

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(loop, "_accumulate", no_memory)
    (tmp_path / "kept" / "checkpoints").mkdir(parents=True)
    for run in (tmp_path / "a" / "b" / "c", tmp_path / "kept"):
        with pytest.raises(RuntimeError, match="allocate"):
            train(TrainConfig(**TINY, steps=1, rundir=run))
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == ["checkpoints"]


def test_parse_data_refuses_arguments_of_the_wrong_type(tmp_path):
    """parse_data names a wrong-typed argument (an int text was an AttributeError, vocab_size "64" a TypeError) and
    takes an os.PathLike text."""
    from archdsl.train.data import parse_data

    for args, message in (((5, 64), "parse_data: text must be a str or os.PathLike, got 5 (int)"),
                          (("mqar:seq=16,pairs=2", "64"), "parse_data: vocab_size must be a positive int, got '64'"),
                          (("mqar:seq=16,pairs=2", 0), "parse_data: vocab_size must be a positive int, got 0"),
                          (("mqar:pairs=2", 64, 16.0), "parse_data: seq_len must be an int of at least 2 or None")):
        with pytest.raises(archdsl.ArchDSLError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_data(*args)
    f = tmp_path / "t.bin"
    (np.arange(40) % 64).astype(np.uint16).tofile(f)
    assert parse_data(f, np.int64(64), 16).seq_len == 16


def test_a_run_or_export_directory_with_a_control_character_is_refused(tmp_path, capsys):
    """TrainConfig(rundir="run\\x00dir") was refused only inside train() and as "-o" (the CLI's name, not the
    argument's); export_checkpoint(run, "o\\nut") likewise. Now each names its argument, before anything is read or
    written, and the CLI still says -o."""
    from archdsl.train import export_checkpoint

    for char in ("\x00", "\n", "\x1b"):
        rundir = str(tmp_path / f"run{char}dir")
        with pytest.raises(archdsl.ArchDSLError) as e:
            TrainConfig(**{**TINY, "steps": 1, "rundir": rundir})
        assert str(e.value) == f"train: rundir: the path {rundir!r} holds the control character {char!r}; give one " \
                               f"without"
        out = str(tmp_path / f"o{char}ut")
        with pytest.raises(archdsl.ArchDSLError) as e:
            export_checkpoint(tmp_path / "missing", out)  # said before the run directory is read
        assert str(e.value).startswith(f"export_checkpoint: out: the path {out!r} holds the control character"
                                       if char != "\x00" else f"export_checkpoint: out: the directory to write "
                                                               f"{out!r} holds a NUL byte")  # as any path given
    out = str(tmp_path / "o\nut")
    assert main(["export-checkpoint", str(tmp_path / "missing"), "-o", out]) == 2
    assert capsys.readouterr().err.startswith(f"error: -o: the path {out!r} holds the control character '\\n'")
    assert list(tmp_path.iterdir()) == []


TINY_ARGS = ["train", TINY["spec"], *SET_SMALL, "--data", TINY["data"], "--batch", "2", "--no-progress", "--threads",
             "1"]


def test_a_full_disk_inside_torch_save_is_an_error_naming_the_checkpoint(tmp_path, capsys, monkeypatch):
    """On a full disk torch.save's zip writer raises a RuntimeError ('unexpected pos'), not an OSError: DCP's
    CheckpointException escaped as a 40-line traceback (exit 1). Any failure of the save is now an error naming the
    checkpoint and the cause (exit 2), and the half-written temporary directory is removed."""
    import io

    save = torch.save

    def short_write(obj, f, *args, **kw):  # half the bytes reach the file, then the zip writer finds its position off
        if isinstance(f, io.BytesIO):
            return save(obj, f, *args, **kw)
        buf = io.BytesIO()
        save(obj, buf, *args, **kw)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", short_write)
    rundir = tmp_path / "r"
    ckpt = rundir / "checkpoints" / "step_00000001"
    err = refused(capsys, [*TINY_ARGS, "--steps", "1", "-o", str(rundir)],
                  f"error: {ckpt}: cannot write the checkpoint (RuntimeError: ", "unexpected pos 704 vs 598")
    assert "Traceback" not in err and os.listdir(rundir / "checkpoints") == []


def test_a_run_json_or_meta_json_of_the_wrong_shape(tmp_path, capsys):
    """JSON that parses but has the wrong shape: a meta.json whose spec_sha256 or step has the wrong type was a
    TypeError traceback (resume, export); now that checkpoint is passed over as damaged, with the warning. A run.json
    that is not an object, whose config is not one (or holds a setting of the wrong type), or without spec_yaml was a
    TypeError, AttributeError or KeyError traceback in check_settings and export_checkpoint; now exit 2 naming the
    file and what is wrong. A metrics.jsonl line whose step is not a number is dropped on resume (a TypeError)."""
    run = tmp_path / "run"
    assert main([*TINY_ARGS, "--steps", "2", "--save-every", "1", "-o", str(run)]) == 0
    for meta in ('{"step": 2, "spec_sha256": 5}', '{"step": "2", "spec_sha256": "ab"}'):
        bad = tmp_path / "meta"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(run, bad)
        meta_file = bad / "checkpoints" / "step_00000002" / "meta.json"
        meta_file.write_text(meta)
        warned = f"warning: skipped 1 damaged checkpoint ({meta_file}: does not read (ValueError: "
        capsys.readouterr()
        assert main(["export-checkpoint", str(bad), "-o", str(tmp_path / "e")]) == 0
        out = capsys.readouterr()
        assert out.err.startswith(warned) and "exported step 1" in out.err and "at step 1," in out.out, out
        shutil.rmtree(tmp_path / "e")
        with open(bad / "metrics.jsonl", "a") as f:
            f.write('{"step": "x"}\n{"step": true}\n')
        assert main([*TINY_ARGS, "--steps", "3", "-o", str(bad), "--resume"]) == 0
        assert capsys.readouterr().err.startswith(warned)
        assert sorted(losses(bad)) == [1, 2, 3]
    original = (run / "run.json").read_text()
    spec_yaml = json.loads(original)["spec_yaml"]
    run_json = str(run / "run.json")
    for text, why in (("[1, 2]", "a JSON list, not an object"),
                      ("null", "a JSON null, not an object"),
                      ('{"config": 5}', '"spec_yaml" is missing'),
                      (json.dumps({"spec_yaml": 5}), '"spec_yaml" must be a str, got 5 (int)'),
                      (json.dumps({"spec_yaml": spec_yaml, "config": 5}), '"config" must be an object, got 5 (int)'),
                      (json.dumps({"spec_yaml": spec_yaml, "config": [1]}), '"config" must be an object, got [1]'),
                      (json.dumps({"spec_yaml": spec_yaml, "config": {"batch": "2"}}),
                       "config.batch must be an int, got '2' (str)"),
                      (json.dumps({"spec_yaml": spec_yaml, "config": {"data": 5}}),
                       "config.data must be a str, got 5 (int)")):
        (run / "run.json").write_text(text)
        for argv in ([*TINY_ARGS, "--steps", "3", "-o", str(run), "--resume"],
                     ["export-checkpoint", str(run), "-o", str(tmp_path / "e")]):
            err = refused(capsys, argv, f"error: {run_json}: {why}")
            assert "Traceback" not in err
    (run / "run.json").write_text(original)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: the number of processes must be at least 1"),  # ZeroDivisionError
    ({"WORLD_SIZE": "-2"}, "WORLD_SIZE=-2: the number of processes must be at least 1"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "RANK=5: must be in 0..1 (WORLD_SIZE=2)"),  # accepted, failed at the rendezvous
    ({"RANK": "1"}, "RANK=1: must be in 0..0 (WORLD_SIZE unset: 1)"),
    ({"WORLD_SIZE": "2", "RANK": "-1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "RANK=-1: must be in 0..1 (WORLD_SIZE=2)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "LOCAL_RANK=2: must be in 0..1 (WORLD_SIZE=2)"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR is not set"),  # ValueError traceback at the rendezvous
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost"}, "MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "http"},
     "MASTER_PORT=http: must be a port number in 1..65535"),
    ({"WORLD_SIZE": "x"}, "WORLD_SIZE=x: must be an integer"),
])
def test_a_bad_torchrun_environment_is_refused_before_any_work(tmp_path, capsys, monkeypatch, env, message):
    """WORLD_SIZE below 1, a RANK or LOCAL_RANK outside 0..WORLD_SIZE-1, and MASTER_ADDR / MASTER_PORT missing or
    bad where WORLD_SIZE > 1 (a stray environment, a launcher other than torchrun) are refused naming the variable,
    exit 2, before the process group and before anything is written; they were a ZeroDivisionError, a rendezvous
    ValueError traceback, or accepted."""
    from archdsl.train.parallel import world_from_env

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(archdsl.ArchDSLError) as e:
        world_from_env()
    assert str(e.value).startswith(f"bad torchrun environment: {message}"), str(e.value)
    err = refused(capsys, [*TINY_ARGS, "--steps", "1", "-o", str(tmp_path / "r")],
                  f"error: bad torchrun environment: {message}")
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_a_torchrun_environment_that_is_whole_is_taken(monkeypatch):
    from archdsl.train.parallel import WorldEnv, world_from_env

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "localhost"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert world_from_env() == WorldEnv(1, 2, 1, True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # one process needs no rendezvous
        monkeypatch.delenv(name)
    assert world_from_env() == WorldEnv(0, 1, 0, True)


def test_train_leaves_a_process_group_it_did_not_create(tmp_path):
    """A caller's process group (a script that calls init_process_group, then train, then a collective) was destroyed
    by train's cleanup; now only the group train itself made is destroyed."""
    import torch.distributed as tdist

    assert not tdist.is_initialized()
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        train(TrainConfig(**TINY, steps=1, rundir=str(tmp_path / "r")))
        assert tdist.is_initialized()
        t = torch.ones(2)
        tdist.all_reduce(t)  # the caller's group still works
        assert t.tolist() == [1.0, 1.0]
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    train(TrainConfig(**TINY, steps=1, rundir=str(tmp_path / "r2")))
    assert not tdist.is_initialized()  # the group train made is gone


def test_a_full_disk_while_writing_metrics_names_the_file_and_cuts_no_line(tmp_path, capsys, monkeypatch):
    """A full disk while a step's line is appended to metrics.jsonl: the error named stdout ('writing the output',
    exit 1) and left the line cut mid-object. Now exit 2 naming metrics.jsonl, and the file holds whole lines only
    (the part written is cut back)."""
    import errno

    write, full = os.write, []

    def filling(fd, data):  # step 2's line: half of it fits, then the disk is full
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.endswith("metrics.jsonl") and (full or b'"step": 2,' in bytes(data)):
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
            full.append(True)
            return write(fd, bytes(data)[:len(data) // 2])
        return write(fd, data)

    monkeypatch.setattr(os, "write", filling)
    rundir = tmp_path / "r"
    metrics = rundir / "metrics.jsonl"
    err = refused(capsys, [*TINY_ARGS, "--steps", "3", "-o", str(rundir)],
                  f"error: {metrics}: cannot write the metrics of step 2 (No space left on device)")
    assert "writing the output" not in err and "Traceback" not in err and full
    text = metrics.read_text()
    assert text.endswith("\n") and [json.loads(ln)["step"] for ln in text.splitlines()] == [1]


def test_resume_compares_the_settings_as_they_resolve(tmp_path, capsys):
    """--resume with settings the run resolved the same way is taken: --seq-len 1024 against a token file's run
    without one (the default 1024), a task written otherwise (seq= or --seq-len, short or long names, a default spelt
    out), a --warmup share or a number of steps that make the same warmup. They were refused ('--seq-len 1024 (the
    run's: unset)'). A setting that truly differs is still refused, naming it."""
    tokens = tmp_path / "train.bin"
    np.random.default_rng(0).integers(0, 64, 1100, dtype=np.uint16).tofile(tokens)
    base = ["train", TINY["spec"], *SET_SMALL, "--batch", "2", "--no-progress", "--threads", "1"]
    files, task = str(tmp_path / "files"), str(tmp_path / "task")
    assert main([*base, "--data", str(tokens), "--steps", "2", "--stop-after", "1", "-o", files]) == 0
    assert main([*base, "--data", "mqar:seq=32,pairs=2", "--steps", "10", "--stop-after", "1", "-o", task]) == 0
    past = "already at step 1, and --steps 1 asks for no step after it"  # past the settings' check
    for run, argv in ((files, ["--data", str(tokens), "--seq-len", "1024"]),
                      (files, ["--data", str(tokens), "--seq-len", "1k", "--warmup", "0"]),
                      (task, ["--data", "mqar:pairs=2", "--seq-len", "32"]),
                      (task, ["--data", "mqar:num_kv_pairs=2,seq_len=32"]),
                      (task, ["--data", "mqar:seq=32,pairs=2,power_a=0.01", "--warmup", "1"])):
        refused(capsys, [*base, *argv, "--steps", "1", "-o", run, "--resume"], past)
    for run, argv, named in (
            (files, ["--data", str(tokens), "--seq-len", "512"], "--seq-len 512 (the run's: 1024)"),
            (task, ["--data", "mqar:pairs=2"], "--seq-len 256 (the run's: 32)"),
            (task, ["--data", "mqar:seq=32,pairs=3"], "--data 'mqar:seq=32,pairs=3' (the run's: 'mqar:seq=32,pairs=2')"),
            (task, ["--data", "mqar:seq=32,pairs=2", "--warmup", "2"], "--warmup 2.0, 2 steps (the run's: 0.1, 1 step)")):
        refused(capsys, [*base, *argv, "--steps", "10", "-o", run, "--resume"], "--resume with other settings", named)
    assert main([*base, "--data", str(tokens), "--seq-len", "1024", "--steps", "2", "-o", files, "--resume"]) == 0
    assert sorted(losses(files)) == [1, 2]


def _tiny_tokens(path, n: int, seed: int = 0) -> str:
    np.random.default_rng(seed).integers(1, 500, n, dtype=np.uint16).tofile(path)
    return str(path)


def test_resume_refuses_a_token_file_whose_size_changed(tmp_path, capsys):
    """run.json records the token file's count ("data_tokens"); a resume on the same path holding another count
    carried on silently, drawing its windows from other tokens. Now refused, naming both counts and sizes; a
    run.json from before the count was kept is checked by its "data" description."""
    tokens = _tiny_tokens(tmp_path / "train.bin", 512)
    run = str(tmp_path / "run")
    base = ["train", TINY["spec"], *SET_SMALL, "--data", f"{tokens},eos=0", "--seq-len", "16", "--steps", "3",
            "--batch", "2", "--no-progress", "--threads", "1", "-o", run]
    assert main([*base, "--stop-after", "1"]) == 0
    with open(os.path.join(run, "run.json")) as f:
        saved = json.load(f)
    assert saved["data_tokens"] == 512 and "512 uint16 tokens" in saved["data"]
    a = np.fromfile(tokens, dtype=np.uint16)
    np.concatenate([a[::-1], a]).tofile(tokens)
    err = refused(capsys, [*base, "--resume"], "a token file that changed since the run started",
                  "holds 1,024 uint16 tokens (2,048 bytes), the run's held 512 (1,024 bytes)")
    assert "Traceback" not in err
    del saved["data_tokens"]  # an older run.json: its description says the count
    with open(os.path.join(run, "run.json"), "w") as f:
        json.dump(saved, f)
    refused(capsys, [*base, "--resume"], "the run's held 512 (1,024 bytes)")
    a.tofile(tokens)  # the file as it was: the run resumes
    assert main([*base, "--resume"]) == 0


def test_resume_refuses_a_token_file_rewritten_with_as_many_tokens(tmp_path, capsys):
    """A token file rewritten with other tokens of the same count (another shard, a retokenisation) resumed without
    a word, drawing its windows from other tokens: run.json keeps a digest of the tokens, checked on resume. The
    digest samples 64 runs of 4,096 tokens of a larger file, so it costs no more at any size."""
    from archdsl.train.data import parse_data

    tokens = _tiny_tokens(tmp_path / "train.bin", 512)
    run = str(tmp_path / "run")
    base = ["train", TINY["spec"], *SET_SMALL, "--data", tokens, "--seq-len", "16", "--steps", "3", "--batch", "2",
            "--no-progress", "--threads", "1", "-o", run]
    assert main([*base, "--stop-after", "1"]) == 0
    a = np.fromfile(tokens, dtype=np.uint16)
    a[::-1].copy().tofile(tokens)
    err = refused(capsys, [*base, "--resume"], "a token file that changed since the run started",
                  "holds as many tokens as the run's (512), but other ones (their digest differs")
    assert "Traceback" not in err
    a.tofile(tokens)  # the file as it was: the run resumes
    assert main([*base, "--resume"]) == 0

    big = np.random.default_rng(0).integers(0, 500, 64 * 4096 * 3, dtype=np.uint16)
    big.tofile(tmp_path / "big.bin")
    digest = parse_data(str(tmp_path / "big.bin"), 512, 16).digest()
    big[-1] += 1  # the last run is sampled
    big.tofile(tmp_path / "big.bin")
    assert parse_data(str(tmp_path / "big.bin"), 512, 16).digest() != digest


def test_token_file_options_are_named(tmp_path, capsys):
    """`--data train.bin,foo=1` said 'no such data file: train.bin,foo=1' and `train.bin,eos=0,eos=1` 'no such data
    file: train.bin,eos=0', the file being there: the option is named now."""
    tokens = _tiny_tokens(tmp_path / "train.bin", 256)
    base = ["train", TINY["spec"], *SET_SMALL, "--seq-len", "16", "--steps", "1", "--batch", "2", "--no-progress",
            "--threads", "1", "-o", str(tmp_path / "run"), "--data"]
    for data, message in ((f"{tokens},foo=1", f"unknown option 'foo' of the token file {tokens}"),
                          (f"{tokens}:uint16,eos=0,bar=2", "unknown option 'bar'"),
                          (f"{tokens},eos=0,eos=1", "eos given twice (eos=0, eos=1)"),
                          (f"{tokens},eos", "expected an option KEY=VALUE")):
        err = refused(capsys, [*base, data], message)
        assert "no such data file" not in err, err
    # the file named alone where it is missing (it was 'no such data file: nope.bin,foo=1')
    err = refused(capsys, [*base, str(tmp_path / "nope.bin") + ",foo=1"], f"no such data file: {tmp_path / 'nope.bin'}")
    assert "nope.bin,foo=1': no such" in err and "file: " + str(tmp_path / "nope.bin,") not in err, err
    assert not (tmp_path / "run").exists()


def test_a_tasks_unknown_argument_suggests_the_short_keys_too():
    """`mqar:sq=32` listed only the long names (num_kv_pairs, ..., seq_len), never `seq`, which the docs use."""
    from archdsl.train.data import parse_data

    with pytest.raises(archdsl.ArchDSLError, match=r"unknown argument 'sq' of mqar; did you mean 'seq'"):
        parse_data("mqar:sq=32", 1000)
    with pytest.raises(archdsl.ArchDSLError, match=r"unknown argument 'bogus' of mqar; valid names: num_kv_pairs, "
                                                   r"pairs, "):
        parse_data("mqar:pairs=4,bogus=1", 1000)
    with pytest.raises(archdsl.ArchDSLError, match=r"unknown argument 'noise' of selective_copying"):  # noisy_recall's
        parse_data("selective_copying:noise=0.1", 1000)


def test_resume_without_the_runs_set_names_it(tmp_path, capsys):
    """A run started with --set, resumed without it: 'the checkpoint is of another spec' alone; now the run's --set
    settings and this run's are named."""
    run = str(tmp_path / "run")
    base = ["train", TINY["spec"], *SET_SMALL, "--data", TINY["data"], "--steps", "2", "--batch", "2",
            "--no-progress", "--threads", "1", "-o", run]
    assert main([*base, "--set", "tie_embeddings=false", "--stop-after", "1"]) == 0
    refused(capsys, [*base, "--resume"], "the checkpoint is of another spec",
            "the run was started with --set d_model=32 --set vocab_size=512 --set tie_embeddings=false, this run has "
            "--set d_model=32 --set vocab_size=512")


def test_export_checkpoint_of_a_missing_step_lists_the_steps(tmp_path, capsys):
    """`export-checkpoint --step K` with no checkpoint at K said 'no checkpoint at step K' alone."""
    run = str(tmp_path / "run")
    assert main(["train", TINY["spec"], *SET_SMALL, "--data", TINY["data"], "--steps", "4", "--batch", "2",
                 "--save-every", "2", "--no-progress", "--threads", "1", "-o", run]) == 0
    refused(capsys, ["export-checkpoint", run, "--step", "3", "-o", str(tmp_path / "m")],
            "no checkpoint at step 3; its checkpoints are at steps 2, 4", "give one of those to --step")
    assert not (tmp_path / "m").exists()


def test_training_forwards_each_micro_batch_with_its_documents(tmp_path):
    """A packed token file's batches (--data FILE,eos=ID) carry seq_idx, the document of each token: the training
    forward must get it, each micro-batch its own rows, or every document attends to (and carries the SSM and conv
    state of) the ones before it in the window, the loss still falling. The summed cross entropy _accumulate
    returns is that of model(x, seq_idx=seq), not of model(x)."""
    import torch.nn.functional as F

    from archdsl.train.loop import _accumulate

    torch.manual_seed(0)
    from archdsl.spec import with_settings

    model = archdsl.compile(with_settings(archdsl.parse("mamba2(d_state=8, headdim=8), attn(heads=2)"), list(SMALL)),
                            seed=0).train()
    V = 512
    x = torch.randint(0, V, (3, 12))
    y = torch.randint(0, V, (3, 12))
    seq = torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3, [0] * 12])
    ce, _, _ = _accumulate(model, x, y, seq, count=36, world=1, micro=2, V=V)
    with torch.no_grad():
        want = F.cross_entropy(model(x, seq_idx=seq).reshape(-1, V), y.reshape(-1), reduction="sum").item()
        plain = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), reduction="sum").item()
    assert ce == pytest.approx(want, rel=1e-5) and abs(want - plain) > 1e-3 * abs(plain), (ce, want, plain)


def test_export_checkpoint_keeps_the_dtype_of_the_saved_model_the_run_started_from(tmp_path, capsys):
    """A bfloat16 model fine-tuned (fp32 master weights) was exported as float32 by default, twice the bytes of the
    checkpoint it started from: the default is now the dtype the start was saved in (run.json's start_dtype); a run
    from random weights exports float32, and --dtype still decides."""
    from archdsl.model import saved_dtype

    start = tmp_path / "start"
    spec = archdsl.spec.with_settings(archdsl.load_spec(TINY["spec"]), list(SMALL))
    archdsl.compile(spec, dtype="bfloat16").save(start)
    for name, source in (("tuned", str(start)), ("fresh", TINY["spec"])):
        extra = [] if name == "tuned" else list(SET_SMALL)
        assert main(["train", source, *extra, "--data", TINY["data"], "--steps", "2", "--batch", "2",
                     "--save-every", "2", "--no-progress", "--threads", "1", "-o", str(tmp_path / name)]) == 0
    assert json.loads((tmp_path / "tuned" / "run.json").read_text())["start_dtype"] == "bfloat16"
    capsys.readouterr()
    cases = (("tuned", [], "bfloat16"), ("fresh", [], "float32"), ("tuned", ["--dtype", "fp32"], "float32"))
    for run, flags, want in cases:
        out = tmp_path / f"out-{run}-{len(flags)}"
        assert main(["export-checkpoint", str(tmp_path / run), "-o", str(out), *flags]) == 0
        assert saved_dtype(out) == want and archdsl.load(out).dtype == getattr(torch, want)
        assert capsys.readouterr().out.rstrip().endswith(f", {want}")


def test_a_new_run_refuses_an_hf_directory_it_did_not_write(tmp_path, capsys):
    """RUNDIR/hf keeps the start model's tokenizer for export-checkpoint. A new run wrote into, or (failing) deleted,
    an hf/ already there, and export-checkpoint then carried a stale tokenizer into another model: refused now,
    the directory left as it was."""
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "tokenizer.json").write_text("mine")
    refused(capsys, [*TINY_ARGS, "--steps", "2", "-o", str(run)], "holds an earlier run (hf)")
    assert (run / "hf" / "tokenizer.json").read_text() == "mine"


def test_a_saved_dtype_alias_is_read_by_its_name(tmp_path):
    """A save whose metadata says dtype "bf16" loads as bfloat16; saved_dtype gave "bf16", which run.json's check
    then refused as damaged on every resume and export."""
    from safetensors.torch import load_file, save_file

    from archdsl.model import saved_dtype

    archdsl.compile(archdsl.parse("mamba2(d_state=8, headdim=8)", d_model=32, vocab_size=64),
                    dtype="bfloat16").save(tmp_path / "m")
    weights = str(tmp_path / "m" / "model.safetensors")
    save_file(load_file(weights), weights, metadata={"format": "pt", "dtype": "bf16"})
    assert saved_dtype(tmp_path / "m") == "bfloat16"


def test_the_digest_of_a_small_token_file_covers_every_token(tmp_path):
    """A file of fewer than 64 × 4,096 tokens is hashed whole: a change at token 9,000 of 10,000 is seen."""
    from archdsl.train.data import parse_data

    a = np.random.default_rng(0).integers(0, 500, 10000, dtype=np.uint16)
    a.tofile(tmp_path / "t.bin")
    digest = parse_data(str(tmp_path / "t.bin"), 512, 16).digest()
    a[9000] += 1
    a.tofile(tmp_path / "t.bin")
    assert parse_data(str(tmp_path / "t.bin"), 512, 16).digest() != digest


@pytest.mark.parametrize("key, bad", [("data_digest", "xyz"), ("start_dtype", "int8")])
def test_run_json_with_a_bad_digest_or_start_dtype_is_damaged(key, bad):
    from archdsl.train.runfile import _run_damage

    assert key in _run_damage({"spec_yaml": "x", key: bad})


def test_a_failed_run_from_a_saved_model_removes_the_hf_directory_it_wrote(tmp_path, monkeypatch):
    """A run from a save with a tokenizer writes RUNDIR/hf first; failing before its first step, it removes it with
    the rest, so that the same command can run again."""
    import archdsl.train.loop as loop

    archdsl.compile(archdsl.parse("mamba2(d_state=8, headdim=8)", d_model=32, vocab_size=512)).save(tmp_path / "s")
    (tmp_path / "s" / "tokenizer.json").write_text("{}")

    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(loop, "_accumulate", no_memory)
    with pytest.raises(RuntimeError, match="allocate"):
        train(TrainConfig(spec=str(tmp_path / "s"), data="mqar:seq=32,pairs=2", batch=2, progress=False, steps=1,
                          rundir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
