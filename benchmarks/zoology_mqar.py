"""The Zoology MQAR table: attention-only vs pure Mamba-2 vs one attention layer in a Mamba-2 stack.

    python benchmarks/zoology_mqar.py --jobs 12 --budget-s 420 --steps 20000 --lrs 2e-3
                                                            # the GPU evidence (~7 min on one H200)
    python benchmarks/zoology_mqar.py --steps 20 --seq-len 64 --pairs 4 --d-models 16 --layers 2 \\
        --batch-size 8 --eval-size 32 --device cpu          # a CPU smoke run

MQAR as Zoology defines it (archdsl.explore.probes.MQAR: vocabulary 8192, keys then values,
queries at power-law gaps, loss on the answers only), sequence 256, 16 pairs; models of
d_model 64 and 128 with 2 and 4 layers, each layer a mixer + MLP. Architectures:
  attention   L×attn
  mamba2      L×mamba2
  hybrid      (L-1)×mamba2 with one attn at layer L//2
Each run trains for --steps or for as many as fit in its share of --budget-s (default 330 s
for the whole table), measured on the run's own pace first, so that its learning-rate schedule
(5% warmup, cosine) completes; the steps actually run are printed and saved. With --jobs N,
N runs train at once in separate processes sharing the device (these models leave an H200
mostly idle), and each run's share grows N-fold. The first GPU table (15 s a run) was too
short for attention alone to learn the task: give each run minutes, not seconds. Every run trains on fresh batches from the same seeded stream and is scored on the same
held-out set (token accuracy on the answers); training stops early at 99%. For each
(architecture, width, depth) the best accuracy over --lrs is reported, as Zoology does.
Prints the table and writes JSON (--out). Steps and everything else are flags.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

import torch

try:
    import archdsl
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import archdsl
from _bench import positive_list, save_json  # noqa: E402

from archdsl.explore.probes import make_task  # noqa: E402
from archdsl.explore.train import TrainConfig, train_probe  # noqa: E402

ARCHS = ("attention", "mamba2", "hybrid")


def layout(arch: str, layers: int, heads: int) -> str:
    attn = f"attn(heads={heads})"
    if arch == "attention":
        return f"{layers}×{attn}"
    if arch == "mamba2":
        return f"{layers}×mamba2"
    kinds = ["mamba2"] * layers
    kinds[layers // 2] = attn
    return ", ".join(kinds)


def spec_for(arch: str, d_model: int, layers: int, args) -> archdsl.Spec:
    heads = max(1, d_model // args.head_dim)
    return archdsl.parse(layout(arch, layers, heads), d_model=d_model, vocab_size=args.vocab, ffn="mlp",
                         blocks={"mamba2": {"d_state": args.d_state, "headdim": min(args.head_dim, 2 * d_model),
                                            "expand": 2, "chunk_size": 64},
                                 "attn": {"rope": True}, "mlp": {"act": "gelu", "hidden": 2 * d_model}})


def planned_steps(spec, task, cfg: TrainConfig, share: float, timed: int = 40) -> int:
    """The steps that fit in `share` seconds at this run's measured pace (after a warm-up run that
    compiles the kernels), so that the warmup and cosine schedule end where the run ends; a
    schedule sized for more steps than the time allows would stop the run while still warming up."""
    probe = replace(cfg, eval_every=10**9, target_accuracy=None, time_limit=None)
    train_probe(spec, task, replace(probe, steps=5))
    r = train_probe(spec, task, replace(probe, steps=timed))
    return max(timed, min(cfg.steps, int(0.9 * share * r.steps / r.wall_time)))


def run_one(job):
    """Train one (architecture, width, depth) at every lr (best kept; stops at 99%); returns its row."""
    arch, d, L, args, device, share = job
    torch.set_num_threads(1)
    task = make_task("mqar", vocab_size=args.vocab, seq_len=args.seq_len, num_kv_pairs=args.pairs)
    spec = spec_for(arch, d, L, args)
    best, lines = None, []
    for lr in [float(x) for x in args.lrs.split(",")]:
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, eval_every=args.eval_every,
                          eval_size=args.eval_size, seed=args.seed, device=device, dtype=args.dtype,
                          warmup=0.05, time_limit=share)
        if share:
            cfg = replace(cfg, steps=planned_steps(spec, task, cfg, share))
        r = train_probe(spec, task, cfg)
        run = {"arch": arch, "d_model": d, "layers": L, "layout": spec.layout_text, "lr": lr,
               **{k: v for k, v in r.to_dict().items() if k != "loss_curve"},
               "loss_curve": r.loss_curve[:: max(1, len(r.loss_curve) // 50)]}
        lines.append(f"  {arch:9s} d={d:<4d} L={L}  lr={lr:g}  acc={r.accuracy:.4f} (best {r.best_accuracy:.4f})"
                     f"  steps={r.steps}  loss={r.final_loss:.3f}  {r.wall_time:.1f}s")
        if best is None or r.best_accuracy > best["best_accuracy"]:
            best = run
        if r.best_accuracy >= 0.99:
            break
    return best, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--d-models", type=positive_list, default=[64, 128])
    p.add_argument("--layers", type=positive_list, default=[2, 4])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=1500, help="training steps per run (early stop at 99%%)")
    p.add_argument("--budget-s", type=float, default=330,
                   help="wall-time budget of the whole table: each run stops after its share (0: none)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, in separate processes sharing the device (tiny models leave "
                        "a GPU mostly idle); each run's share of the budget grows accordingly")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lrs", default="2e-3", help="comma-separated peak learning rates; the best is reported")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=1024)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="float32, or bfloat16 (autocast on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="zoology_mqar.json")
    args = p.parse_args(argv)

    make_task("mqar", vocab_size=args.vocab, seq_len=args.seq_len, num_kv_pairs=args.pairs)  # bad sizes fail here
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for a in archs:
        if a not in ARCHS:
            p.error(f"unknown architecture {a!r}; valid: {', '.join(ARCHS)}")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    widths, depths = args.d_models, args.layers
    n_lrs = len(args.lrs.split(","))
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"MQAR: seq {args.seq_len}, {args.pairs} pairs, vocab {args.vocab}; {args.steps} steps × batch "
          f"{args.batch_size}; lrs {args.lrs}; {args.jobs} at once; {card}", flush=True)
    cells = [(a, d, L) for d in widths for L in depths for a in archs]
    share = args.budget_s * min(args.jobs, len(cells)) / (len(cells) * n_lrs) if args.budget_s else None
    jobs = [(a, d, L, args, device, share) for a, d, L in cells]
    t_all = time.perf_counter()
    rows = []
    if args.jobs == 1:
        results = map(run_one, jobs)
    else:
        import concurrent.futures
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(run_one, jobs)
    for best, lines in results:
        print("\n".join(lines), flush=True)
        rows.append(best)
    total = time.perf_counter() - t_all

    print(f"\nMQAR accuracy (best over lrs; seq {args.seq_len}, {args.pairs} pairs), {card}, {total:.0f} s total")
    head = f"{'d_model':>7}  {'layers':>6}  " + "  ".join(f"{a:>10}" for a in archs)
    print(head)
    print("-" * len(head))
    for d in widths:
        for L in depths:
            out = []
            for a in archs:
                r = next(x for x in rows if x["arch"] == a and x["d_model"] == d and x["layers"] == L)
                out.append(f"{100 * r['best_accuracy']:9.1f}%")
            print(f"{d:>7}  {L:>6}  " + "  ".join(out))
    doc = {"benchmark": "zoology_mqar", "date": time.strftime("%Y-%m-%d"), "device": card, "settings": vars(args),
           "total_seconds": total, "runs": rows}
    save_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
