"""archdsl.bench: the rows it times and the work it counts (the times themselves are not asserted)."""
import pytest
import torch

import archdsl
from archdsl import ArchDSLError
from archdsl.bench import bench, format_rows

SPEC = archdsl.parse("mamba2(d_state=8, headdim=8), attn(heads=2)+mlp", d_model=16, vocab_size=37)


def test_rows_count_the_analyzers_work():
    model = archdsl.compile(SPEC)
    rows = bench(model, batch=2, seq_len=12, gen=3)
    assert [r.case for r in rows] == ["forward", "train", "decode"]
    rep = archdsl.analyze(SPEC, seq_len=12, batch=2, dtype="float32")
    fwd, train, decode = rows
    assert (fwd.tokens, train.tokens, decode.tokens) == (24, 24, 2)
    assert fwd.flops == rep.flops_per_token * 24 and train.flops == 3 * fwd.flops
    assert decode.bytes == rep.active_params * 4 + rep.cache_bytes  # tied embeddings: the table is the head
    for r in rows:
        assert r.ms > 0 and r.tokens_per_s == pytest.approx(r.tokens / (r.ms * 1e-3))
    assert [c[0] for c in format_rows(rows)] == ["forward", "train", "decode"]
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_archdsl_errors():
    model = archdsl.compile(SPEC)
    for kwargs, what in [({"batch": 0}, "batch"), ({"seq_len": 2.5}, "seq_len"), ({"gen": True}, "gen"),
                         ({"cases": ("forwrad",)}, "unknown case 'forwrad'")]:
        with pytest.raises(ArchDSLError, match=what):
            bench(model, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(ArchDSLError, match="cuda_graph needs a CUDA model"):
            bench(model, cuda_graph=True)


@pytest.mark.parametrize("call, match", [
    (lambda m: bench(SPEC), "bench: model must be an ArchModel, got Spec"),
    (lambda m: bench("mamba"), "bench: model must be an ArchModel, got str"),
    (lambda m: bench(m, cases=None), "bench: cases must be one or more of forward, train, decode, got None"),
    (lambda m: bench(m, cases=()), "bench: cases must be one or more of forward, train, decode, got ()"),
    (lambda m: bench(m, cases=[1]), r"bench: cases must be one or more of forward, train, decode, got \(1,\)"),
    (lambda m: bench(m, seed=2**64), "bench: seed 18446744073709551616 is outside"),
    (lambda m: bench(m, seed="0"), "bench: seed must be an int, got '0'"),
    (lambda m: bench(archdsl.compile(SPEC, device="meta")), "bench: the model is on the meta device"),
    (lambda m: bench(m.requires_grad_(False), cases="train"), "bench: the train case needs parameters that take"),
    # a next-token loss over no target: NaN, zero gradients, and the row reported as a training step
    (lambda m: bench(m, seq_len=1, cases="train"), r"bench: the train case needs seq_len >= 2 \(a next-token loss"),
    (lambda m: bench(m, cuda_graph="yes"), "bench: cuda_graph must be True, False or None, got 'yes'"),
])
def test_bad_python_arguments_are_named(call, match):
    """Each was a raw TypeError, a bincount on meta or a backward without a graph; a str of cases was read as
    its letters."""
    with pytest.raises(ArchDSLError, match=match):
        call(archdsl.compile(SPEC))


def test_one_case_may_be_named_by_a_string():
    assert [r.case for r in bench(archdsl.compile(SPEC), batch=1, seq_len=4, cases="forward")] == ["forward"]


def test_one_token_times_forward_and_decode_and_the_cpu_steps_eagerly():
    """seq_len 1 is a forward and a decode prompt (only the train case needs two tokens); cuda_graph None on the
    CPU steps eagerly, and the decode row says so."""
    rows = bench(archdsl.compile(SPEC), batch=1, seq_len=1, gen=2, cases=("forward", "decode"), cuda_graph=None)
    assert [(r.case, r.cuda_graph) for r in rows] == [("forward", False), ("decode", False)]



def test_bench_leaves_the_model_as_it_found_it():
    """The caller's gradients (zero_grad wiped them), MoE's balancing loads (bench's random tokens were added to
    them, for the next balance() to act on), the aux losses and each module's mode (a submodule in eval inside a
    model in train) come back as they were."""
    spec = archdsl.parse("mamba2(d_state=8, headdim=8)+moe", d_model=16, vocab_size=37,
                         blocks={"moe": {"experts": 4, "router": "sigmoid", "score_bias": True,
                                         "balance_rate": 0.001}})
    model = archdsl.compile(spec, seed=0).train()
    model(torch.randint(0, 37, (1, 8), generator=torch.Generator().manual_seed(0))).sum().backward()
    model.layers[0].mixer.eval()
    moe = model.layers[0].ffn
    grads = {n: p.grad for n, p in model.named_parameters()}
    values = {n: g.clone() for n, g in grads.items() if g is not None}
    load, aux, model_aux = moe.load.clone(), moe.aux_loss, model.aux_loss
    modes = [m.training for m in model.modules()]
    assert values and load is not None
    bench(model, batch=1, seq_len=8, gen=2)
    assert all(p.grad is grads[n] for n, p in model.named_parameters())
    assert all(torch.equal(grads[n], v) for n, v in values.items())
    assert torch.equal(moe.load, load) and moe.aux_loss is aux and model.aux_loss is model_aux
    assert [m.training for m in model.modules()] == modes

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bench_with_and_without_the_cuda_graph():
    model = archdsl.compile(SPEC, device="cuda", dtype=torch.bfloat16, cuda_graph=True)
    for graph in (False, True):
        rows = bench(model, batch=2, seq_len=64, gen=4, cuda_graph=graph)
        assert [r.case for r in rows] == ["forward", "train", "decode"] and all(r.ms > 0 for r in rows)
