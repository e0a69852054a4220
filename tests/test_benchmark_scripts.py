"""The benchmark scripts as the GPU machine meets them, where device time is scarce: each one's `--help` prints
its usage and purpose and exits 0 without touching CUDA or running anything, and one with no CPU mode, where
torch sees no GPU, says so in one line on stderr and exits 2 before any work, never with a traceback."""
from __future__ import annotations

import ast
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
ARGS = {"ssd_ab.py": ["CHAIN=True"]}  # the arguments a script requires


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
    assert CPU_MODE <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    p = run(script, "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "usage" in p.stdout and "Traceback" not in p.stdout + p.stderr
    assert _purpose(script) and _purpose(script) in "".join(p.stdout.split())
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the scripts would run")
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in CPU_MODE])
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
