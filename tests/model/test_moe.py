"""MoE: routing as Jamba (softmax, top-k weights not renormalised), the balancing loss, the
gathered decode form, shared experts, parameter counts."""
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from archdsl.model.modules import moe
from blockcheck import build, check_block


@pytest.mark.parametrize("args", [
    {"experts": 4, "top_k": 2, "hidden": 12},
    {"experts": 3, "top_k": 1, "hidden": 8, "act": "relu2", "bias": True},
    {"experts": 4, "top_k": 2, "hidden": 8, "shared_hidden": 10, "router": "sigmoid", "router_bias": True},
])
def test_moe(args):
    m = build("moe", args)
    check_block(m, length=6, split=2, batch=3)
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_matches_dense_reference_and_gathered():
    m = build("moe", {"experts": 4, "top_k": 2, "hidden": 12})
    x = torch.randn(10, 16, dtype=torch.float64)
    with torch.no_grad():
        probs = F.softmax(m.router(x), -1)
        w, idx = probs.topk(2, -1)
        ref = torch.zeros_like(x)
        for t in range(10):
            for j in range(2):
                ref[t] += w[t, j] * m.experts.expert(idx[t, j].item(), x[t:t + 1])[0]
        assert torch.allclose(m(x[None])[0], ref)
        assert torch.allclose(m.experts.gathered(x, idx, w), ref)


