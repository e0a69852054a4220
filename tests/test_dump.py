"""`archdsl dump SPEC --stage NAME`: each stage of the pipeline's output, by its name; build_graph's `until`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import networkx as nx
import pytest

import archdsl
from archdsl.cli import main
from archdsl.cli.dump_command import PASS_NAMES, stages
from archdsl.graph import PASSES, build_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = "2×(3×mamba2, attn(shared)), moe every 2"  # repeats, a modifier, a shared block: 8 layers
STAGES = ["parse_layout", "expand_repeats", "apply_modifiers", "resolve_blocks", "resolve_sharing", "analyze"]


def run(*argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_stages_are_the_pipelines_names():
    """The help names the passes before graph.py is asked: the two lists must agree."""
    assert PASS_NAMES == tuple(p.__name__ for p in PASSES)
    assert stages() == STAGES


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_dumps_as_text_and_json(stage, capsys):
    code, out, err = run("dump", LAYOUT, "--stage", stage, capsys=capsys)
    assert code == 0 and out.strip() and err == ""
    code, out, err = run("dump", LAYOUT, "--stage", stage, "--json", capsys=capsys)
    assert code == 0 and err == ""
    json.loads(out)


def _layer_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("L")]


def test_the_graph_stages_show_what_each_pass_did(capsys):
    lines = {s: _layer_lines(run("dump", LAYOUT, "--stage", s, capsys=capsys)[1]) for s in PASS_NAMES}
    assert all(len(v) == 8 for v in lines.values())
    assert lines["expand_repeats"][1].split()[1:] == ["index=1", "mamba2", "->", "L2", "(residual)"]
    assert "moe" not in "".join(lines["expand_repeats"])
    assert [i for i, line in enumerate(lines["apply_modifiers"]) if "+ moe" in line] == [1, 3, 5, 7]
    assert "attn(shared) + moe" in lines["apply_modifiers"][3]
    assert "mixer=attn + ffn=moe" in lines["resolve_blocks"][3] and "group" not in lines["resolve_blocks"][3]
    assert "mixer=attn [group attn] + ffn=moe" in lines["resolve_sharing"][3]
    head = run("dump", LAYOUT, "--stage", "resolve_sharing", capsys=capsys)[1].splitlines()[0]
    assert head == "# model after resolve_sharing: 11 nodes (8 layers), 10 edges; sharing groups attn: layers 3 7"


def test_the_ast_stage_is_the_layout_text_and_tree(capsys):
    code, out, _ = run("dump", "2x(3*mamba2 , attn( shared )),moe every 2", "--stage", "parse_layout", capsys=capsys)
    assert code == 0 and out == LAYOUT + "\n"
    data = json.loads(run("dump", LAYOUT, "--stage", "parse_layout", "--json", capsys=capsys)[1])
    assert data["text"] == LAYOUT and data["layout"]["node"] == "Layout"
    (repeat,) = data["layout"]["items"]
    assert repeat["node"] == "Repeat" and repeat["count"] == 2 and repeat["span"] == [0, LAYOUT.index(", moe")]
    attn = repeat["body"]["items"][1]["blocks"][0]
    assert attn["name"] == "attn" and attn["args"] == [{"node": "Arg", "name": "shared", "value": True,
                                                         "span": [18, 24]}]
    assert data["layout"]["modifiers"][0]["every"] == 2 and data["layout"]["modifiers"][0]["block"]["name"] == "moe"


def test_the_final_graph_has_the_layers_show_lists(capsys):
    """The last pass's graph: one layer node per row of `show --json`, each of its mixer and FFN."""
    for spec in (LAYOUT, os.path.join(ROOT, "specs/zamba2-2.7b-released.yaml")):
        shown = json.loads(run("show", spec, "--json", capsys=capsys)[1])
        data = json.loads(run("dump", spec, "--stage", "resolve_sharing", "--json", capsys=capsys)[1])
        layers = [n for n in data["nodes"] if "index" in n]
        assert len(layers) == len(shown["layers"]) and len(data["nodes"]) == len(shown["layers"]) + 3
        for node, row in zip(layers, shown["layers"]):
            kinds = {s["role"]: s["kind"] for s in node["sublayers"]}
            assert (kinds.get("mixer"), kinds.get("ffn"), kinds.get("inject")) == (row["mixer"], row["ffn"],
                                                                                    row["inject"])
        g = nx.node_link_graph(data, edges="links")
        assert nx.is_directed_acyclic_graph(g) and g.number_of_nodes() == len(data["nodes"])
        assert g.graph["stage"] == "resolve_sharing"
    groups = data["graph"]["groups"]
    assert groups == {"a": [6, 18, 30, 42, 51], "b": [12, 24, 36, 47]}
    assert {link["target"] for link in data["links"] if link["flow"] == "embedding"} == {f"L{i}" for v in
                                                                                           groups.values() for i in v}


