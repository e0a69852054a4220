"""The CLI as a user meets it: exit codes, tables, JSON, pictures, never a traceback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@settings(max_examples=30, deadline=None)
@given(st.permutations(["zamba(shared)", "mamba2", "mlp"]), st.permutations(["attn", "moe(experts=4)"]))
def test_fmt_prints_sublayers_in_the_order_they_run(first, second):
    """`mlp+mamba2` and `mamba2+mlp` are one model: fmt prints each layer's sublayers as they run (inject, mixer,
    FFN), through aliases too, and its output is a fixed point."""
    import archdsl
    from archdsl.graph import canonical_text

    text = f"2×({'+'.join(first)}, {'+'.join(second)}), zamba at 0"
    out = canonical_text(archdsl.parse(text))
    assert out == "2×(zamba(shared)+mamba2+mlp, attn+moe(experts=4)), zamba at 0"
    assert canonical_text(archdsl.parse(out)) == out
    aliased = archdsl.parse("ff+mm", blocks={"ff": {"kind": "mlp"}, "mm": {"kind": "mamba2"}})
    assert canonical_text(aliased) == "mm+ff"


@pytest.mark.parametrize("layout, message", [("4×mamab2", "unknown block 'mamab2'"),
                                             ("mamba2, attn at 5", "the layout has only 1 layer"),
                                             ("mamba2(foo=1)", "unknown argument 'foo'")])
def test_fmt_refuses_what_check_refuses(layout, message, capsys):
    """fmt printed the canonical text of a layout check refuses (a misspelt block, an index out of range), exit 0,
    and refused it only when a --set made it build the graph."""
    for argv in (["fmt", layout], ["fmt", layout, "--set", "name=x"], ["check", layout]):
        code, out, err = run(*argv, capsys=capsys)
        assert code == 2 and out == "" and message in err, (argv, out, err)


@pytest.mark.parametrize("ext", [".svg", ".png", ".dot", ".mmd"])
def test_graph_formats(tmp_path, ext, capsys):
    out = tmp_path / f"g{ext}"
    assert run("graph", os.path.join(ROOT, "specs/zamba2-2.7b.yaml"), "-o", str(out), capsys=capsys)[0] == 0
    assert out.stat().st_size > 100
    assert run("graph", "mamba2", "-o", str(tmp_path / "g.jpg"), capsys=capsys)[0] == 2


def test_graph_every_layer(tmp_path, capsys):
    """The charts fold alike blocks by default; --every-layer draws each layer (the picture too)."""
    for flag, nodes in (([], 1), (["--every-layer"], 12)):
        out = tmp_path / "g.mmd"
        assert run("graph", "12×mamba2", "-o", str(out), *flag, capsys=capsys)[0] == 0
        assert len(re.findall(r"^ +L\d+\[", out.read_text(), re.M)) == nodes
    assert run("graph", "12×mamba2", "-o", str(tmp_path / "g.svg"), "--every-layer", capsys=capsys)[0] == 0


def test_graph_says_characters_no_font_has_as_a_warning(tmp_path, capsys):
    """A name in a script no installed font has: the picture is written and the CLI says so once, as
    `warning: ...` on stderr, not as Python's warning text or matplotlib's warning a glyph."""
    from archdsl.draw import font_with
    if font_with("混"):
        pytest.skip(f"a font here has CJK characters: {font_with('混')}")
    spec = tmp_path / "cjk.yaml"
    spec.write_text('name: 混合模型\nlayout: 4×mamba2, attn(shared="注意力")\nd_model: 64\nvocab_size: 100\n')
    code, out, err = run("graph", str(spec), "-o", str(tmp_path / "g.png"), capsys=capsys)
    assert code == 0 and (tmp_path / "g.png").exists()
    assert err.startswith("warning: no installed font has 7 characters") and err.count("\n") == 1, err


ODD_NAME = 'a$b "q" \\ <i>|#1;'  # mathtext, quotes, a backslash, markup, Mermaid's entity and edge signs


def test_pictures_draw_names_as_written(tmp_path, capsys):
    """A name with $, quotes or a backslash is drawn as written: no mathtext error, no broken DOT/Mermaid."""
    import re

    spec = tmp_path / "odd.yaml"
    spec.write_text(f"name: {json.dumps(ODD_NAME)}\nlayout: 2×attn(shared={json.dumps(ODD_NAME)}), mamba2\n")
    for ext in (".png", ".svg", ".dot", ".mmd"):
        assert run("graph", str(spec), "-o", str(tmp_path / f"g{ext}"), capsys=capsys)[0] == 0, ext
    assert run("memory", str(spec), "--seq-lens", "1k,2k", "-o", str(tmp_path / "m.png"), capsys=capsys)[0] == 0
    dot = (tmp_path / "g.dot").read_text()
    strings = [re.sub(r"\\(.)", r"\1", m) for m in re.findall(r'"((?:[^"\\\n]|\\.)*)"', dot)]
    assert ODD_NAME in strings and f"0: attn [{ODD_NAME}]" in strings  # every quote closes the string it opened
    mmd = (tmp_path / "g.mmd").read_text()
    labels = re.findall(r'\["([^"]*)"\]|\|"([^"]*)"\|', mmd)
    assert len(labels) == 7 and all(not set(a + b) & set('"<>|\\$') for a, b in labels)
    unescaped = [re.sub(r"#([0-9]+);", lambda m: chr(int(m.group(1))), a or b) for a, b in labels]
    assert f"0: attn [{ODD_NAME}]" in unescaped and ODD_NAME in unescaped


@pytest.mark.parametrize("name", ["Foo.YAML", "model.json", "specs/none.yml"])
def test_a_missing_file_is_named_not_parsed(name, capsys):
    code, _, err = run("check", name, capsys=capsys)
    assert code == 2 and err.strip() == f"error: no such spec file: {name}"


def test_bench_needs_a_case(capsys):
    code, _, err = run("bench", "mamba", "--cases", ",", capsys=capsys)
    assert code == 2 and "--cases: name at least one of forward, train, decode" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_device_is_an_error_not_a_traceback():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "archdsl", "fmt", "2×mamba"], stdout=full, stderr=subprocess.PIPE,
                           text=True)
    assert r.returncode == 1 and r.stderr == "error: No space left on device (writing the output)\n"


def test_memory_table_and_plot(tmp_path, capsys):
    plot = tmp_path / "m.png"
    code, out, _ = run("memory", os.path.join(ROOT, "specs/mamba2-2.7b.yaml"), os.path.join(ROOT, "specs/llama-2-7b.yaml"),
                       "--seq-lens", "1k,8k,64k,512k", "-o", str(plot), capsys=capsys)
    assert code == 0 and plot.stat().st_size > 1000
    assert "mamba2-2.7b" in out and "llama-2-7b" in out
    code, out, _ = run("memory", "4×mamba2", "4×attn", "--seq-lens", "1k,64k", "--json", capsys=capsys)
    data = json.loads(out)["cache_bytes"]
    assert list(data) == ["4×mamba2", "4×attn"] and data["4×attn"][1] == 64 * data["4×attn"][0]
    assert run("memory", "mamba2", "--seq-lens", "1q", capsys=capsys)[0] == 2


def test_memory_gives_each_argument_its_row(tmp_path, capsys):
    """Specs of one name (every layout string is `model`) each keep a row: table, JSON and plot."""
    spec = os.path.join(ROOT, "specs/mamba2-2.7b.yaml")
    code, out, _ = run("memory", "4×mamba2", "4×attn", spec, spec, "--seq-lens", "1k", "--json", capsys=capsys)
    assert code == 0
    assert list(json.loads(out)["cache_bytes"]) == ["4×mamba2", "4×attn", "mamba2-2.7b", "mamba2-2.7b#2"]
    code, out, _ = run("memory", "mamba2-2.7b", "mamba2-2.7b", "--seq-lens", "1k", "--json", capsys=capsys)
    assert list(json.loads(out)["cache_bytes"]) == ["mamba2-2.7b", "mamba2-2.7b#2"]  # published: had been 64×mamba2
    code, out, _ = run("memory", "4×attn", "4×attn", "mamba2", "--seq-lens", "1k", capsys=capsys)
    rows = out.splitlines()[2:]
    assert code == 0 and [r.split("  ")[0].strip() for r in rows] == ["4×attn", "4×attn#2", "mamba2"]
    # alone or beside a named spec, a layout string goes by its text (it was `model`); named, by its name
    code, out, _ = run("memory", spec, "mamba2", "--seq-lens", "1k", capsys=capsys)
    assert [r.split("  ")[0].strip() for r in out.splitlines()[2:]] == ["mamba2-2.7b", "mamba2"]
    code, out, _ = run("memory", "mamba2", "--set", "name=m", "--seq-lens", "1k", capsys=capsys)
    assert out.splitlines()[2].startswith("m ")
    import archdsl.draw

    seen = {}
    real = archdsl.draw.plot_memory
    archdsl.draw.plot_memory = lambda lens, data, *a, **k: seen.update(data)
    try:
        assert run("memory", "4×mamba2", "4×attn", "-o", str(tmp_path / "m.png"), capsys=capsys)[0] == 0
    finally:
        archdsl.draw.plot_memory = real
    assert list(seen) == ["4×mamba2", "4×attn"]


def test_memory_names_dtypes_as_show_does(tmp_path, capsys, monkeypatch):
    """memory echoed --dtype fp8 --ssm-state-dtype BF16 as typed, where show says float8 and bfloat16: the JSON and
    the plot (which had no word of the SSM states' dtype) take the canonical names."""
    import archdsl.draw

    spec = os.path.join(ROOT, "specs/demo-jamba.yaml")
    argv = ["--dtype", "fp8", "--ssm-state-dtype", "BF16", "--seq-lens", "1k"]
    _, out, _ = run("memory", spec, *argv, "--json", capsys=capsys)
    _, shown, _ = run("show", spec, *argv[:4], "--json", capsys=capsys)
    memory, show = json.loads(out), json.loads(shown)
    assert (memory["dtype"], memory["ssm_state_dtype"]) == (show["dtype"], show["ssm_state_dtype"]) == ("float8",
                                                                                                       "bfloat16")
    assert json.loads(run("memory", spec, "--seq-lens", "1k", "--json", capsys=capsys)[1])["ssm_state_dtype"] is None
    seen = {}
    monkeypatch.setattr(archdsl.draw, "plot_memory", lambda lens, data, path, **kw: seen.update(kw))
    assert run("memory", spec, *argv, "--dtype", "half", "-o", str(tmp_path / "m.png"), capsys=capsys)[0] == 0
    assert seen == {"batch": 1, "dtype": "float16", "ssm_state_dtype": "bfloat16", "ssm_states": True}


@pytest.mark.parametrize("name", ["_baseline", "n" * 200])
def test_memory_plot_prints_no_python_warning(tmp_path, capsys, name):
    """A name starting with `_` (matplotlib's "no artists with labels") or of 200 characters ("Tight layout not
    applied") put matplotlib's UserWarning, with a source line, on stderr."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # as a user's first run shows them
        code, out, err = run("memory", "mamba2", "--set", f"name={name}", "-o", str(tmp_path / "m.png"), capsys=capsys)
    assert [str(w.message) for w in seen] == []
    assert code == 0 and err == "" and out.endswith(f"wrote {tmp_path / 'm.png'}\n")


def test_graph_help_says_what_each_format_folds(capsys):
    """The help said every format draws alike blocks of layers once; the pictures fold only alike rows (`40×(mamba2,
    attn)` is drawn whole, with --every-layer or without), the charts alike blocks."""
    with pytest.raises(SystemExit):
        main(["graph", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".dot and .mmd draw three or more alike blocks of layers in a row once, × k" in text
    assert ".svg, .png and .pdf wrap the layers in rows of up to 32" in text
    assert "draw three or more alike rows in a row once, × k" in text
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert ".dot/.mmd draw 3+ alike blocks once × k, pictures 3+ alike rows of ≤ 32 layers" in readme


def test_memory_headers_are_the_lengths_as_written(capsys):
    code, out, _ = run("memory", "mamba2", "--seq-lens", "1k,8k,64k,512k,1m,1000", capsys=capsys)
    assert code == 0 and out.splitlines()[0].split() == ["spec", "1k", "8k", "64k", "512k", "1m", "1000"]


@pytest.mark.parametrize("argv, message", [
    (["show", "mamba2", "--seq-len", "64q"], "error: --seq-len: not a count: '64q'"),
    (["show", "mamba2", "--seq-len", "99999999999999999999999"], "--seq-len: '99999999999999999999999' is too large"),
    (["show", "mamba2", "--seq-len", "0"], "--seq-len: must be a positive count"),
    (["show", "mamba2", "--batch", "-1"], "--batch: must be a positive count"),
    (["memory", "mamba2", "--seq-lens", "1k,64q"], "error: --seq-lens: not a count: '64q'"),
    (["memory", "mamba2", "--seq-lens", "1k,2g,99999999g"], "--seq-lens: '99999999g' is too large"),
    (["memory", "mamba2", "--seq-lens", "1k,,2k"], "error: --seq-lens: an empty length in '1k,,2k'"),  # was dropped
    (["memory", "mamba2", "--seq-lens", "1k, "], "error: --seq-lens: an empty length in '1k, '"),
    (["memory", "mamba2", "--seq-lens", " "], "error: --seq-lens: give at least one length"),
    (["convert", "--from", "megatron", "M-M", "--name", " "], "--name: give a name"),
    (["convert", "--from", "megatron", "M-M", "--dtype", "bfloat16"], "--dtype needs --weights"),
    (["show", "mamba2", "--seq-len", "\uff11\uff10"], "--seq-len: not a count: '\uff11\uff10'"),  # fullwidth digits
    (["show", "mamba2", "--batch", "\u0663"], "--batch: not a count"),  # an Arabic-Indic 3
    (["run", "mamba2", "--seed", "\u0663"], "--seed: not an integer"),
])
def test_bad_numbers_name_their_option(argv, message, capsys):
    code, _, err = run(*argv, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_check_counts_layers_in_english(capsys):
    assert run("check", "mamba2", capsys=capsys)[1] == "ok: model: 1 layer\n"
    assert run("check", "2×mamba2", capsys=capsys)[1] == "ok: model: 2 layers\n"


@pytest.mark.parametrize("argv", [["graph", "mamba2"], ["memory", "mamba2"]])
@pytest.mark.parametrize("name", ["g.svg", "g.pdf", "g.dot", "g.mmd"])
def test_outputs_make_missing_directories_and_refuse_bad_paths(tmp_path, capsys, argv, name):
    """graph and memory (and convert) write into new directories, refuse a directory or a path under a file
    with exit 2, and leave nothing behind."""
    if argv[0] == "memory" and name.endswith((".dot", ".mmd")):
        code, _, err = run(*argv, "-o", str(tmp_path / name), capsys=capsys)
        assert code == 2 and "use one of .svg, .png, .pdf" in err
        return
    target = tmp_path / "new" / "sub" / name
    assert run(*argv, "-o", str(target), capsys=capsys)[0] == 0 and target.stat().st_size > 100
    (tmp_path / "d.svg").mkdir()
    (tmp_path / "afile").write_text("x")
    for bad, message in ((tmp_path / "d.svg", "is a directory"),
                         (tmp_path / "afile" / name, "is a file, not a directory")):
        code, _, err = run(*argv, "-o", str(bad), capsys=capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.svg", "new"]
    assert list((tmp_path / "d.svg").iterdir()) == [] and (tmp_path / "afile").read_text() == "x"


def test_a_failed_render_leaves_nothing(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, out, **kw):  # out: where the picture goes (a file object: save_figure renders in memory)
        out.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    for argv in (["graph", "mamba2"], ["memory", "mamba2"]):
        code, _, err = run(*argv, "-o", str(tmp_path / "g.png"), capsys=capsys)
        assert code == 2 and "cannot write" in err and "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_convert_output_paths(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    code, _, err = run("convert", "--from", "megatron", "M-M", "-o", str(tmp_path / "d"), capsys=capsys)
    assert code == 2 and "is a directory" in err and list((tmp_path / "d").iterdir()) == []
    assert run("convert", "--from", "megatron", "M-M", "-o", str(tmp_path / "nod" / "x.yaml"), capsys=capsys)[0] == 0
    assert "layout:" in (tmp_path / "nod" / "x.yaml").read_text()


def test_dash_as_an_output_is_refused_not_written(tmp_path, capsys, monkeypatch):
    """-o - had written a file named '-' ('wrote -'); '-' is standard output by convention, which -o never is."""
    monkeypatch.chdir(tmp_path)
    for argv in (["convert", "--from", "megatron", "M-M"], ["compile", "mamba2"]):
        code, _, err = run(*argv, "-o", "-", capsys=capsys)
        assert code == 2 and "-o -: archdsl writes no standard output through -o" in err
    assert list(tmp_path.iterdir()) == []
    assert run("convert", "--from", "megatron", "M-M", "-o", "./-", capsys=capsys)[0] == 0  # a file of that name


def test_convert_from_hf_of_an_archdsl_save_says_what_it_is(tmp_path, capsys):
    assert run("compile", "mamba2", "--set", "d_model=32", "-o", str(tmp_path / "m"), capsys=capsys)[0] == 0
    code, _, err = run("convert", "--from", "hf", str(tmp_path / "m"), capsys=capsys)
    assert code == 2 and "an archdsl model directory (spec.yaml), not a Hugging Face one (config.json)" in err


def test_a_warning_made_an_error_is_an_error_line(capsys):
    """Under -W error (PYTHONWARNINGS=error) an ArchDSLWarning is raised: it exits 2 with its message, as the
    CLI's other errors, not as a traceback."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run("convert", "--from", "megatron", "M/M", capsys=capsys)
    assert code == 2 and err.startswith("error: the hybrid pattern's multi-token-prediction layers") \
        and "Traceback" not in err


def test_convert_megatron(capsys):
    code, out, _ = run("convert", "--from", "megatron", "M-M*-", capsys=capsys)
    assert code == 0 and "layout:" in out
    assert out.startswith("# From a Megatron-Core hybrid pattern") and "--hidden-size: d_model" in out
    # a pattern starting with '-' (an MLP) is the pattern, not an option (argparse had 'required: input')
    code, out, err = run("convert", "--from", "megatron", "-M-M", capsys=capsys)
    assert code == 0 and "layout: 2×(mlp, mamba2)" in out, err
    code, out, err = run("convert", "--from", "megatron", "--M", "--name", "n", capsys=capsys)
    assert code == 0 and "layout: 2×mlp, mamba2" in out and "name: n" in out, err
    code, out, err = run("convert", "--from", "megatron", "---", capsys=capsys)  # all MLPs ('--' ends the options)
    assert code == 0 and "layout: 3×mlp" in out, err
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


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b", "\x7f", "\x9b", "\ufffe", "\uffff"])
def test_a_character_yaml_refuses_is_pointed_at(tmp_path, capsys, char):
    """A control character or U+FFFF in a spec file: file:line:col, the line with the character shown as one
    replacement character (not sent to the terminal), and a caret under it; it was PyYAML's `unacceptable character
    ... in "<unicode string>", position 34` with no place."""
    f = tmp_path / "t.yaml"
    f.write_text(f"name: x\r\nd_model: 64\r\nlayout: mamba2{char}, attn\r\n", encoding="utf-8")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and err.startswith(f"error: {f}:3:15: invalid YAML: ") and f"U+{ord(char):04X}" in err, err
    assert err.endswith("\n  layout: mamba2\ufffd, attn\n                ^\n" if char < "\ufffe"
                        else f"\n  layout: mamba2{char}, attn\n                ^\n"), err
    assert "<unicode string>" not in err and "\x1b" not in err and "\x00" not in err


def test_yaml_positions_count_the_lines_an_editor_shows(tmp_path, capsys):
    """Lines are counted at \\n, \\r\\n and \\r, as an editor shows them; U+2028, U+2029 and NEL, which PyYAML also
    reads as line breaks, are named in a hint and shown as one character in the excerpt. An error at the end of the
    file points at the end of its last line (it pointed at the empty line after it)."""
    f = tmp_path / "t.yaml"
    f.write_text("name: x\nd_model: 64\nlayout: mamba2,\u2028atn\n", encoding="utf-8")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and err == (f"error: {f}:3:20: invalid YAML: could not find expected ':'; U+2028 at 3:16 is a "
                                 f"line break to YAML, though an editor may show none\n"
                                 f"  layout: mamba2,\ufffdatn\n                     ^\n"), err
    f.write_text("name: x\nlayout: [mamba2\n\n  \n", encoding="utf-8")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and err.startswith(f"error: {f}:2:16: invalid YAML: expected ',' or ']'") and err.endswith(
        "\n  layout: [mamba2\n                 ^\n"), err
    f.write_text("name: x\u2029\nd_model: 64\x85\nd_model: 32\nlayout: mamba2\n", encoding="utf-8")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:3:1: key 'd_model' is written twice (first at line 2)" in err, err


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
    assert code == 2 and "directory without a spec.yaml file" in err
    (tmp_path / "spec.yaml").mkdir()  # said "no such spec file: DIR/spec.yaml"
    code, _, err = run("check", str(tmp_path), capsys=capsys)
    assert code == 2 and f"{tmp_path} is a directory without a spec.yaml file" in err
    fifo = tmp_path / "ff"  # read, a FIFO waits for a writer; once it was parsed as a layout ("unknown block 'ff'")
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        code, _, err = run("check", path, capsys=capsys)
        assert code == 2 and f"{path} is not a regular file" in err, err


def test_input_nested_past_the_stack_is_an_error_of_its_file(tmp_path, capsys):
    """YAML or JSON some thousand levels deep ran the parsers past Python's recursion limit: a traceback (exit 1)
    from check, explore, convert and run. Each names its file now."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("layout: 2×mamba2\nd_model: " + "[" * 3000 + "]" * 3000 + "\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "mamba", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    saved = tmp_path / "saved"
    assert run("compile", "2×mamba2", "--set", "d_model=32", "--set", "vocab_size=64", "-o", str(saved),
               capsys=capsys)[0] == 0
    header = b"[" * 100000 + b"]" * 100000
    (saved / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    for argv, message in ((["check", str(deep)], f"{deep}: nested too deeply to read"),
                          (["explore", str(deep), "-o", str(tmp_path / "ex")], f"{deep}: nested too deeply"),
                          (["convert", "--from", "hf", str(hf)], "config.json: not a config.json: nested too deeply"),
                          (["run", str(saved), "--prompt-len", "2", "--gen", "1"], "its header is not JSON")):
        code, _, err = run(*argv, capsys=capsys)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "ex").exists()


def test_a_value_of_many_aliases_is_shown_short(tmp_path, capsys):
    """A 350-byte YAML file whose aliases stand for 9^9 strings: its error printed the whole value (39 MB of
    stderr at 9^7; at 9^9 it never ended)."""
    levels = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    f = tmp_path / "bomb.yaml"
    f.write_text("layout: 2×mamba2\nd_model: [" + ", ".join(levels) + "]\n")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:2:10: d_model must be int, got [['lol', 'lol', 'lol', 'lol', ...]" in err, err[:500]
    assert len(err) < 2000


def test_devices_and_fifos_are_never_read(tmp_path, capsys):
    """convert --from hf /dev/zero read until memory ran out; a FIFO waited for a writer forever; explore called
    them missing files."""
    fifo = tmp_path / "ff.json"
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        for argv in (["convert", "--from", "hf", path], ["explore", path, "-o", str(tmp_path / "ex")]):
            code, _, err = run(*argv, capsys=capsys)
            assert code == 2 and f"{path} is not a regular file" in err, (argv, err)


def test_a_saved_model_without_its_weights_is_refused(tmp_path, capsys):
    """run, bench and train on a directory with a spec.yaml and no model.safetensors ran fresh random weights
    (export called it no saved model): now all refuse it, and its spec.yaml gives random weights on purpose."""
    saved = tmp_path / "m"
    assert run("compile", "2×mamba2", "--set", "d_model=32", "--set", "vocab_size=64", "-o", str(saved),
               capsys=capsys)[0] == 0
    (saved / "model.safetensors").unlink()
    for argv in (["run", str(saved), "--prompt-len", "2", "--gen", "1"], ["bench", str(saved), "--seq-len", "8"],
                 ["train", str(saved), "--data", "mqar:seq=16,pairs=2", "--steps", "1", "-o", str(tmp_path / "r")]):
        code, _, err = run(*argv, capsys=capsys)
        assert code == 2 and f"{saved} has a spec.yaml but no model.safetensors file" in err, (argv, err)
    assert not (tmp_path / "r").exists()
    assert run("run", str(saved / "spec.yaml"), "--prompt-len", "2", "--gen", "1", capsys=capsys)[0] == 0


def test_explore_refuses_a_depth_past_the_layer_limit(tmp_path, capsys):
    """depth: [200000] enumerated silently for minutes; a layout stops at 100000 layers, so does a space."""
    f = tmp_path / "space.yaml"
    f.write_text("name: t\nbase: {vocab_size: 64}\nmixers: [mamba2]\nd_model: [32]\ndepth: [8, 200000]\n")
    code, _, err = run("explore", str(f), "-o", str(tmp_path / "ex"), capsys=capsys)
    assert code == 2 and f"{f}:5:8: depth 200000 is past the 100000 layers" in err, err
    assert not (tmp_path / "ex").exists()


def test_convert_refuses_an_empty_output_path(capsys):
    code, out, err = run("convert", "--from", "megatron", "M-", "-o", "", capsys=capsys)
    assert code == 2 and "-o: give a path" in err and out == ""


def test_missing_paths_are_named_as_paths_not_parsed_as_layouts(tmp_path, capsys):
    for cmd, path in (("check", tmp_path / "nope.yaml"), ("check", tmp_path / "model"), ("run", tmp_path / "model")):
        code, _, err = run(cmd, str(path), capsys=capsys)
        assert code == 2 and str(path) in err and "no such spec file" in err and "<layout>" not in err
    assert run("check", "mamba2, # a/b\nattn", capsys=capsys)[0] == 0  # a layout may hold a '/' in a comment
    code, _, err = run("check", 'mlp(act="a/b")', capsys=capsys)  # or in a string: a layout's error
    assert code == 2 and "<layout>:1:" in err and "act" in err


def test_a_text_that_is_a_file_here_and_a_layout_is_refused_as_ambiguous(tmp_path, monkeypatch, capsys):
    """`archdsl show attn` beside a file named `attn` gave the figures of the file's 4×mamba, with no word; a
    `mamba2/` directory made the layout `mamba2` an error. A text that names something here and reads as a layout is
    refused, by load_spec, analyze, compile and every command; `./NAME`, a '/' or a .yaml name is a path, and a
    directory without spec.yaml (no spec) leaves the text a layout."""
    import archdsl

    monkeypatch.chdir(tmp_path)
    (tmp_path / "attn").write_text("layout: 4×mamba\n")
    message = "'attn' is both a file here and a layout: write ./attn for the file"
    for call in (archdsl.load_spec, archdsl.analyze, lambda t: archdsl.compile(t, device="meta")):
        with pytest.raises(archdsl.ArchDSLError) as e:
            call("attn")
        assert str(e.value).startswith(message) and "or rename the file" in str(e.value), str(e.value)
    for argv in (["show", "attn"], ["check", "attn"], ["run", "attn", "--gen", "1"]):
        code, out, err = run(*argv, capsys=capsys)
        assert code == 2 and out == "" and err.startswith(f"error: {message}"), (argv, err)
    for path in ("./attn", str(tmp_path / "attn")):
        assert len(archdsl.analyze(path).layers) == 4
    assert len(archdsl.analyze(tmp_path / "attn").layers) == 4  # an os.PathLike is a path
    (tmp_path / "mamba2").mkdir()  # a checkout, say: no spec, so `mamba2` is the layout
    assert [r.mixer for r in archdsl.analyze("mamba2").layers] == ["mamba2"]
    assert run("check", "mamba2", capsys=capsys)[1] == "ok: model: 1 layer\n"
    code, _, err = run("check", "./mamba2", capsys=capsys)
    assert code == 2 and "./mamba2 is a directory without a spec.yaml file" in err
    (tmp_path / "mamba2" / "spec.yaml").write_text("layout: 2×attn\n")
    (tmp_path / "mamba2" / "model.safetensors").write_text("")  # a saved model: run and bench would load it
    for argv in (["check", "mamba2"], ["run", "mamba2", "--gen", "1"], ["bench", "mamba2", "--gen", "1"]):
        code, _, err = run(*argv, capsys=capsys)
        assert code == 2 and err.startswith("error: 'mamba2' is both a saved model's directory here and a layout: "
                                            "write ./mamba2 for the directory"), (argv, err)
    assert archdsl.load_spec("./mamba2").layout_text == archdsl.load_spec("mamba2/").layout_text == "2×attn"
    (tmp_path / "out").mkdir()  # a name no layout has (a layout string names block kinds only): a path
    (tmp_path / "out" / "spec.yaml").write_text("layout: 3×mamba\n")
    (tmp_path / "4×attn.yaml").write_text("layout: mamba\n")  # a .yaml name is a file's
    assert archdsl.load_spec("out").layout_text == "3×mamba"
    assert archdsl.load_spec("4×attn.yaml").layout_text == "mamba"
    assert archdsl.load_spec("4×attn").layout_text == "4×attn"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where nothing can be created")
def test_unwritable_places_exit_2(capsys):
    for argv in (["graph", "mamba2", "-o", "/proc/archdsl-test/g.svg"],
                 ["graph", "mamba2", "-o", "/proc/archdsl-test/g.dot"],
                 ["memory", "mamba2", "-o", "/proc/archdsl-test/m.png"],
                 ["convert", "--from", "megatron", "M-M", "-o", "/proc/archdsl-test/x.yaml"],
                 ["explore", os.path.join(ROOT, "specs/spaces/tiny.yaml"), "-o", "/proc/archdsl-test"],
                 ["train", "mamba2(d_state=8, headdim=8)", "--data", "mqar:seq=32,pairs=2", "--steps", "1",
                  "--batch", "2", "--no-progress", "-o", "/proc/archdsl-test"]):
        code, _, err = run(*argv, capsys=capsys)
        assert code == 2 and "/proc/archdsl-test" in err and "Traceback" not in err, (argv, err)


def test_set_changes_model_level_keys(tmp_path, capsys):
    """--set KEY=VALUE changes a spec's model-level keys for one command, a layout string's and a file's, as if
    written there; memory applies them to every spec it takes, compile to the model it saves."""
    import archdsl
    from archdsl.spec import with_sizes

    layout = "4×(7×mamba2, attn(shared)), moe every 2"
    code, out, _ = run("show", layout, "--set", "d_model=1024", "--set", "vocab_size=32000",
                       "--set", "tie_embeddings=false", "--json", capsys=capsys)
    want = archdsl.analyze(archdsl.parse(layout, d_model=1024, vocab_size=32000, tie_embeddings=False))
    assert code == 0 and json.loads(out)["params"] == want.params
    path = os.path.join(ROOT, "specs/mamba-130m.yaml")
    code, out, _ = run("show", path, "--set", "d_model=1536", "--set", "name=wider", "--json", capsys=capsys)
    want = archdsl.analyze(with_sizes(archdsl.load_spec(path), d_model=1536))
    assert code == 0 and json.loads(out)["params"] == want.params
    code, out, _ = run("memory", "4×mamba2", "4×attn", "--set", "d_model=2048", "--seq-lens", "1k", "--json",
                       capsys=capsys)
    got = list(json.loads(out)["cache_bytes"].values())
    assert code == 0 and got == [[archdsl.analyze(archdsl.parse(t, d_model=2048), seq_len=1024).cache_bytes]
                                 for t in ("4×mamba2", "4×attn")]
    assert run("compile", "2×mamba2", "--set", "d_model=64", "--set", "vocab_size=100", "-o",
               str(tmp_path / "m"), capsys=capsys)[0] == 0
    assert archdsl.load_spec(str(tmp_path / "m")).d_model == 64
    code, _, err = run("run", str(tmp_path / "m"), "--set", "d_model=32", capsys=capsys)
    assert code == 2 and "is a saved model, whose weights fix its sizes" in err


@pytest.mark.parametrize("setting, message", [
    ("d_model", "--set: expected KEY=VALUE (say d_model=1024), got 'd_model'"),
    ("=3", "--set: expected KEY=VALUE"),
    ("dmodel=3", "--set dmodel=3: 'dmodel' is not a model-level key"),
    ("d_model=abc", "--set d_model=abc: d_model must be int, got 'abc'"),
    ("d_model=", "--set d_model=: no value after '=' (say d_model=1024)"),
    ("d_model=-3", "--set d_model=-3: d_model must be positive, got -3"),
    ("d_model=0", "--set d_model=0: d_model must be positive, got 0"),
    ("d_model=[1", "--set d_model=[1: '[1' is not a value"),
    ("norm=batchnorm", "--set norm=batchnorm: unknown norm 'batchnorm'"),
    ("tie_embeddings=maybe", "--set tie_embeddings=maybe: tie_embeddings must be bool"),
    ("name= ", "--set name= : name must not be empty"),
    ("name=a\tb", "--set name=a\tb: name must be one line without control characters"),
    ("ffn=attn", "--set ffn=attn: ffn: 'attn' is not a channel block"),
    ("ffn=mpl", "--set ffn=mpl: unknown block 'mpl'; did you mean 'mlp'?"),
    ("norm=", "--set norm=: no value after '=' (say norm=rmsnorm)"),
    ("d_model=010", "--set d_model=010: '010' is not a value ('010': a leading 0 reads as octal in YAML 1.1 (8) "
                    "and as 10 in YAML 1.2"),
    ("d_model=12:48", "--set d_model=12:48: d_model must be int, got '12:48'"),  # YAML 1.1's base 60: 768
])
def test_bad_set_names_the_setting(setting, message, capsys):
    code, _, err = run("show", "2×mamba2", "--set", setting, capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_set_reads_text_keys_as_a_file_does(capsys):
    """--set's values are read as YAML for every key but name, as the docs say: ffn=null is a spec without a
    default FFN and norm="layernorm" the norm, as `ffn: null` and `norm: "layernorm"` in a file are."""
    import archdsl
    from archdsl.spec import with_settings

    spec = archdsl.parse("2×attn", ffn="mlp")
    assert with_settings(spec, ["ffn=null"]).ffn is None and with_settings(spec, ["ffn=~"]).ffn is None
    assert with_settings(spec, ["ffn="]).ffn is None
    assert with_settings(spec, ['norm="layernorm"']).norm == "layernorm"
    assert with_settings(spec, ["name=012"]).name == "012"  # a name as written


def test_an_unknown_setting_lists_the_keys_once(capsys):
    """A key with no close name gets the list of model-level keys once (it was printed twice: in the message and
    again as 'valid names'); a near miss still gets its suggestion."""
    code, _, err = run("check", "mamba", "--set", "layout=x", capsys=capsys)
    assert code == 2 and err.count("d_model") == 1 and "valid names" not in err, err
    code, _, err = run("check", "mamba", "--set", "dmodel=3", capsys=capsys)
    assert code == 2 and err.rstrip().endswith("did you mean 'd_model'?"), err


def test_set_on_a_file_points_at_what_it_breaks(capsys):
    """A size the file's blocks cannot take is reported at their place in the file, as the doing of the setting;
    a saved model's sizes are its weights', so --set refuses it."""
    code, _, err = run("check", os.path.join(ROOT, "specs/jamba-v0.1.yaml"), "--set", "d_model=1000", capsys=capsys)
    assert code == 2 and err.startswith("error: --set d_model=1000: attn: heads 32 must divide d_model 1000 (at "), err
    assert "jamba-v0.1.yaml:13:17)\n    attn: {heads: 32" in err, err


SET_COMMANDS = [["check"], ["show"], ["fmt"], ["graph", "-o", "g.svg"], ["memory"], ["compile", "-o", "m"],
                ["run", "--prompt-len", "2", "--gen", "1"], ["bench", "--seq-len", "2", "--gen", "1"]]


@pytest.mark.parametrize("argv", SET_COMMANDS, ids=lambda a: a[0])
def test_every_error_of_a_setting_names_it(argv, tmp_path, monkeypatch, capsys):
    """In every command that takes --set, an error that a setting causes starts with `--set KEY=VALUE:`, so that it
    is not taken for one of the spec: a bad value, and a size the layout's blocks cannot take (that one was
    reported at the layout alone, as if the layout were wrong). Nothing is written."""
    monkeypatch.chdir(tmp_path)
    for setting, message in (("d_model=abc", "d_model must be int, got 'abc'"),
                             ("d_model=-3", "d_model must be positive, got -3"),
                             ("d_model=", "no value after '='"),
                             ("dmodel=64", "'dmodel' is not a model-level key"),
                             ("d_model=100", "attn: heads 8 must divide d_model 100 (at <layout>:1:20)\n"
                                             "  mamba2(headdim=8), attn\n                     ^~~~")):
        code, out, err = run(argv[0], "mamba2(headdim=8), attn", *argv[1:], "--set", setting, capsys=capsys)
        assert code == 2 and out == "" and err.startswith(f"error: --set {setting}: {message}"), (setting, err)
    assert os.listdir(tmp_path) == []


def test_an_error_is_put_down_to_the_setting_that_makes_it(tmp_path, capsys):
    """Of several settings, the error names the one that breaks the spec (the others build it on their own); an
    error the spec has without any setting is the spec's, reported as it is."""
    code, _, err = run("show", "mamba2(headdim=8), attn", "--set", "vocab_size=100", "--set", "d_model=100",
                       "--set", "name=x", capsys=capsys)
    assert code == 2 and err.startswith("error: --set d_model=100: attn: heads 8 must divide d_model 100"), err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nd_model: 64\nlayout: attn(heads=3)\n")
    own = run("check", str(bad), capsys=capsys)[2]
    code, _, err = run("check", str(bad), "--set", "vocab_size=100", capsys=capsys)
    assert code == 2 and err == own and "--set" not in err and "heads 3 must divide d_model 64" in err, err


