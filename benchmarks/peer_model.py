"""archdsl's Mamba and Mamba-2 language models against mamba_ssm's, holding the same weights, in one process.

    python benchmarks/peer_model.py [--models mamba-2.8b,mamba2-2.7b] [--shapes 4x2048,16x512]
                                    [--decode 1x512,16x512] [--gen 128] [--ssm-state-dtype float32,bfloat16]
                                    [--layers N] [--iters 10] [--json out.json]

For each spec of specs/, two models in bf16 on the GPU:
- ours, `archdsl.compile(spec)` with every fusion;
- mamba_ssm's `MambaLMHeadModel` of the same config (fused add + RMSNorm, residual in float32, tied
  embeddings), loaded with our weights: archdsl's Hugging Face export names them, and mamba_ssm's names
  differ from Hugging Face's only in `backbone.embedding`.
The peer must run its fastest training path: Mamba's `mamba_inner_fn` on mamba_ssm's CUDA selective scan
and causal-conv1d's CUDA conv, Mamba-2's `mamba_split_conv1d_scan_combined` (Triton SSD on the CUDA
conv). benchmarks/mamba_cuda.py builds those extensions on the card (about 2 minutes, cached) from the two
sdists that benchmarks/device_env.sh unpacks, fetched where there is a network with
    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation mamba-ssm==2.3.2.post1
    CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation --no-binary :all: \
        causal-conv1d==1.5.3.post1
Without them mamba_ssm falls back to slower paths, which would flatter us, so the peer is then left out.

For each model and shape (batch × tokens), ours and the peer alternated in rounds:
- agreement (first shape): each model's logits against ours run in float32 with the same (bf16) weights,
  |x - ref| / |ref| and how often the argmax agrees with the reference's; with both near bf16's own
  distance, the two compute the same function;
- forward: the logits under no_grad;
- training step: forward, cross-entropy of the next token in float32, backward, grads set to None
  (no optimizer: its time is the same for both);
median wall ms of --iters calls (torch.cuda.synchronize around each), tokens a second, peak memory.

For each model and decode shape (batch × prompt tokens; `--shapes none` leaves out the rows above), the
decode step as each side runs it for generation, replayed from its CUDA graph: ours from
`compile(..., cuda_graph=True)`'s captured step, the peer's from mamba_ssm's own `update_graph_cache`
(its `generate(cg=True)` path: causal-conv1d's CUDA update, its Triton selective_state_update, cuBLAS
GEMVs; its SSM states in the model's dtype, bf16). Ours runs once for each --ssm-state-dtype (default
float32 alone). All prefill the prompt, then step in lockstep on the same tokens (the first of ours' greedy
choice) for --gen steps; each step is timed alone with CUDA events around the token copy, the replay and the
logits' copy. Reported: median ms a step, and each side's logits against the first's at every step
(relative distance, how often the argmax agrees).
--layers N builds N layers instead of the spec's count (a quick run; the figures then name it).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import at_least, fail, needs_cuda, positive, save_json, wall_ms  # noqa: E402

import archdsl  # noqa: E402
from archdsl.errors import ArchDSLError  # noqa: E402
from archdsl.convert.hf_io import family, hf_model_type  # noqa: E402
from archdsl.convert.weights._common import first_config, kinds_used, layer_kinds  # noqa: E402
from archdsl.model.model import resolve_ssm_dtype  # noqa: E402
from archdsl.spec import spec_from_yaml  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_spec(name: str, layers: int | None):
    """specs/<name>.yaml, with its layout cut to `layers` layers of its one mixer kind if given."""
    path = os.path.join(ROOT, "specs", f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if layers:
        spec = spec_from_yaml(text, file=path)
        (kind,) = kinds_used(spec)
        text = re.sub(r"(?m)^layout:.*$", f"layout: {layers}×{kind}", text)
    return spec_from_yaml(text, file=path)


def peer_config(spec) -> dict:
    """mamba_ssm's MambaConfig fields for a spec whose every layer is one Mamba or Mamba-2 mixer."""
    (kind,) = kinds_used(spec)
    m = first_config(spec, kind)
    if kind == "mamba":
        ssm = {"layer": "Mamba1", "d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expand,
               "dt_rank": m.rank, "conv_bias": m.conv_bias, "bias": m.bias, "use_fast_path": True}
    elif kind == "mamba2":
        if not isinstance(m.expansion, int):  # mamba_ssm's Mamba2 is expand·d_model wide
            raise SystemExit(f"{spec.name}: mamba_ssm's Mamba2 needs a width of a whole expand·d_model, not "
                             f"heads·headdim = {m.inner} at d_model {m.d_model}")
        ssm = {"layer": "Mamba2", "d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expansion,
               "headdim": m.headdim, "ngroups": m.ngroups, "chunk_size": m.chunk_size,
               "conv_bias": m.conv_bias, "bias": m.bias, "rmsnorm": True, "norm_before_gate": False,
               "dt_limit": (m.dt_floor, float("inf")), "use_mem_eff_path": True}
    else:
        raise SystemExit(f"{spec.name}: mamba_ssm's language model holds Mamba or Mamba-2 mixers, not {kind}")
    return {"d_model": spec.d_model, "d_intermediate": 0, "n_layer": len(layer_kinds(spec)), "vocab_size": spec.vocab_size,
            "ssm_cfg": ssm, "rms_norm": spec.norm == "rmsnorm", "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": spec.tie_embeddings}