def test_the_json_of_each_pass_is_its_graph(capsys):
    spec = archdsl.parse(LAYOUT)
    for name in PASS_NAMES:
        data = json.loads(run("dump", LAYOUT, "--stage", name, "--json", capsys=capsys)[1])
        g = build_graph(spec, until=name)
        assert data["graph"]["stage"] == name
        assert [n["id"] for n in data["nodes"]] == list(g.nodes)
        assert [(e["source"], e["target"]) for e in data["links"]] == list(g.edges)
        configs = [s["config"] for n in data["nodes"] if "index" in n for s in n["sublayers"]]
        assert all(c is None for c in configs) if name in ("expand_repeats", "apply_modifiers") else \
            all(c["d_model"] == 768 for c in configs)


def test_analyze_is_what_show_prints(capsys):
    for extra in ([], ["--json"]):
        argv = [LAYOUT, "--set", "d_model=512"] + extra
        assert run("dump", *argv, "--stage", "analyze", capsys=capsys) == run("show", *argv, capsys=capsys)


def test_files_and_set_as_show_takes_them(tmp_path, capsys):
    path = tmp_path / "alias.yaml"
    path.write_text("name: aliased\nlayout: 2×mamba2, big at 1\nblocks:\n  big: {kind: attn, heads: 4}\n")
    code, out, _ = run("dump", str(path), "--stage", "resolve_blocks", "--set", "d_model=256", capsys=capsys)
    assert code == 0 and "mixer=big<attn>(heads=4)" in out and out.startswith("# aliased after resolve_blocks")
    data = json.loads(run("dump", str(path), "--stage", "resolve_blocks", "--json", "--set", "d_model=256",
                          capsys=capsys)[1])
    assert data["nodes"][2]["sublayers"][0]["config"]["d_model"] == 256


def test_a_stage_before_the_failing_pass_still_dumps(capsys):
    """An unknown block is the error of resolve_blocks: the passes before it show the layers as written."""
    code, out, _ = run("dump", "2×mamab2", "--stage", "apply_modifiers", capsys=capsys)
    assert code == 0 and "index=1  mamab2" in out
    code, out, err = run("dump", "2×mamab2", "--stage", "resolve_blocks", capsys=capsys)
    assert code == 2 and out == "" and "unknown block 'mamab2'" in err and "Traceback" not in err


@pytest.mark.parametrize("stage, hint", [("resolve_sharng", "did you mean 'resolve_sharing'"), ("ast", ""),
                                         ("", "")])
def test_an_unknown_stage_exits_2_with_the_list(stage, hint, capsys):
    code, out, err = run("dump", LAYOUT, "--stage", stage, capsys=capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"--stage: unknown stage {stage!r}; the stages, in order: {', '.join(STAGES)}" in err and hint in err


def test_build_graph_refuses_an_unknown_until():
    """It ran every pass for a name it did not know (a typo, a number)."""
    spec = archdsl.parse(LAYOUT)
    for until in ("resolve_sharng", "ast", 3, b"expand_repeats"):
        with pytest.raises(archdsl.ArchDSLError) as e:
            build_graph(spec, until=until)
        assert "the passes, in order: expand_repeats, apply_modifiers, resolve_blocks, resolve_sharing" in str(e.value)
    with pytest.raises(archdsl.ArchDSLError, match="did you mean 'resolve_sharing'"):
        build_graph(spec, until="resolve_sharng")
    assert build_graph(spec, until=None).graph["stage"] == "resolve_sharing"


def test_the_cli_imports_no_torch():
    code = "import sys, archdsl.cli.dump_command, archdsl.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
