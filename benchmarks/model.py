"""Whole-model figures on the GPU: training throughput / MFU and decode latency against context.

    python benchmarks/model.py [--quick] [--json out.json]

Models (bf16, built from layout strings here so the figures name exactly what ran):
  mamba2-1.3b  48×mamba2, d_model 2048 (the published Mamba-2 1.3B shape)
  hybrid-1.3b  jamba-style: 1 attention in 8 layers, MoE (8 experts, top-2) every 2nd layer
  llama-1.3b   a transformer of the same size (RoPE, SwiGLU), the decode baseline
Training: AdamW (lr 3e-4, 5 warm-up steps) on bf16 weights, a synthetic induction task (a random
block of BLOCK Zipf-distributed tokens repeated: the unigram statistics are learnt within a few
steps, the copy of each later block takes an induction mechanism), batch × seq tokens per step; MFU = 3 × forward FLOPs/token (our analyzer, attention
included) × tokens/s over the H200's dense bf16 peak (989 TFLOP/s datasheet, the H100 SXM's too); peak GiB is each
model's own (the peak statistics reset before it trains).
Decode: batch 1, prefill `ctx` random tokens, then the median per-token time of steps replayed
from a CUDA graph (and eager, for comparison).
"""
from __future__ import annotations

import argparse
import statistics
import textwrap
import time

import torch
from _bench import needs_cuda, save_json, wall_ms

import archdsl

from archdsl.spec import spec_from_yaml

PEAK = 989e12
BLOCK = 64
MODELS = {  # spec files, inline so the figures name exactly what ran
    "mamba2-1.3b": """
        name: mamba2-1.3b
        d_model: 2048
        vocab_size: 50288
        layout: 48×mamba2
    """,
    "hybrid-1.3b": """
        name: hybrid-1.3b
        d_model: 1280
        vocab_size: 50288
        ffn: mlp
        layout: 3×(4×mamba, attn, 3×mamba), moe every 2
        blocks:
          attn: {heads: 16, kv_heads: 4, rope: false}
          mlp: {act: swiglu, hidden: 3584}
          moe: {experts: 8, top_k: 2, hidden: 2304}
    """,
    "llama-1.3b": """
        name: llama-1.3b
        d_model: 2048
        vocab_size: 50288
        ffn: mlp
        layout: 24×attn
        blocks:
          attn: {heads: 16}
          mlp: {act: swiglu, hidden: 5504}
    """,
}


def build_spec(name):
    return spec_from_yaml(textwrap.dedent(MODELS[name]), file=f"<{name}>")


DEVICE = "cuda"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, iters):
    """Median wall time of fn() in ms, synchronised around each call (one decode token each)."""
    return wall_ms(fn, iters, sync)