def peer_state(ours, spec) -> dict:
    """Our model's weights under mamba_ssm's names."""
    mt = hf_model_type(spec)
    fam = family(mt)
    state = {k: v.detach() for k, v in ours.state_dict().items()}
    hf = fam.to_hf(state, spec, fam.hf_config(spec))
    out = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.items()}
    out.setdefault("lm_head.weight", out["backbone.embedding.weight"])  # tied: HF leaves it out
    return out


def build_peer(spec, ours):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    peer = MambaLMHeadModel(MambaConfig(**peer_config(spec)), device="cuda", dtype=torch.bfloat16)
    peer.load_state_dict(peer_state(ours, spec), strict=True)
    return peer


def fast_paths_present(kind: str) -> str | None:
    """Why mamba_ssm would not run its fastest path for `kind`, or None."""
    import mamba_ssm.modules.mamba_simple as ms
    if kind == "mamba" and ms.causal_conv1d_fn is None:
        return "causal-conv1d's CUDA kernels are not built (Mamba would leave mamba_inner_fn)"
    if "selective_scan_cuda" not in sys.modules and kind == "mamba":
        return "mamba_ssm's CUDA selective scan is not built"
    if kind == "mamba2":
        import mamba_ssm.ops.triton.ssd_combined as sc
        if sc.causal_conv1d_fwd_function is None:
            return "causal-conv1d's CUDA kernels are not built (Mamba-2's fused path needs them)"
    return None


