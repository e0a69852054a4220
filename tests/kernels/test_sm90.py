"""The sm_90 compile check (tests/kernels/sm90.py) records interpreted launches and catches what
Triton's compiler rejects but its interpreter runs: here, a value whose type changes in a loop. It also
refuses a launch that passes one tensor twice."""
import json
import os
import subprocess
import sys

import pytest
import torch

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def _pair(x):
    return x, x * 2


@triton.jit
def good(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(n):
        a, b = _pair(tl.load(x_ptr + offs))
        acc += b
    tl.store(y_ptr + offs, acc)


@triton.jit
def bad(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    _, acc = _pair(n)             # _ is a scalar here ...
    for i in range(n):
        _, b = _pair(tl.load(x_ptr + offs))  # ... and a block here: the compiler refuses
        acc += b
    tl.store(y_ptr + offs, acc)
'''

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="records interpreted launches")
def test_records_launches_and_catches_what_the_compiler_rejects(tmp_path, monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    (tmp_path / "sm90_samples.py").write_text(KERNELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setattr(InterpretedFunction, "run", InterpretedFunction.run)  # restored afterwards
    import sm90
    import sm90_samples

    log = tmp_path / "launches.jsonl"
    sm90.watch_launches(str(log))
    x, y = torch.ones(16), torch.empty(16)
    for kernel, want in ((sm90_samples.good, 6.0), (sm90_samples.bad, 12.0)):  # the interpreter runs both
        kernel[(1,)](x, y, 3, BLOCK=16, num_warps=1)
        assert torch.equal(y, torch.full((16,), want))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["name"] for e in entries] == ["good", "bad"]
    assert entries[0]["args"] == {"x_ptr": {"type": "*fp32"}, "y_ptr": {"type": "*fp32"}, "n": {"type": "i32"},
                                  "BLOCK": {"constexpr": 16}}
    assert entries[0]["options"] == {"num_warps": 1}

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, os.path.join(HERE, "sm90.py"), str(log), "--jobs", "1", "--regs"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "sm90_samples.good {'BLOCK': 16} {'num_warps': 1}: ok (" in run.stdout  # with its registers
    assert "sm90_samples.bad {'BLOCK': 16} {'num_warps': 1}: FAILED" in run.stdout
    assert "Loop-carried variable _" in run.stdout
    assert "2 distinct launches, 1 failed to compile for sm_90" in run.stdout
    assert "0 of 1 compiled launches spill registers to the stack" in run.stdout


def test_launches_are_compiled_as_the_gpu_runs_them():
    """The interpreter runs every kernel with PDL and the inline-PTX fast paths off; the GPU with them on. The
    check compiles that form."""
    sys.path.insert(0, HERE)
    import sm90

    def line(**args):
        return json.dumps({"module": "m", "name": "k", "args": args, "options": {}}, sort_keys=True)

    off = line(x_ptr={"type": "*fp32"}, PDL={"constexpr": False})
    assert json.loads(sm90.compiled_form(off))["args"] == {"x_ptr": {"type": "*fp32"}, "PDL": {"constexpr": True}}
    both = line(FAST={"constexpr": False}, FAST_LOG={"constexpr": False}, HAS_Z={"constexpr": False})
    assert json.loads(sm90.compiled_form(both))["args"] == {"FAST": {"constexpr": True},
                                                           "FAST_LOG": {"constexpr": True},
                                                           "HAS_Z": {"constexpr": False}}
    assert sm90.compiled_form(line(x_ptr={"type": "*fp32"}, PDL={"constexpr": True})) is None
    assert sm90.compiled_form(line(x_ptr={"type": "*fp32"})) is None


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="watches interpreted launches")
def test_a_launch_that_passes_one_tensor_twice_fails(tmp_path, monkeypatch):
    """torch.compile takes every argument of a kernel it cannot read as written, and writes each back from a
    copy: an output passed again as a placeholder came back stale (the chunked SSD, on the H200). So every
    interpreted launch of the suite is held to distinct tensors; views of other memory are fine."""
    from triton.runtime.interpreter import InterpretedFunction

    (tmp_path / "sm90_samples.py").write_text(KERNELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setattr(InterpretedFunction, "run", InterpretedFunction.run)  # restored afterwards
    import sm90
    import sm90_samples

    sm90.watch_launches()
    x = torch.ones(32)
    sm90_samples.good[(1,)](x[:16], x[16:], 1, BLOCK=16)  # two halves of one buffer: distinct memory
    with pytest.raises(AssertionError, match="good: one tensor passed twice \\(y_ptr is x_ptr\\)"):
        sm90_samples.good[(1,)](x, x, 1, BLOCK=16)