def test_set_ffn_on_a_file_names_the_setting(capsys):
    code, _, err = run("check", os.path.join(ROOT, "specs/demo-llama.yaml"), "--set", "ffn=attn", capsys=capsys)
    assert code == 2 and err.startswith("error: --set ffn=attn: ffn: 'attn' is not a channel block"), err
    assert run("check", os.path.join(ROOT, "specs/demo-llama.yaml"), "--set", "ffn=none", capsys=capsys)[0] == 0


def test_yaml_merge_keys_are_read_and_pointed_at(tmp_path, capsys):
    """`<<:` merges keys as YAML says: a merged layout is a layout (no traceback), its errors point where it is written."""
    f = tmp_path / "m.yaml"
    f.write_text('<<: {layout: "4×mamba2", d_model: 64}\nname: m\n')
    code, out, err = run("check", str(f), capsys=capsys)
    assert code == 0 and out == "ok: m: 4 layers\n", err
    f.write_text('name: m\n<<: [{layout: "4×mamab2"}, {d_model: 64}]\n')
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:2:18: unknown block 'mamab2'" in err and "Traceback" not in err, err
    f.write_text('name: m\n<<: [{layout: "4×mamba2"}, {d_model: 0}]\n')
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:2:38: d_model must be positive" in err, err
    f.write_text('name: m\n<<: {layout: "4×mamab2"}\nlayout: 2×mamab\n')  # the key written last wins
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:3:11: unknown block 'mamab'" in err, err
    f.write_text("name: m\nlayout: 2×mamba2\nblocks: {mamba2: {<<: {d_state: 0}}}\n")
    code, _, err = run("check", str(f), capsys=capsys)
    assert code == 2 and f"{f}:3:33: mamba2: d_state must be positive" in err, err


