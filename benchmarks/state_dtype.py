"""Decode-cache SSM states in bf16 against float32, on trained weights: how far the logits drift over a long
stream of decode steps, and what it costs the predictions.

    archdsl train specs/demo-mamba2.yaml --data TOKENS.bin:uint16 --seq-len 512 --steps 300 --batch 8 -o RUN
    archdsl export-checkpoint RUN -o MODEL
    python benchmarks/state_dtype.py MODEL --tokens HELD_OUT.bin [--length 4096] [--streams 8] [--json FILE]
    python benchmarks/state_dtype.py MODEL --mqar 128,8 [--length 4096]     # MQAR sequences one after another

The streams (--streams of --length tokens, from a uint16 token file at evenly spaced offsets, or MQAR sequences
of the given length and pair count back to back) are fed one token at a time (teacher forcing) to the decode
step from a float32 and a bf16 SSM state, with the model's weights as saved. For each stretch of the streams, it
reports:
- the bf16 state's logits against the float32 state's (the relative norm of the difference);
- how often their greedy tokens agree;
- each state's accuracy and cross-entropy on the scored tokens: every next token of a file, or MQAR's answers.
The float32 steps are first checked against the parallel forward.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from _bench import fail, positive, save_json

import archdsl
from archdsl.errors import ArchDSLError
from archdsl.explore.probes import make_task


@torch.no_grad()
def decode_logits(model, inputs, state_dtype):
    """[S, T] tokens -> [S, T, V] float32 logits of the decode step from SSM states in state_dtype."""
    model.set_ssm_state_dtype(state_dtype)
    cache = model.init_cache(inputs.shape[0], max_len=inputs.shape[1])
    return torch.stack([model.step(inputs[:, t], cache).float() for t in range(inputs.shape[1])], dim=1)


def file_streams(path, streams, length):
    """(inputs, labels) [streams, length]: windows of a uint16 token file at evenly spaced offsets, each label the
    next token."""
    if not os.path.isfile(path):
        fail(f"--tokens {path}: no such file")
    data = np.fromfile(path, dtype=np.uint16)
    if len(data) < streams * (length + 1):
        fail(f"--tokens {path}: {len(data):,} tokens, fewer than {streams} streams of {length + 1}")
    step = (len(data) - length - 1) // max(streams - 1, 1)
    rows = torch.from_numpy(np.stack([data[i * step:i * step + length + 1] for i in range(streams)]).astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


def mqar_streams(spec, streams, length, vocab_size, seed):
    """(inputs, labels) [streams, length]: MQAR sequences of seq_len, pairs (spec "seq,pairs") back to back;
    labels -100 where nothing is scored."""
    try:
        seq, pairs = (int(v) for v in spec.split(","))
    except ValueError:
        fail(f"--mqar {spec!r}: expected SEQ,PAIRS, e.g. 128,8")
    try:
        task = make_task("mqar", seq_len=seq, num_kv_pairs=pairs, vocab_size=min(vocab_size, 8192))
    except ArchDSLError as e:
        fail(f"--mqar {spec!r}: {e.message}")
    gen = torch.Generator().manual_seed(seed)
    parts = [task.batch(streams, gen) for _ in range(-(-length // seq))]
    return (torch.cat([x for x, _ in parts], dim=1)[:, :length], torch.cat([y for _, y in parts], dim=1)[:, :length])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a saved archdsl model directory (archdsl export-checkpoint's output)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="a uint16 token file (held out from training)")
    src.add_argument("--mqar", help="SEQ,PAIRS: MQAR sequences back to back, as the model was trained on")
    p.add_argument("--length", type=positive, default=4096, help="tokens a stream (default 4096)")
    p.add_argument("--streams", type=positive, default=8, help="streams decoded side by side (default 8)")
    p.add_argument("--parts", type=positive, default=8, help="stretches of the streams reported (default 8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.parts > args.length:
        fail(f"--parts {args.parts}: more stretches than the {args.length} tokens of a stream")
    try:
        model = archdsl.load(args.model, device=args.device)
    except ArchDSLError as e:
        fail(f"{args.model}: {e.message}" if args.model not in e.message else e.message)
    model.eval()
    if args.tokens:
        inputs, labels = file_streams(args.tokens, args.streams, args.length)
    else:
        inputs, labels = mqar_streams(args.mqar, args.streams, args.length, model.spec.vocab_size, args.seed)
    inputs, labels = inputs.to(args.device), labels.to(args.device)

    with torch.no_grad():
        parallel = model(inputs).float()
    f32 = decode_logits(model, inputs, torch.float32)
    b16 = decode_logits(model, inputs, torch.bfloat16)
    check = ((f32 - parallel).norm() / parallel.norm()).item()
    del parallel

    rows = []
    edges = [round(args.length * i / args.parts) for i in range(args.parts + 1)]
    for a, b in zip(edges[:-1], edges[1:]):
        ref, got, lab = f32[:, a:b], b16[:, a:b], labels[:, a:b]
        scored = lab != -100
        n = int(scored.sum())
        row = dict(tokens=f"{a}-{b}", rel_diff=((got - ref).norm() / ref.norm()).item(),
                   greedy_agree=(got.argmax(-1) == ref.argmax(-1)).float().mean().item(), scored=n)
        for name, logits in (("f32", ref), ("bf16", got)):
            row[f"acc_{name}"] = ((logits.argmax(-1) == lab) & scored).sum().item() / max(n, 1)
            row[f"ce_{name}"] = F.cross_entropy(logits[scored], lab[scored]).item() if n else float("nan")
        rows.append(row)

    source = f"{args.tokens}" if args.tokens else f"MQAR {args.mqar} back to back"
    print(f"{model.spec.name} ({model.num_params():,} parameters, {str(model.dtype)[6:]} weights, {args.device}): "
          f"{args.streams} streams of {args.length} tokens from {source}")
    print(f"float32-state steps against the parallel forward: {check:.2e} of the logits' norm")
    print(f"{'tokens':>11} {'|Δlogits|/|logits|':>19} {'greedy agree':>13} {'acc f32':>8} {'bf16':>7} "
          f"{'CE f32':>7} {'bf16':>7} {'scored':>7}")
    for r in rows:
        print(f"{r['tokens']:>11} {r['rel_diff']:19.2e} {r['greedy_agree']:13.4f} {r['acc_f32']:8.4f} "
              f"{r['acc_bf16']:7.4f} {r['ce_f32']:7.4f} {r['ce_bf16']:7.4f} {r['scored']:7d}")
    if args.json:
        save_json(args.json, dict(model=model.spec.name, params=model.num_params(), device=args.device,
                                  streams=args.streams, length=args.length, source=source,
                                  f32_steps_vs_parallel=check, rows=rows))


if __name__ == "__main__":
    main()
