"""The explorer: budgets hold, the Pareto front is right, probes run and resume exactly, bad input is named."""
from __future__ import annotations

import contextlib
import json
import signal
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archdsl import analyze
from archdsl.cli import main
from archdsl.errors import ArchDSLError
from archdsl.explore import (Space, dominates, explore, load_space, parse_constraint, pareto_ranks, space_from_dict,
                             space_from_yaml)
from archdsl.explore import search
from archdsl.explore.probes import make_task
from archdsl.explore.search import Candidate, _key

BASE = {"vocab_size": 256, "blocks": {"mamba2": {"d_state": 16, "headdim": 16, "chunk_size": 32},
                                      "attn": {"heads": 2}, "mlp": {"hidden": 64}}}

TINY = """
name: t
base:
  vocab_size: 128
  blocks:
    mamba2: {d_state: 8, headdim: 8, chunk_size: 32}
    attn: {heads: 2}
mixers: [mamba2]
attn_count: [0, 1]
placements: [back]
d_model: [16]
depth: [2]
probe:
  task: mqar
  args: {vocab_size: 128, seq_len: 32, num_kv_pairs: 4}
  train: {batch_size: 8, eval_every: 25, eval_size: 32}
"""


def small_space(data) -> Space:
    return Space(base=space_from_yaml(f"base: {json.dumps(BASE)}").base, **data)


spaces = st.fixed_dictionaries({
    "mixers": st.sampled_from([("mamba2",), ("mamba2", "mamba")]),
    "attn_fraction": st.tuples(st.sampled_from([0, 0.1, 0.25]), st.sampled_from([0.25, 0.5, 1.0])),
    "placements": st.lists(st.sampled_from(["even", "every", "front", "back", "sandwich"]), min_size=1,
                           max_size=3, unique=True).map(tuple),
    "shared": st.sampled_from([(False,), (False, True)]),
    "moe_every": st.sampled_from([(0,), (0, 2), (0, 2, 8)]),  # 8: past every depth, so no MoE frame
    "moe_experts": st.just((4,)),
    "d_model": st.lists(st.sampled_from([32, 64]), min_size=1, max_size=2, unique=True).map(tuple),
    "depth": st.lists(st.integers(2, 6), min_size=1, max_size=2, unique=True).map(tuple),
})
budgets = st.fixed_dictionaries({
    "params": st.sampled_from([None, "60k", "150k", "400k"]),
    "active": st.sampled_from([None, "100k", "300k"]),
    "flops": st.sampled_from([None, "200k", "1M"]),
    "cache": st.sampled_from([None, "64KiB@1k", "1MiB@8k", "4MiB@64kx2"]),
})


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces, budgets)
def test_every_candidate_meets_its_budget(data, budget):
    space = small_space(data)
    cons = [parse_constraint(k, v) for k, v in budget.items() if v]
    try:
        res = explore(space, cons, objectives=("params", "cache", "flops"), context=2048)
    except ArchDSLError as e:
        assert "removed" in str(e) or "empty" in str(e)
        return
    for c in res.candidates:
        for con in cons:
            rep = analyze(c.spec, seq_len=con.seq_len or 2048, batch=con.batch or 1)
            assert getattr(rep, con.metric) <= con.max, (c.layout, con.label)
        rep = analyze(c.spec, seq_len=2048)  # the frame's figures, given to every placement, are its own
        assert [rep.params, rep.active_params, rep.flops_per_token, rep.cache_bytes] == \
            [c.figures[k] for k in ("params", "active_params", "flops_per_token", "cache_bytes")], c.layout
    check_front(res.candidates, res.objectives)


def check_front(cands, objectives):
    keys = {c.id: _key(c, objectives) for c in cands}
    front = [c for c in cands if c.on_front]
    assert front
    for a in front:
        assert not any(dominates(keys[b.id], keys[a.id]) for b in cands)
    for c in cands:
        if not c.on_front:
            assert any(dominates(keys[f.id], keys[c.id]) for f in front)


@pytest.mark.parametrize("objectives", [("params",), ("params", "cache_bytes"), ("cache_bytes", "accuracy"),
                                        ("params", "cache_bytes", "accuracy")])
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.floats(0, 1) | st.none()), min_size=1, max_size=30))
def test_pareto_ranks_on_random_points(objectives, points):
    """Against peeling fronts, over ties and unprobed (None: the worst) accuracies: one and two objectives by the
    O(n log n) sweep, three by each point against those before it."""
    cands = [Candidate(f"c{i}", {}, "", None, {"params": a, "cache_bytes": b},
                       probe=None if acc is None else {"accuracy": acc}) for i, (a, b, acc) in enumerate(points)]
    ranks = pareto_ranks(cands, objectives)
    for c, r in zip(cands, ranks):
        c.on_front = r == 0
    check_front(cands, objectives)
    keys, left, peeled, r = [_key(c, objectives) for c in cands], set(range(len(cands))), {}, 0
    while left:  # the definition: peel off the front of what is left, again and again
        front = {i for i in left if not any(dominates(keys[j], keys[i]) for j in left)}
        peeled.update(dict.fromkeys(front, r))
        left, r = left - front, r + 1
    assert ranks == [peeled[i] for i in range(len(cands))]


def test_layouts_are_the_language():
    space = small_space({"attn_count": (2, 2), "placements": ("even", "every", "front", "back", "sandwich"),
                         "every_periods": (4,), "every_offsets": ("mid", 0), "shared": (True,),
                         "moe_every": (2,), "moe_experts": (4,), "moe_top_k": (1,), "d_model": (32,), "depth": (8,)})
    res = explore(space, objectives=("params",))
    layouts = {c.knobs["placement"]: c.layout for c in res.candidates}
    assert layouts["front"] == "2×attn(shared), 6×mamba2, moe(experts=4, top_k=1) every 2"
    assert layouts["sandwich"] == "attn(shared), 6×mamba2, attn(shared), moe(experts=4, top_k=1) every 2"
    assert layouts["even"] == "2×(2×mamba2, attn(shared), mamba2), moe(experts=4, top_k=1) every 2"
    assert layouts["every 4 offset 0"] == "8×mamba2, attn(shared) every 4 offset 0, moe(experts=4, top_k=1) every 2"
    assert "every 4 offset 2" not in layouts  # i % 4 == 2 are the layers of `even`: kept once
    for c in res.candidates:
        assert [r.mixer for r in analyze(c.spec).layers].count("attn") == 2


def test_moe_every_past_the_depth_makes_no_frame():
    space = small_space({"attn_count": (1, 1), "placements": ("front",), "moe_every": (6,), "moe_experts": (4,),
                         "moe_top_k": (1,), "d_model": (32,), "depth": (4, 8)})
    res = explore(space, objectives=("params",))
    assert {c.knobs["depth"] for c in res.candidates} == {8}
    assert all(c.layout.endswith("every 6") for c in res.candidates)