@pytest.mark.parametrize("argv", [["compile", "mamba2"], ["export", "saved", "--to", "hf"],
                                  ["convert", "--from", "hf", "hfdir", "--weights"], ["export-checkpoint", "rundir"]])
def test_a_bad_output_directory_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv):
    """compile, export and convert --weights check -o before they build or load a model (a 7B one takes minutes
    and tens of GB), and leave what is there as it was."""
    import archdsl.convert.hf_io
    import archdsl.model

    def no_work(*a, **k):
        raise AssertionError("the model was built before -o was checked")

    monkeypatch.setattr(archdsl.model, "compile", no_work)
    monkeypatch.setattr(archdsl.convert.hf_io, "export_hf", no_work)
    monkeypatch.setattr(archdsl.convert.hf_io, "from_hf", no_work)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for out, message in (("afile", "-o afile: exists and is not a directory"), ("", "-o: give a path"),
                         ("full", "holds what this output does not write (notes.txt)"),
                         ("afile/x", "is a file, not a directory"), (".", "it is the current directory")):
        if argv[-1] == "--weights" and not out:
            continue  # convert --weights with an empty -o: "--weights needs -o DIR"
        code, _, err = run(*argv, "-o", out, capsys=capsys)
        assert code == 2 and message in err and "Traceback" not in err, (out, err)
    assert (tmp_path / "afile").read_text() == "x" and (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "full"]