def sigmoid_routes(x):
    """A float32 sigmoid MoE (64 experts, top 6, d_model 256) on x's device routing x [T, 256]: (its routes, its routes
    under bf16 autocast, the routes of the model cast to bf16 on x in bf16, that cast's float32 reference scores
    [T, 64] and top-6 ids)."""
    m = build("moe", {"experts": 64, "top_k": 6, "hidden": 8, "router": "sigmoid", "score_bias": True},
              d_model=256).to(x.device)
    with torch.no_grad():
        m.router.e_score_correction_bias.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)) * 0.01)
        want = m.route(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            under = m.route(x)
        half = m.to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        got = half.route(xb)
        ref = F.linear(xb.float(), half.router.weight.float()).sigmoid()
        _, ref_idx = (ref + half.router.e_score_correction_bias).topk(6, dim=-1)
    return want, under, got, ref, ref_idx


def test_sigmoid_router_logits_are_float32_in_a_bf16_model_and_under_autocast():
    """DeepSeek-V3's and NemotronH's routers compute their logits in float32 (in bf16 they round enough to change ~1%
    of tokens' experts): a bf16 sigmoid MoE routes as the float32 product of its bf16 weights, and a float32 one under
    bf16 autocast as without it; the softmax router keeps x's dtype (Mixtral's, Jamba's)."""
    want, under, got, ref, ref_idx = sigmoid_routes(torch.randn(512, 256, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(under[2], want[2]) and torch.equal(under[0], want[0])
    assert torch.equal(got[2], ref_idx) and got[0].dtype == torch.float32
    assert torch.equal(got[0], ref / ref.sum(-1, keepdim=True))
    soft = build("moe", {"experts": 4, "top_k": 2, "hidden": 8}).to(torch.bfloat16)
    assert soft.router(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_sigmoid_router_bias_counts_in_a_bf16_model_and_under_autocast():
    """The sigmoid router's own bias (router_bias) takes part in its float32 logits in a bf16 model and under bf16
    autocast, as in float32: it changes the experts chosen, and every parameter, the bias too, gets a gradient."""
    args = {"experts": 8, "top_k": 2, "hidden": 8, "router": "sigmoid", "router_bias": True}
    m = build("moe", args).float()
    with torch.no_grad():
        m.router.bias.copy_(torch.randn(8, generator=torch.Generator().manual_seed(1)) * 2)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    W, b = m.router.weight, m.router.bias
    with torch.no_grad():
        want = m.route(x)
        ref = F.linear(x, W, b).sigmoid()
        assert torch.allclose(want[0], ref / ref.sum(-1, keepdim=True))
        assert not torch.equal(want[2], F.linear(x, W).sigmoid().topk(2, -1).indices)  # the bias matters here
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = m.route(x)
        half = build("moe", args).to(torch.bfloat16)
        half.load_state_dict(m.state_dict())
        xb = x.to(torch.bfloat16)
        got = half.route(xb)
        ref = F.linear(xb.float(), half.router.weight.float(), half.router.bias.float()).sigmoid()
    torch.testing.assert_close(under[0], want[0])
    assert torch.equal(under[2], want[2])
    torch.testing.assert_close(got[0], ref / ref.sum(-1, keepdim=True))
    assert torch.equal(got[2], ref.topk(2, -1).indices)
    for model, inp, ac in ((half, xb, False), (m, x, True)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            out = model(inp[None])
            loss = (out.float() ** 2).sum() + model.aux_loss
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.any(), (name, ac)


@pytest.mark.parametrize("router, norm_topk, scale", [("softmax", True, 1.0), ("softmax", None, 2.5),
                                                      ("sigmoid", False, 1.0), ("sigmoid", None, 2.5)])
def test_norm_topk_and_routed_scale_as_transformers(router, norm_topk, scale):
    """Mixtral / Qwen-MoE (softmax, norm_topk_prob), DeepSeek-V3 / NemotronH (sigmoid, routed_scaling_factor):
    weights = top-k scores, divided by their sum if renormalised, times the scale; the shared expert unscaled."""
    args = {"experts": 5, "top_k": 2, "hidden": 12, "router": router, "routed_scale": scale, "shared_hidden": 6}
    if norm_topk is not None:
        args["norm_topk"] = norm_topk
    m = build("moe", args)
    x = torch.randn(7, 16, dtype=torch.float64)
    with torch.no_grad():
        logits = m.router(x)
        scores = F.softmax(logits, -1) if router == "softmax" else torch.sigmoid(logits)
        w, idx = scores.topk(2, -1)
        if norm_topk or (norm_topk is None and router == "sigmoid"):
            w = w / w.sum(-1, keepdim=True)
        w = w * scale
        ref = m.shared_expert(x).clone()
        for t in range(7):
            for j in range(2):
                ref[t] += w[t, j] * m.experts.expert(idx[t, j].item(), x[t:t + 1])[0]
        assert torch.allclose(m(x[None])[0], ref)
        assert torch.allclose(m.step(x), ref)


def test_balance_moves_the_score_bias_toward_even_loads():
    """DeepSeek-V3's balancing without a loss: after a training step an expert chosen more than the mean loses
    balance_rate of score bias, one chosen less gains it; passes without grad or in eval count no load."""
    m = build("moe", {"experts": 4, "top_k": 1, "hidden": 8, "router": "sigmoid", "score_bias": True,
                      "balance_rate": 0.25})
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.e_score_correction_bias.copy_(torch.tensor([0.3, 0.2, 0.0, 0.0]))  # all 6 tokens to expert 0
    x = torch.randn(1, 6, 16, dtype=m.router.weight.dtype)
    m.eval()
    m(x)
    m.train()
    with torch.no_grad():
        m(x)
    m.balance()
    bias = lambda: m.router.e_score_correction_bias.float()  # noqa: E731
    assert torch.equal(bias(), torch.tensor([0.3, 0.2, 0.0, 0.0]))  # nothing counted
    m(x)
    m.balance()  # loads [1, 0, 0, 0], mean 1/4
    assert torch.allclose(bias(), torch.tensor([0.05, 0.45, 0.25, 0.25]))
    m(x)
    m(x)
    m.balance()  # expert 1 now takes all: loads summed over both passes
    assert torch.allclose(bias(), torch.tensor([0.3, 0.2, 0.5, 0.5]))
    assert m.load is None


def test_bad_routing_options_are_named():
    from archdsl.blocks import ConfigError, make_config

    with pytest.raises(ConfigError, match="routed_scale must be > 0"):
        make_config("moe", {"routed_scale": 0}, 16)
    with pytest.raises(ConfigError, match="balance_rate moves the score bias: it needs score_bias"):
        make_config("moe", {"balance_rate": 0.001}, 16)
    with pytest.raises(ConfigError, match="balance_rate must be >= 0"):
        make_config("moe", {"balance_rate": -1.0, "router": "sigmoid", "score_bias": True}, 16)
    with pytest.raises(ConfigError, match="norm_topk must be bool or none"):
        make_config("moe", {"norm_topk": 1}, 16)


def _float_moe(E, k, hidden, extra, seed):
    """A float32 MoE of E experts (top min(k, E)), its biases (if any) random, and the generator that drew them."""
    m = build("moe", {"experts": E, "top_k": min(k, E), "hidden": hidden, **extra}).float()
    gen = torch.Generator().manual_seed(seed)
    if m.experts.up_bias is not None:
        with torch.no_grad():
            m.experts.up_bias.copy_(torch.randn(m.experts.up_bias.shape, generator=gen))
            m.experts.down_bias.copy_(torch.randn(m.experts.down_bias.shape, generator=gen))
    return m, gen


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**31))
def test_grouped_experts_give_the_traced_loops_bits(E, k, T, seed):
    """Eager, the assignments are grouped by expert with one sort (one host sync a layer); traced, one expert at
    a time. Both add the experts' parts in the same order: the same bits, values and gradients, with experts
    that take no token among them."""
    k = min(k, E)
    m = build("moe", {"experts": E, "top_k": k, "hidden": 6})
    x = torch.randn(T, 16, generator=torch.Generator().manual_seed(seed), dtype=m.experts.first.dtype,
                    requires_grad=True)
    outs = []
    for traced in (False, True):
        with patch.object(torch.compiler, "is_compiling", lambda: traced):
            _, w, idx = m.route(x)
            y = m._mix(x, w, idx)
            outs.append((y, *torch.autograd.grad(y.square().sum(), (x, m.experts.first))))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 40), st.sampled_from([4, 8, 12]),
       st.sampled_from([{}, {"act": "relu2", "bias": True}, {"act": "geglu", "bias": True}]), st.integers(0, 2**31))
def test_grouped_gemms_match_the_expert_loop(E, k, T, hidden, extra, seed):
    """In float32 on the CPU the experts run as two grouped GEMMs (Experts.grouped): the same values and gradients
    (x, the routing weights, every expert parameter) as one expert at a time, to float32's rounding, with experts
    that take no token among them; a decode step takes the same path."""
    m, gen = _float_moe(E, k, hidden, extra, seed)
    x = torch.randn(T, 16, generator=gen, requires_grad=True)
    assert moe.grouped_ok(x, m.experts)
    _, w, idx = m.route(x)
    w = w.detach().requires_grad_(True)
    leaves = [x, w, *m.experts.parameters()]
    outs = []
    for grouped in (True, False):
        with patch.object(moe, "grouped_ok", lambda *a: grouped):
            y = m._mix(x, w, idx)
            outs.append((y, *torch.autograd.grad(y.square().sum(), leaves)))
    for a, b in zip(*outs):
        assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() < 1e-5
    with torch.no_grad():  # a decode step: the same values (one token: Experts.one_token, the grouped bits)
        step = m.step(x)
    assert ((step - outs[1][0]).abs().max() / outs[1][0].abs().max().clamp_min(1e-30)).item() < 1e-5


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 4), st.sampled_from([4, 8, 12, 16]),
       st.sampled_from([{}, {"act": "relu2", "bias": True}, {"act": "geglu", "bias": True}, {"bias": True},
                        {"shared_hidden": 8}]), st.integers(0, 2**31))
