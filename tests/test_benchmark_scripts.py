"""The benchmark scripts as the GPU machine meets them, where device time is scarce: each one's `--help` prints
its usage and purpose and exits 0 without touching CUDA or running anything; one run on the GPU, where torch sees
none, says so in one line on stderr and exits 2 before any work, and a bad argument value exits 2 the same way,
never with a traceback. Also the floors they print (bytes and FLOPs at the card's rates, each tensor moved once)
and what the CPU can check of what they time."""
from __future__ import annotations

import argparse
import ast
import gc
import json
import glob
import os
import subprocess
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(BENCHMARKS, "*.py"))
                 if not os.path.basename(p).startswith("_"))  # _bench.py: the helpers they share
# the scripts that run without a GPU (their own CPU mode or smoke test); every other one must call
# _bench.needs_cuda() once its arguments are parsed
CPU_MODE = {"breakdown.py", "fusions.py", "host.py", "language.py", "model.py", "state_dtype.py", "train_fsdp.py",
            "zoology_mqar.py"}
CUDA_BY_DEFAULT = {"fusions.py", "model.py"}  # of those, the ones whose run without --device cpu is the GPU's
ARGS = {"ssd_ab.py": ["CHAIN=True"]}  # the arguments a script requires
H200, H100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"


def run(script: str, *args: str, cwd: str | os.PathLike) -> subprocess.CompletedProcess:
    """The script run as the GPU machine runs it (`python benchmarks/SCRIPT ...`), in cwd, which takes
    whatever it writes."""
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _purpose(script: str) -> str:
    """The first paragraph of the script's docstring, without whitespace (argparse wraps it anew)."""
    with open(os.path.join(BENCHMARKS, script), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return "".join(doc.split("\n\n")[0].split())


def test_scripts_found():
    assert {"kernels.py", "mamba_cuda.py", "wkv4_ab.py"} <= set(SCRIPTS) and "_bench.py" not in SCRIPTS
    assert CUDA_BY_DEFAULT <= CPU_MODE <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    p = run(script, "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "usage" in p.stdout and "Traceback" not in p.stdout + p.stderr
    assert _purpose(script) and _purpose(script) in "".join(p.stdout.split())
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the scripts would run")
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in CPU_MODE or s in CUDA_BY_DEFAULT])
def test_needs_cuda(script, tmp_path):
    p = run(script, *ARGS.get(script, ()), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    [line] = p.stderr.splitlines()
    assert line.startswith(f"{script}: needs a CUDA GPU (") and line.endswith(")")


def test_results_json_written_whole(tmp_path):
    """Every script writes its --json results through _bench.save_json (after each row: a run cut short keeps
    what it measured), which replaces the file whole: JSON that reads back, no temporary left beside it."""
    for script in SCRIPTS:
        with open(os.path.join(BENCHMARKS, script), encoding="utf-8") as f:
            text = f.read()
        assert "json.dump(" not in text, f"{script}: write results with _bench.save_json"
    sys.path.insert(0, BENCHMARKS)
    try:
        from _bench import save_json
    finally:
        sys.path.remove(BENCHMARKS)
    path = tmp_path / "out" / "rows.json"
    save_json(str(path), {"rows": [1]})
    save_json(str(path), {"rows": [1, 2.5, float("nan")]})
    text = path.read_text()
    assert text.startswith('{\n "rows"') and os.listdir(tmp_path / "out") == ["rows.json"]
    assert json.loads(text)["rows"][:2] == [1, 2.5]


# --- bad argument values: exit 2 before any work, one line (argparse's refusals: its usage, then one line) ---
BAD = [
    ("peer_model.py", ["--gen", "1"], "--gen"), ("peer_model.py", ["--iters", "0"], "--iters"),
    ("peer_model.py", ["--shapes", "4k"], "--shapes"), ("peer_model.py", ["--models", "jamba-v0.1"], "--models"),
    ("ssd_ab.py", ["CHAIN=True", "--rounds", "0"], "--rounds"), ("ssd_ab.py", ["CHAIN=True", "--L", "4k"], "--L"),
    ("ssd_ab.py", ["NO_SUCH=1"], "NO_SUCH"), ("state_dtype.py", ["nonexistent", "--mqar", "128,8"], "nonexistent"),
    ("host.py", ["1", "bogus_op"], "bogus_op"), ("host.py", ["0"], "ROUNDS"),
    ("kernels.py", ["--only", "bogus"], "bogus"), ("packing.py", ["bogus"], "bogus"),
]


@pytest.mark.parametrize("script, args, named", BAD, ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_bad_values_exit_2(script, args, named, tmp_path):
    p = run(script, *args, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "CUDA" not in p.stderr, p.stderr  # refused before the GPU is asked for
    last = p.stderr.splitlines()[-1]
    assert last.startswith(f"{script}: ") and named in last
    assert len(p.stderr.splitlines()) == 1 or p.stderr.startswith("usage: ")
    assert not os.listdir(tmp_path)


def test_argument_types(scripts):
    from _bench import at_least, positive_list
    assert at_least(2)("2") == 2 and positive_list("4096,16384") == [4096, 16384]
    for bad in ("1", "x", "", "2.0"):
        with pytest.raises(argparse.ArgumentTypeError, match="integer ≥ 2"):
            at_least(2)(bad)
    for bad in ("4k", "0", "1,,2", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="integers ≥ 1"):
            positive_list(bad)


def test_state_dtype(saved_model, scripts, tmp_path, capsys):
    """Its CPU run, and a missing token file: one line and exit 2."""
    import state_dtype
    state_dtype.main([str(saved_model), "--mqar", "16,2", "--length", "32", "--streams", "2", "--parts", "2"])
    out = capsys.readouterr().out
    assert "float32-state steps against the parallel forward" in out and "16-32" in out
    with pytest.raises(SystemExit) as e:
        state_dtype.main([str(saved_model), "--tokens", str(tmp_path / "none.bin")])
    assert e.value.code == 2 and capsys.readouterr().err.endswith(f": --tokens {tmp_path / 'none.bin'}: no such file\n")


@pytest.fixture
def scripts(monkeypatch):
    """benchmarks/ importable, as the scripts import one another."""
    monkeypatch.syspath_prepend(BENCHMARKS)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import archdsl
    spec = archdsl.parse("2×mamba2", d_model=32, vocab_size=64, blocks={"mamba2": {"headdim": 8, "d_state": 8}})
    path = tmp_path_factory.mktemp("model") / "m"
    archdsl.compile(spec, seed=0).save(str(path))
    return path


# --- floors: the card's rates, each tensor moved once ---
@pytest.fixture
def card(scripts, monkeypatch):
    """card(name): torch sees that GPU (None: none) when the floors ask; its floor_rates() returned."""
    import _bench

    def see(name):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: name is not None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        _bench.floor_rates.cache_clear()
        return _bench.floor_rates()
    yield see
    _bench.floor_rates.cache_clear()


def test_floor_rates(card):
    assert card(H200)[1:] == ("the H200's rates", 4.2e12, 680e12)
    assert card(H100)[1:] == ("the H100 SXM's rates", 0.875 * 3.35e12, 680e12)
    assert card(H100).tf32 == 340e12
    for other in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA GH200 480GB", None):
        r = card(other)
        assert r.bw == 4.2e12 and r.flops == 680e12 and "none for this card" in r.basis
    from _bench import rates_line
    card(H100)
    assert rates_line() == "floor: 2.93 TB/s, 680 TFLOP/s bf16 (340 TF32): the H100 SXM's rates; card " + H100
    card(None)
    assert rates_line().endswith("the H200's rates, none for this card; card no CUDA GPU")


@pytest.mark.parametrize("name", [H200, H100])
def test_floors_at_the_issue_shapes(card, name):
    """Bytes once each (inputs, output, output gradient, input gradients), over the card's bandwidth; FLOPs over
    its bf16 rate (TF32's for float32, three products each under "highest")."""
    bw, flops = card(name)[2:]

    def ms(nbytes, f=0.0, rate=flops):
        return max(nbytes / bw, f / rate) * 1e3
    import kernels_selective_scan as scan
    import kernels_ssd as ssd
    import kernels_wkv6 as wkv
    for L in (4096, 16384):
        io = 2 * 4 * L * 32 * 64 + 4 * L * 32 + 2 * 4 * L * 128  # SSD: x, y; dt; B, C (elements)
        fl = 4 * L * 32 * (2 * 64 * 64 + 4 * 64 * 128)
        assert ssd._floor(4, L)[0] == pytest.approx(ms(2 * io, fl))
        assert ssd._floor(4, L, bwd=True)[0] == pytest.approx(ms(4 * io, 3 * fl))
        assert ssd._floor(4, L, bwd=True, size=4, tf32=1)[0] == pytest.approx(ms(8 * io, 3 * fl, flops / 2))
        assert ssd._floor(4, L, bwd=True, size=4, tf32=3)[0] == pytest.approx(ms(8 * io, 9 * fl, flops / 2))
        n = 4 * L * 32  # wkv6 (b, h, t), K = V = 64
        assert wkv._wkv6_floor(n, 64, 64, False) == pytest.approx(ms(n * 640, n * 20480))
        assert wkv._wkv6_floor(n, 64, 64, True) == pytest.approx(ms(n * 1280, n * 3 * 20480))
        assert wkv._wkv4_floor(4 * L * 2048, True) == pytest.approx(ms(4 * L * 2048 * 12))
        big, small = 4 * 5120 * L * 2, 4 * 16 * L * 2  # selective scan: u, delta, z, y; B, C
        assert scan._scan_floor(L, False)[0] == pytest.approx(ms(4 * big + 2 * small))
        assert scan._scan_floor(L, True)[0] == pytest.approx(ms(8 * big + 4 * small))
        assert scan._conv_floor(L, True)[0] == pytest.approx(ms(4 * 4 * 5120 * L * 2))
    if name == H200:  # the figures the docs quote, L4096
        assert [round(ssd._floor(4, 4096, bwd=b)[0], 3) for b in (False, True)] == [0.034, 0.095]
        assert round(wkv._wkv6_floor(4 * 4096 * 32, 64, 64, True), 3) == 0.160
        assert round(scan._scan_floor(4096, True)[0], 3) == 0.320


def test_scripts_import_without_cuda():
    """The scripts are imported where there is no GPU (these tests; kernels.py's --only): their floors ask for
    the card only when a row is measured."""
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import kernels, kernels_ssd, kernels_ssd_float32, "
            "kernels_wkv6, kernels_selective_scan, kernels_norm_gemv, moe, fusions, _bench; "
            "assert not torch.cuda.is_initialized() and _bench.floor_rates.cache_info().currsize == 0")
    p = subprocess.run([sys.executable, "-c", code, BENCHMARKS], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# --- what fusions.py times: no .grad summed across calls ---
def _grads() -> dict:
    return {id(t): t.grad.clone() for t in gc.get_objects() if issubclass(type(t), torch.Tensor) and t.grad is not None}


@pytest.mark.parametrize("row", ["epilogue mamba", "epilogue mamba2", "add_norm"])
def test_fusions_backward_rows_clear_grads(row, scripts, monkeypatch):
    """Each timed forward+backward starts from no .grad on its inputs and weights, as in a model: the second call
    leaves the same gradients as the first, not twice them."""
    import fusions
    monkeypatch.setattr(fusions, "DEVICE", "cpu")
    monkeypatch.setattr(fusions, "S", fusions.CPU_SIZES)
    checked = []

    def twice(fn):
        fn()
        first = _grads()
        fn()
        again = _grads()
        assert first.keys() == again.keys()
        for k in first:
            torch.testing.assert_close(again[k], first[k])
        checked.append(len(first))
        return 1.0

    monkeypatch.setattr(fusions, "time_pass", twice)
    if row == "add_norm":
        fusions.add_norm(True)
    else:
        fusions.epilogue(row.split()[1], True)
    assert len(checked) == 2 and min(checked) >= 3  # off and on; the inputs and the weights
