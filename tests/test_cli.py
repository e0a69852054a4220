"""The CLI as a user meets it: exit codes, tables, JSON, pictures, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from archdsl.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_ok_and_bad(capsys):
    assert run("check", "7×mamba2, 1×attn(shared), moe every 2", capsys=capsys)[0] == 0
    code, out, err = run("check", "7×mamba2, (attn", capsys=capsys)
    assert code == 2 and "Traceback" not in err and "<layout>:1:" in err and "^" in err


def test_show_json_keys(capsys):
    code, out, _ = run("show", os.path.join(ROOT, "specs/jamba-v0.1.yaml"), "--seq-len", "64k", "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 0
    assert {"layers", "params", "active_params", "flops_per_token", "cache_bytes"} <= set(data)
    assert data["params"] == 51_570_323_328
    assert {"index", "mixer", "ffn", "shared", "params"} <= set(data["layers"][0])
    assert data["layers"][4]["mixer"] == "attn" and data["layers"][1]["ffn"] == "moe"


def test_show_table(capsys):
    code, out, _ = run("show", "4×(7×mamba2, attn(shared)), moe every 2", capsys=capsys)
    assert code == 0 and "active params" in out and "FLOPs/token" in out and out.count("attn") >= 4


def test_fmt_is_idempotent(capsys):
    _, once, _ = run("fmt", "4x(7*mamba2,attn( shared )) ,moe every 2 # comment", capsys=capsys)
    _, twice, _ = run("fmt", once.strip(), capsys=capsys)
    assert once == twice == "4×(7×mamba2, attn(shared)), moe every 2\n"


@pytest.mark.parametrize("ext", [".svg", ".png", ".dot", ".mmd"])
def test_graph_formats(tmp_path, ext, capsys):
    out = tmp_path / f"g{ext}"
    assert run("graph", os.path.join(ROOT, "specs/zamba2-2.7b.yaml"), "-o", str(out), capsys=capsys)[0] == 0
    assert out.stat().st_size > 100
    assert run("graph", "mamba2", "-o", str(tmp_path / "g.jpg"), capsys=capsys)[0] == 2


def test_memory_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "m.png"
    code, out, _ = run("memory", os.path.join(ROOT, "specs/mamba2-2.7b.yaml"), os.path.join(ROOT, "specs/llama-2-7b.yaml"),
                       "--seq-lens", "1k,8k,64k,512k", "-o", str(plot), capsys=capsys)
    assert code == 0 and plot.stat().st_size > 1000
    assert "mamba2-2.7b" in out and "llama-2-7b" in out
    code, out, _ = run("memory", "4×mamba2", "4×attn", "--seq-lens", "1k,64k", "--json", capsys=capsys)
    data = json.loads(out)["cache_bytes"]
    assert data["model"] if len(data) == 1 else True
    assert run("memory", "mamba2", "--seq-lens", "1q", capsys=capsys)[0] == 2


def test_convert_megatron(capsys):
    code, out, _ = run("convert", "--from", "megatron", "M-M*-", capsys=capsys)
    assert code == 0 and "layout:" in out
    code, _, err = run("convert", "--from", "megatron", "M-Q", capsys=capsys)
    assert code == 2 and "Q" in err


def test_yaml_errors_point_into_the_file(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nd_model: 512\nlayout: 4×(mamba2, atn)\n")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:3:20: unknown block 'atn'" in err and "did you mean 'attn'" in err
    f.write_text("name: x\nd_model: -1\nlayout: mamba2\n")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and ":2:10: d_model must be positive" in err
    f.write_text("name: [x\n")
    assert run("check", str(f), capsys=capsys)[0] == 2


def test_python_dash_m_and_help():
    r = subprocess.run([sys.executable, "-m", "archdsl", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("check", "show", "fmt", "graph", "memory", "convert"):
        assert cmd in r.stdout
    r = subprocess.run([sys.executable, "-m", "archdsl", "show", "4×nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_binary_files_and_bare_directories_are_refused(tmp_path, capsys):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"layout: 4\x9f\xff mamba2\n")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and "not a UTF-8 text file" in err and "Traceback" not in err
    code, _, err = run("check", str(tmp_path), capsys=capsys)
    assert code == 2 and "directory without spec.yaml" in err