def test_one_token_step_gives_the_grouped_gemms_bits(E, k, hidden, extra, seed):
    """A float32 decode step of one token on the CPU runs its experts one by one (Experts.one_token): the bits of
    the grouped GEMMs, which it stands in for (gelu rounds differently row by row: its rows go through together)."""
    m, gen = _float_moe(E, k, hidden, extra, seed)
    x = torch.randn(1, 16, generator=gen)
    with torch.no_grad():
        _, w, idx = m.route(x)
        grouped = m.experts.grouped(x, idx, w)
        with patch.object(moe.Experts, "grouped", lambda *a: pytest.fail("the step took the grouped GEMMs")):
            step = m.step(x)
    assert torch.equal(m.experts.one_token(x, idx, w), grouped)
    shared = m.shared_expert(x) if m.shared_expert is not None else 0
    assert torch.equal(step, grouped + shared)


def test_grouped_only_where_grouped_mm_takes_the_rows():
    """float64, rows that are not multiples of 16 bytes, or no tokens: the experts one by one."""
    m = build("moe", {"experts": 4, "top_k": 2, "hidden": 12})
    assert not moe.grouped_ok(torch.randn(3, 16, dtype=torch.float64), m.experts)
    m = m.float()
    assert moe.grouped_ok(torch.randn(3, 16), m.experts)
    assert not moe.grouped_ok(torch.randn(0, 16), m.experts)
    odd = build("moe", {"experts": 4, "top_k": 2, "hidden": 5}).float()
    assert not moe.grouped_ok(torch.randn(3, 16), odd.experts)