def test_mqar_is_zoology_shaped():
    task = make_task("mqar", seq_len=128, num_kv_pairs=8)
    x, y = task.batch(16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 128) and x.max() < 8192
    assert ((y != -100).sum(1) == 8).all()
    for b in range(16):
        kv = {int(x[b, 2 * i]): int(x[b, 2 * i + 1]) for i in range(8)}
        assert all(k < 4096 <= v for k, v in kv.items())
        for p in (y[b] != -100).nonzero()[:, 0]:
            assert p >= 16 and kv[int(x[b, p])] == int(y[b, p])
    x2, _ = task.batch(16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


@pytest.mark.parametrize("name", ["selective_copying", "noisy_recall", "fuzzy_recall"])
def test_mad_tasks_generate(name):
    task = make_task(name, seq_len=64)
    for train in (True, False):
        x, y = task.batch(4, torch.Generator().manual_seed(1), train=train)
        assert x.shape == y.shape and (y != -100).any() and x.max() < task.vocab_size


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_probe_run_writes_everything(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "out"
    code, stdout, err = _run(["explore", str(space), "--probe", "--steps", "50", "-o", str(out), "--no-progress"], capsys)
    assert code == 0, err
    for f in ("results.json", "results.csv", "pareto.png", "cache_vs_context.png", "accuracy_vs_attention.png"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "complete" and len(doc["candidates"]) == 2
    for c in doc["candidates"]:
        assert (out / "specs" / f"{c['id']}.yaml").exists()
        assert c["probe"]["steps"] == 50 and 0 <= c["probe"]["accuracy"] <= 1 and c["probe"]["loss_curve"]
    assert "accuracy" in stdout and "2×mamba2" in stdout


def test_json_prints_the_results_document_and_keeps_stdout_clean(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "out"
    code, stdout, err = _run(["explore", str(space), "-o", str(out), "--json", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(stdout) == json.loads((out / "results.json").read_text())  # stdout is the document alone
    assert json.loads(stdout)["status"] == "complete" and "2×mamba2" in err and "on the Pareto front" in err


def test_progress_is_plain_lines_where_stderr_is_not_a_terminal(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    code, _, err = _run(["explore", str(space), "--probe", "--steps", "2", "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("probe mqar: ")]
    assert [x.split(" cand")[0] for x in lines] == ["probe mqar: 1/2", "probe mqar: 2/2"], err
    assert "\r" not in err


def test_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("attn_count: [0, 1]", "attn_count: [0, 2]").replace("[back]", "[back, front]"))
    args = ["--probe", "--steps", "20", "--seed", "3", "--no-progress"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run(["explore", str(space), "-o", str(full)] + args, capsys)[0] == 0

    import archdsl.explore.train as train

    real, calls = train.train_probe, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "train_probe", flaky)
    code, _, err = _run(["explore", str(space), "-o", str(part)] + args, capsys)
    assert code == 130
    doc = json.loads((part / "results.json").read_text())
    assert doc["status"] == "interrupted" and sum(c["probe"] is not None for c in doc["candidates"]) == 1
    monkeypatch.setattr(train, "train_probe", real)
    assert _run(["explore", str(space), "--resume", str(part)] + args, capsys)[0] == 0

    def strip(path):
        doc = json.loads((path / "results.json").read_text())
        for c in doc["candidates"]:
            c["probe"].pop("wall_time")
        return doc

    a, b = strip(full), strip(part)
    assert a == b and len(a["candidates"]) == 4
    code, _, err = _run(["explore", str(space), "--resume", str(part), "--probe", "--steps", "21", "--seed", "3",
                         "--no-progress"], capsys)
    assert code == 2 and "other settings" in err


def test_a_run_stopped_while_writing_the_specs_resumes(tmp_path, capsys, monkeypatch):
    """A Ctrl-C among the spec files left an OUTDIR that -o refused (it holds files) and --resume too (no
    results.json): results.json is written first."""
    import archdsl.explore.runner as runner

    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "out"
    real, calls = runner.write_atomic, []

    def stopped(path, data, **kw):
        calls.append(path)
        if "specs" in str(path) and len([c for c in calls if "specs" in str(c)]) == 2:
            raise KeyboardInterrupt
        return real(path, data, **kw)

    monkeypatch.setattr(runner, "write_atomic", stopped)
    assert _run(["explore", str(space), "-o", str(out), "--no-progress"], capsys)[0] == 130
    monkeypatch.setattr(runner, "write_atomic", real)
    assert _run(["explore", str(space), "--resume", str(out), "--no-progress"], capsys)[0] == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "complete"
    assert sorted(p.name for p in (out / "specs").iterdir()) == sorted(f"{c['id']}.yaml" for c in doc["candidates"])


@pytest.mark.parametrize("text, flags, message", [
    ("mixers: [mamab2]", [], "unknown block kind 'mamab2'; did you mean 'mamba2'"),
    ("mixers: [mlp]", [], "not a mixer"),
    ("placements: [evenly]", [], "unknown placement 'evenly'"),
    ("depth: []", [], "the space is empty: `depth` lists no values"),
    ("attn_fraction: [0.5, 0.2]", [], "contradictory attn_fraction"),
    ("attn_count: [3, 3]\ndepth: [2]", [], "the space is empty"),
    ("depth: [4]\nplacemnts: [even]", [], "unknown space key 'placemnts'"),
    ("depth: [4]", ["--max-params", "1k"], "params ≤ 1.00K: removed"),
    ("depth: [4]", ["--min-params", "2M", "--max-params", "1M"], "contradictory constraints: params ≥ 2.00M and params ≤ 1.00M"),
    ("depth: [4]", ["--max-cache", "1KiB@64k", "--max-params", "10M"], "cache_bytes ≤ 1.00 KiB @ batch 1, context 65536"),
    ("depth: [4]", ["--max-params", "1B@64k"], "--max-params 1B@64k: params do not depend on the context"),  # ignored
    ("depth: [4]", ["--min-active", "1k@4kx2"], "--min-active 1k@4kx2: active_params do not depend on the context"),
    ("depth: [4]", ["--objective", "params,speed"], "unknown objective 'speed'"),
    ("depth: [4]", ["--objective", "depth,loss"], "error: objective loss needs a probe"),  # named depth too
    ("depth: [4]", ["--probe", "mqarr"], "unknown probe 'mqarr'"),
    ("depth: [4]\nplacements: [3]", [], "unknown placement 3; valid names: back, even"),  # was 'not iterable'
    ("depth: [4]\nmixers: null", [], "mixers takes block kinds or aliases of base.blocks, got None"),
    ("depth: [4]\nattn_fraction: .nan", [], "attn_fraction must be a number or a [min, max] pair of numbers, got nan"),
    ("depth: [4]\nattn_count: [0, .nan]", [], "a [min, max] pair of numbers, got [0, nan]"),
    ("depth: [4]\nattn_count: .inf", [], "attn_count must be a number or a [min, max] pair of numbers, got inf"),
])
def test_bad_input_says_what(tmp_path, capsys, text, flags, message):
    space = tmp_path / "space.yaml"
    space.write_text(f"base: {json.dumps(BASE)}\nd_model: [32]\n{text}\n")
    code, out, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"] + flags, capsys)
    assert code == 2 and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, line, col", [
    ("depth: [0]", 3, 8),
    ("d_model: [-32]", 2, 10),
    ("moe: {every: [2], top_k: [0]}", 3, 26),
    ("every: {offsets: [-1]}", 3, 18),
    ("attn_count: [1, 2, 3]", 3, 13),
    ("shared: [maybe]", 3, 9),
    ("mixers: []", 3, 9),
    ("attention: [attn]", 3, 12),  # wrong types were 'bad space: unhashable type' with no place
    ("mixers: [5]", 3, 10),  # the entry, not the list: `mixers: [mamba2, 5]` points at the 5
    ("name: [a]", 3, 7),
    ("every: {periods: [1]}", 3, 18),  # periods below 2 and no offsets gave no `every` candidate, silently
    ("every: {offsets: []}", 3, 18),
    ("d_model: []", 2, 10),  # was silently the base's width
    ("probe: {task: mqar, steps: 10}", 3, 21),  # unchecked without --probe, and then with no place
    ("placements: [3]", 3, 13),  # these three were 'bad space: ...' with no place
    ("mixers: null", 3, 9),
    ("attn_count: .nan", 3, 13),  # non-finite: an empty space, silently
    ("attn_fraction: [0, .nan]", 3, 16),
    ("probe: {task: 3}", 3, 15),  # the probe section's shape: checked as the file is read, with or without --probe
    ("probe: {train: {seed: 1}}", 3, 17),
])
def test_bad_values_point_into_the_space_file(tmp_path, capsys, text, line, col):
    """Every value error of a space file names its line and column (1-based), as the spec's errors do."""
    space = tmp_path / "space.yaml"
    width = "" if text.startswith("d_model") else "d_model: [32]\n"
    space.write_text(f"base: {json.dumps(BASE)}\n{width}{text}\n")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"space.yaml:{line}:{col}:" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("blocks, col, message", [  # each was "no candidate satisfies ... first invalid: ..."
    ('{mamba2: {d_state: 8, foo: 1}}', 33, "base: mamba2: unknown argument 'foo'"),
    ('{mamba2: {d_state: 8}, attn: {heads: -1}}', 48, "base: attn: heads must be positive, got -1"),
    ('{mamba2: {d_state: 8}, m: {kind: mamab2}}', 44, "base: unknown block 'mamab2', the kind of alias 'm'"),
    ('{mamba2: {d_state: 8}, mlp: {hidden: abc}}', 48, "base: mlp: hidden must be int"),  # unused blocks too
])
def test_bad_base_blocks_point_into_the_space_file(tmp_path, capsys, blocks, col, message):
    space = tmp_path / "space.yaml"
    space.write_text(f"base:\n  blocks: {blocks}\nmixers: [mamba2]\nd_model: [16]\ndepth: [2]\n")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"space.yaml:2:{col}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("section, where", [
    # a base: mapping's were at `<base>:LINE:COL`, a copy of the mapping made to read it
    ("base:\n  vocab_size: 256\n  norm: rmsnrom", "space.yaml:3:9: unknown norm 'rmsnrom'"),
    ("base: {vocab_size: 0}", "space.yaml:1:20: vocab_size must be positive, got 0"),
    ("base: {d_model: 64, norm_eps: 2}", "space.yaml:1:31: norm_eps must be in (0, 1), got 2.0"),
    ("base: nosuch.yaml", "space.yaml:1:7: base: no such spec file 'nosuch.yaml' (beside the space file: "),
    # probe.train's were said with no place, and only once --probe ran
    ("probe: {train: {stepz: 3}}", "space.yaml:1:17: probe: unknown training setting 'stepz'; did you mean 'steps'?"),
    ("probe: {train: {steps: 10, lr: 5}}", "space.yaml:1:32: probe: train: lr must be at most 1"),
    ("probe: {train: {steps: 10, warmup: 50}}", "space.yaml:1:36: probe: train: warmup must be a share of the steps"),
    # the task and its arguments, each alone, had been said only once --probe ran, with no place
    ("probe: {task: mqr}", "space.yaml:1:15: probe: unknown probe 'mqr'; did you mean 'mqar'?"),
    ("probe: {task: mqar, args: {seq_lne: 64}}", "space.yaml:1:28: probe: mqar: unknown argument 'seq_lne'"),
    ("probe: {args: {seq_len: abc}}", "space.yaml:1:25: probe: mqar: seq_len must be an integer below 2^31, got 'abc'"),
])
def test_a_bad_base_or_probe_setting_points_into_the_space_file(tmp_path, capsys, section, where):
    space = tmp_path / "space.yaml"
    space.write_text(f"{section}\nmixers: [mamba2]\nd_model: [16]\ndepth: [2]\n")
    for probe in ([], ["--probe"]):
        code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress", *probe], capsys)
        assert code == 2 and where in err and "<base>" not in err and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()


def test_bad_base_blocks_of_a_python_space_are_named():
    with pytest.raises(ArchDSLError, match="base: mamba2: unknown argument 'foo'"):
        load_space({"base": {"blocks": {"mamba2": {"foo": 1}}}})


def test_amounts_group_thousands_with_commas():
    assert parse_constraint("params", "1,500,000").max == 1.5e6
    assert parse_constraint("params", "2,000.5k").max == 2_000_500
    assert parse_constraint("cache", "1MiB@4kx2") == parse_constraint("cache", "1,048,576@4096x2")


@pytest.mark.parametrize("text", ["512B", "1.5b@4k", "2 B"])
def test_a_cache_budget_in_b_is_ambiguous(text):
    """B is billions (1.5B parameters); on a cache budget it reads as bytes too, so it is refused there, the hint
    giving the billions of bytes it most likely means (it said `write bytes as 1.5`: 1.5 bytes)."""
    num = text.partition("@")[0][:-1].strip()
    with pytest.raises(ArchDSLError, match=f"ambiguous: B is billions .* write {num}GB or {num}GiB for {num} billion"):
        parse_constraint("cache", text)
    assert parse_constraint("params", text.partition("@")[0]).max == float(text.partition("@")[0][:-1]) * 1e9
    assert parse_constraint("cache", "2GB").max == 2e9


def test_unsatisfiable_budget_counts_per_constraint():
    space = small_space({"attn_fraction": (0, 0.5), "placements": ("even", "back"), "d_model": (32, 64), "depth": (4,)})
    with pytest.raises(ArchDSLError) as e:
        explore(space, [parse_constraint("params", "20k"), parse_constraint("cache", "1KiB@8k")])
    msg = str(e.value)
    assert "no candidate satisfies the constraints" in msg and "removed" in msg and "best seen" in msg
    n = int(msg.split(":")[1].split()[0])
    counts = [int(part.split("removed ")[1].split(",")[0]) for part in msg.splitlines()[1:] if "removed " in part]
    assert sum(counts) == n


@pytest.mark.parametrize("flags, message", [
    (["--top", "-1"], "--top: must be a positive count, got '-1'"),
    (["--top", "0"], "--top: must be a positive count, got '0'"),
    (["--probe", "--probe-d-model", "0"], "--probe-d-model: must be a positive count"),
    (["--probe", "--steps", "0"], "--steps: must be a positive count"),
    (["--probe", "--steps", "1.3k"], "--steps: '1.3k' is 1,331.2, not a whole count"),
    (["--probe", "--batch-size", "x"], "--batch-size: not a count: 'x' (write 4096, 8k or 1m)"),
    (["--objective", ""], "--objective: an empty name"),
    (["--objective", "params,,cache"], "--objective: an empty name"),
    (["--probe", "--steps", "1", "--lr", "nan"], "--lr: must be a positive number, got nan"),
    (["--probe", "--steps", "1", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--probe", "--steps", "1", "--device", "meta"], "--device meta: the probes train on real tokens"),
    (["--probe", "--steps", "1", "--probe-arg", "seq_len=abc"], "--probe-arg: mqar: seq_len must be an integer"),
    (["--probe", "--steps", "1", "--probe-arg", "random_non_queries=3"], "random_non_queries must be true or false"),
    (["--seed", "99999999999999999999999"], "--seed: must be in 0..2^63-1"),
    (["--context", "64q"], "--context: not a count: '64q'"),
    (["--dtype", "int7"], "--dtype: unknown dtype 'int7'"),
    (["--max-params", "1x"], "--max-params 1x: not an amount: '1x'"),
    (["--max-params", ""], "--max-params: not an amount: ''"),
    (["--max-params", "1,5M"], "--max-params 1,5M: not an amount"),  # not 15M: a comma groups thousands only
    (["--max-params", "1e999"], "--max-params 1e999: amount too large"),
    (["--max-cache", "1MiB@"], "--max-cache 1MiB@: not a count: ''"),
    (["--max-cache", "1MiB@4kx"], "--max-cache 1MiB@4kx: not a count: ''"),
    (["--max-cache", "1MiB@4kx0"], "--max-cache 1MiB@4kx0: must be a positive count"),
])
def test_bad_flags_are_named_and_nothing_is_written(tmp_path, capsys, flags, message):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"] + flags, capsys)
    assert code == 2 and "Traceback" not in err and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("train, message", [
    ("device: tpu", "unknown device 'tpu'"), ("lr: .nan", "lr must be a positive"),
    ("warmup: 500", "warmup must be"), ("stepz: 3", "unknown training setting 'stepz'; did you mean 'steps'?"),
    # each was a raw TypeError / ValueError / ZeroDivisionError / RuntimeError, most after results.json was written
    ("steps: 1.5", "train: steps must be a positive integer below 2^63, got 1.5"),
    ("steps: abc", "train: steps must be a positive integer below 2^63, got 'abc'"),
    ("steps: true", "train: steps must be a positive integer below 2^63, got True"),
    ("cpu_threads: 0", "train: cpu_threads must be a positive integer below 2^31, or null"),
    ("time_limit: abc", "train: time_limit must be a positive number of seconds, or null, got 'abc'"),
    ("time_limit: .inf", "train: time_limit must be a positive number of seconds, or null, got inf"),
    ("target_accuracy: abc", "train: target_accuracy must be a number in [0, 1], or null (no early stop), got 'abc'"),
    ("min_lr_ratio: abc", "train: min_lr_ratio must be a number in [0, 1], got 'abc'"),
    ("min_lr_ratio: 2", "train: min_lr_ratio must be a number in [0, 1], got 2"),
    ("betas: abc", "train: betas must be a pair of numbers in [0, 1), e.g. [0.9, 0.98], got 'abc'"),
    ("betas: [2, 3]", "train: betas must be a pair of numbers in [0, 1), e.g. [0.9, 0.98], got [2, 3]"),
    ("betas: [1]", "train: betas must be a pair of numbers in [0, 1), e.g. [0.9, 0.98], got [1]"),
    ("betas: [0.9, .nan]", "train: betas must be a pair of numbers in [0, 1)"),
    ("curve_points: 0", "train: curve_points must be a positive integer below 2^63, got 0"),
    ("cpu_threads: -1", "train: cpu_threads must be a positive integer below 2^31, or null "
                        "(torch's own thread count), got -1"),
    ("cpu_threads: abc", "train: cpu_threads must be a positive integer below 2^31, or null "
                         "(torch's own thread count), got 'ab"),
    ("weight_decay: -1", "train: weight_decay must be a number >= 0, got -1"),
    ("grad_clip: .nan", "train: grad_clip must be a number >= 0 (0: no clipping), got nan"),
    ("warmup: abc", "train: warmup must be a number >= 0"),
    ("device: 3", "train: device must be a device name (auto, cpu, cuda, cuda:1), got 3"),
    ("device: meta", "train: device 'meta': the probes train on real tokens"),
    ("dtype: int7", "train: dtype: unknown dtype 'int7'"),
    # every probe diverged at step 2 on the CPU (AdamW's eps is 0 in float16), and ran in float32 on CUDA
    ("dtype: float16", "train: dtype 'float16': pure float16 weights do not train: AdamW's eps (1e-8) underflows"),
    ("dtype: half", "give bfloat16 (float32's range in 16 bits; on CUDA it autocasts over float32 weights)"),
    ("seed: abc", "space.yaml:16:11: probe: train: seed is the run's seed (--seed), not a training setting"),  # ignored
])
def test_bad_space_probe_settings_write_nothing(tmp_path, capsys, train, message):
    """Settings of the space file's probe are checked before OUTDIR exists (no results.json left 'running')."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("train: {", f"train: {{{train}, "))
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--probe", "--no-progress"], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("probe, col, message", [
    ("{task: 3}", 15, "probe: task must be a task name (mqar, selective_copying, noisy_recall, fuzzy_recall), got 3"),
    ("{task: [mqar]}", 15, "probe: task must be a task name"),  # TypeError: unhashable type: 'list'
    ("{task: mqar, args: 3}", 27, "probe: args must be a mapping such as {seq_len: 256, num_kv_pairs: 16}, got 3"),
    ("{task: mqar, args: [1]}", 27, "probe: args must be a mapping such as {seq_len: 256, num_kv_pairs: 16}, got [1]"),
    ("{task: mqar, args: {3: 4}}", 28, "probe: args keys must be names, got 3"),  # keywords must be strings
    ("{task: mqar, train: [1]}", 28, "probe: train must be a mapping such as {steps: 1000, lr: 1.0e-3}, got [1]"),
    ("{task: mqar, train: {2: 3}}", 29, "probe: train keys must be names, got 2"),
    ("{task: mqar, d_model: true}", 30, "probe: d_model must be a positive integer, got True"),
    ("{task: mqar, d_model: abc}", 30, "probe: d_model must be a positive integer, got 'abc'"),
])
def test_bad_space_probe_sections_point_into_the_file_and_write_nothing(tmp_path, capsys, probe, col, message):
    """The probe section's shape is checked as the space is read, each error at its place (they were raw TypeErrors)."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY.split("probe:")[0] + f"probe: {probe}\n")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--probe", "--steps", "5",
                         "--no-progress"], capsys)
    assert code == 2 and f"space.yaml:13:{col}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("settings, message", [
    ({"steps": 2.0}, "train: steps must be a positive integer below 2^63, got 2.0"),
    ({"batch_size": False}, "train: batch_size must be a positive integer below 2^31, got False"),
    ({"lr": float("inf")}, "train: lr must be a positive number, got inf"),
    ({"betas": (0.9,)}, "train: betas must be a pair of numbers in [0, 1)"),
    ({"seed": -1}, "train: seed must be an integer in 0..2^63-1, got -1"),
    ({"seed": "abc"}, "train: seed must be an integer in 0..2^63-1, got 'abc'"),
    ({"target_accuracy": float("nan")}, "train: target_accuracy must be a number in [0, 1]"),
    ({"cpu_threads": 0}, "train: cpu_threads must be a positive integer below 2^31, or null"),
    ({"curve_points": None}, "train: curve_points must be a positive integer below 2^63, got None"),
])
def test_train_config_checks_every_setting(settings, message):
    from archdsl.explore.train import TrainConfig

    with pytest.raises(ArchDSLError) as e:
        TrainConfig(**settings)
    assert message in str(e.value)


def test_train_config_takes_betas_as_a_list_and_nulls_where_allowed():
    from archdsl.explore.train import TrainConfig

    cfg = TrainConfig(betas=[0.8, 0.9], target_accuracy=None, time_limit=None, cpu_threads=None, steps=3, warmup=2)
    assert cfg.betas == (0.8, 0.9) and cfg.to_dict()["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("kw, message", [
    ({"mixers": None}, "mixers takes block kinds or aliases of base.blocks, got None"),
    ({"placements": 3}, "unknown placement 3"),
    ({"attn_fraction": float("nan")}, "attn_fraction must be a number or a [min, max] pair of numbers, got nan"),
    ({"probe": {"task": "mqar", "args": 3}}, "probe: args must be a mapping"),
])
def test_bad_python_spaces_are_archdsl_errors(kw, message):
    with pytest.raises(ArchDSLError, match=message.replace("[", r"\[")):
        Space(**kw)


@pytest.mark.parametrize("probe, message", [
    ({"task": 3}, "probe: task must be a task name"),
    ({"task": "mqarr"}, "unknown probe 'mqarr'"),
    ({"task_args": 3}, "probe: args must be a mapping"),
    ({"train": {"seed": 1}}, "probe: train: seed is the run's seed"),
    ({"d_model": 0}, "probe: d_model must be a positive integer, got 0"),
    # each below was a ValueError, OverflowError or TypeError after OUTDIR was made, most writing results.json
    ({"train": {"steps": 10**5000}}, r"train: steps must be a positive integer below 2\^63, got about 10\^5000"),
    ({"train": {"eval_every": 10**5000}}, r"train: eval_every must be a positive integer below 2\^63"),
    ({"train": {"time_limit": 10**5000}}, "train: time_limit must be a positive number of seconds, or null"),
    ({"train": {"lr": 10**400}}, "train: lr must be a positive number, got about 10"),
    ({"train": {"cpu_threads": 10**12}}, r"train: cpu_threads must be a positive integer below 2\^31"),
    ({"train": {"dtype": torch.float32}}, r"probe: train: dtype must be a dtype name \(float32, float64 or bfloat16\), got"),
])
def test_a_bad_probe_spec_is_refused_before_anything_is_written(tmp_path, probe, message):
    from archdsl.explore.runner import ProbeSpec, run

    space = small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (2,)})
    with pytest.raises(ArchDSLError, match=message):
        run(space, [], ("params",), str(tmp_path / "o"), probe=ProbeSpec(**probe), progress=False, log=lambda *a: None)
    assert not (tmp_path / "o").exists()