@pytest.mark.parametrize("layout", ["4×mamba2(d_state=99999999999999999999)", "mamba2, mlp(hidden=10000000000000)"])
def test_check_refuses_what_show_refuses(layout, capsys):
    """An absurd block is refused by check too, at its place in the layout (not only by the analysis)."""
    for cmd in ("check", "show"):
        code, _, err = run(cmd, layout, capsys=capsys)
        assert code == 2 and "absurd size" in err and "<layout>:1:" in err and "^" in err, (cmd, err)


@pytest.mark.parametrize("kind, arg", [("mamba", "d_state"), ("attn", "head_dim"), ("mlp", "hidden")])
def test_a_block_past_a_floats_range_is_absurd_not_an_overflow(kind, arg):
    """An int argument past 10^15 is absurd, whatever it feeds (attn's head_dim × rope_fraction, a float, had been
    an OverflowError); a float argument given as an int is the float's business."""
    import archdsl
    with pytest.raises(archdsl.ArchDSLError, match=rf"{kind}: {arg}: absurd size about 10\^400 \(over 10\^15\)"):
        archdsl.parse(kind, blocks={kind: {arg: 10**400}}).graph
    assert archdsl.parse("attn", blocks={"attn": {"rope_theta": 10**16}}).graph


@pytest.mark.parametrize("text,message", [
    ("layout: mamba2\nd_model: 1" + "0" * 5000 + "\n", "2:10: invalid YAML: cannot read '1000"),
    ("layout: mamba2\nname: 2024-02-30\n", "2:7: invalid YAML: cannot read '2024-02-30' as timestamp: day is out"),
    # YAML 1.1's octal and base 60, which YAML 1.2 reads otherwise: 532 and 768 had been taken silently
    ("layout: mamba2\nd_model: 01024\n", "2:10: invalid YAML: '01024': a leading 0 reads as octal in YAML 1.1 (532) "
                                          "and as 1024 in YAML 1.2: write the number without it"),
    ("layout: mamba2\nd_model: 12:48\n", "2:10: d_model must be int, got '12:48'"),
    ('layout: mamba2\nname: "\\ud83d"\n', "2:7: invalid YAML: \\ud83d is half of a UTF-16 surrogate pair"),
    ('layout: "2×attn(shared=\\"\\ud83d\\")"\n', "1:9: invalid YAML: \\ud83d is half"),
    ("layout: mamba2(dt_floor=1e308)\n", "mamba2: dt_floor must be at most 3.4e38"),
    ("layout: mamba(dt_max=1e39)\n", "mamba: dt_max must be at most 3.4e38"),
])
def test_values_python_cannot_hold_are_refused_in_place(tmp_path, capsys, text, message):
    """An integer past Python's 4300 digits, an impossible date, half a surrogate pair (no file or terminal takes
    it), a step size past float32: each a clear error at its place, not a traceback at some later command."""
    f = tmp_path / "s.yaml"
    f.write_text(text, encoding="utf-8")
    for cmd in ("check", "fmt"):
        code, out, err = run(cmd, str(f), capsys=capsys)
        if cmd == "fmt" and "3.4e38" in message:
            continue  # fmt reads the text, not the blocks' values
        assert code == 2 and message in err and "Traceback" not in err, (cmd, err)