def step_fns(model, ids, peer: bool):
    def logits():
        out = model(ids)
        return out.logits if peer else out

    def forward():
        with torch.no_grad():
            logits()

    def train():
        out = logits()
        F.cross_entropy(out[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
        for p in model.parameters():
            p.grad = None

    return logits, forward, train


def agreement(spec, ours, ids, models) -> dict:
    """Each model's logits against ours in float32 holding the same weights: relative distance, argmax
    agreement."""
    ref_model = archdsl.compile(spec, device="cuda", dtype=torch.float32)
    ref_model.load_state_dict(ours.state_dict())
    with torch.no_grad():
        ref = ref_model(ids).float()
        del ref_model
        torch.cuda.empty_cache()
        out = {}
        for who, logits in models:
            x = logits().float()
            out[f"{who}_vs_fp32"] = ((x - ref).norm() / ref.norm()).item()
            out[f"{who}_argmax_fp32"] = (x.argmax(-1) == ref.argmax(-1)).float().mean().item()
            del x
    return out


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def both_models(name: str, layers):
    """(spec, ours, peer) in bf16 on the GPU, the same weights; peer None where mamba_ssm would leave its fast path."""
    spec = load_spec(name, layers)
    (kind,) = kinds_used(spec)
    ours = archdsl.compile(spec, device="cuda", dtype=torch.bfloat16)
    why = fast_paths_present(kind)
    if why:
        print(f"# {name}: peer left out: {why}", flush=True)
    return spec, ours, None if why else build_peer(spec, ours)


def run_model(name: str, shapes, layers, iters: int, rounds: int = 2) -> list[dict]:
    spec, ours, peer = both_models(name, layers)
    n_layers = len(layer_kinds(spec))
    rows = []
    for i, (b, seq) in enumerate(shapes):
        ids = torch.randint(0, spec.vocab_size, (b, seq), device="cuda")
        mine = step_fns(ours, ids, peer=False)
        theirs = step_fns(peer, ids, peer=True) if peer is not None else None
        row = {"model": name, "layers": n_layers, "batch": b, "seq": seq}
        if i == 0:
            row.update(agreement(spec, ours, ids, [("ours", mine[0])] + ([("peer", theirs[0])] if theirs else [])))
        sync = torch.cuda.synchronize
        times = {"fwd": [], "train": [], "peer_fwd": [], "peer_train": []}
        for _ in range(rounds):
            times["fwd"].append(wall_ms(mine[1], iters, sync, warmup=2))
            times["train"].append(wall_ms(mine[2], iters, sync, warmup=2))
            if theirs is not None:
                times["peer_fwd"].append(wall_ms(theirs[1], iters, sync, warmup=2))
                times["peer_train"].append(wall_ms(theirs[2], iters, sync, warmup=2))
        for k, v in times.items():
            if v:
                row[f"{k}_ms"] = statistics.median(v)
        row["train_gib"] = peak_gib(mine[2])
        if theirs is not None:
            row["peer_train_gib"] = peak_gib(theirs[2])
        rows.append(row)
        print_row(row)
    del ours, peer
    torch.cuda.empty_cache()
    return rows


def peer_stepper(peer, ids, gen: int):
    """mamba_ssm's graphed decode over its own cache, as its generate(cg=True) runs it: the prompt's last
    logits [B, V] and step(tokens [B]) -> logits [B, V]."""
    from mamba_ssm.utils.generation import update_graph_cache

    b, length = ids.shape
    with torch.inference_mode():  # as its generate(); its cache holds inference tensors
        cache = update_graph_cache(peer, None, b, length, length + gen + 1)
        params = cache.inference_params
        params.reset(length + gen + 1, b)
        first = peer(ids, inference_params=params, num_last_tokens=1).logits[:, -1]
    params.seqlen_offset += length

    @torch.inference_mode()
    def step(tok):
        pos = torch.full((b, 1), params.seqlen_offset, dtype=torch.long, device=ids.device)
        out = cache.run(tok[:, None], pos, params.seqlen_offset)[:, -1]
        params.seqlen_offset += 1
        return out

    return first, step


def our_stepper(model, ids, gen: int):
    """Our graphed decode step (what generate() replays with cuda_graph=True), over a cache of the model's
    SSM state dtype as set now: the prompt's last logits and step(tokens [B]) -> logits [B, V]."""
    from archdsl.model.decoding import GraphedStep

    runner = GraphedStep(model, ids.shape[0], ids.shape[1] + gen + 1)  # one a state dtype, side by side
    runner.cache.reset()
    return model(ids, runner.cache)[:, -1], runner


def timed(step, tok) -> tuple[torch.Tensor, float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = step(tok)
    end.record()
    end.synchronize()
    return out, start.elapsed_time(end)


@torch.no_grad()
def run_decode(name: str, shapes, layers, gen: int, state_dtypes=("float32",)) -> list[dict]:
    """Each decode shape: ours once a SSM state dtype and the peer, stepped in lockstep on the tokens of
    ours with the first state dtype, whose logits the others are measured against at every step."""
    spec, ours, peer = both_models(name, layers)
    rows = []
    for b, length in shapes:
        ids = torch.randint(0, spec.vocab_size, (b, length), device="cuda")
        runs = []  # (label, the prompt's last logits, step)
        for sd in state_dtypes:
            ours.set_ssm_state_dtype(sd)
            runs.append((f"ours, {sd} state", *our_stepper(ours, ids, gen)))
        if peer is not None:
            runs.append(("peer", *peer_stepper(peer, ids, gen)))
        labels, firsts, steppers = zip(*runs)
        tok = firsts[0].argmax(-1)
        outs = [timed(step, tok)[0] for step in steppers]  # one untimed step each: the first replay after capture
        times = [[] for _ in steppers]
        dist, same = [[] for _ in steppers], [[] for _ in steppers]
        for _ in range(gen - 1):
            tok = outs[0].argmax(-1)
            for i, step in enumerate(steppers):
                outs[i], ms = timed(step, tok)
                times[i].append(ms)
            ref = outs[0].float()
            for i in range(1, len(steppers)):
                o = outs[i].float()
                dist[i].append(((o - ref).norm() / ref.norm()).item())
                same[i].append((o.argmax(-1) == ref.argmax(-1)).float().mean().item())
        sides = [{"side": label, "decode_ms": statistics.median(t)} for label, t in zip(labels, times)]
        for side, d, a in zip(sides[1:], dist[1:], same[1:]):
            side.update(logits_dist=statistics.median(d), logits_dist_last=d[-1], argmax_same=statistics.fmean(a))
        row = {"model": name, "layers": len(layer_kinds(spec)), "batch": b, "prompt": length, "gen": gen,
               "decode_ms": sides[0]["decode_ms"], "sides": sides}
        if peer is not None:
            row.update(peer_decode_ms=sides[-1]["decode_ms"], logits_dist=sides[-1]["logits_dist"],
                       argmax_same=sides[-1]["argmax_same"])
        rows.append(row)
        print_decode_row(row)
        del runs, steppers, outs
    ours.set_ssm_state_dtype(None)
    del ours, peer
    torch.cuda.empty_cache()
    return rows


def print_decode_row(r: dict) -> None:
    peer = r.get("peer_decode_ms", float("nan"))
    print(f"\n{r['model']} ({r['layers']} layers) decode, batch {r['batch']}, prompt {r['prompt']}, "
          f"{r['gen']} steps from CUDA graphs, in lockstep on the tokens of {r['sides'][0]['side']}", flush=True)
    for s in r["sides"]:
        ms = s["decode_ms"]
        line = (f"  {s['side']:24} {ms:7.3f} ms a step, {r['batch'] / ms * 1e3:7.0f} tokens a second, "
                f"ratio to peer {ms / peer:.2f}")
        if "logits_dist" in s:
            line += (f"; logits against the first: {s['logits_dist']:.2e} of the norm (median over steps, "
                     f"{s['logits_dist_last']:.2e} at the last), argmax the same at {s['argmax_same']:.1%}")
        print(line, flush=True)


def print_row(r: dict) -> None:
    tok = r["batch"] * r["seq"]
    head = f"{r['model']} ({r['layers']} layers) B{r['batch']} L{r['seq']}"
    print(f"\n{head}", flush=True)
    for who in ("ours", "peer"):
        if f"{who}_vs_fp32" in r:
            print(f"  {who} bf16 against ours in float32: logits {r[f'{who}_vs_fp32']:.2e} of the norm, "
                  f"argmax the same at {r[f'{who}_argmax_fp32']:.1%} of the tokens")
    print(f"  {'':14} {'ours ms':>9} {'peer ms':>9} {'ratio':>7} {'ours tok/s':>11} {'peer tok/s':>11}")
    for k, label in (("fwd", "forward"), ("train", "training step")):
        ours, peer = r[f"{k}_ms"], r.get(f"peer_{k}_ms", float("nan"))
        print(f"  {label:14} {ours:9.2f} {peer:9.2f} {ours / peer:7.2f} {tok / ours * 1e3:11.0f} "
              f"{tok / peer * 1e3:11.0f}")
    print(f"  peak memory of a training step: ours {r['train_gib']:.1f} GiB, peer "
          f"{r.get('peer_train_gib', float('nan')):.1f} GiB", flush=True)


def parse_shapes(flag: str, text: str) -> list[tuple[int, int]]:
    """'4x2048,16x512' -> [(4, 2048), (16, 512)] ('' or 'none': none); else exit 2 naming the flag."""
    out = []
    for part in text.split(","):
        if part.strip() in ("", "none"):
            continue
        try:
            b, n = (int(x) for x in part.lower().split("x"))
        except ValueError:
            b = n = 0
        if b < 1 or n < 1:
            fail(f"{flag} {part!r}: expected BATCHxTOKENS, two integers ≥ 1 (e.g. 4x2048)")
        out.append((b, n))
    return out


def check_models(names: list[str]) -> None:
    """Exit 2 for a name with no spec of specs/ whose every mixer is Mamba or Mamba-2, before any GPU work."""
    for name in names:
        try:
            spec = load_spec(name, None)
        except FileNotFoundError:
            fail(f"--models {name!r}: no specs/{name}.yaml")
        except ArchDSLError as e:
            fail(f"--models {name!r}: {e.message}")
        if kinds_used(spec) not in ({"mamba"}, {"mamba2"}):
            fail(f"--models {name!r}: mamba_ssm's language model holds Mamba or Mamba-2 mixers alone, not "
                 f"{', '.join(sorted(kinds_used(spec)))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mamba-2.8b,mamba2-2.7b")
    ap.add_argument("--shapes", default="4x2048,16x512", help="batch×tokens, comma-separated ('none': no rows)")
    ap.add_argument("--decode", default="", help="batch×prompt tokens for decode rows, comma-separated")
    ap.add_argument("--gen", type=at_least(2), default=128,
                    help="decode steps a row (at least 2: the first, the first replay after capture, is not timed)")
    ap.add_argument("--ssm-state-dtype", default="float32",
                    help="decode rows: ours with the SSM states in each of these dtypes, comma-separated (the first "
                         "sets the tokens and is the others' reference); the peer keeps the model's dtype, bf16")
    ap.add_argument("--layers", type=positive, default=None)
    ap.add_argument("--iters", type=positive, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    models = [name.strip() for name in args.models.split(",")]
    check_models(models)
    shapes, decode = parse_shapes("--shapes", args.shapes), parse_shapes("--decode", args.decode)
    state_dtypes = [d.strip() for d in args.ssm_state_dtype.split(",") if d.strip()]
    for d in state_dtypes:
        try:
            resolve_ssm_dtype(d)
        except ArchDSLError as e:
            fail(f"--ssm-state-dtype: {e.message}")
    needs_cuda("it times CUDA models")
    from mamba_cuda import install_peers
    missing = install_peers()
    if missing:
        print(f"# missing peers: {', '.join(missing)}", flush=True)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16", flush=True)
    rows = []
    for name in models:
        if shapes:
            rows += run_model(name, shapes, args.layers, args.iters)
        if decode:
            rows += run_decode(name, decode, args.layers, args.gen, state_dtypes)
    if args.json:
        save_json(args.json, rows)


if __name__ == "__main__":
    main()
