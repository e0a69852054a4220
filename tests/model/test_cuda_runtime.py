"""The runtime's CUDA-only choices, on a card: float64 scans routed to torch (float64-exact), a chunk after a cache
that holds tokens (attention's one call, zamba's static chunk) under inference_mode and outside it, an eager KV cache
that grows as an eos-stopped generate goes, one CUDA graph replayed under inference_mode and outside it, and
the sigmoid router's float32 logits in a bf16 model and under CUDA autocast. Each is held to the CPU's float64 answer
of the same weights, or to its eager twin on the card. And generate's CUDA graph by default: one for nearby lengths,
eager steps with a warning where a step cannot be captured."""
from __future__ import annotations

import pytest
import torch

import archdsl
from archdsl.errors import ArchDSLWarning
from test_inference_mode import LAYOUTS, SMALL, run
from test_moe import sigmoid_routes

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _pair(layout, dtype=torch.float32):
    """The CPU float64 model of `layout` and the same weights on the card in `dtype`, generating eagerly (the tests
    switch its CUDA graph on)."""
    spec = archdsl.parse(layout, d_model=16, vocab_size=37, blocks=SMALL)
    cpu = archdsl.compile(spec, dtype=torch.float64, seed=0)
    gpu = archdsl.compile(spec, dtype=torch.float64, seed=0).to("cuda", dtype)
    gpu.cuda_graph = False
    return cpu, gpu


def test_gpu_a_float64_model_is_exact_on_cuda():
    """A float64 hybrid of every scan on CUDA, ARCHDSL_KERNELS unset: its scans take the torch path (the Triton ones
    compute in float32), so forward and decode equal the CPU's float64 to rounding."""
    spec = archdsl.parse("mamba(d_state=4), mamba2(d_state=8, headdim=16), rwkv6(head_size=16, mix_lora=4, "
                         "decay_lora=4), rwkv4", d_model=32, vocab_size=64)
    cpu = archdsl.compile(spec, dtype=torch.float64, seed=0)
    gpu = archdsl.compile(spec, dtype=torch.float64, seed=0, device="cuda")
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = cpu(ids)
        got = gpu(ids.cuda())
        cache = gpu.init_cache(batch=2)
        steps = torch.stack([gpu.step(ids[:, t].cuda(), cache) for t in range(ids.shape[1])], 1)
    assert got.dtype == torch.float64
    scale = want.abs().max()
    assert (got.cpu() - want).abs().max() / scale < 1e-12
    assert (steps.cpu() - want).abs().max() / scale < 1e-12


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_a_chunk_after_the_cache_across_inference_mode(layout, static):
    """Prefill, a step, a chunk over the cache, two steps, the calls switching between inference_mode and no_grad,
    on the card in float32: the CPU's float64 logits of the same calls, the cache left with no inference tensors."""
    cpu, gpu = _pair(layout)
    ids = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(0))
    want = run(cpu, ids, cpu.init_cache(2, max_len=10 if static else None, static=static), [torch.no_grad] * 5)
    inf, ng = torch.inference_mode, torch.no_grad
    with inf():
        cache = gpu.init_cache(2, max_len=10 if static else None, static=static)
    got = run(gpu, ids.cuda(), cache, [inf, ng, inf, ng, ng])
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)
    assert not any(t.is_inference() for t in cache.tensors())


@pytest.mark.parametrize("layout", ["attn+mlp, mamba2", "swa, mamba", "mamba2, attn, zamba(shared) at 0 1"])
def test_gpu_generate_with_an_eos_grows_its_cache_as_the_static_one_decodes(layout):
    """Greedy generate on the card: with an eos the eager KV buffers grow as the tokens come; its tokens are those of
    the whole-cache decode (no eos) up to the first eos, then the pad, and the CUDA graph's the same."""
    _, gpu = _pair(layout)
    ids = torch.randint(0, 37, (3, 7), generator=torch.Generator().manual_seed(1)).cuda()
    full = gpu.generate(ids, 60)
    new = full[0, 7:].tolist()
    eos = max(set(new), key=new.index)  # the token row 0 meets last: late, after the buffers have doubled
    grown = gpu.generate(ids, 60, eos_token_id=eos, pad_token_id=0)
    for b in range(3):
        row, new = grown[b], full[b, 7:grown.shape[1]]
        hit = (new == eos).nonzero()
        end = 7 + int(hit[0]) + 1 if len(hit) else grown.shape[1]
        assert torch.equal(row[:end], full[b, :end])
        assert bool((row[end:] == 0).all())
    gpu.cuda_graph = True
    try:
        assert torch.equal(gpu.generate(ids, 60, eos_token_id=eos, pad_token_id=0), grown)
    finally:
        gpu.cuda_graph = False


def test_gpu_a_graph_captured_under_inference_mode_replays_outside_it():
    """generate with the CUDA graph under inference_mode, then outside it, then under it again: each gives the eager
    decode's tokens, from the one graph (captured outside the mode, its buffers normal tensors that both write in
    place; it was captured again at each switch)."""
    _, gpu = _pair("mamba2, attn+mlp, rwkv6+cmix")
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2)).cuda()
    want = gpu.generate(ids, 12)
    gpu.cuda_graph = True
    runners = []
    try:
        for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode, torch.enable_grad):
            with mode():
                assert torch.equal(gpu.generate(ids, 12), want)
            runners += list(gpu._graphs.values())
        assert len(runners) == 4 and all(r is runners[0] for r in runners)
        assert not any(t.is_inference() for t in runners[0].cache.tensors())
    finally:
        gpu.cuda_graph = False