def test_the_python_api_refuses_wrong_kinds_of_argument_clearly():
    import archdsl
    from archdsl.spec import with_settings
    spec = archdsl.parse("mamba")
    for call, message in ((lambda: archdsl.load(None), "expected a directory's path (str or os.PathLike), got None"),
                          (lambda: archdsl.from_hf(5), "expected a directory's path (str or os.PathLike), got int"),
                          (lambda: archdsl.analyze_lengths(spec, 5), "seq_lens must be a list of context lengths"),
                          (lambda: with_settings(spec, [5]), "--set: expected a list of 'KEY=VALUE' texts")):
        with pytest.raises(archdsl.ArchDSLError) as e:
            call()
        assert message in str(e.value)


def test_an_empty_ffn_is_none_and_round_trips(tmp_path):
    from archdsl.spec import load_spec, spec_from_yaml
    f = tmp_path / "s.yaml"
    f.write_text('layout: 2×mamba2\nffn: ""\n')
    spec = load_spec(str(f))
    assert spec.ffn is None and spec_from_yaml(spec.to_yaml()) == spec


def test_a_plot_path_through_dot_dot_is_written_where_it_points(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run("memory", "mamba", "-o", "a/b/../c.png", capsys=capsys)
    assert code == 0 and (tmp_path / "a" / "c.png").stat().st_size > 0, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/c.png"]


def test_arguments_whose_bytes_are_not_utf8_are_refused(capsys):
    """Python keeps an argument's non-UTF-8 bytes as lone surrogates: a spec holding one could not be written."""
    code, _, err = run("check", "mamba\udcff", capsys=capsys)
    assert code == 2 and "<layout>:1:6: byte 0xff is not UTF-8\n  mamba\\udcff\n" in err, err
    code, _, err = run("check", "mamba", "--set", "name=a\udcff", capsys=capsys)
    assert code == 2 and "name must be text" in err, err


def test_names_with_line_breaks_are_refused(tmp_path, capsys):
    """A name is one line: a line break or a terminal escape in it would break every table that shows it."""
    f = tmp_path / "n.yaml"
    for name in ('"a\\nb"', '"\\e[31mred"'):
        f.write_text(f"name: {name}\nlayout: mamba2\n")
        code, _, err = run("memory", str(f), capsys=capsys)
        assert code == 2 and f"{f}:1:7: name must be one line" in err, err
    f.write_text("name: é 名前 a-b\nlayout: mamba2\n")
    assert run("check", str(f), capsys=capsys)[1] == "ok: é 名前 a-b: 1 layer\n"


def test_at_past_the_end_counts_in_english(capsys):
    code, _, err = run("check", "mamba2, attn at 5", capsys=capsys)
    assert code == 2 and "the layout has only 1 layer (indices 0..0)" in err, err


def test_bench_out_of_memory_exits_2(monkeypatch, capsys):
    """A shape the memory cannot hold (here the CPU allocator's refusal, as `--batch 1m --seq-len 1m` gets it) is
    an error naming the shape, exit 2; it was a traceback."""
    import torch

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 8796093022208 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(torch, "randint", no_memory)
    code, _, err = run("bench", "mamba2(d_state=8, headdim=8)", "--set", "d_model=32", "--batch", "1m",
                       "--seq-len", "1m", "--cases", "forward", capsys=capsys)
    assert code == 2 and "bench: batch 1048576 × 1,048,576 tokens does not fit in the memory of cpu" in err, err
    assert "Traceback" not in err


def test_counts_of_one_are_singular(tmp_path, capsys):
    """run and bench say '1 token', not '1 tokens', and train '1 process', not '1 process(es)'; the columns of
    run's table stay aligned."""
    tiny = ("mamba2(d_state=8, headdim=8)", "--set", "d_model=32", "--set", "vocab_size=64")
    code, out, _ = run("run", *tiny, "--prompt-len", "1", "--gen", "1", "--no-warmup", capsys=capsys)
    lines = out.splitlines()
    assert code == 0 and lines[1].startswith("  prefill         1 token    ") and " 1 tokens" not in out, out
    assert lines[2].startswith("  decode          1 token    ") and lines[-1].endswith(" at 2 tokens"), out
    assert lines[1].index("tokens/s") == lines[2].index("tokens/s")
    code, out, _ = run("run", *tiny, "--prompt-len", "1", "--gen", "0", "--no-warmup", capsys=capsys)
    assert code == 0 and out.splitlines()[-1].endswith(" at 1 token"), out
    code, out, _ = run("run", *tiny, "--prompt-len", "12", "--gen", "3", "--no-warmup", capsys=capsys)
    assert code == 0 and "  prefill        12 tokens   " in out and "  decode          3 tokens   " in out, out
    code, out, _ = run("bench", *tiny, "--seq-len", "1", "--gen", "1", "--cases", "forward", capsys=capsys)
    assert code == 0 and out.splitlines()[0].endswith(", batch 1, 1 token"), out
    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\nd_model: 32\nvocab_size: 64\nlayout: mamba2(d_state=8, headdim=8)\n")
    code, out, _ = run("train", str(spec), "--data", "mqar:seq=16,pairs=2,vocab=64", "--steps", "1", "--batch", "2",
                       "--no-progress", "--threads", "1", "-o", str(tmp_path / "r"), capsys=capsys)
    assert code == 0 and out.endswith(" s on 1 process\n"), out


def test_run_out_of_memory_exits_2(monkeypatch, capsys):
    """Any command whose sizes the memory cannot hold (`run --batch 1m --prompt-len 1m`: the CPU allocator refuses
    the prompt) says so with a hint, exit 2; it was a traceback."""
    import torch

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8796093022208 bytes.")

    monkeypatch.setattr(torch, "randint", no_memory)
    code, _, err = run("run", "mamba2(d_state=8, headdim=8)", "--set", "d_model=32", "--batch", "1m",
                       "--prompt-len", "1m", capsys=capsys)
    assert code == 2 and "error: out of memory: DefaultCPUAllocator: can't allocate memory" in err, err
    assert "hint: a smaller --batch" in err and "Traceback" not in err


def test_out_of_memory_hints_name_the_commands_own_options(tmp_path, monkeypatch, capsys):
    """The hint of an allocation that failed named --seq-len and --prompt-len to every command: compile has neither
    (its model is what is too big), run has no --seq-len, explore's training batch is --batch-size."""
    import archdsl.explore.train
    import archdsl.model

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8796093022208 bytes.")

    monkeypatch.setattr(archdsl.model, "compile", no_memory)
    code, _, err = run("compile", "mamba2", "-o", str(tmp_path / "m"), capsys=capsys)
    assert code == 2 and "hint: a smaller model (--set d_model=" in err and "--seq-len" not in err, err
    code, _, err = run("run", "mamba2", capsys=capsys)
    assert code == 2 and "hint: a smaller --batch or --prompt-len" in err and "--seq-len" not in err, err
    code, _, err = run("bench", "mamba2", capsys=capsys)
    assert code == 2 and "hint: a smaller --batch or --seq-len" in err and "--prompt-len" not in err, err
    monkeypatch.setattr(archdsl.explore.train, "train_probe", no_memory)
    space = tmp_path / "space.yaml"
    space.write_text("base: {vocab_size: 64, blocks: {mamba2: {d_state: 8, headdim: 8}, attn: {heads: 2}}}\n"
                     "attn_count: [0, 0]\nd_model: [16]\ndepth: [1]\n")
    code, _, err = run("explore", str(space), "-o", str(tmp_path / "e"), "--probe", "mqar", "--steps", "1",
                       "--no-progress", capsys=capsys)
    assert code == 2 and "hint: a smaller --batch-size" in err and "--prompt-len" not in err, err


def test_the_strip_says_1_layer():
    """The picture's title said '1 layers'."""
    import archdsl
    from archdsl.draw import plain_text, strip_figure

    with plain_text():
        assert strip_figure(archdsl.parse("mamba2")).axes[0].get_title() == "model: 1 layer"
        assert strip_figure(archdsl.parse("2×mamba2")).axes[0].get_title() == "model: 2 layers"


def test_memory_plot_ticks_are_plain_text(tmp_path, monkeypatch):
    """With mathtext off for names, the log axes' default ticks read '$\\mathdefault{10^{2}}$'; a spec without a
    cache (all zeros) warned and vanished from the log axis."""
    import warnings

    import archdsl.draw

    figs = []
    real = archdsl.draw.memory.save_figure
    monkeypatch.setattr(archdsl.draw.memory, "save_figure",  # where plot_memory looks it up
                        lambda fig, path, **k: (fig.canvas.draw(), figs.append(fig)))
    archdsl.draw.plot_memory([1024, 8192, 1000], {"a": [2**20, 2**23, 10**6], "b": [0, 0, 0]}, str(tmp_path / "m.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        archdsl.draw.plot_memory([1024], {"mlp": [0]}, str(tmp_path / "z.png"))
    monkeypatch.setattr(archdsl.draw.memory, "save_figure", real)
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1000", "", "8k"]  # 1k's would lie on 1000's
    ys = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ys and all("$" not in y and y.endswith("B") for y in ys), ys
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b (no cache)"]
    assert [t.get_text() for t in figs[1].axes[0].get_yticklabels()] == ["0 B"]


def test_human_rounds_up_into_the_next_prefix():
    """999,999 FLOPs read '1000.00K' and 1,048,575 bytes '1024.00 KiB'."""
    from archdsl.units import human

    figures = (999, 999.6, 999_994, 999_999, 1_234_567)
    assert [human(n) for n in figures] == ["999", "1.00K", "999.99K", "1.00M", "1.23M"]
    assert [human(n, "B") for n in (1023, 1024, 2**20 - 1, 2**30 - 1)] == ["1023 B", "1.00 KiB", "1.00 MiB", "1.00 GiB"]


@pytest.mark.parametrize("argv", [["fmt", "2×mamba"], ["convert", "--from", "megatron", "M-"]])
def test_a_closed_stdout_is_an_error_not_a_traceback(argv):
    """Started with stdout closed (`>&-`), Python's sys.stdout is None: the last flush (and convert's write)
    raised AttributeError."""
    r = subprocess.run([sys.executable, "-m", "archdsl", *argv], stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 1 and r.stderr == "error: standard output is closed\n", r.stderr


def test_out_of_memory_hints_of_graph_and_train_name_their_own_options(tmp_path, monkeypatch, capsys):
    """graph (a PNG of many layers) and train fell to the default hint, '--batch, --seq-len or --prompt-len',
    options graph does not have and train has not all of."""
    import archdsl.draw
    import archdsl.train

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(archdsl.draw, "strip_figure", no_memory)
    code, _, err = run("graph", "mamba2", "-o", str(tmp_path / "g.png"), capsys=capsys)
    assert code == 2 and "hint: fewer layers, or a .dot file" in err and "--prompt-len" not in err, err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(archdsl.train, "train", no_memory)
    code, _, err = run("train", "mamba2", "--data", "mqar", "--steps", "1", "-o", str(tmp_path / "r"), capsys=capsys)
    assert code == 2 and "hint: a smaller --batch or sequence" in err and "--prompt-len" not in err, err


def test_convert_puts_a_bad_name_down_to_name(tmp_path, capsys):
    """A --name with a line break was said of '<converted>:1:7' (megatron) or of the config itself, 'the model of
    this config is not one archdsl can build' (hf)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}))
    for argv in (["--from", "megatron", "M-"], ["--from", "hf", str(config)]):
        code, out, err = run("convert", *argv, "--name", "a\nb", capsys=capsys)
        assert code == 2 and out == ""
        assert err == "error: --name: must be one line without control characters, got 'a\\nb'\n"
    code, out, _ = run("convert", "--from", "megatron", "M-", "--name", "é 名前", capsys=capsys)
    assert code == 0 and "\nname: é 名前\n" in out


def test_a_setting_with_a_line_break_is_refused_on_one_line(capsys):
    """`--set $'name=a\\nb'` was said over two lines, the setting repeated as it is (`error: --set name=a` and `b: name
    must be one line ...`); so was a value read as YAML across the break (d_model=1\\n2)."""
    for setting in ("name=a\nb", "d_model=1\n2", "norm=rms\x1b[31mnorm"):
        code, out, err = run("show", "2×mamba2", "--set", setting, capsys=capsys)
        assert code == 2 and out == "" and err == f"error: --set: must be one line without control characters, got " \
                                                  f"{setting!r}\n", err


def test_export_refuses_an_unknown_model_type_by_its_option(tmp_path, monkeypatch, capsys):
    """`export --model-type bogus` loaded the model, then put the error down to a 'config field' there is none of."""
    import archdsl.convert.hf_io

    def no_export(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(archdsl.convert.hf_io, "export_hf", no_export)
    for model_type, hint in (("mamba3", "did you mean 'mamba'"), ("", "valid names: bamba")):
        code, out, err = run("export", str(tmp_path), "--to", "hf", "-o", str(tmp_path / "hf"), "--model-type",
                             model_type, capsys=capsys)
        assert code == 2 and out == "" and err.startswith(f"error: --model-type: archdsl exports no model_type "
                                                          f"{model_type!r}; {hint}"), err
    assert list(tmp_path.iterdir()) == []


def test_a_kill_while_writing_leaves_nothing_behind(tmp_path):
    """SIGTERM (kill's default signal) while compile wrote its model left the temporary directory beside the
    output, a half-written model.safetensors in it: the process died without unwinding. It is now taken as
    Ctrl-C is: exit 143, `terminated`, nothing left."""
    code = ("import os, signal, sys\n"
            "import safetensors.torch\n"
            "def save_file(tensors, path, metadata=None):\n"
            "    open(path, 'wb').write(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "safetensors.torch.save_file = save_file\n"
            "from archdsl.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "compile", "2×mamba2", "--set", "d_model=32", "--set",
                        "vocab_size=10", "-o", str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 143 and r.stderr == "terminated\n", r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_ssm_state_dtype_help_tells_the_float64_default(capsys):
    """The help said the SSM states' default is float32; in a float64 cache (and model) they are float64."""
    cache = {}
    for flags in ((), ("--ssm-state-dtype", "float64"), ("--ssm-state-dtype", "float32")):
        code, out, _ = run("show", "2×mamba2", "--dtype", "float64", "--json", *flags, capsys=capsys)
        cache[flags] = json.loads(out)["cache_bytes"]
    assert cache[()] == cache["--ssm-state-dtype", "float64"] > cache["--ssm-state-dtype", "float32"]
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    assert "default float32, float64 in a float64 model or cache" in " ".join(capsys.readouterr().out.split())


def test_human_reads_past_pebibytes():
    """Sizes stopped at PiB ('562949953421312.00 PiB'): now EiB, ZiB, YiB, then scientific notation."""
    from archdsl.units import human

    assert [human(2**k, "B") for k in (60, 70, 80)] == ["1.00 EiB", "1.00 ZiB", "1.00 YiB"]
    assert human(2**99, "B") == "6.34e+29 B" and human(10**400, "B") == "about 10^400 B"
    assert [human(10**k) for k in (18, 21, 24, 27)] == ["1.00E", "1.00Z", "1.00Y", "1.00e+27"]
    assert human(1024**9 - 1, "B") == "1.24e+27 B"  # rounds past 1023.99 YiB: scientific, not '1024.00 YiB'


@pytest.mark.parametrize("text, count", [("1.5k", 1536), ("1.5M", 1_572_864), ("0.5k", 512), ("1.50k", 1536),
                                         ("2.25g", 2_415_919_104)])
def test_a_count_may_be_a_decimal_with_a_suffix(text, count, capsys):
    """k, m, g are 1024, 1024², 1024³ (as 8k is 8192): 1.5k is 1536. It was 'not a count'."""
    code, out, err = run("show", "mamba2", "--seq-len", text, "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["seq_len"] == count, err


@pytest.mark.parametrize("text, message", [
    ("1.3k", "--seq-len: '1.3k' is 1,331.2, not a whole count"),
    ("0.001k", "--seq-len: '0.001k' is 1.024, not a whole count"),
    ("1.0000000001m", "is 1,048,576.0001048576, not a whole count"),  # exact, not a float's 1,048,576
    ("1.5", "--seq-len: not a count: '1.5'"),  # a decimal takes a suffix
    (".5k", "--seq-len: not a count"), ("1e3k", "--seq-len: not a count"),
    ("-1.5k", "--seq-len: must be a positive count"),
])
def test_a_decimal_count_must_be_whole(text, message, capsys):
    code, _, err = run("show", "mamba2", f"--seq-len={text}", capsys=capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["graph", "mamba2"], ["memory", "mamba2"], ["convert", "--from", "megatron", "M-M"],
                                  ["compile", "mamba2"], ["export", "saved", "--to", "hf"],
                                  ["explore", os.path.join(ROOT, "specs/spaces/tiny.yaml")],
                                  ["train", "mamba2", "--data", "mqar:seq=32,pairs=2", "--steps", "1"]])
@pytest.mark.parametrize("char", ["\n", "\r", "\x1b", "\t", "\u2028"])
def test_output_paths_with_control_characters_are_refused(tmp_path, monkeypatch, capsys, argv, char):
    """`-o $'nl\\nx.svg'` was written, and 'wrote nl⏎x.svg' printed on two lines."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(*argv, "-o", f"nl{char}x.svg", capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: -o: the path {'nl' + char + 'x.svg'!r} holds the control character {char!r}")
    assert list(tmp_path.iterdir()) == []


def test_memory_writes_its_plot_before_it_prints(tmp_path, monkeypatch, capsys):
    """`memory -o PLACE` where PLACE cannot be written printed the table (or the JSON), then exited 2."""
    import archdsl.atomic

    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access
    monkeypatch.setattr(archdsl.atomic.os, "access", lambda p, mode, **k: str(p) != str(ro) and access(p, mode, **k))
    for flags in ([], ["--json"]):
        code, out, err = run("memory", "mamba2", "-o", str(ro / "sub" / "m.png"), *flags, capsys=capsys)
        assert code == 2 and out == "" and f"cannot write in {ro}: it is not writable" in err, err
    monkeypatch.undo()
    import archdsl.draw
    from archdsl.errors import ArchDSLError

    def full_disk(*a, **k):
        raise ArchDSLError("cannot write m.png: No space left on device")

    monkeypatch.setattr(archdsl.draw, "plot_memory", full_disk)  # a failure the early check cannot foresee
    code, out, err = run("memory", "mamba2", "-o", str(tmp_path / "m.png"), capsys=capsys)
    assert code == 2 and out == "" and "No space left on device" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"] and list(ro.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where nothing can be created")
def test_memory_prints_nothing_when_its_plot_cannot_be_made(capsys):
    for flags in ([], ["--json"]):
        code, out, err = run("memory", "mamba2", "-o", "/proc/archdsl-test/m.png", *flags, capsys=capsys)
        assert code == 2 and out == "" and "/proc/archdsl-test" in err, err


@pytest.mark.parametrize("argv", [["compile", "mamba2"], ["export", "saved", "--to", "hf"],
                                  ["convert", "--from", "hf", "hfdir", "--weights"], ["export-checkpoint", "rundir"],
                                  ["graph", "mamba2"], ["convert", "--from", "megatron", "M-M"]])
def test_an_unwritable_output_place_is_refused_before_any_work(tmp_path, monkeypatch, capsys, argv):
    """compile -o and convert --weights -o in a directory archdsl may not write in failed after the model was
    built (or read); os.access is what tells, whoever runs it (root writes anywhere but a read-only file system)."""
    import archdsl.atomic
    import archdsl.convert.hf_io
    import archdsl.model

    def no_work(*a, **k):
        raise AssertionError("the model was built before -o was checked")

    monkeypatch.setattr(archdsl.model, "compile", no_work)
    monkeypatch.setattr(archdsl.convert.hf_io, "export_hf", no_work)
    monkeypatch.setattr(archdsl.convert.hf_io, "from_hf", no_work)
    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access
    monkeypatch.setattr(archdsl.atomic.os, "access", lambda p, mode, **k: str(p) != str(ro) and access(p, mode, **k))
    for out in (ro / "x.yaml", ro / "new" / "x.yaml"):  # in it, or in a directory to be made in it
        code, stdout, err = run(*argv, "-o", str(out), capsys=capsys)
        assert code == 2 and stdout == "" and f"-o {out}: cannot write in {ro}: it is not writable" in err, err
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("argv", [["show", "mamba2"], ["memory", "mamba2"]])
def test_a_cache_dtype_is_refused_by_its_option(argv, capsys):
    code, out, err = run(*argv, "--dtype", "int8", capsys=capsys)
    assert code == 2 and out == "" and err.startswith("error: --dtype: unknown dtype 'int8' (one of float32"), err


@pytest.mark.parametrize("argv", [["show", "mamba2"], ["memory", "mamba2"], ["run", "mamba2", "--gen", "1"],
                                  ["bench", "mamba2", "--seq-len", "8", "--gen", "1"]])
def test_a_bad_ssm_state_dtype_is_refused_by_its_option(argv, capsys):
    """show and memory said `unknown ssm_state_dtype 'float8'`, run and bench `ssm_state_dtype must be ...` after
    building the model: neither named the option. Now it is refused as it is read, named."""
    code, out, err = run(*argv, "--ssm-state-dtype", "float8", capsys=capsys)
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith("error: --ssm-state-dtype: must be float32, bfloat16, float16 or float64, "
                          "got 'float8'"), err


def test_a_dtype_is_suggested_by_its_name_not_its_aliases(capsys):
    """`--ssm-state-dtype fp8` suggested 'float', 'float64', 'float32': an alias beside the name it stands for."""
    code, _, err = run("show", "mamba2", "--ssm-state-dtype", "fp8", capsys=capsys)
    assert code == 2 and err.strip().endswith("got 'fp8'; did you mean 'float32', 'float64'?"), err
    code, _, err = run("show", "mamba2", "--dtype", "xyz", capsys=capsys)
    assert code == 2 and err.strip().endswith("valid names: bfloat16, float16, float32, float64, float8"), err


@pytest.mark.parametrize("argv, option", [(["memory", "mamba2", "--seq-lens", "-1k"], "--seq-lens"),
                                          (["memory", "mamba2", "--seq-lens", "-1k,2k"], "--seq-lens"),
                                          (["show", "mamba2", "--seq-len", "-1.5k"], "--seq-len"),
                                          (["show", "mamba2", "--batch", "-3"], "--batch")])
def test_a_negative_count_gets_the_counts_own_error(argv, option, capsys):
    """`--seq-lens -1k` got argparse's 'expected one argument' and its usage (Python before 3.13 takes -1k for an
    option); now the count's own error, as `--seq-len -5` had."""
    code, out, err = run(*argv, capsys=capsys)
    assert code == 2 and out == "" and err.startswith(f"error: {option}: must be a positive count, got '-"), err


def test_show_groups_the_batchs_digits(capsys):
    code, out, _ = run("show", "mamba2", "--batch", "1234567", capsys=capsys)
    assert code == 0 and "at batch 1,234,567, context 2,048" in out


def test_graph_every_layer_refusal_says_to_drop_it(tmp_path, capsys):
    """Too many rows with --every-layer said only 'write .dot', where the same picture folded draws fine."""
    code, _, err = run("graph", "1000×(mamba2, attn)", "-o", str(tmp_path / "x.png"), "--every-layer", capsys=capsys)
    assert code == 2 and err.strip().endswith("draws at most 48: drop --every-layer or write .dot"), err
    assert not (tmp_path / "x.png").exists()
    assert run("graph", "1000×(mamba2, attn)", "-o", str(tmp_path / "x.png"), capsys=capsys)[0] == 0


@pytest.mark.parametrize("flags", [["--steps", "3"], ["--probe-d-model", "8"], ["--probe-arg", "seq_len=16"],
                                   ["--lr", "0.01"], ["--batch-size", "4"], ["--device", "cpu"]])
def test_explore_refuses_a_probe_setting_without_probe(tmp_path, capsys, flags):
    """--steps without --probe was refused, the other probe settings silently ignored (nothing trained)."""
    code, out, err = run("explore", os.path.join(ROOT, "specs/spaces/tiny.yaml"), "-o", str(tmp_path / "e"),
                         "--no-progress", *flags, capsys=capsys)
    assert code == 2 and out == "" and err == f"error: {flags[0]} needs --probe (e.g. --probe mqar)\n", err
    assert not (tmp_path / "e").exists()


def test_every_option_of_every_command_says_what_it_does():
    """Each subcommand's --help gives every option (and argument) a line of help, and no default it states is
    other than the real one (a `(default X)` or `X (default)` text names the argparse default where it has one)."""
    import argparse

    from archdsl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"archdsl {name} {'/'.join(a.option_strings) or a.dest}: no help text"
            said = re.search(r"(?:\(|; )default ([^;:)]+?)[;:)]|(\S+) \(default[;)]", a.help)
            if said and isinstance(a.default, (int, float, str)) and not isinstance(a.default, bool):
                stated = said.group(1) or said.group(2).rstrip(",")
                assert stated == str(a.default) or _number(stated) == _number(a.default) is not None, \
                    (name, a.dest, stated, a.default)


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def test_train_counts_are_read_as_seq_len_is(tmp_path, capsys):
    """--steps and --batch (and --save-every, --stop-after, --threads) took plain integers only, where --seq-len and
    --micro-batch took 4k: `--steps 10k` was argparse's "invalid int value" and its usage text."""
    from archdsl.cli import build_parser

    base = ["train", "mamba2", "--data", "mqar:seq=32,pairs=2", "-o", str(tmp_path / "r")]
    args = build_parser().parse_args(base + ["--steps", "10k", "--batch", "1k", "--save-every", "0", "--stop-after",
                                             "1.5k", "--threads", "2"])
    assert (args.steps, args.batch, args.save_every, args.stop_after, args.threads) == (10240, 1024, 0, 1536, 2)
    for flags, message in ((["--steps", "1.3k"], "--steps: '1.3k' is 1,331.2, not a whole count"),
                           (["--steps", "0"], "--steps: must be a positive count, got '0'"),
                           (["--steps", "1", "--batch", "32x"], "--batch: not a count: '32x' (write 4096, 8k or 1m)"),
                           (["--steps", "1", "--batch", "2048g"], "--batch: '2048g' is too large (at most 2^40"),
                           (["--steps", "1", "--save-every=-1"], "--save-every: must be at least 0, got '-1'"),
                           (["--steps", "1", "--stop-after", "1e3"], "--stop-after: not a count: '1e3'"),
                           (["--steps", "1", "--threads", "two"], "--threads: not a count: 'two'")):
        code, out, err = run(*base, *flags, capsys=capsys)
        assert code == 2 and out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_commands_listed_in_their_order():
    """`archdsl --help` lists the commands from the spec's to the model's to training's (the modules of archdsl/cli
    register them as they are imported)."""
    import argparse

    from archdsl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["check", "show", "fmt", "graph", "memory", "convert", "export", "dump", "compile", "run",
                                 "bench", "generate", "explore", "train", "export-checkpoint"]


# --- the review of the CLI (F1-F6) ---------------------------------------------------------------------
def test_a_command_refuses_to_write_over_its_own_input(tmp_path, capsys, monkeypatch):
    """`compile DIR -o DIR` replaced a saved model's weights with random ones, `compile d/spec.yaml -o d` a
    hand-written spec with its canonical dump, and `export` a directory holding a user's lone config.json: each
    exited 0 (as did `compile SPEC -o DIR --tokenizer DIR`, random weights over the save its tokenizer came from). Now a command whose input is -o or lies inside it, and a directory holding part of a save, are
    refused (exit 2, nothing touched); an earlier whole save is still replaced."""
    monkeypatch.chdir(tmp_path)
    small = ["--set", "d_model=64", "--set", "vocab_size=100"]
    assert run("compile", "2×mamba2", *small, "-o", "m", capsys=capsys)[0] == 0
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    for argv, message in [
        (["compile", "m", "-o", "m", "--seed", "5"], "-o m: is SPEC itself (m); compile would replace its own input "
                                                     "with what it writes; give another -o"),
        (["compile", "m/", "-o", "./m/."], "-o ./m/.: is SPEC itself (m/); compile"),
        (["compile", "m/spec.yaml", "-o", "m"], "-o m: holds SPEC (m/spec.yaml); compile would replace"),
        (["export", "m", "--to", "hf", "-o", "m"], "-o m: is DIR itself (m); export would replace"),
        (["convert", "--from", "hf", "m", "--weights", "-o", "m"], "-o m: is INPUT itself (m); convert --weights "
                                                                   "would replace"),
        (["export-checkpoint", "m", "-o", "m"], "-o m: is RUNDIR itself (m); export-checkpoint would replace"),
        (["compile", "2×mamba2", *small, "-o", "m", "--tokenizer", "m"], "-o m: is --tokenizer itself (m); compile "
                                                                         "would replace"),
    ]:
        code, out, err = run(*argv, capsys=capsys)
        assert code == 2 and out == "" and err.startswith(f"error: {message}"), (argv, err)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    mine = tmp_path / "mine"
    mine.mkdir()
    hand = "# my hand-tuned hybrid\nname: mine\nd_model: 64\nvocab_size: 100\nlayout: |\n  2×mamba2  # note\n"
    (mine / "spec.yaml").write_text(hand)
    code, _, err = run("compile", "mine/spec.yaml", "-o", "mine", capsys=capsys)
    assert code == 2 and err.startswith("error: -o mine: holds SPEC (mine/spec.yaml)"), err
    code, _, err = run("compile", "2×mamba2", *small, "-o", "mine", capsys=capsys)  # not SPEC, still the user's
    assert code == 2 and "it holds spec.yaml but not model.safetensors" in err, err
    assert (mine / "spec.yaml").read_text() == hand and os.listdir(mine) == ["spec.yaml"]
    (tmp_path / "hfmine").mkdir()
    (tmp_path / "hfmine" / "config.json").write_text('{"note": "my edited config"}')
    code, _, err = run("export", "m", "--to", "hf", "-o", "hfmine", capsys=capsys)
    assert code == 2 and "it holds config.json but not model.safetensors" in err, err
    assert (tmp_path / "hfmine" / "config.json").read_text() == '{"note": "my edited config"}'
    assert run("compile", "m", "-o", "m2", capsys=capsys)[0] == 0
    assert run("compile", "m", "-o", "m2", "--seed", "3", capsys=capsys)[0] == 0  # an earlier whole save: replaced


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX's")
def test_a_save_that_fails_to_write_is_an_error_naming_the_directory(tmp_path, capsys, monkeypatch):
    """A file too large (ulimit -f; a full disk alike) while saving safetensors was safetensors' SafetensorError
    traceback, exit 1, in compile and export; a spec.yaml that failed to write was `error: File too large`, exit 1,
    with no path. Now `cannot write DIR: File too large`, exit 2, as every other writer says it; nothing is left."""
    import resource

    monkeypatch.chdir(tmp_path)
    small = ["--set", "d_model=64", "--set", "vocab_size=100"]
    assert run("compile", "2×mamba2", *small, "-o", "m", capsys=capsys)[0] == 0
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    results = []
    try:
        for limit, argv in [(8192, ["compile", "mamba2", *small, "-o", "cm"]),
                            (8192, ["export", "m", "--to", "hf", "-o", "hf"]),
                            (1024, ["compile", "mamba2", *small, "--set", f"name={'n' * 3000}", "-o", "cm"])]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            try:
                results.append(run(*argv, capsys=capsys))
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert results == [(2, "", "error: cannot write cm: File too large\n"),
                       (2, "", "error: cannot write hf: File too large\n"),
                       (2, "", "error: cannot write cm: File too large\n")]
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_memory_refuses_an_empty_output(capsys):
    """`memory SPEC -o ""` (an unset variable in a script) printed the table and wrote no plot, exit 0; every other
    command says `-o: give a path`."""
    assert run("memory", "mamba2", "-o", "", capsys=capsys) == (2, "", "error: -o: give a path\n")


def test_show_labels_the_untied_head_and_the_ssm_states(capsys):
    """show's `embedding` counted an untied LM head with the table (the JSON's embedding_params still does, and
    lm_head_params tells the head's share); its cache line left out the SSM states' dtype (float32) of a spec with
    Mamba layers, and named it for one without."""
    layout = "2×(mamba2, attn)"
    small = ["--set", "d_model=64", "--set", "vocab_size=100"]
    _, untied, _ = run("show", layout, *small, "--set", "tie_embeddings=false", capsys=capsys)
    assert "\n  embedding                    6,400\n  LM head                      6,400  (untied)\n" in untied
    _, tied, _ = run("show", layout, *small, capsys=capsys)
    assert "\n  embedding                    6,400  (tied: the LM head too)\n" in tied and "\n  LM head" not in tied
    assert tied.rstrip().endswith("bfloat16, SSM states float32)")
    data = json.loads(run("show", layout, *small, "--set", "tie_embeddings=false", "--json", capsys=capsys)[1])
    assert (data["embedding_params"], data["lm_head_params"]) == (12_800, 6_400)
    data = json.loads(run("show", layout, *small, "--json", capsys=capsys)[1])
    assert (data["embedding_params"], data["lm_head_params"]) == (6_400, 0)
    _, out, _ = run("show", "4×attn", "--ssm-state-dtype", "float16", capsys=capsys)
    assert out.rstrip().endswith("context 2,048, bfloat16)")
    _, out, _ = run("show", "mamba2", "--dtype", "float64", capsys=capsys)
    assert out.rstrip().endswith("float64, SSM states float64)")


def test_memory_plot_names_ssm_states_only_when_a_spec_has_them(tmp_path, capsys, monkeypatch):
    """`memory "4×mlp" "2×attn" -o z.png` labelled its plot "SSM states float32": no plotted spec had an SSM."""
    import archdsl.draw

    seen = []
    monkeypatch.setattr(archdsl.draw, "plot_memory", lambda lens, data, path, **kw: seen.append(kw["ssm_states"]))
    for specs in (["4×mlp", "2×attn"], ["4×mlp", "2×mamba"]):
        assert run("memory", *specs, "-o", str(tmp_path / "z.png"), capsys=capsys)[0] == 0
    assert seen == [False, True]


@pytest.mark.parametrize("path, why", [
    (".svg", "'.svg' is a suffix alone; give a name before it, as in 'layout.svg'"),
    ("zz.svg/", "the trailing '/' makes it a directory's name; give a file's, as in 'zz.svg'"),
])
def test_graph_and_memory_tell_a_suffix_alone_or_a_trailing_slash(tmp_path, capsys, monkeypatch, path, why):
    """`-o .svg` / `-o zz.svg/` were told `use one of .svg, .png, ...`."""
    monkeypatch.chdir(tmp_path)
    for command in ("graph", "memory"):
        assert run(command, "mamba2", "-o", path, capsys=capsys) == (2, "", f"error: cannot write {path!r}: {why}\n")
    assert list(tmp_path.iterdir()) == []


def test_the_checkout_runs_without_an_install_mapping_its_subpackages():
    """The checkout's archdsl/ imported without the install's mapping of kernels/ and grammar/ (python -m archdsl
    from the checkout root over a non-editable install; PYTHONPATH=.): compile worked, then the first forward died
    with 'No module named archdsl.kernels'. The checkout's kernels/ and grammar/ are found beside archdsl/."""
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'ditable' not in repr(f)]\n"
            "import torch, archdsl, archdsl.kernels\n"
            "m = archdsl.compile(archdsl.parse('mamba2(d_state=8, headdim=8)'), seed=0)\n"
            "print(archdsl.kernels.__file__); print(*m(torch.zeros(1, 3, dtype=torch.long)).shape, sep=',')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    where, shape = r.stdout.split()
    assert where == os.path.join(ROOT, "kernels", "__init__.py") and shape == "1,3,50280", r.stdout


@pytest.mark.parametrize("command", ["show", "compile", "run", "bench", "export"])
def test_a_hugging_face_directory_is_refused_with_the_command_that_converts_it(command, tmp_path, capsys):
    """show, run, export, ... of a Hugging Face model directory said only "not a saved archdsl model"; generate reads
    one, and convert makes a spec or a saved model of it: the refusal names both, and the spec command it gives
    works."""
    import shlex

    hf = tmp_path / "my model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 32, "num_hidden_layers": 2,
                                                "vocab_size": 64, "state_size": 8}))
    (hf / "model.safetensors").write_bytes(b"")
    extra = {"compile": ["-o", str(tmp_path / "c")], "export": ["--to", "hf", "-o", str(tmp_path / "e")]}
    code, _, err = run(command, str(hf), *extra.get(command, []), capsys=capsys)
    assert code == 2 and "it holds a config.json, a Hugging Face model's" in err, err
    assert "`archdsl generate` reads it as it is" in err
    suggested = re.search(r"`archdsl (convert --from hf .*? -o SPEC\.yaml)`", err).group(1)
    argv = shlex.split(suggested.replace("SPEC.yaml", str(tmp_path / "spec.yaml")))
    assert run(*argv, capsys=capsys)[0] == 0
    assert run("show", str(tmp_path / "spec.yaml"), capsys=capsys)[0] == 0
    assert not (tmp_path / "c").exists() and not (tmp_path / "e").exists()


