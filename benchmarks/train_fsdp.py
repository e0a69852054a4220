"""Issue 7 evidence helpers for benchmarks/train_fsdp.sh (multi-GPU, torchrun).

    torchrun --standalone --nproc-per-node G benchmarks/train_fsdp.py jamba --out OUT/jamba   # jamba-v0.1
    python benchmarks/train_fsdp.py report OUT                                                # the tables

`jamba`: jamba-v0.1 (52B) built on the meta device, FSDP2-sharded over the G GPUs (bf16 compute,
fp32 master weights, activation checkpointing), with the per-GPU memory arithmetic written out;
when the arithmetic fits the card (or with --force), the shards are materialised on the GPUs and
one AdamW step is run at a small sequence length, recording torch.cuda.max_memory_allocated per GPU.
`report`: compares the loss curves of the runs in OUT (1 vs 2 [vs 4] GPUs, resumed vs uninterrupted)
and prints tokens/s and MFU per GPU as markdown for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from _bench import save_json

GiB = 1024**3


def jamba(args):
    import torch
    import torch.distributed as tdist
    import torch.nn.functional as F

    import archdsl
    from archdsl.train.parallel import init_distributed, pick_device, shard_model, world_from_env

    env = world_from_env()
    dev = pick_device(env, args.device)
    dist = init_distributed(env, dev)
    W = dist.world
    spec = archdsl.load_spec(args.spec)
    model = archdsl.compile(spec, device="meta", dtype=torch.float32)
    P = model.num_params()
    unit = max(sum(p.numel() for p in layer.parameters()) for layer in model.layers)
    V, d = spec.vocab_size, spec.d_model
    card = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else None
    arith = {  # bytes per GPU
        "params_fp32_shard": 4 * P / W, "grads_fp32_shard": 4 * P / W, "adam_m_v_fp32_shard": 8 * P / W,
        "gathered_bf16_units_x2": 2 * 2 * unit,  # the running layer and the prefetched next one
        "unsharded_grads_of_a_unit": 4 * unit,  # fp32 reduce (reduce_dtype) before reduce-scatter
        "logits_fp32": 4 * args.batch_per_gpu * args.seq_len * V * 2,  # logits + their grad
        "layer_inputs_ckpt_bf16": 2 * args.batch_per_gpu * args.seq_len * d * len(model.layers),
    }
    need = sum(arith.values())
    shard_model(model, dist, bf16=True, grad_ckpt=True)
    local = sum(p.to_local().numel() for p in model.parameters())
    result = {"spec": spec.name, "params": P, "world_size": W, "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "card_bytes": card, "largest_unit_params": unit, "local_params_rank0": local,
              "arithmetic_bytes_per_gpu": arith, "estimated_bytes_per_gpu": need,
              "estimated_gib_per_gpu": need / GiB, "fits": card is not None and need < 0.92 * card, "seq_len": args.seq_len,
              "batch_per_gpu": args.batch_per_gpu, "ran_step": False}
    if dev.type == "cuda" and (result["fits"] or args.force):
        try:
            model.to_empty(device=dev)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    t = p.to_local()
                    t.normal_(0, 0.02) if p.dim() >= 2 else t.fill_(1.0 if not name.endswith("bias") else 0.0)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
            torch.cuda.reset_peak_memory_stats(dev)
            g = torch.Generator(device="cpu").manual_seed(dist.rank)
            x = torch.randint(V, (args.batch_per_gpu, args.seq_len + 1), generator=g).to(dev)
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, V), x[:, 1:].reshape(-1)) + model.aux_loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize(dev)
            peaks = [torch.tensor([torch.cuda.max_memory_allocated(dev)], device=dev) for _ in range(W)]
            tdist.all_gather(peaks, peaks[dist.rank].clone())
            result.update(ran_step=True, step_s=time.perf_counter() - t0, loss=float(loss),
                          peak_bytes_per_gpu=[int(p) for p in peaks], peak_gib_max=max(int(p) for p in peaks) / GiB)
        except torch.OutOfMemoryError as e:
            result.update(oom=str(e).splitlines()[0])
    if dist.is_main:
        os.makedirs(args.out, exist_ok=True)
        save_json(os.path.join(args.out, "jamba.json"), result, indent=2)
        print(json.dumps(result, indent=2))
    tdist.destroy_process_group()


def _metrics(rundir):
    with open(os.path.join(rundir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _rel(a, b, steps):
    return max(abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in steps)


def report(args):
    out, lines = args.out, []
    runs = {name: _metrics(os.path.join(out, name)) for name in sorted(os.listdir(out))
            if os.path.isfile(os.path.join(out, name, "metrics.jsonl"))}
    res = {"loss_match": {}, "resume": {}, "throughput": {}}
    if "fp32_g1" in runs:
        ref = runs["fp32_g1"]
        steps = sorted(ref)[:20]
        lines += ["| run | GPUs | max relative loss difference to 1 GPU, first 20 steps |", "|---|---|---|"]
        for name, m in runs.items():
            if name.startswith("fp32_g") and name != "fp32_g1":
                r = _rel(ref, m, steps)
                res["loss_match"][name] = r
                lines.append(f"| {name} | {m[steps[0]]['world_size']} | {r:.2e} {'ok' if r < 1e-3 else 'FAIL'} |")
        for name, m in runs.items():
            if name.startswith("resume_"):
                common = sorted(set(ref) & set(m))
                r = _rel(ref, m, common)
                res["resume"][name] = r
                lines.append(f"| {name} (resumed) | {m[common[-1]]['world_size']} | {r:.2e} over steps "
                             f"{common[0]}..{common[-1]} {'ok' if r < 1e-3 else 'FAIL'} |")
    lines += ["", "| run | GPUs | tokens/s (all) | tokens/s per GPU | MFU per GPU |", "|---|---|---|---|---|"]
    for name, m in runs.items():
        rec = [m[s] for s in sorted(m)][3:] or list(m.values())  # skip warm-up steps
        tps = statistics.median(r["tokens_per_s"] for r in rec)
        mfu = [r["mfu"] for r in rec if r.get("mfu") is not None]
        W = rec[-1]["world_size"]
        res["throughput"][name] = {"world_size": W, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / W,
                                   "mfu": statistics.median(mfu) if mfu else None}
        mfu_s = f"{100 * statistics.median(mfu):.1f}%" if mfu else "-"
        lines.append(f"| {name} | {W} | {tps:,.0f} | {tps / W:,.0f} | {mfu_s} |")
    jpath = os.path.join(out, "jamba", "jamba.json")
    if os.path.isfile(jpath):
        with open(jpath) as f:
            j = json.load(f)
        res["jamba"] = j
        lines += ["", f"jamba-v0.1 ({j['params']:,} params) sharded over {j['world_size']} × {j['gpu']}: "
                  f"estimated {j['estimated_gib_per_gpu']:.1f} GiB per GPU (card {(j['card_bytes'] or 0) / GiB:.0f} GiB)"]
        for k, v in j["arithmetic_bytes_per_gpu"].items():
            lines.append(f"- {k}: {v / GiB:.2f} GiB")
        if j.get("ran_step"):
            lines.append(f"- one step at seq {j['seq_len']} × {j['batch_per_gpu']} per GPU: peak "
                         f"{j['peak_gib_max']:.1f} GiB per GPU (max over ranks), {j['step_s']:.1f} s")
        else:
            lines.append("- no step run: " + j.get("oom", "the arithmetic does not fit the card"))
    print("\n".join(lines))
    save_json(os.path.join(out, "report.json"), res, indent=2)
    bad = [k for k, v in {**res["loss_match"], **res["resume"]}.items() if v >= 1e-3]
    return 1 if bad else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jamba")
    j.add_argument("--spec", default="specs/jamba-v0.1.yaml")
    j.add_argument("--seq-len", type=int, default=512)
    j.add_argument("--batch-per-gpu", type=int, default=1)
    j.add_argument("--device", default="cuda", help="cuda; cpu only checks the sharding and the arithmetic")
    j.add_argument("--force", action="store_true", help="try the step even where the arithmetic does not fit")
    j.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("out")
    args = p.parse_args(argv)
    return jamba(args) if args.cmd == "jamba" else report(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