def test_output_directory_is_checked(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    (tmp_path / "afile").write_text("x")
    for out, message in ((tmp_path / "afile", "exists and is not a directory"),
                         (tmp_path / "afile" / "o", "is a file, not a directory")):
        code, _, err = _run(["explore", str(space), "-o", str(out), "--no-progress"], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "x"
    out = tmp_path / "new" / "o"
    (tmp_path / "new").mkdir()
    assert _run(["explore", str(space), "-o", str(out), "--no-progress"], capsys)[0] == 0  # an empty or new dir
    before = (out / "results.json").read_text()
    code, _, err = _run(["explore", str(space), "-o", str(out), "--no-progress", "--max-params", "1"], capsys)
    assert code == 2 and f"pass --resume {out}" in err and "another -o" in err
    assert (out / "results.json").read_text() == before
    # a directory of other files: no --resume offered (it then failed: results.json does not exist)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "other"), "--no-progress"], capsys)
    assert code == 2 and "already holds files, and no exploration (no results.json)" in err, err
    assert "--resume" not in err and [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_probe_width_checked_first_and_a_failed_probe_says_so(tmp_path, capsys, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "o"
    code, _, err = _run(["explore", str(space), "-o", str(out), "--probe", "--steps", "1", "--probe-d-model", "3",
                         "--no-progress"], capsys)
    assert code == 2 and "probe d_model 3 (--probe-d-model) does not suit candidate" in err, err
    assert not out.exists()

    import archdsl.explore.train as train

    def broken(*a, **k):
        raise ArchDSLError("the probe broke")

    monkeypatch.setattr(train, "train_probe", broken)
    code, _, err = _run(["explore", str(space), "-o", str(out), "--probe", "--steps", "1", "--no-progress"], capsys)
    assert code == 2 and "the probe broke" in err
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("where, message", [("missing", "no such space file: "), ("missing.yml", "no such space file: "),
                                            ("", "is a directory, not a space file")])
def test_a_missing_space_file_or_a_directory_is_named(tmp_path, capsys, where, message):
    """A path that is no file was read as the space's YAML text: 'a space file must be a mapping' at <space>:1:1."""
    path = str(tmp_path / where) if where else str(tmp_path)
    code, _, err = _run(["explore", path, "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and err.startswith(f"error: {path} is a directory" if not where else f"error: {message}{path}")
    assert "mapping" not in err and not (tmp_path / "o").exists()


def test_plots_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The plots were saved straight onto their names: a Ctrl-C while one rendered left it half-written. They are
    rendered aside and renamed, as results.json is; what was there stays, and nothing else is left."""
    from matplotlib.figure import Figure

    from archdsl.explore.report import write_plots

    cands = explore(small_space({"attn_count": (0, 1), "placements": ("back",), "d_model": (16,),
                                 "depth": (2,)}), []).candidates
    write_plots(str(tmp_path), cands, ("params", "cache_bytes"), 1, "bfloat16", None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"pareto.png", "cache_vs_context.png"}

    def interrupted(self, out, *args, **kwargs):  # out: a file object (save_figure renders in memory)
        out.write(b"half a picture")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_plots(str(tmp_path), cands, ("params", "cache_bytes"), 1, "bfloat16", None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_pareto_plot_counts_are_singular_when_one(tmp_path, monkeypatch):
    """The Pareto plot's title said '1 candidates' and a tie of two '(+1 placements)'."""
    from matplotlib.figure import Figure

    import archdsl.explore.report as report

    figs = []

    def keep(self, fname, *args, **kwargs):
        figs.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    one = explore(small_space({"attn_count": (1, 1), "placements": ("back",), "d_model": (16,), "depth": (2,)}), [])
    report.plot_pareto(one.candidates, ("params", "cache_bytes"), str(tmp_path / "p.png"))
    two = explore(small_space({"attn_count": (1, 1), "placements": ("front", "back"), "d_model": (16,),
                               "depth": (2,)}), [])
    report.plot_pareto(two.candidates, ("params", "cache_bytes"), str(tmp_path / "p.png"))
    titles = [f.axes[0].get_title() for f in figs]
    assert titles == ["1 candidate, 1 on the front", "2 candidates, 2 on the front"], titles
    notes = [t.get_text() for t in figs[1].axes[0].texts]
    assert notes == [f"{two.candidates[0].id} (+1 placement)"], notes


def test_pareto_plot_ticks_are_plain_figures(tmp_path, monkeypatch):
    """Under plain_text (no mathtext) the log axes' default labels read '$\\mathdefault{10^{6}}$': the figures'
    axes are labelled as the tables write them."""
    from matplotlib.figure import Figure

    import archdsl.explore.report as report

    figs = []

    def keep(self, fname, *args, **kwargs):
        self.canvas.draw()  # the tick labels exist once drawn
        figs.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    res = explore(small_space({"attn_count": (0, 2), "placements": ("back",), "d_model": (16, 64, 256),
                               "depth": (2, 4)}), [])
    report.plot_pareto(res.candidates, ("params", "cache_bytes"), str(tmp_path / "p.png"))
    ax = figs[0].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    assert any(t.endswith("K") or t.endswith("M") for t in labels) and any(t.endswith("B") for t in labels), labels


def test_space_file_errors_count_lines_as_an_editor_does():
    """A space file's lines end at \\n, \\r\\n or a lone \\r, as a spec file's do (a classic Mac file was one line), and
    a character YAML refuses is pointed at (it was PyYAML's `position 9` with no line)."""
    for text in ("name: t\rmixers: [mamba2\r", "name: t\r\nmixers: [mamba2\r\n"):
        with pytest.raises(ArchDSLError) as e:
            space_from_yaml(text, "s.yaml")
        assert str(e.value).startswith("s.yaml:2:16: invalid YAML: expected ',' or ']'") and (
            str(e.value).endswith("\n  mixers: [mamba2\n                 ^")), str(e.value)
    with pytest.raises(ArchDSLError) as e:
        space_from_yaml("name: t\x1b\nmixers: [mamba2]\n", "s.yaml")
    assert str(e.value) == ("s.yaml:1:8: invalid YAML: the control character U+001B (YAML text holds none but tab and "
                            "line breaks)\n  name: t\ufffd\n         ^")


def test_a_base_named_like_a_number_round_trips(capsys):
    """A base spec named `1e5` (which YAML 1.2 reads as a float unquoted): the space's own YAML loads back, and
    its candidates build; `convert --name 7e9` writes a spec that loads. Each was written unquoted and refused."""
    space = space_from_yaml("base: {name: '1e5', d_model: 64, vocab_size: 64}\nmixers: [mamba2]\nattention: attn\n"
                            "attn_count: [1, 1]\nd_model: 64\ndepth: 4\n")
    assert space_from_yaml(space.to_yaml()).base_spec.name == "1e5"
    frame = next(space.frames())
    placement, idx = next(space.placements_of(frame))
    assert space.spec(frame, space.layout_text(frame, placement, idx), "2e3").graph is not None
    capsys.readouterr()
    assert main(["convert", "--from", "megatron", "M-*-", "--name", "7e9"]) == 0
    from archdsl.spec import spec_from_yaml
    assert spec_from_yaml(capsys.readouterr().out).name == "7e9"


def test_a_budget_at_a_context_is_labelled_at_the_run_batch(tmp_path, capsys):
    """`--max-cache 100KiB@8k --batch 4` is checked at batch 4; its label said 'batch 1'."""
    space = tmp_path / "space.yaml"
    space.write_text(f"base: {json.dumps(BASE)}\nd_model: [32]\ndepth: [4]\nattn_count: [0, 1]\n")
    code, out, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress", "--batch", "4",
                           "--max-cache", "100KiB@8k"], capsys)
    assert code == 0 and "cache_bytes ≤ 100.00 KiB @ batch 4, context 8192: 1" in out, out
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    (c,) = doc["candidates"]
    at = c["figures"]["at"]["cache_bytes ≤ 100.00 KiB @ batch 4, context 8192"]
    assert at == analyze(space_from_yaml(space.read_text()).spec(c["knobs"], c["layout"], "x"), seq_len=8192,
                         batch=4).cache_bytes


def test_a_diverged_loss_is_never_on_the_front():
    """A NaN loss compared false both ways, so a diverged candidate sat on the front of any `loss` objective."""
    cands = [Candidate(f"c{i}", {}, "", None, {"params": p}, probe={"final_loss": loss, "accuracy": 0.5})
             for i, (p, loss) in enumerate([(10, float("nan")), (10, 1.0), (20, 0.5)])]
    ranks = pareto_ranks(cands, ("params", "loss"))
    assert ranks == [1, 0, 0]


def test_only_shared_attention_keeps_zero_and_one_attention_layer():
    """`shared: [true]` alone dropped the counts 0 and 1 (sharing them is no sharing), leaving them nowhere."""
    res = explore(small_space({"attn_count": (0, 2), "placements": ("back",), "shared": (True,), "d_model": (32,),
                               "depth": (4,)}), objectives=("params",))
    assert sorted(c.layout for c in res.candidates) == ["2×mamba2, 2×attn(shared)", "3×mamba2, attn", "4×mamba2"]
    assert [c.knobs["shared"] for c in sorted(res.candidates, key=lambda c: c.knobs["attn_count"])] == [False, False, True]


@pytest.mark.parametrize("name, args, message", [
    ("mqar", {"power_a": 0.0}, "power_a must be positive"),
    ("noisy_recall", {"noise_vocab_size": 0}, "noise_vocab_size must be >= 0, and >= 1 when frac_noise > 0"),
    ("noisy_recall", {"noise_vocab_size": -2, "frac_noise": 0.0}, "noise_vocab_size must be >= 0"),
    ("fuzzy_recall", {"k_motif_size": 0}, "motif sizes must be at least 1"),
    ("fuzzy_recall", {"v_motif_size": 0}, "motif sizes must be at least 1"),
])
def test_probe_arguments_out_of_range_are_refused(name, args, message):
    """These crashed in torch (randint / multinomial) at the first batch, after the run had started."""
    with pytest.raises(ArchDSLError, match=message):
        make_task(name, **args)


def test_noisy_recall_without_noise_is_plain_recall():
    """MAD's in-context recall is noisy recall with frac_noise 0, where a noise vocabulary of 0 is allowed."""
    task = make_task("noisy_recall", vocab_size=16, seq_len=32, noise_vocab_size=0, frac_noise=0.0)
    x, y = task.batch(8, torch.Generator().manual_seed(0), train=False)
    assert x.shape == (8, 32) and x[:, :-2].max() < 15 and (x[:, -2] == 15).all() and ((y != -100).sum(1) == 1).all()


def test_probe_args_read_floats_as_the_space_file_does():
    from archdsl.explore.command import _value

    assert _value("1e-2") == 0.01 and _value("64") == 64 and _value("true") is True and _value("abc") == "abc"


def test_a_budget_at_exactly_a_candidates_figure_keeps_it():
    """'2.01M' was 2.01 × 10^6 in floats, 2,009,999.9999999998: a candidate of exactly 2,010,000 broke --max-params
    2.01M, and one of 16,382 broke --min-params 16.382k (16,382.000000000002)."""
    from archdsl.explore import parse_amount

    assert parse_amount("2.01M") == 2_010_000 and parse_amount("1.07G") == 1_070_000_000
    assert all(parse_amount(f"{i / 100:.2f}k") == i * 10 for i in range(1, 1000))
    space = small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (5,)})
    (c,) = explore(space, objectives=("params",)).candidates
    text = f"{c.figures['params'] / 1000:g}k"
    assert text == "16.382k"
    assert len(explore(space, [parse_constraint("params", text, "min"), parse_constraint("params", text)]).candidates) == 1


def test_csv_rows_tell_moe_hidden_apart(tmp_path):
    """Two candidates differing only in the MoE hidden size gave CSV rows equal but for id and layout."""
    import csv

    from archdsl.explore.report import write_results

    res = explore(small_space({"attn_count": (0, 0), "moe_every": (2,), "moe_experts": (4,), "moe_top_k": (1,),
                               "moe_hidden": (0, 48), "d_model": (32,), "depth": (2,)}), objectives=("params",))
    write_results(str(tmp_path), {}, res.candidates, "complete", {})
    rows = list(csv.DictReader(open(tmp_path / "results.csv", encoding="utf-8")))
    assert sorted(r["moe_hidden"] for r in rows) == ["0", "48"]


def test_probe_named_by_an_alias_keeps_the_space_settings(tmp_path, capsys):
    """`--probe selective_copying` dropped the space's `probe:` settings written for `task: copy` (the same task)."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("attn_count: [0, 1]", "attn_count: [0, 0]").replace("task: mqar", "task: copy")
                     .replace("{vocab_size: 128, seq_len: 32, num_kv_pairs: 4}", "{seq_len: 24, num_tokens_to_copy: 3}"))
    code, _, err = _run(["explore", str(space), "--probe", "selective_copying", "--steps", "1", "-o",
                         str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 0, err
    probe = json.loads((tmp_path / "o" / "results.json").read_text())["config"]["probe"]  # as the settings resolve
    assert probe["task"] == "selective_copying" and probe["train"]["batch_size"] == 8
    assert probe["task_args"] == {"vocab_size": 16, "seq_len": 24, "num_tokens_to_copy": 3}  # vocab_size's default


def test_a_deep_space_enumerates_every_placement_once(monkeypatch):
    """Depth 2000 with every period of 2..2000: the candidates, in order, are the placements' definitions
    written out plainly (and deduplicated); a sample of them, analysed on its own, has the figures and the
    attention layers given; and there is one analysis per frame, not one per candidate (each candidate was
    once analysed on its own, which took minutes and gigabytes at this depth)."""
    D = 2000
    space = small_space({"attn_count": (0, 3), "placements": ("even", "every", "front", "back", "sandwich"),
                         "every_offsets": ("first", "mid", "last"), "shared": (False, True), "d_model": (32,),
                         "depth": (D,)})
    calls = []
    monkeypatch.setattr(search, "analyze", lambda spec, **kw: calls.append(spec.name) or analyze(spec, **kw))
    res = explore(space, objectives=("params", "cache"))
    every: dict[int, list] = {}  # by the number of layers selected: i % N == K
    for N in range(2, D + 1):
        for K in (0, N // 2, N - 1):
            idx = [i for i in range(D) if i % N == K]
            every.setdefault(len(idx), []).append(idx)
    expected = []
    for shared, k in [(False, 0), (False, 1), (False, 2), (False, 3), (True, 2), (True, 3)]:
        if k == 0:
            placements = [[]]
        else:
            placements = [sorted({int((j + 0.5) * D / k) for j in range(k)}), *every.get(k, []), list(range(k)),
                          list(range(D - k, D)), list(range((k + 1) // 2)) + list(range(D - k // 2, D))]
        kept = dict.fromkeys(map(tuple, placements))  # the same layers twice: the first placement's
        expected += [(shared and k >= 2, k, list(idx)) for idx in kept]
    by_id = sorted(res.candidates, key=lambda c: int(c.id[1:]))
    assert [(c.knobs["shared"], c.knobs["attn_count"], c.knobs["attn_layers"]) for c in by_id] == expected
    assert res.enumerated == len(expected) and len(calls) == 6  # one analysis per frame
    for c in by_id[:: len(by_id) // 7] + by_id[-3:]:
        rep = analyze(c.spec, seq_len=4096)  # explore's default context
        assert [i for i, r in enumerate(rep.layers) if r.mixer == "attn"] == c.knobs["attn_layers"], c.layout
        assert (rep.params, rep.cache_bytes) == (c.figures["params"], c.figures["cache_bytes"])
        assert c.spec == space.spec(c.knobs, c.layout, c.spec.name)  # the same Spec as one read from YAML


@pytest.mark.parametrize("kw, message", [
    ({"space": None}, "space must be a Space (load_space reads one from a file, YAML text or a mapping), got None"),
    ({"context": 0}, "context: must be a positive count, got 0"),  # found only after the whole enumeration
    ({"context": "4q"}, "context: not a count: '4q' (write 4096, 8k or 1m)"),
    ({"context": 4096.0}, "context: not a count: 4096.0"),
    ({"batch": 0}, "batch: must be a positive count, got 0"),
    ({"batch": True}, "batch: not a count: True"),
    ({"dtype": "int8"}, "unknown dtype 'int8' (one of float32"),
    ({"constraints": ["params<1B"]}, "constraints: not a constraint: 'params<1B' (write params<=1.5B"),
    ({"constraints": [3]}, "constraints: not a constraint: 3 (give parse_constraint('params', '1.5B')"),
    ({"constraints": 3}, "constraints must be a list of Constraints (parse_constraint) or of texts"),
    ({"constraints": ["parms<=1B"]}, "constraints 'parms<=1B': unknown constraint metric 'parms'"),
    ({"constraints": ["params<=1x"]}, "constraints 'params<=1x': not an amount: '1x'"),
    ({"objectives": (3,)}, "unknown objective 3; valid names: "),  # these two were AttributeErrors
    ({"objectives": None}, "objectives must be metric names, e.g. ('params', 'cache') or 'params,cache', got None"),
    ({"objectives": "params,,cache"}, "an empty name in 'params,,cache'"),
    ({"progress": True}, "progress must be None or a bar with update(n)"),
])
def test_bad_explore_arguments_are_named_before_any_work(monkeypatch, kw, message):
    space = small_space({"attn_fraction": (0, 0.5), "d_model": (32,), "depth": (4,)})
    monkeypatch.setattr(Space, "frames", lambda self: pytest.fail("enumerated"))
    kw = dict(kw)
    with pytest.raises(ArchDSLError) as e:
        explore(kw.pop("space", space), **kw)
    assert message in str(e.value)


def test_explore_takes_counts_constraint_texts_and_numpy_integers():
    np = pytest.importorskip("numpy")
    space = small_space({"attn_fraction": (0, 0.5), "d_model": np.array([32]), "depth": np.int64(4),
                         "moe_every": (np.int64(0),)})
    assert space.depth == (4,) and type(space.depth[0]) is type(space.d_model[0]) is int
    a = explore(space, [parse_constraint("params", "1M"), parse_constraint("active", "1k", "min")],
                objectives=("params",), context=4096, batch=2)
    b = explore(space, ["params<=1M", "active >= 1k"], objectives="params", context="4k", batch=np.int64(2))
    assert [c.to_dict() for c in a.candidates] == [c.to_dict() for c in b.candidates] and len(a.candidates) > 1
    assert type(b.batch) is int and explore(space, None, "params,cache").objectives == ("params", "cache_bytes")
    assert search.pareto_ranks(a.candidates, "cache") == search.pareto_ranks(a.candidates, ("cache_bytes",))


@pytest.mark.parametrize("call, message", [
    (lambda: parse_constraint(None, "1"), "unknown constraint metric None; valid names: active_params"),
    (lambda: parse_constraint("params", "1", bound="x"), "bound must be 'max' or 'min', got 'x'"),
    (lambda: parse_constraint("params", None), "not an amount: None"),
    (lambda: search.parse_amount(float("nan")), "not an amount: nan"),
    (lambda: search.parse_amount(float("inf")), "amount too large: inf"),
    (lambda: search.Constraint("parms", 1), "unknown constraint metric 'parms'; did you mean 'params'"),
    (lambda: search.Constraint("params"), "a constraint on params needs a max or a min"),
    (lambda: search.Constraint("params", -1), "constraint max must be a number >= 0, or None, got -1"),
    (lambda: search.Constraint("cache", 1, seq_len=0), "seq_len: must be a positive count, got 0"),
    (lambda: search.norm_objectives(None), "objectives must be metric names"),
    (lambda: search.norm_objectives(()), "give at least one objective"),
    (lambda: load_space(None), "a space is a Space, a mapping, a YAML file or YAML text, got None"),
    (lambda: space_from_dict(None), "a space must be a mapping (mixers, attn_fraction, placements, depth, ...), got"),
    (lambda: space_from_dict({}, here=3), "here must be a directory path or None, got 3"),
    (lambda: space_from_yaml(None), "space_from_yaml: text must be a string, got None"),
    (lambda: Space(base="mamba"), "base must be a Spec (archdsl.parse, archdsl.load_spec) or None, got 'mamba'"),
    (lambda: pareto_ranks(None, ("params",)), "cands must be a list of Candidates (an Exploration's candidates)"),
    (lambda: search.rank([3], ("params",)), "cands must be a list of Candidates (an Exploration's candidates); one is"),
    (lambda: search.rank([], ("params",), eligible=3), "eligible must be a function of a Candidate, or None, got 3"),
    (lambda: pareto_ranks([], "speed"), "unknown objective 'speed'"),  # each letter was an objective
    (lambda: dominates((1, 2), (1,)), "dominates: points of different lengths: (1, 2) and (1,)"),
    (lambda: dominates(None, (1,)), "dominates: a must be a point, a tuple of numbers, got None"),
])
def test_bad_arguments_of_the_api_are_archdsl_errors(call, message):
    with pytest.raises(ArchDSLError) as e:
        call()
    assert message in str(e.value)


HUGE = 10**5000  # past str()'s 4300 digits: a message that writes it out raises ValueError


@pytest.mark.parametrize("kw, message", [
    # attn_count 10**400 was accepted, then said 'the space is empty'
    ({"attn_count": 10**400}, "attn_count about 10^400 is past the 100000 layers a layout may expand to"),
    ({"attn_count": (0, HUGE)}, "attn_count about 10^5000 is past the 100000 layers"),
    ({"attn_count": 1.5}, "attn_count counts layers: give integers, got [1.5, 1.5]"),  # was 'the space is empty'
    ({"attn_fraction": (0, HUGE)}, "attn_fraction [0, about 10^5000] is out of range [0, 1]"),  # was a ValueError
    ({"depth": HUGE}, "depth about 10^5000 is past the 100000 layers"),  # ValueError
    ({"d_model": (32, 2**40)}, "d_model 1099511627776 is past 10^6, the widest a spec may be"),
    ({"moe_every": 2**70}, "moe_every 1.181e+21 is past the 100000 layers"),  # 'attn_fraction ... allows no count'
    ({"moe_every": 2, "moe_experts": 10**400}, "moe_experts about 10^400 is past 2^40, more than any model holds"),
    ({"moe_every": 2, "moe_hidden": 2**62}, "moe_hidden 4.612e+18 is past 2^40"),
    ({"placements": ("every",), "every_periods": HUGE}, "every_periods about 10^5000 is past the 100000 layers"),
    ({"placements": ("every",), "every_offsets": 2**70}, "every_offsets 1.181e+21 is past the 100000 layers"),
    ({"moe_every": 16}, "the space is empty: moe every [16] selects no layer at depth 8"),  # blamed attn_fraction
    ({"name": "a\tb"}, "name must be one line of text without control characters"),  # was 'all removed'
    ({"name": b"x"}, "name must be a string, got b'x'"),  # a TypeError once results.json was written
    ({"name": HUGE}, "name must be a string, got about 10^5000"),
    ({"probe": {"d_model": 10**7}}, "probe: d_model must be at most 10^6 (the widest a spec may be), got 10000000"),
])
def test_huge_or_mistyped_knobs_are_refused_up_front(kw, message):
    with pytest.raises(ArchDSLError) as e:
        explore(small_space(dict({"d_model": (32,)}, **kw)))
    assert message in str(e.value)


def test_numpy_scalars_and_arrays_and_numeric_names_work():
    np = pytest.importorskip("numpy")
    space = small_space({"attn_count": np.array([0, 2]), "shared": np.bool_(False), "d_model": (32,), "name": 2024})
    assert space.attn_count == (0, 2) and space.shared == (False,) and space.name == "2024"
    assert len(explore(space).candidates) > 1 and "2024" in space.to_yaml()


@pytest.mark.parametrize("blocks, message", [
    ({"a": {"kind": "b"}, "b": {"kind": "a"}}, "block alias 'a' goes round in a circle: a → b → a"),
    ({"a": {"kind": 3}}, "block alias 'a': kind must be a block kind's name, got 3"),
    ({"a": {"kind": "mamab2"}}, "unknown block kind 'mamab2' (alias 'a' → mamab2); did you mean 'mamba2'"),
])
def test_bad_block_aliases_say_why(blocks, message):  # each was "unknown block kind 'a'; did you mean 'a'?"
    with pytest.raises(ArchDSLError) as e:
        load_space({"base": {"blocks": blocks}, "mixers": ["a"]})
    assert message in str(e.value)


@pytest.mark.parametrize("call, message", [
    (lambda: explore(Space(), context=HUGE), "context: about 10^5000 is too large (at most 2^40"),  # ValueError
    (lambda: explore(Space(), batch=HUGE), "batch: about 10^5000 is too large (at most 2^40"),
    (lambda: search.Constraint("params", max=HUGE), "constraint max must be a number >= 0, or None, got about 10^5000"),
    (lambda: search.parse_amount(HUGE), "amount too large: about 10^5000"),
    (lambda: explore(Space(), ["params<=1B@64k"]), "constraints 'params<=1B@64k': params do not depend on the context"),
    (lambda: search.Constraint("active", max=1e6, batch=8), "active_params do not depend on the context or the batch"),
    (lambda: dominates((x for x in (1,)), (2,)), None),  # a generator was read twice: 'points of different lengths'
    (lambda: search.norm_objectives(b"params"), "objectives must be metric names"),  # was 'unknown objective 112'
    (lambda: load_space(""), "a space is a YAML file or YAML text, got an empty string"),  # 'no such space file: '
    (lambda: load_space({"base": ""}), "base must be a spec file path or a mapping of spec keys, got an empty string"),
])
def test_odd_api_arguments_are_named(call, message):
    if message is None:
        assert call() is True
        return
    with pytest.raises(ArchDSLError) as e:
        call()
    assert message in str(e.value)


@pytest.mark.parametrize("kw, message", [
    ({"top": 1.5}, "top must be an integer in 1..2^63-1 or None, got 1.5"),  # a TypeError after writing results
    ({"top": "3"}, "top must be an integer in 1..2^63-1 or None, got '3'"),
    ({"top": HUGE}, "top must be an integer in 1..2^63-1 or None, got about 10^5000"),
    ({"seed": -1}, "seed must be an integer in 0..2^63-1, got -1"),  # recorded as it was
    ({"seed": None}, "seed must be an integer in 0..2^63-1, got None"),
    ({"outdir": b"o"}, "outdir: expected a directory (str or os.PathLike), got bytes"),  # TypeError, an empty dir left
    ({"outdir": "o\0x"}, "holds a NUL byte"),
    ({"outdir": "o\nx"}, "outdir: the path 'o\\nx' holds the control character '\\n'; give one without"),  # was written
    ({"outdir": "o\x1bx"}, "outdir: the path 'o\\x1bx' holds the control character '\\x1b'"),
    ({"probe": "mqar"}, "probe must be a ProbeSpec or None, got 'mqar'"),  # AttributeError
])
def test_bad_run_arguments_write_nothing(tmp_path, monkeypatch, kw, message):
    from archdsl.explore.runner import run

    monkeypatch.chdir(tmp_path)
    kw = dict({"outdir": "o"}, **kw)
    space = small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (2,)})
    with pytest.raises(ArchDSLError) as e:
        run(space, [], ("params",), progress=False, log=lambda *a: None, **kw)
    assert message in str(e.value) and not list(tmp_path.iterdir())


def test_numpy_top_and_seed_run(tmp_path):
    np = pytest.importorskip("numpy")
    from archdsl.explore.runner import run

    space = small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (2,)})
    run(space, [], ("params",), str(tmp_path / "o"), top=np.int64(1), seed=np.int64(3), progress=False,
        log=lambda *a: None)  # was 'not JSON: int64', results.json half-made
    assert json.loads((tmp_path / "o" / "results.json").read_text())["config"]["seed"] == 3


@pytest.mark.parametrize("doc", ["[]", "null", '{"config": 3}', '{"config": {}, "candidates": 3}',
                                 '{"config": {}, "candidates": [1]}', '{"config": {}, "candidates": [{"probe": 1}]}',
                                 '{"config": {}, "candidates": [{"id": "c0000", "layout": "x", "probe": {}}]}'])
def test_a_malformed_results_file_is_not_resumed(tmp_path, capsys, doc):
    """Each but the last was an AttributeError, TypeError or KeyError."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.json").write_text(doc)
    code, _, err = _run(["explore", str(space), "--resume", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert ("other settings" if '"id"' in doc else "is not an exploration's results") in err, err
    assert (tmp_path / "o" / "results.json").read_text() == doc


@pytest.mark.parametrize("flags, message", [
    (["--top", "99999999999999999999999"], "--top: '99999999999999999999999' is too large (at most 2^40"),
    (["--probe", "--batch-size", "99999999999999999999"], "--batch-size: '99999999999999999999' is too large"),
    (["--probe", "--batch-size", "4g"], "batch_size must be a positive integer below 2^31"),  # torch's limit
])
def test_huge_flags_are_refused_and_nothing_is_written(tmp_path, capsys, flags, message):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"] + flags, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, train, message", [
    (["--lr", "1e300"], "", "--lr: must be at most 1 (AdamW moves each weight by up to about lr a step: more only "
                            "diverges), got 1e+300"),
    (["--lr", "2"], "", "--lr: must be at most 1"),
    ([], "lr: 1.0e+300, ", "train: lr must be at most 1 (AdamW moves each weight by up to about lr a step"),
    ([], "lr: 3.5e+37, ", "train: lr must be at most 1"),  # torch's own limit: the step lr / (1 - beta1) overflows
])
def test_a_huge_learning_rate_is_refused_before_anything_is_written(tmp_path, capsys, flags, train, message):
    """It passed as a positive finite number, then torch's AdamW raised "value cannot be converted to type float
    without overflow" on the first step, after results.json was written (status failed, a traceback)."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("train: {", f"train: {{{train}"))
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--probe", "--steps", "2",
                         "--no-progress"] + flags, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_the_largest_learning_rate_trains_without_overflow_at_any_beta():
    """lr 1 with beta1 just below 1: AdamW's first step is lr / (1 - beta1) ≈ 9e15, far inside float32; a diverged
    probe is a result (its loss may be NaN), not an error."""
    from archdsl.explore.train import MAX_LR, TrainConfig, train_probe

    task = make_task("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    net = torch.nn.Sequential(torch.nn.Embedding(32, 8), torch.nn.Linear(8, 32))
    cfg = TrainConfig(steps=3, batch_size=2, eval_every=3, eval_size=4, lr=MAX_LR, betas=(1 - 2**-53, 0.98),
                      warmup=0, target_accuracy=None)
    result = train_probe(net, task, cfg)
    assert result.steps == 3 and 0 <= result.accuracy <= 1
    with pytest.raises(ArchDSLError, match="train: lr must be at most 1"):
        TrainConfig(lr=1.5)


@pytest.mark.parametrize("call", [
    lambda: parse_constraint("flops", "1G@64kx8"),
    lambda: search.Constraint("flops", max=1e9, seq_len=4096, batch=2),
])
def test_a_flops_budget_takes_no_batch(call):
    """FLOPs a token are the same at any batch: `1G@64kx8` was taken, and labelled 'batch 8', meaning nothing."""
    with pytest.raises(ArchDSLError, match="flops_per_token do not depend on the batch: give the budget as "
                                           r"AMOUNT@CONTEXT, without xBATCH \(that is for cache budgets\)"):
        call()
    with pytest.raises(ArchDSLError, match="constraints 'flops<=1G@64kx8': flops_per_token do not depend on the batch"):
        explore(small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (2,)}), ["flops<=1G@64kx8"])


def test_a_flops_budget_at_a_context_is_labelled_without_a_batch(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress", "--max-flops",
                         "1G@64kx8"], capsys)
    assert code == 2 and "error: --max-flops 1G@64kx8: flops_per_token do not depend on the batch" in err, err
    assert not (tmp_path / "o").exists()
    code, out, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress", "--batch", "4",
                           "--max-flops", "20k@1k"], capsys)
    assert code == 0, err
    label = "flops_per_token ≤ 20.00K @ context 1024"
    assert f"removed by {label}: 1" in out, out
    (c,) = json.loads((tmp_path / "o" / "results.json").read_text())["candidates"]
    assert c["figures"]["at"][label] == analyze(space_from_yaml(space.read_text()).spec(c["knobs"], c["layout"], "x"),
                                                seq_len=1024).flops_per_token


def test_a_diverged_probe_stops_and_is_written_as_strict_json(tmp_path):
    """A loss that turns NaN stops training at the end of its window, after one last evaluation; results.json holds
    null for it (no bare NaN), results.csv an empty cell, and the table says so."""
    from archdsl.explore.report import table_text, write_results
    from archdsl.explore.train import TrainConfig, train_probe

    task = make_task("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    net = torch.nn.Sequential(torch.nn.Embedding(32, 8), torch.nn.Linear(8, 32))
    with torch.no_grad():
        net[1].bias[0] = float("nan")
    cfg = TrainConfig(steps=200, batch_size=2, eval_every=100, eval_size=4, curve_points=100, warmup=0,
                      target_accuracy=None)
    result = train_probe(net, task, cfg)
    assert result.diverged and result.steps == 2 and result.eval_curve[-1][0] == 2, result
    assert result.final_loss != result.final_loss  # NaN in memory, where the ranking reads it as the worst

    cand = Candidate("c0", {"mixer": "mamba2"}, "2×mamba2", None,
                     figures={"params": 1, "active_params": 1, "flops_per_token": 1, "cache_bytes": 1},
                     probe=result.to_dict())
    write_results(str(tmp_path), {}, [cand], "complete", {})

    def refuse(name):
        raise AssertionError(f"results.json holds {name}")

    doc = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    probe = doc["candidates"][0]["probe"]
    assert probe["diverged"] is True and probe["final_loss"] is None and probe["loss_curve"][-1][1] is None
    row = (tmp_path / "results.csv").read_text().splitlines()[1].split(",")
    assert "nan" not in (tmp_path / "results.csv").read_text().lower() and row
    assert "(diverged)" in table_text([cand], None, 4096, probed=True)
    # the FLOPs, as the cache, at the table's context (its header named the cache's alone)
    assert table_text([cand], None, 65536, probed=False).split("\n")[0].split()[-2:] == ["FLOPs/tok@64k", "cache@64k"]


def test_bad_train_probe_arguments_are_named():  # each was an AttributeError or a TypeError, the last mid-run
    from archdsl.explore.train import TrainConfig, train_probe

    task, cfg = make_task("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2), TrainConfig(steps=1, eval_size=4)
    for args, message in ((("2×mamba2", "mqar", cfg), "train_probe: task must be a Task (make_task('mqar', ...))"),
                          (("2×mamba2", task, {"steps": 1}), "train_probe: cfg must be a TrainConfig, got"),
                          (("2×mamba2", task, cfg, 1), "train_probe: progress must be None or a function")):
        with pytest.raises(ArchDSLError) as e:
            train_probe(*args)
        assert message in str(e.value)


def test_make_task_takes_numpy_integers_not_bools_or_floats():
    """make_task refused numpy.int64(64) ("seq_len must be an integer below 2^31") where 64 was taken: values read
    through numpy (np.arange over a sweep) are integers. They are kept as Python ints, so to_dict stays JSON."""
    import numpy as np

    task = make_task("mqar", seq_len=np.int64(64), num_kv_pairs=np.int32(4), vocab_size=np.uint16(128),
                     power_a=np.int64(1))
    values = (task.seq_len, task.num_kv_pairs, task.vocab_size, task.power_a)
    assert values == (64, 4, 128, 1) and all(type(v) is int for v in values)
    assert json.loads(json.dumps(task.to_dict()))["seq_len"] == 64
    x, y = task.batch(2, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 64)
    for value in (True, np.True_, 64.0, np.float64(64), np.int64(2**31), "64"):
        with pytest.raises(ArchDSLError, match=r"^mqar: seq_len must be an integer below 2\^31, got "):
            make_task("mqar", seq_len=value)
    with pytest.raises(ArchDSLError, match=r"^mqar: power_a must be a number, got np.True_"):
        make_task("mqar", power_a=np.True_)
    with pytest.raises(ArchDSLError, match=r"^mqar: random_non_queries must be true or false, got np.int64\(1\)"):
        make_task("mqar", random_non_queries=np.int64(1))


def test_explore_counts_take_what_context_and_batch_take():
    """--steps, --batch-size, --probe-d-model and --top took plain integers (`--steps 2k` was argparse's "invalid
    int value") where --context and --batch took 64k."""
    from archdsl.cli import build_parser

    args = build_parser().parse_args(["explore", "s.yaml", "-o", "o", "--probe", "--steps", "2k", "--batch-size",
                                      "0.5k", "--probe-d-model", "1k", "--top", "1_000"])
    assert (args.steps, args.batch_size, args.probe_d_model, args.top) == (2048, 512, 1024, 1000)


PROBE_ONE = ["--probe", "--steps", "1", "--top", "1"]


@pytest.mark.parametrize("stop, flags", [("specs", []), ("plots", []), ("specs", PROBE_ONE), ("plots", PROBE_ONE)])
def test_a_stop_while_writing_specs_or_plots_leaves_interrupted(tmp_path, capsys, monkeypatch, stop, flags):
    """results.json said `complete` (or `running`) before the spec files and the plots were written: a Ctrl-C there
    left a run that claimed to be done, and no word of --resume. It is `interrupted` until they all are."""
    import archdsl.explore.runner as runner

    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "out"
    real_write, real_plots, specs = runner.write_atomic, runner.write_plots, []

    def write(path, data, **kw):
        if "specs" in str(path):
            specs.append(path)
            if stop == "specs" and len(specs) == 2:
                raise KeyboardInterrupt
        return real_write(path, data, **kw)

    def plots(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_atomic", write)
    if stop == "plots":
        monkeypatch.setattr(runner, "write_plots", plots)
    code, stdout, _ = _run(["explore", str(space), "-o", str(out), "--no-progress"] + flags, capsys)
    assert code == 130
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    stage = "spec files" if stop == "specs" else "plots"
    assert f"interrupted while writing the {stage}" in stdout and f"continue with --resume {out}" in stdout, stdout
    monkeypatch.setattr(runner, "write_atomic", real_write)
    monkeypatch.setattr(runner, "write_plots", real_plots)
    assert _run(["explore", str(space), "--resume", str(out), "--no-progress"] + flags, capsys)[0] == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "complete" and (out / "pareto.png").exists() and (out / "cache_vs_context.png").exists()
    assert sorted(p.name for p in (out / "specs").iterdir()) == sorted(f"{c['id']}.yaml" for c in doc["candidates"])


@pytest.mark.parametrize("text, line, col, message", [
    ("mixers: [mamba2, attn]", 1, 18, "mixers: 'attn' is the attention block; mixers lists the other mixers"),
    ("mixers:\n  - mamba2\n  - full", 3, 5, "mixers: 'full' is the attention block (the same block as 'attn')"),
    ("mixers: attn", 1, 9, "mixers: 'attn' is the attention block"),
])
def test_the_attention_block_as_a_mixer_is_refused_at_its_entry(tmp_path, capsys, text, line, col, message):
    """The attention block among the mixers gave the same model several times (`3×attn` as attn_count 0, 1 by even,
    1 by front), each with wrong knobs, and probed each again: attn_count places the attention block. Another
    attention block (a sliding-window alias) is a mixer like any other: local layers with global ones placed."""
    space = tmp_path / "space.yaml"
    rest = ("base: {vocab_size: 256, blocks: {attn: {heads: 2}, full: {kind: attn}, swa: {kind: attn, window: 4}}}\n"
            "attn_count: [0, 1]\nplacements: [even, front]\nd_model: [32]\ndepth: [3]\n")
    space.write_text(f"{text}\n{rest}")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"space.yaml:{line}:{col}: {message}" in err and "attn_count" in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ArchDSLError, match="mixers: 'attn' is the attention block"):
        Space(mixers=("mamba2", "attn"))
    space.write_text(f"mixers: [swa]\n{rest}")
    assert _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)[0] == 0
    layouts = [c["layout"] for c in json.loads((tmp_path / "o" / "results.json").read_text())["candidates"]]
    assert sorted(layouts) == ["3×swa", "attn, 2×swa", "swa, attn, swa"], layouts


def test_the_same_model_is_one_candidate():
    """The dedupe was by (frame, attention indices): two frames that make one layout both stayed."""
    space = small_space({"attn_count": (0, 1), "placements": ("even", "front"), "d_model": (32, 64), "depth": (3,)})
    object.__setattr__(space, "mixers", ("mamba2", "attn"))  # past the check, as a space of such frames would be
    res = explore(space, objectives=("params",))
    models = [(c.knobs["d_model"], c.layout) for c in res.candidates]
    assert len(models) == len(set(models)) and (32, "3×attn") in models and res.enumerated == len(models), models


@pytest.mark.parametrize("flags, message", [
    (["--max-cache", "600KiB@4k", "--max-cache", "1MiB"], "--max-cache given 2 times (600KiB@4k, 1MiB): give each "
                                                          "budget flag once"),
    (["--min-params", "1k", "--max-params", "1M", "--min-params", "2k"], "--min-params given 2 times (1k, 2k)"),
])
def test_a_budget_flag_given_twice_is_refused(tmp_path, capsys, flags, message):
    """argparse kept the last: the first budget was dropped without a word."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"] + flags, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_resume_refuses_probe_results_it_could_not_rank_or_write_again(tmp_path, capsys):
    """An accuracy of 10**400 was an OverflowError in the ranking; NaN or Infinity was taken, then written as null,
    and the file written refused on the next resume. What the writer writes resumes: a diverged loss (null) too."""
    import copy

    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("attn_count: [0, 1]", "attn_count: [0, 0]"))  # one candidate
    out, flags = tmp_path / "o", ["--probe", "--steps", "1", "--objective", "params,loss", "--no-progress"]
    assert _run(["explore", str(space), "-o", str(out)] + flags, capsys)[0] == 0
    doc = json.loads((out / "results.json").read_text())
    for key, value in [("accuracy", 10**400), ("accuracy", float("nan")), ("accuracy", float("inf")),
                       ("accuracy", -0.5), ("accuracy", 1.5), ("accuracy", "0.5"), ("accuracy", True),
                       ("accuracy", None), ("final_loss", 10**400), ("final_loss", float("inf")),
                       ("final_loss", "1.0"), ("wall_time", float("nan")), ("wall_time", -1)]:
        bad = copy.deepcopy(doc)
        bad["candidates"][0]["probe"][key] = value
        text = json.dumps(bad)
        (out / "results.json").write_text(text)
        code, _, err = _run(["explore", str(space), "--resume", str(out)] + flags, capsys)
        assert code == 2 and "is not an exploration's results" in err and "candidate 0 is not" in err, (key, err)
        assert (out / "results.json").read_text() == text
    doc["candidates"][0]["probe"]["final_loss"] = None  # a diverged probe, as the writer writes it
    (out / "results.json").write_text(json.dumps(doc))
    for _ in range(2):  # the file it wrote resumes too
        code, _, err = _run(["explore", str(space), "--resume", str(out)] + flags, capsys)
        assert code == 0, err
    assert json.loads((out / "results.json").read_text())["candidates"][0]["probe"]["final_loss"] is None


def test_a_resume_counts_the_probe_results_it_holds(tmp_path, capsys, monkeypatch):
    """summary.probed said 0 while results.json held the earlier probe results, until a new one was done."""
    import archdsl.explore.train as train

    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out, flags = tmp_path / "o", ["--probe", "--steps", "1", "--no-progress"]
    real, seen = train.train_probe, []

    def first_only(*a, **k):
        if seen:
            raise KeyboardInterrupt
        seen.append(None)
        return real(*a, **k)

    monkeypatch.setattr(train, "train_probe", first_only)
    assert _run(["explore", str(space), "-o", str(out)] + flags, capsys)[0] == 130

    def watched(*a, **k):
        seen.append(json.loads((out / "results.json").read_text())["summary"]["probed"])
        return real(*a, **k)

    monkeypatch.setattr(train, "train_probe", watched)
    assert _run(["explore", str(space), "--resume", str(out)] + flags, capsys)[0] == 0
    assert seen == [None, 1]
    assert json.loads((out / "results.json").read_text())["summary"]["probed"] == 2


def test_an_every_offset_no_period_admits_is_refused_by_name(tmp_path, capsys):
    """`every: {periods: [4], offsets: [7]}` made no `every` candidate, in silence, and the error blamed attn_count."""
    space = tmp_path / "space.yaml"
    space.write_text(f"base: {json.dumps(BASE)}\nd_model: [32]\ndepth: [8]\nattn_count: [1, 2]\n"
                     "placements: [every]\nevery: {periods: [4], offsets: [mid, 7]}\n")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and "space.yaml:6:38: every offset 7 is at or past every period listed (4)" in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ArchDSLError, match=r"every offset 8 is at or past every period up to the depth \(8\)"):
        small_space({"placements": ("every",), "every_offsets": (8,), "d_model": (32,), "depth": (8,)})
    res = explore(small_space({"attn_count": (2, 2), "placements": ("every",), "every_periods": (2, 4),
                               "every_offsets": (3,), "d_model": (32,), "depth": (8,)}))  # admitted by 4, not 2
    assert [c.knobs["placement"] for c in res.candidates] == ["every 4 offset 3"]


@pytest.mark.parametrize("text, line, col, message", [
    ("attention: mamba2", 3, 12, "attention 'mamba2' is not an attention block (kind attn)"),
    ("mixers: [mamba2, mlp]", 3, 18, "'mlp' is a ffn block, not a mixer"),
    ("attention: mlp", 3, 12, "'mlp' is a ffn block, not a mixer"),
    ("moe: {every: [2], experts: [2], top_k: [4]}", 3, 40, "contradictory moe: every top_k [4] exceeds every expert"),
    ("attn_count: [0, 1]\nattn_fraction: [0, 0.5]", 4, 16, "give attn_count or attn_fraction, not both"),
])
def test_kind_and_moe_errors_point_into_the_space_file(tmp_path, capsys, text, line, col, message):
    """These were plain errors with no line and column, where their neighbours had them."""
    space = tmp_path / "space.yaml"
    space.write_text(f"base: {json.dumps(BASE)}\nd_model: [32]\n{text}\n")
    code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"space.yaml:{line}:{col}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@contextlib.contextmanager
def deadline(seconds: int):
    """TimeoutError where the block runs past `seconds`: a test of a loop that once never ended fails, not hangs."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("blocks, mixers, attention, col, message", [
    ("{attn: {heads: 2}}", "[attn]", "swa", 12, "unknown block kind 'swa'"),  # was KeyError: 'kind'
    ("{attn: {heads: 2}, swa: {kind: attn, window: 4}, a: {kind: b}, b: {kind: a}}", "[swa]", "a", 12,
     "block alias 'a' goes round in a circle: a → b → a"),  # was an endless loop in _definition
    ("{attn: {heads: 2}, swa: {kind: attn, window: 4}, a: {kind: 3}}", "[swa]", "a", 12,
     "block alias 'a': kind must be a block kind's name, got 3"),
])
def test_an_attention_block_that_does_not_resolve_is_keyed_beside_an_attention_mixer(tmp_path, capsys, blocks,
                                                                                      mixers, attention, col, message):
    """A mixer of kind attn is compared with the `attention` block, which was read before it had resolved: an undefined
    attention alias was a KeyError, a circle of aliases hung at 100% CPU. Each is the keyed error any other entry
    gets, at `attention:`."""
    from archdsl.spec import spec_from_yaml

    space = tmp_path / "space.yaml"
    space.write_text(f"base: {{vocab_size: 64, blocks: {blocks}}}\nmixers: {mixers}\nattention: {attention}\n"
                     "d_model: [16]\ndepth: [4]\n")
    with deadline(30):
        code, _, err = _run(["explore", str(space), "-o", str(tmp_path / "o"), "--no-progress"], capsys)
    with deadline(30), pytest.raises(ArchDSLError) as e:  # a Space built in Python alike
        Space(base=spec_from_yaml(f"layout: mamba2\nvocab_size: 64\nblocks: {blocks}"),
              mixers=(mixers.strip("[]"),), attention=attention)
    assert message in e.value.message, e.value.message
    assert code == 2 and f"space.yaml:3:{col}: {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_block_definition_never_walks_a_name_that_does_not_resolve():
    """_definition (an alias's arguments down to its kind) is called with names nothing had checked: a missing kind
    was a KeyError, a circle an endless walk. Each is resolve_kind's ArchDSLError now; a name that resolves walks."""
    from archdsl.explore.space import _definition
    from archdsl.spec import spec_from_yaml

    base = spec_from_yaml("layout: mamba2\nblocks: {attn: {heads: 2}, swa: {kind: attn, window: 4}, "
                          "local: {kind: swa, heads: 4}, a: {kind: b}, b: {kind: a}, c: {kind: 3}, d: {window: 2}}")
    assert _definition(base, "local") == ("attn", {"heads": 4, "window": 4})
    for name, message in (("a", "block alias 'a' goes round in a circle"), ("c", "kind must be a block kind's name"),
                          ("d", "unknown block kind 'd'"), ("nope", "unknown block kind 'nope'"),
                          (["attn"], "a block kind must be a name")):
        with deadline(30), pytest.raises(ArchDSLError) as e:
            _definition(base, name)
        assert message in str(e.value), (name, str(e.value))