def test_gpu_sigmoid_router_logits_are_float32_in_bf16_and_under_autocast():
    """On the card: a bf16 sigmoid MoE routes as the float32 product of its bf16 weights, and a float32 one under
    CUDA bf16 autocast as without it."""
    x = torch.randn(4096, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    want, under, got, _, ref_idx = sigmoid_routes(x)
    assert torch.equal(under[2], want[2])
    torch.testing.assert_close(under[0], want[0], rtol=1e-6, atol=1e-7)  # cuBLAS may order its float32 sums apart
    assert got[0].dtype == torch.float32
    same = (got[2] == ref_idx).all(-1).float().mean()
    assert same > 0.999  # float32 cuBLAS vs the reference's: near-ties may break either way


@pytest.mark.parametrize("graph", [False, True])
def test_gpu_sampling_checks_its_logits_without_a_wait_each_token(graph, monkeypatch):
    """Sampling generate on the card reads its finite check every CHECK_EVERY steps: the same tokens as the check
    of every step, and NaN weights still an ArchDSLError naming step 0, with the process's CUDA context alive (NaN
    reaching multinomial is a device-side assert)."""
    from archdsl.model import decoding

    _, gpu = _pair("mamba2, attn+mlp")
    gpu.cuda_graph = graph
    ids = torch.randint(0, 37, (3, 5), generator=torch.Generator().manual_seed(4)).cuda()
    want = gpu.generate(ids, 70, temperature=0.9, top_p=0.9, seed=1)
    with monkeypatch.context() as m:
        m.setattr(decoding, "defers", lambda *a: False)
        assert torch.equal(gpu.generate(ids, 70, temperature=0.9, top_p=0.9, seed=1), want)
    with torch.no_grad():
        gpu.lm_head.weight[5, 0] = float("nan")
    for n in (3, 40):
        with pytest.raises(archdsl.ArchDSLError, match=r"^generate: step 0 \(new token 1\): the logits of row 0 "
                                                        r"hold NaN"):
            gpu.generate(ids, n, temperature=1.0, seed=0)
    torch.cuda.synchronize()
    assert float(torch.ones(2, device="cuda").sum()) == 2.0


def test_gpu_generate_replays_a_graph_by_default_one_for_nearby_lengths():
    """compile's default (cuda_graph None) on a card: generate replays its steps from a CUDA graph, the eager steps'
    tokens; lengths within one rounded cache length replay one graph, a longer one captures another."""
    spec = archdsl.parse("mamba2, attn+mlp, swa", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, device="cuda", seed=0)
    eager = archdsl.compile(spec, device="cuda", seed=0, cuda_graph=False)
    assert model.cuda_graph is None
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(5)).cuda()
    runners = []
    for new in (255, 295, 315, 395):  # 260, 300 and 320 positions: 320 (5 × 64); 400: 448
        assert torch.equal(model.generate(ids, new), eager.generate(ids, new))
        runners += list(model._graphs.values())
    assert not eager._graphs and len(runners) == 4
    assert runners[0] is runners[1] is runners[2] and runners[0].cache.max_len == 320
    assert runners[3] is not runners[0] and runners[3].cache.max_len == 448
    assert torch.equal(model.generate(ids, 7), eager.generate(ids, 7))  # fewer than 8: eager, no capture for 12
    assert list(model._graphs.values()) == [runners[3]]


def test_gpu_a_step_that_cannot_be_captured_decodes_eagerly_under_the_default():
    """A decode step that waits for the device (an .item() in a wrapped module, say) cannot be captured: under
    cuda_graph True generate raises, and bench names it; under the default generate warns once and decodes eagerly,
    the eager tokens, from then on. The card is left able to capture: another model's graph then replays its
    tokens."""
    import warnings

    _, gpu = _pair("mamba2, attn+mlp")
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(6)).cuda()
    want = gpu.generate(ids, 12)
    step = gpu._step

    def waits(tokens, cache):
        float(tokens.sum())  # a copy to the host: no capture takes it
        return step(tokens, cache)

    gpu._step = waits
    gpu.cuda_graph = True
    with pytest.raises(RuntimeError):
        gpu.generate(ids, 12)
    from archdsl.bench import bench

    with pytest.raises(archdsl.ArchDSLError, match="^bench: the decode step could not be captured in a CUDA graph"):
        bench(gpu, batch=2, seq_len=5, gen=4, cases=["decode"], cuda_graph=True)
    with pytest.warns(ArchDSLWarning, match="^bench: the decode step could not be captured.*the eager steps are timed"):
        assert not bench(gpu, batch=2, seq_len=5, gen=4, cases=["decode"], cuda_graph=None)[0].cuda_graph
    gpu.cuda_graph = None
    with pytest.warns(ArchDSLWarning, match="could not be captured in a CUDA graph"):
        assert torch.equal(gpu.generate(ids, 12), want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(gpu.generate(ids, 12), want)  # eager again, without a second warning
    assert not gpu._graphs
    _, other = _pair("mamba2, attn+mlp")
    other.cuda_graph = None
    assert torch.equal(other.generate(ids, 12), want) and len(other._graphs) == 1


def test_gpu_threads_generating_on_one_model_each_get_its_tokens():
    """Four threads generate on one model at once under the default: one replays the graph (a lock), the others
    step eagerly meanwhile, and a capture does not refuse their CUDA calls (thread_local); every thread gets the
    eager tokens."""
    import threading

    _, gpu = _pair("mamba2, attn+mlp")
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(7)).cuda()
    want = gpu.generate(ids, 40)
    gpu.cuda_graph = None
    got, errors = [None] * 4, []

    def work(i):
        try:
            got[i] = gpu.generate(ids, 40)
        except Exception as e:  # noqa: BLE001 - reported below, whatever it is
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(torch.equal(g, want) for g in got)
    assert torch.equal(gpu.generate(ids, 40), want) and gpu._graphs
