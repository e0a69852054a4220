"""`archdsl compile` and `archdsl run`: save, reload, timings printed, bad input exits 2."""
import json

import pytest
import torch

import archdsl
from archdsl.cli import main

LAYOUT = "mamba2(d_state=8, headdim=8), attn(heads=2)+mlp(hidden=32)"
YAML = f"name: tiny\nd_model: 32\nvocab_size: 100\nlayout: {LAYOUT}\n"


def test_compile_then_run(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(YAML)
    spec = str(tmp_path / "tiny.yaml")
    out = tmp_path / "model"
    assert main(["compile", spec, "-o", str(out), "--seed", "3"]) == 0
    assert (out / "spec.yaml").exists() and (out / "model.safetensors").exists()
    a = archdsl.load(out)
    b = archdsl.compile(spec, seed=3)
    ids = torch.randint(0, 100, (1, 4))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
    capsys.readouterr()
    assert main(["run", str(out), "--prompt-len", "8", "--gen", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["prefill_tokens_per_s"] > 0 and rep["decode_tokens_per_s"] > 0 and rep["cache_bytes"] > 0
    assert main(["run", spec, "--prompt-len", "4", "--gen", "2", "--dtype", "float64"]) == 0
    text = capsys.readouterr().out
    assert "prefill" in text and "decode" in text and "tokens/s" in text and "cache" in text


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["run", LAYOUT, "--dtype", "float7"]) == 2
    assert "unknown dtype" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["run", LAYOUT, "--device", "cuda"]) == 2
        assert "CUDA" in capsys.readouterr().err
    assert main(["compile", "mamba2(headdim=7)", "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_run_warmup_leaves_the_timed_run_unchanged(capsys):
    """The untimed warm-up pass uses a cache of its own: the same tokens come out with and without it."""
    reports = []
    for flag in ("--warmup", "--no-warmup"):
        assert main(["run", LAYOUT, "--prompt-len", "6", "--gen", "5", "--dtype", "float64", flag, "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["warmup"] for r in reports] == [True, False]
    assert reports[0]["generated"] == reports[1]["generated"] and len(reports[0]["generated"]) == 5
    assert reports[0]["cache_bytes"] == reports[1]["cache_bytes"]


def test_run_decodes_from_a_cuda_graph_only_on_cuda_by_default(capsys):
    """On the CPU run steps eagerly (no flag, or --no-cuda-graph); --cuda-graph there is an error (above)."""
    for flags in ([], ["--no-cuda-graph"]):
        assert main(["run", LAYOUT, "--prompt-len", "4", "--gen", "3", "--json", "--no-warmup", *flags]) == 0
        assert json.loads(capsys.readouterr().out)["cuda_graph"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_run_decodes_from_a_cuda_graph_by_default(capsys):
    """On CUDA run replays its decode steps from a CUDA graph unless --no-cuda-graph; the tokens are the eager
    steps' (greedy, float32)."""
    reports = []
    for flags in ([], ["--no-cuda-graph"]):
        assert main(["run", LAYOUT, "--device", "cuda", "--prompt-len", "6", "--gen", "12", "--json", *flags]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert [r["cuda_graph"] for r in reports] == [True, False]
    assert reports[0]["generated"] == reports[1]["generated"] and len(reports[0]["generated"]) == 12


def test_bad_seed_and_gen_exit_2(tmp_path, capsys):
    for argv in (["compile", LAYOUT, "-o", str(tmp_path / "m")], ["run", LAYOUT]):
        for seed in ("99999999999999999999999", "-1", "x"):
            assert main([*argv, "--seed", seed]) == 2
            assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main(["run", LAYOUT, "--gen", "-3"]) == 2
    assert "--gen: must be at least 0, got '-3'" in capsys.readouterr().err
    assert main(["run", LAYOUT, "--prompt-len", "4", "--gen", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["gen"] == 0 and rep["generated"] == [] and rep["decode_tokens_per_s"] is None


def test_run_applies_fuse_flags_to_a_saved_model(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(YAML)
    spec, out = str(tmp_path / "tiny.yaml"), str(tmp_path / "model")
    assert main(["compile", spec, "-o", out]) == 0
    capsys.readouterr()

    def fusions(source, *flags):
        assert main(["run", source, "--prompt-len", "2", "--gen", "1", "--json", "--no-warmup", *flags]) == 0
        return json.loads(capsys.readouterr().out)["fusions"]

    assert fusions(out) and fusions(out, "--no-fuse") == []
    assert fusions(out, "--fuse", "qkv,step") == fusions(spec, "--fuse", "qkv,step") == ["qkv", "step"]
    if not torch.cuda.is_available():
        assert main(["run", out, "--cuda-graph"]) == 2
        assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err


def test_run_refuses_contradictory_fuse_flags(capsys):
    for flags, message in ((["--fuse", ""], "--fuse: no fusion named"),
                           (["--fuse", " , "], "--fuse: no fusion named"),
                           (["--fuse", "step", "--no-fuse"], "--fuse and --no-fuse contradict"),
                           (["--fuse", "stpe"], "--fuse: unknown fusion 'stpe'; did you mean 'step'?")):
        assert main(["run", LAYOUT, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err, err
    assert main(["run", LAYOUT, "--fuse", "zzz"]) == 2
    err = capsys.readouterr().err
    assert err.count("add_norm") == 1 and "Traceback" not in err  # the valid names once


def test_bench_prints_its_table_and_json(tmp_path, capsys):
    """`archdsl bench` on a spec and on a saved model: a row a case, the analyzer's work beside each."""
    (tmp_path / "tiny.yaml").write_text(YAML)
    spec = str(tmp_path / "tiny.yaml")
    assert main(["bench", spec, "--seq-len", "16", "--gen", "2", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert all(case in text for case in ("forward", "train", "decode")) and "GFLOP" in text and "GB/s" in text
    assert main(["compile", spec, "-o", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "m"), "--seq-len", "8", "--cases", "decode", "--gen", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [r["case"] for r in rep["rows"]] == ["decode"] and rep["rows"][0]["bytes"] > 0
    # no SSM, no SSM states in the header; a CUDA graph only where a decode row replayed one
    assert main(["bench", "2×attn", "--seq-len", "8", "--cases", "forward", "--ssm-state-dtype", "bf16"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "SSM states" not in head and "CUDA graph" not in head, head
    assert main(["bench", "2×attn", "--seq-len", "8", "--cases", "forward", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ssm_state_dtype"] is None and rep["cuda_graph"] is False
    for argv, what in [(["--cases", "fwd"], "unknown case 'fwd'"), (["--gen", "0"], "--gen"),
                       (["--seq-len", "8q"], "--seq-len: not a count")]:
        assert main(["bench", spec, *argv]) == 2
        assert what in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "bench"])
def test_run_and_bench_refuse_the_meta_device(command, capsys):
    """`run --device meta` ended in a traceback (Tensor.item() on meta tensors) and `bench --device meta` printed
    timings of calls that compute nothing."""
    assert main([command, LAYOUT, "--set", "d_model=32", "--device", "meta"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --device meta: run and bench compute on real tokens"), err


@pytest.mark.parametrize("command", ["run", "bench"])
def test_an_empty_dtype_is_refused_not_taken_for_the_default(command, tmp_path, capsys):
    """`--dtype ""` ran a spec in float32 and a saved model in its own dtype, where compile refuses it."""
    assert main(["compile", LAYOUT, "--set", "d_model=32", "-o", str(tmp_path / "m"), "--dtype", "bf16"]) == 0
    capsys.readouterr()
    for spec in (LAYOUT, str(tmp_path / "m")):
        assert main([command, spec, "--dtype", "", "--gen", "1", "--prompt-len" if command == "run" else "--seq-len",
                     "2"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: --dtype: give a dtype (it is empty)"), err


def test_bench_refuses_an_unknown_case_by_its_option_before_the_model_is_built(monkeypatch, capsys):
    """`bench --cases decode,fwd` built (or loaded) the whole model, then said `bench: unknown case 'fwd'`."""
    from archdsl.cli import model_commands

    def no_model(args):
        raise AssertionError("the model was built")

    monkeypatch.setattr(model_commands, "_model", no_model)
    assert main(["bench", LAYOUT, "--cases", "decode,fwd"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --cases: unknown case 'fwd'; did you mean 'forward'?"), err


@pytest.mark.parametrize("argv", [["compile", LAYOUT, "-o", "m"], ["run", LAYOUT], ["bench", LAYOUT],
                                  ["convert", "--from", "hf", "hfdir", "--weights", "-o", "m"],
                                  ["export-checkpoint", "rundir", "-o", "m"]])
def test_an_unknown_dtype_names_its_option_and_the_dtypes(argv, tmp_path, monkeypatch, capsys):
    """`--dtype int8` said `unknown dtype 'int8'`, naming neither the option nor (convert --weights: only after the
    weights were read) what it takes; now before any work."""
    import archdsl.convert.hf_io
    import archdsl.model

    def no_work(*a, **k):
        raise AssertionError("work began before --dtype was checked")

    monkeypatch.setattr(archdsl.model, "compile", no_work)
    monkeypatch.setattr(archdsl.convert.hf_io, "from_hf", no_work)
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--dtype", "int8"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("error: --dtype: unknown dtype 'int8'; give float32, bfloat16, float16 or float64 "
                                 "(or fp32, float, fp16, half, bf16, fp64, double)\n"), err
    assert main([*argv, "--dtype", "flaot16"]) == 2
    assert capsys.readouterr().err.endswith("; did you mean 'float16', 'bfloat16', 'float64'?\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["compile", LAYOUT, "-o", "m"], ["run", LAYOUT], ["bench", LAYOUT],
                                  ["train", LAYOUT, "--data", "mqar:seq=32,pairs=2", "--steps", "1", "-o", "r"],
                                  ["explore", "space.yaml", "-o", "e"]])
def test_an_unknown_device_is_one_line_naming_its_option(argv, tmp_path, monkeypatch, capsys):
    """`--device bogus` printed torch's list of twenty device types; `--device hpu` (a type torch knows, without
    its backend) a traceback."""
    monkeypatch.chdir(tmp_path)
    auto = "auto, " if argv[0] in ("train", "explore") else ""
    for device, message in (("bogus", f"--device: unknown device 'bogus'; give {auto}cpu, cuda or cuda:N"),
                            ("cuda:x", f"--device: unknown device 'cuda:x'; give {auto}cpu, cuda or cuda:N"),
                            ("hpu", "--device hpu: archdsl does not run on hpu devices"),
                            ("privateuseone", "--device privateuseone: archdsl does not run on privateuseone")):
        assert main([*argv, "--device", device]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda:1"]) == 2
        assert capsys.readouterr().err == "error: --device cuda:1: CUDA is not available on this machine\n"
    assert list(tmp_path.iterdir()) == []


def test_compile_refuses_the_meta_device_before_building(tmp_path, monkeypatch, capsys):
    """`compile --device meta` built the model, then failed to save it with `save: the model is on the meta
    device`, naming no option."""
    import archdsl.model

    def no_work(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(archdsl.model, "compile", no_work)
    assert main(["compile", LAYOUT, "-o", str(tmp_path / "m"), "--device", "meta"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: --device meta: a compiled model is saved with its weights"), err
    assert list(tmp_path.iterdir()) == []


def test_run_warns_of_weights_that_are_not_finite(tmp_path, capsys):
    """A saved model with NaN / inf in its weights ran, printing greedy tokens `0 0` (argmax of NaN) and no word."""
    out = str(tmp_path / "m")
    assert main(["compile", LAYOUT, "--set", "d_model=32", "--set", "vocab_size=100", "-o", out]) == 0
    assert main(["run", out, "--prompt-len", "2", "--gen", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
    model = archdsl.load(out)
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith("in_proj.weight") or n.endswith("out_proj.weight")]
    with torch.no_grad():
        params[names[0]][0, 0] = float("nan")
        params[names[1]][1, 1] = float("-inf")
    model.save(out)
    for command in (["run", out, "--prompt-len", "2", "--gen", "1"],
                    ["bench", out, "--seq-len", "2", "--gen", "1", "--cases", "decode"]):
        assert main(command) == 0
        err = capsys.readouterr().err
        assert err == (f"warning: {out}: 2 weight tensors hold NaN or inf (the first: {names[0]}); so will what the "
                       f"model computes\n"), err


def test_a_bad_archdsl_kernels_exits_2_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    """ARCHDSL_KERNELS naming no backend, or triton on the CPU without the interpreter, was the first op's
    ValueError: a traceback, exit 1, in every model command. Now said before anything is read; an op's refusal
    where the CLI could not know the device is said too (exit 2); compile() refuses a bad value as ArchDSLError,
    while the ops keep their ValueError."""
    from archdsl import cli
    from archdsl.kernels._dispatch import KernelsEnvError

    (tmp_path / "tiny.yaml").write_text(YAML)
    assert main(["compile", str(tmp_path / "tiny.yaml"), "-o", str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "tokenizer.json").write_text("{}")  # not read: refused before
    monkeypatch.setenv("ARCHDSL_KERNELS", "bogus")
    bogus = "error: ARCHDSL_KERNELS='bogus': expected one of triton, torch, naive\n"
    for argv in (["run", str(tmp_path / "m"), "--gen", "1", "--prompt-len", "2"],
                 ["bench", LAYOUT, "--gen", "1", "--seq-len", "2"], ["compile", LAYOUT, "-o", str(tmp_path / "x")],
                 ["generate", str(tmp_path / "m"), "w"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err == bogus, (argv, err)
    assert not (tmp_path / "x").exists()
    assert main(["check", LAYOUT]) == 0  # a command that runs no kernel does not read it
    with pytest.raises(archdsl.ArchDSLError, match="^compile: ARCHDSL_KERNELS='bogus': expected one of"):
        archdsl.compile(LAYOUT)
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    capsys.readouterr()
    assert main(["run", LAYOUT, "--gen", "1", "--prompt-len", "2"]) == 2
    assert capsys.readouterr().err == "error: ARCHDSL_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1\n"
    monkeypatch.setattr(cli, "_check_kernels_env", lambda args: None)  # as for a device only the op knows
    assert main(["run", LAYOUT, "--gen", "1", "--prompt-len", "2"]) == 2
    out, err = capsys.readouterr()
    assert err == "error: ARCHDSL_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1\n", err
    model = archdsl.compile(LAYOUT)  # the device's case is the ops' (load builds on the CPU for any device)
    with pytest.raises(KernelsEnvError, match="needs TRITON_INTERPRET=1"), torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long))
    assert issubclass(KernelsEnvError, ValueError)


def test_compile_of_a_saved_model_says_its_weights_are_not_used(tmp_path, capsys):
    """`compile SAVED_DIR` wrote random weights under the trained model's name and parameter count without a word;
    a note on stderr now says its weights are not used and names what casts or copies them. A spec file: no note."""
    (tmp_path / "tiny.yaml").write_text(YAML)
    saved = str(tmp_path / "saved")
    assert main(["compile", str(tmp_path / "tiny.yaml"), "-o", saved, "--seed", "3"]) == 0
    assert "note" not in capsys.readouterr().err
    assert main(["compile", saved, "-o", str(tmp_path / "re"), "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert f"note: SPEC {saved} is a saved model" in err and "random weights from --seed 5" in err, err
    assert "weights are not used" in err and "export-checkpoint" in err and "archdsl.load(" in err, err
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    assert "weights are NOT used" in " ".join(capsys.readouterr().out.split())