@pytest.mark.parametrize("power_a", [5e-324, 1e-300, 0.01, 1, 151.0, 300, 1e6, 2**31 - 1, 1e300, sys.float_info.max])
def test_mqar_draws_its_gaps_at_any_positive_power_a(power_a):
    """x^(power_a - 1) overflowed float64 past power_a ≈ 150 (213 at seq_len 64): NaN probabilities, and
    torch.multinomial's RuntimeError mid-run, after make_task had taken the value. The weights are drawn in log space
    now: a batch at every positive finite power_a, every query a key of its sequence, answered by its value; the
    largest put every query at the longest gaps, the last positions."""
    task = make_task("mqar", power_a=power_a, seq_len=64, vocab_size=128, num_kv_pairs=4)
    x, y = task.batch(16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 64)
    scored = y != -100
    assert (scored.sum(1) == 4).all()
    for row in range(16):
        kv = dict(zip(x[row, :8:2].tolist(), x[row, 1:8:2].tolist()))
        queries = x[row][scored[row]].tolist()
        assert [kv[q] for q in queries] == y[row][scored[row]].tolist()
    if power_a >= 300:
        assert scored[:, -8::2].all()


def test_mqar_gaps_in_log_space_are_the_gaps_torch_multinomial_drew():
    """The draws of the log-space gaps are those of torch.multinomial over the weights, from the same generator, so
    that a seed makes the data it made before (results and --resume agree across the change)."""
    from archdsl.explore.probes import MQAR

    for power_a in (0.01, 1.0, 3.0):
        task = MQAR(power_a=power_a, seq_len=64, vocab_size=128, num_kv_pairs=4)
        space = (64 - 8) // 2
        mine, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
        expected = torch.multinomial((p / p.sum()).expand(32, space), 4, replacement=False, generator=theirs)
        assert torch.equal(task._gaps(32, space, 4, mine), expected)
        assert torch.equal(torch.rand(4, generator=mine), torch.rand(4, generator=theirs))  # as many draws taken