def train(name, batch, seq, steps):
    spec = build_spec(name)
    rep = archdsl.analyze(spec, seq_len=seq)
    if DEVICE == "cuda":  # one process trains every model: the peak is this one's
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = archdsl.compile(spec, device=DEVICE, dtype=dtype, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 5))
    g = torch.Generator(device=DEVICE).manual_seed(0)
    zipf = 1.0 / torch.arange(1, spec.vocab_size + 1, device=DEVICE, dtype=torch.float32)
    losses, times = [], []
    for i in range(steps):
        block = torch.multinomial(zipf, batch * BLOCK, replacement=True, generator=g).view(batch, BLOCK)
        x = block.repeat(1, seq // BLOCK + 1)[:, : seq + 1]
        sync()
        t = time.perf_counter()
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        (loss + 0.01 * model.aux_loss).backward()
        opt.step()
        warmup.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    step_s = statistics.median(times[3:])
    tps = batch * seq / step_s
    mfu = 3 * rep.flops_per_token * tps / PEAK
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0
    del model, opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return dict(model=name, params=rep.params, active=rep.active_params, batch=batch, seq=seq,
                step_ms=step_s * 1e3, tokens_per_s=tps, mfu=mfu, loss_first=losses[0],
                loss_last=statistics.mean(losses[-3:]), peak_gib=peak_gb)


@torch.no_grad()
def decode(name, contexts, steps=64, fuses=(True,)):
    """Per-token decode times; one row per (context, fuse) -- fuse=False is the unfused step
    (per-op kernels, no add+RMSNorm kernel, no fused Mamba step kernels)."""
    spec = build_spec(name)
    cuda = DEVICE == "cuda"
    model = archdsl.compile(spec, device=DEVICE, dtype=torch.bfloat16 if cuda else torch.float32, seed=0,
                            cuda_graph=cuda)
    rows = []
    for ctx in contexts:
        prompt = torch.randint(0, spec.vocab_size, (1, ctx), device=DEVICE)
        for fuse in fuses:
            model.set_fuse(fuse)
            graph_ms = float("nan")
            if cuda:
                model._graphs = {}  # captured with the fuse setting of the moment
                runner = model._graph_runner(1, ctx + steps + 8, exact=True)
                runner.cache.reset()
                tok = model(prompt, runner.cache)[:, -1].argmax(-1)
                graph_ms = median_ms(lambda: runner(tok), steps)
                del runner
                model._graphs = {}
            eager_cache = model.init_cache(1, max_len=ctx + steps + 8)
            tok = model(prompt, eager_cache)[:, -1].argmax(-1)
            eager_ms = median_ms(lambda: model.step(tok, eager_cache), min(steps, 32))
            rows.append(dict(model=name, ctx=ctx, fuse=fuse, graph_ms=graph_ms, eager_ms=eager_ms,
                             cache_mib=archdsl.analyze(spec, seq_len=ctx).cache_bytes / 2**20))
            eager_cache = None  # freed before the next setting
            if cuda:
                torch.cuda.empty_cache()
    return rows


def shrink_for_cpu():
    """The same three layouts at toy sizes, to check this script without a GPU."""
    for k, text in MODELS.items():
        for a, b in (("d_model: 2048", "d_model: 64"), ("d_model: 1280", "d_model: 64"), ("48×", "2×"),
                     ("24×", "2×"), ("3×(4×mamba, attn, 3×mamba)", "(mamba, attn)"), ("50288", "512"),
                     ("heads: 16, kv_heads: 4", "heads: 4, kv_heads: 2"), ("heads: 16}", "heads: 4}")):
            text = text.replace(a, b)
        MODELS[k] = text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                    help="decode only fused (--fuse) or only unfused (--no-fuse); default: both, printed side by side")
    ap.add_argument("--device", default="cuda", help="cpu runs a smoke test of this script at tiny sizes")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda":
        needs_cuda("give --device cpu for the smoke test")
    contexts = [1024, 16384, 65536]
    if DEVICE != "cuda":
        shrink_for_cpu()
        contexts = [64, 256, 1024]
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    out = {"device": name, "torch": torch.__version__, "train": [], "decode": []}
    if not args.skip_train:
        for name in MODELS:
            r = train(name, batch=4 if args.quick else 8, seq=2048 if DEVICE == "cuda" else 512,
                      steps=20 if args.quick else 40)
            out["train"].append(r)
            print(f"train {r['model']:<12} {r['params'] / 1e9:5.2f}B ({r['active'] / 1e9:.2f}B active)  "
                  f"{r['tokens_per_s']:>9,.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
                  f"loss {r['loss_first']:.2f} → {r['loss_last']:.2f}  peak {r['peak_gib']:.1f} GiB", flush=True)
    fuses = (True, False) if args.fuse is None else (args.fuse,)
    if args.skip_decode:
        fuses = ()
    for name in MODELS if fuses else ():
        for r in decode(name, contexts, fuses=fuses):
            out["decode"].append(r)
            print(f"decode {r['model']:<12} ctx {r['ctx']:>6}  {'fused  ' if r['fuse'] else 'unfused'}  graph {r['graph_ms']:7.3f} ms/token  "
                  f"eager {r['eager_ms']:7.3f} ms/token  cache {r['cache_mib']:8.1f} MiB", flush=True)
    hi, lo = contexts[-1], contexts[0]
    for fuse in fuses:
        by = {(r["model"], r["ctx"]): r["graph_ms"] for r in out["decode"] if r["fuse"] == fuse}
        m2 = by[("mamba2-1.3b", hi)] / by[("mamba2-1.3b", lo)]
        vs = by[("llama-1.3b", hi)] / by[("mamba2-1.3b", hi)]
        print(f"{'fused' if fuse else 'unfused'}: mamba2 decode {hi}/{lo} = {m2:.3f} (target ≤ 1.05); "
              f"llama/mamba2 per-token time at {hi} = {vs:.2f}× (target ≥ 4)")
    if len(fuses) == 2:
        for r in out["decode"]:
            if r["fuse"] and r["model"] != "llama-1.3b":
                plain = next(q for q in out["decode"] if q["model"] == r["model"] and q["ctx"] == r["ctx"]
                             and not q["fuse"])
                print(f"fusion gain {r['model']:<12} ctx {r['ctx']:>6}: graph {plain['graph_ms'] / r['graph_ms']:.2f}×  "
                      f"eager {plain['eager_ms'] / r['eager_ms']:.2f}×")
    if args.json:
        save_json(args.json, out)


if __name__ == "__main__":
    main()