def test_a_published_spec_loads_by_its_name(capsys, monkeypatch, tmp_path):
    """`archdsl show mamba2-2.7b` (the name the docs' tables give) said `unexpected number -2.7; expected '(' ...`,
    then pointed at specs/mamba2-2.7b.yaml, which a wheel's user does not have: the published specs ship as
    archdsl.specs and a bare name loads one, from any directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("mamba2-2.7b", "jamba-v0.1"):
        code, out, err = run("show", name, capsys=capsys)
        _, want, _ = run("show", os.path.join(ROOT, "specs", name + ".yaml"), capsys=capsys)
        assert code == 0 and out == want and err == "", err
    code, _, err = run("show", "mamba2-2.8b", capsys=capsys)
    assert code == 2 and "published spec: mamba2-2.8b; did you mean 'mamba-2.8b', 'mamba2-2.7b'" in err, err
    code, _, err = run("show", "my-model", capsys=capsys)
    assert code == 2 and "a spec file is given by its path, a published spec by its name (bamba-9b-released," in err
    assert run("show", "mamba2", capsys=capsys)[0] == 0


def test_export_says_the_output_as_given(capsys, monkeypatch, tmp_path):
    """export printed `wrote /abs/path/out`, where compile, convert and graph print -o as it was given."""
    monkeypatch.chdir(tmp_path)
    assert run("compile", "mamba2", "--set", "d_model=32", "--set", "vocab_size=64", "-o", "m", capsys=capsys)[0] == 0
    code, _, err = run("export", "m", "--to", "hf", "-o", "hf", capsys=capsys)
    assert code == 0 and err.splitlines()[-1] == "wrote hf", err