def test_each_probe_dtype_is_the_one_asked_for_or_refused():
    """float16 trained pure float16 weights on the CPU (AdamW's eps is 0 in float16: NaN at the first step, every
    probe 'diverged') and float32 ones on any other device, as float64 did; results.json kept the name as if used.
    float16 is refused by name now; float64 and bfloat16 weights are what is asked for on a device that does not
    autocast (the meta device takes the non-CPU branch as CUDA did), bfloat16 on CUDA autocasts over float32
    weights; the names resolve to one each."""
    from archdsl.explore.train import TrainConfig, autocasts, build_model

    for name in ("float16", "fp16", "half", torch.float16):
        with pytest.raises(ArchDSLError, match="pure float16 weights do not train: AdamW's eps .* give bfloat16"):
            TrainConfig(dtype=name)
    task = make_task("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)
    for device in ("cpu", "meta"):
        for name, dtype in (("float64", torch.float64), ("double", torch.float64), ("bf16", torch.bfloat16),
                            ("float32", torch.float32)):
            model = build_model("mamba2, attn", task, TrainConfig(dtype=name), torch.device(device))
            assert {p.dtype for p in model.parameters()} == {dtype}, (device, name)
    assert TrainConfig(dtype="bf16").dtype == TrainConfig(dtype=torch.bfloat16).dtype == "bfloat16"
    assert autocasts(TrainConfig(dtype="bfloat16"), torch.device("cuda"))
    assert not any(autocasts(TrainConfig(dtype=d), torch.device(dev)) for d, dev in
                   (("bfloat16", "cpu"), ("float64", "cuda"), ("float32", "cuda")))


def test_results_record_the_dtype_each_probe_ran_in(tmp_path, capsys):
    """results.json kept `dtype: float16` for what ran in float32 (on CUDA); now the config holds the dtype by its one
    name and each probe result the dtype its arithmetic ran in, and its weights'."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY.replace("attn_count: [0, 1]", "attn_count: [0, 0]")
                     .replace("train: {", "train: {dtype: double, "))
    code, _, err = _run(["explore", str(space), "--probe", "--steps", "2", "-o", str(tmp_path / "o"), "--no-progress"],
                        capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["config"]["probe"]["train"]["dtype"] == "float64"
    (c,) = doc["candidates"]
    assert (c["probe"]["dtype"], c["probe"]["weights_dtype"]) == ("float64", "float64")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_probe_dtype_runs_as_said_on_cuda():
    """On CUDA float64 was float32 in silence; it is float64 now (the scans take their float64-exact torch path), and
    bfloat16 autocasts over float32 weights."""
    from archdsl.explore.train import TrainConfig, train_probe

    task = make_task("mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)
    for name, ran in (("float64", ("float64", "float64")), ("bfloat16", ("bfloat16", "float32")),
                      ("float32", ("float32", "float32"))):
        r = train_probe("mamba2, attn", task, TrainConfig(steps=3, batch_size=4, eval_size=8, dtype=name,
                                                          device="cuda"))
        assert (r.dtype, r.weights_dtype) == ran and r.device.startswith("cuda") and r.steps == 3, (name, r)


def test_run_refuses_an_outdir_that_holds_files_unless_it_resumes(tmp_path):
    """The refusal was the command line's alone: run() wrote a second exploration into the first's directory, whose
    spec files (and plots) stayed beside its own. Now run() refuses it, before anything is written, as the CLI did."""
    from archdsl.explore.runner import run

    out, quiet = tmp_path / "o", dict(progress=False, log=lambda *a: None)
    run(small_space({"attn_count": (0, 2), "d_model": (16,), "depth": (4,)}), [], ("params",), str(out), **quiet)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    small = small_space({"attn_count": (0, 0), "d_model": (16,), "depth": (2,)})
    with pytest.raises(ArchDSLError) as e:
        run(small, [], ("params",), str(out), **quiet)
    assert f"-o {out}: the directory holds an earlier exploration (results.json)" in str(e.value)
    assert f"pass --resume {out} to continue it" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ArchDSLError, match="the directory already holds files, and no exploration"):
        run(small, [], ("params",), str(tmp_path / "mine"), **quiet)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    run(small, [], ("params",), str(tmp_path / "empty"), **quiet)  # new or empty: taken
    run(small, [], ("params",), str(tmp_path / "empty"), resume=True, **quiet)  # and resumed


def test_resume_compares_the_probe_settings_as_they_resolve(tmp_path, capsys):
    """--resume compared the probe's settings as they were typed: `--lr 1e-3 --device auto` (the defaults) or a task
    argument at its default was refused ('probe differs'), while `auto` on a laptop and on a GPU box compared equal,
    mixing CPU and CUDA results. The settings compare as they resolve now, the device as its type, each difference
    named."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "o"
    flags = ["--probe", "--steps", "2", "--no-progress"]
    assert _run(["explore", str(space), "-o", str(out)] + flags, capsys)[0] == 0
    for extra in (["--lr", "1e-3", "--device", "auto"], ["--device", "cpu", "--probe-arg", "power_a=0.01"],
                  ["--batch-size", "8", "--probe-arg", "random_non_queries=true"]):
        code, _, err = _run(["explore", str(space), "--resume", str(out)] + flags + extra, capsys)
        assert code == 0, (extra, err)
    for extra, named in ((["--lr", "2e-3"], "probe.train.lr 0.002 (the run's: 0.001)"),
                         (["--probe-arg", "power_a=0.5"], "probe.task_args.power_a 0.5 (the run's: 0.01)"),
                         (["--steps", "3"], "probe.train.steps 3 (the run's: 2)")):
        code, _, err = _run(["explore", str(space), "--resume", str(out)] + flags + extra, capsys)
        assert code == 2 and "was made with other settings: " + named in err, (extra, err)
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["probe"]["train"]["device"] == "cpu"  # `auto`, as it resolved here
    doc["config"]["probe"]["train"]["device"] = "cuda"  # as if made on a GPU box
    (out / "results.json").write_text(json.dumps(doc))
    code, _, err = _run(["explore", str(space), "--resume", str(out)] + flags, capsys)
    assert code == 2 and "other settings: probe.train.device 'cpu' (the run's: 'cuda')" in err, err


def test_resume_compares_the_dtype_by_what_it_names(tmp_path, capsys):
    """--dtype bf16 was stored as typed, and a resume without it (bfloat16, the default) or with `--dtype bfloat16`
    was refused: the dtype is stored and compared by its name now, a results.json that holds `bf16` too."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    out = tmp_path / "o"
    assert _run(["explore", str(space), "-o", str(out), "--dtype", "bf16", "--no-progress"], capsys)[0] == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["dtype"] == "bfloat16"
    for extra in ([], ["--dtype", "BF16"]):
        assert _run(["explore", str(space), "--resume", str(out), "--no-progress"] + extra, capsys)[0] == 0
    doc["config"]["dtype"] = "bf16"  # as the runs before wrote it
    (out / "results.json").write_text(json.dumps(doc))
    assert _run(["explore", str(space), "--resume", str(out), "--no-progress"], capsys)[0] == 0
    code, _, err = _run(["explore", str(space), "--resume", str(out), "--dtype", "fp32", "--no-progress"], capsys)
    assert code == 2 and "other settings: dtype 'float32' (the run's: 'bfloat16')" in err, err


def test_a_two_sided_constraint_reports_the_value_closest_to_its_interval():
    """A constraint with a max kept the smallest value seen as its 'best seen', even where the min was what every
    candidate broke: min=1M, max=2M said 'best seen: 4.24K' (the smallest) where the largest, 5.35K, came closest, as
    the same bounds given as two constraints said."""
    from archdsl.units import human

    space = small_space({"attn_count": (0, 2), "d_model": (16,), "depth": (2, 4)})
    params = sorted(c.figures["params"] for c in explore(space).candidates)
    for bounds, best in (({"min": 1e6, "max": 2e6}, params[-1]), ({"min": 1, "max": params[0] / 2}, params[0])):
        with pytest.raises(ArchDSLError) as e:
            explore(space, [search.Constraint("params", **bounds)])
        assert f"(best seen: {human(best)})" in str(e.value), str(e.value)
    with pytest.raises(ArchDSLError) as e:
        explore(space, ["params>=1M", "params<=2M"])
    assert f"params ≥ 1.00M: removed {len(params)}, violated by {len(params)} (best seen: {human(params[-1])})" \
        in str(e.value)
    c = search.Constraint("params", min=10, max=20)
    assert [c.miss(v) for v in (4, 10, 12, 15, 20, 26)] == [6, 0, -2, -5, 0, 6]
    assert search.Constraint("params", max=20).miss(5) == -15 and search.Constraint("params", min=20).miss(5) == 15


def test_one_model_under_two_names_is_enumerated_once():
    """A mixer and its alias with no arguments of its own, and MoE's hidden 0 beside the value 0 resolves to, gave
    each model twice (the front inflated, probes spent twice): the second frame is left out now."""
    base = {"vocab_size": 256, "blocks": {"m2": {"kind": "mamba2"}, "mamba2": {"d_state": 16, "headdim": 16},
                                          "attn": {"heads": 2}}}
    alias = explore(space_from_dict({"base": base, "mixers": ["mamba2", "m2"], "attn_count": [0, 1],
                                     "d_model": [32], "depth": [4]}))
    assert alias.enumerated == 2 and {c.layout for c in alias.candidates} == {"4×mamba2", "2×mamba2, attn, mamba2"}
    moe = explore(space_from_dict({"base": base, "mixers": ["mamba2"], "attn_count": 0,
                                   "moe": {"every": [2], "experts": [4], "top_k": [2], "hidden": [0, 128, 64]},
                                   "d_model": [32], "depth": [4]}))
    assert [c.layout for c in moe.candidates] == ["4×mamba2, moe(experts=4, top_k=2, hidden=64) every 2",
                                                  "4×mamba2, moe(experts=4, top_k=2) every 2"]