def test_balancing_loss():
    m = build("moe", {"experts": 4, "top_k": 2, "hidden": 12, "aux_loss_coef": 1.0})
    x = torch.randn(2, 50, 16, dtype=torch.float64)
    m(x)
    probs = F.softmax(m.router(x.view(-1, 16)), -1)
    _, idx = probs.topk(2, -1)
    f = F.one_hot(idx, 4).sum(1).double().mean(0)
    assert torch.allclose(m.aux_loss, 4 * (f * probs.mean(0)).sum())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("args", [{"experts": 8, "top_k": 2, "hidden": 128},
                                  {"experts": 8, "top_k": 2, "hidden": 128, "shared_hidden": 64,
                                   "router": "sigmoid", "score_bias": True}])
def test_gpu_bf16_under_inductor_matches_eager_where_the_routing_is_clear(args):
    """In bf16 a token whose k-th and (k+1)-th router scores nearly tie may go to another expert under
    Inductor (it rounds fused ops once, eager after each), so the whole outputs are not comparable. The
    tokens whose choice is clear (a gap of 1e-3 or more, in float32 after the bf16 router GEMM) must be
    routed the same: their outputs, and the gradients of a loss on them alone (the other tokens then add
    nothing), match eager's to bf16's rounding (fullgraph=True: one graph)."""
    m = build("moe", args, d_model=256).to("cuda", torch.bfloat16)
    if args.get("score_bias"):
        m.router.e_score_correction_bias.normal_(0, 0.01)
    x = torch.randn(4, 256, 256, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        logits = m.router(x.view(-1, 256), torch.float32 if args.get("router") == "sigmoid" else None).float()
        score = logits.sigmoid() + m.router.e_score_correction_bias if args.get("score_bias") else logits
        top = score.topk(args["top_k"] + 1, dim=-1).values
        clear = (top[:, -2] - top[:, -1]) >= 1e-3
    assert clear.float().mean() > 0.9  # the test must compare most tokens

    def outputs_and_grads(call):
        m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_(True)
        out = call(xg).view(-1, 256)[clear]
        out.float().square().mean().backward()
        return [out, xg.grad.view(-1, 256)[clear]] + [p.grad for p in m.parameters()]

    eager = outputs_and_grads(m)
    torch._dynamo.reset()
    compiled = outputs_and_grads(torch.compile(m, backend="inductor", fullgraph=True))
    names = ["out", "dx"] + [n for n, _ in m.named_parameters()]
    for name, c, e in zip(names, compiled, eager, strict=True):
        assert ((c.float() - e.float()).norm() / e.float().norm()).item() < 2e-2, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("args", [{"experts": 8, "top_k": 2, "hidden": 128},
                                  {"experts": 16, "top_k": 3, "hidden": 64, "act": "relu2", "bias": True},
                                  {"experts": 8, "top_k": 2, "hidden": 128, "router": "sigmoid", "norm_topk": True,
                                   "routed_scale": 2.5, "score_bias": True}])
def test_gpu_grouped_gemms_match_the_expert_loop(args):
    """bf16 on the card: the grouped GEMMs give the expert loop's values and gradients to bf16's rounding. A decode
    step captured in a CUDA graph takes them where the gathered form's copy of the chosen experts would pass
    GATHER_BYTES (here forced to 0) and replays the eager step's bits; below it, the gathered form."""
    m = build("moe", args, d_model=256).to("cuda", torch.bfloat16)
    gen = torch.Generator("cuda").manual_seed(0)
    if m.experts.up_bias is not None:
        with torch.no_grad():
            m.experts.up_bias.normal_(generator=gen)
            m.experts.down_bias.normal_(generator=gen)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
    assert moe.grouped_ok(x, m.experts)
    _, w, idx = m.route(x)
    w = w.detach().requires_grad_(True)
    names = ["y", "x", "w", *(n for n, _ in m.experts.named_parameters())]
    leaves = [x, w, *m.experts.parameters()]
    outs = []
    for grouped in (True, False):
        with patch.object(moe, "grouped_ok", lambda *a: grouped):
            y = m._mix(x, w, idx)
            outs.append((y, *torch.autograd.grad(y.float().square().sum(), leaves)))
    for name, a, b in zip(names, *outs, strict=True):
        off = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert off < 1e-2, (name, off)

    xs = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16, generator=gen)

    def graphed_step():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            m.step(xs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = m.step(xs)
        graph.replay()
        return out

    gathered, calls = moe.Experts.gathered, []

    def spy(*args):
        calls.append(torch.cuda.is_current_stream_capturing())
        return gathered(*args)

    with torch.no_grad(), patch.object(moe.Experts, "gathered", spy):
        eager = m.step(xs)
        with patch.object(moe, "GATHER_BYTES", 0):
            assert torch.equal(graphed_step(), eager)
        assert calls == []
        assert ((graphed_step().float() - eager.float()).norm() / eager.float().norm()).item() < 1e-2
        assert calls == [True]  # captured, not in the warm-up


def test_a_softmax_routers_weight_takes_the_models_dtype():
    """Only the sigmoid router (DeepSeek-V3's, NemotronH's) keeps its weight float32, as transformers does."""
    import archdsl

    spec = archdsl.parse("mlp, moe every 1", d_model=16, vocab_size=37, blocks={"moe": {"experts": 4, "top_k": 1}})
    assert archdsl.compile(spec, dtype=torch.bfloat16).layers[0].ffn.router.weight.dtype == torch.bfloat16


def test_score_bias_stays_float32_in_a_16_bit_model(tmp_path):
    """The sigmoid router's score bias (HF's e_score_correction_bias, kept in float32 by transformers) survives
    compile(dtype=bf16), .half(), .to() and a bf16 save → load with its float32 values: a bias of 1.003 against
    1.002 picks its expert, where bf16 (spacing 1/128 at 1) rounded both to 1.0 and chose expert 0."""
    import archdsl

    spec = archdsl.parse("mlp, moe every 1", d_model=16, vocab_size=37,
                         blocks={"moe": {"experts": 4, "top_k": 1, "hidden": 8, "router": "sigmoid", "score_bias": True}})
    bias = torch.tensor([1.0, 1.001, 1.003, 1.002])
    model = archdsl.compile(spec, dtype=torch.bfloat16)
    router = model.layers[0].ffn.router
    router.e_score_correction_bias.copy_(bias)
    model.save(tmp_path / "m")
    back = archdsl.load(tmp_path / "m")
    for m in (model, model.half(), model.to(torch.bfloat16), back, archdsl.compile(spec).to(torch.float16)):
        b = m.layers[0].ffn.router.e_score_correction_bias
        assert b.dtype == m.layers[0].ffn.router.weight.dtype == torch.float32  # the sigmoid router's weight too
        assert torch.equal(b, bias) or m.dtype == torch.float16 and not b.any()  # the fresh one holds zeros
    with torch.no_grad():
        router.weight.zero_()  # every score 1/2: the bias alone chooses
        _, _, idx = model.layers[0].ffn.route(torch.randn(3, 16, dtype=model.dtype))
    assert idx.view(-1).tolist() == [2, 2, 2]
