"""`archdsl bench`: a model's forward pass, training step and decode step, timed on random tokens.

    rows = bench(model, batch=1, seq_len=2048, gen=64)      # model: an ArchModel (archdsl.compile / load)

Every row is a median: on CUDA of `triton.testing.do_bench` (forward, training step; as benchmarks/
time), on the CPU of wall-clock calls, and for decoding of the single steps of one generation (CUDA
events each, or replayed from the model's CUDA graph: cuda_graph True, or None where it can be captured, else
eager steps with an ArchDSLWarning; the decode row's cuda_graph says which). Beside each time stands the work the
analyzer counts, so that the figure can be read against the card:

    forward   B·L tokens        FLOPs = analyzer's forward FLOPs/token (at L) · B·L       → TFLOP/s
    train     B·L tokens        3 × the forward's FLOPs (forward + backward of the cross entropy)
    decode    B tokens a step   bytes = weights a step reads (the embedding table but one row
                                when untied) + the cache at L tokens, each once            → GB/s

The decode bytes are a floor: a step reads at least them. No optimizer step is timed.

bench leaves the model as it found it: each module's train / eval mode, the parameters' .grad (the train
case's backward runs with them set aside), and what a forward records on the model (MoE's balancing loads
since the last `balance()`, the aux losses) are put back, so that timing a model mid-training changes
nothing of the training.
"""
from __future__ import annotations

import contextlib
import numbers
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .analysis import analyze
from .errors import ArchDSLError, out_of_memory, warn


@dataclass(frozen=True)
class BenchRow:
    case: str  # "forward", "train" or "decode"
    tokens: int  # tokens a call handles: B·L, or B for a decode step
    ms: float  # median time a call
    tokens_per_s: float
    flops: float  # analyzer FLOPs a call (forward, train); 0 for decode
    bytes: float  # the bytes floor a call (decode); 0 otherwise
    rate: float  # TFLOP/s (forward, train) or GB/s (decode) achieved
    cuda_graph: bool = False  # decode: the steps were replayed from a CUDA graph

    def to_dict(self) -> dict:
        return asdict(self)


CASES = ("forward", "train", "decode")  # what bench times, in this order


def bench(model, batch: int = 1, seq_len: int = 2048, gen: int = 64, cases=CASES,
          cuda_graph: bool | None = False, seed: int = 0) -> list[BenchRow]:
    """Time `cases` of `model` at batch × seq_len random tokens (decode: `gen` steps after a prompt of
    seq_len); see the module docstring for what each row counts. cuda_graph (decode, CUDA): True replays the steps
    from a CUDA graph, or raises where one cannot be captured; None, the same where it can, else eager steps
    with an ArchDSLWarning; False, eager steps."""
    from .model.decoding import check_seed
    from .model.model import ArchModel

    if not isinstance(model, ArchModel):
        raise ArchDSLError(f"bench: model must be an ArchModel, got {type(model).__name__}",
                           hint="build one with archdsl.compile(spec) or archdsl.load(dir)")
    for key, value in (("batch", batch), ("seq_len", seq_len), ("gen", gen)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
            raise ArchDSLError(f"bench: {key} must be a positive int, got {value!r}")
    batch, seq_len, gen = int(batch), int(seq_len), int(gen)
    cases = (cases,) if isinstance(cases, str) else cases
    if not isinstance(cases, Iterable) or not (cases := tuple(cases)) or not all(isinstance(c, str) for c in cases):
        raise ArchDSLError(f"bench: cases must be one or more of forward, train, decode, got {cases!r}")
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ArchDSLError(f"bench: unknown case {sorted(unknown)[0]!r} (forward, train, decode)")
    check_seed("bench", seed)
    if model.device.type == "meta":
        raise ArchDSLError("bench: the model is on the meta device, which computes nothing to time",
                           hint="compile it on a real device")
    if "train" in cases and seq_len < 2:  # the loss predicts tokens 1.. from 0..: no target, a NaN loss, no grad
        raise ArchDSLError(f"bench: the train case needs seq_len >= 2 (a next-token loss has seq_len - 1 targets), "
                           f"got {seq_len}")
    if cuda_graph not in (None, True, False):
        raise ArchDSLError(f"bench: cuda_graph must be True, False or None, got {cuda_graph!r}")
    if "train" in cases and not any(p.requires_grad for p in model.parameters()):
        raise ArchDSLError("bench: the train case needs parameters that take gradients; every one of this "
                           "model's is frozen (requires_grad False)")
    if cuda_graph and model.device.type != "cuda":
        raise ArchDSLError(f"bench: cuda_graph needs a CUDA model, this one is on {model.device}")
    try:
        with _kept(model):
            return _bench(model, batch, seq_len, gen, cases, cuda_graph, seed)
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        raise ArchDSLError(f"bench: batch {batch} × {seq_len:,} tokens does not fit in the memory of "
                           f"{model.device} ({str(e).strip().splitlines()[0][:200]})",
                           hint="a smaller --batch or --seq-len") from None


RECORDS = ("load", "aux_loss")  # what a forward leaves on a module (Moe.load, the aux losses), put back after


@contextlib.contextmanager
def _modes_kept(model):
    """Puts back each module's training flag after the block (model.train(was) would set them all alike)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _kept(model):
    """Runs the block with every parameter's .grad set aside (None), then puts back each module's training flag,
    each parameter's .grad and each module's RECORDS as they were (the same tensors, unchanged: the block
    replaces a record, it does not write into it)."""
    records = [(m, name, m.__dict__[name]) for m in model.modules() for name in RECORDS if name in m.__dict__]
    grads = [(p, p.grad) for p in model.parameters()]
    for p, _ in grads:
        p.grad = None
    try:
        with _modes_kept(model):
            yield
    finally:
        for m, name, value in records:
            m.__dict__[name] = value
        for p, g in grads:
            p.grad = g


def _bench(model, batch, seq_len, gen, cases, cuda_graph, seed) -> list[BenchRow]:
    dtype = str(model.dtype).replace("torch.", "")
    rep = analyze(model.spec, seq_len=seq_len, batch=batch, dtype=dtype,
                  ssm_state_dtype=str(model.ssm_state_dtype).replace("torch.", ""))
    gen_ = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.spec.vocab_size, (batch, seq_len), generator=gen_).to(model.device)
    rows = []
    fwd_flops = float(rep.flops_per_token) * batch * seq_len
    if "forward" in cases:
        def forward():
            with torch.no_grad():
                model(ids)
        ms = _median_ms(forward, model.device)
        rows.append(_row("forward", batch * seq_len, ms, flops=fwd_flops))
    if "train" in cases:
        def step():
            logits = model(ids)
            F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
            model.zero_grad(set_to_none=True)
        with _modes_kept(model):  # the grads set aside by _kept, and put back there
            model.train()
            ms = _median_ms(step, model.device)
        rows.append(_row("train", batch * seq_len, ms, flops=3 * fwd_flops))
    if "decode" in cases:
        ms, graphed = _decode_ms(model, ids, gen, cuda_graph)
        nbytes = torch.finfo(model.dtype).bits // 8
        untied_table = 0 if model.spec.tie_embeddings else model.spec.vocab_size * model.spec.d_model
        read = (rep.active_params - untied_table) * nbytes + rep.cache_bytes
        rows.append(_row("decode", batch, ms, nbytes=float(read), cuda_graph=graphed))
    return rows


def _row(case, tokens, ms, flops=0.0, nbytes=0.0, cuda_graph=False) -> BenchRow:
    rate = flops / (ms * 1e-3) / 1e12 if flops else nbytes / (ms * 1e-3) / 1e9
    return BenchRow(case, tokens, ms, tokens / (ms * 1e-3), flops, nbytes, rate, cuda_graph)


def _median_ms(fn, device, reps: int = 5) -> float:
    """Median ms of fn(): do_bench on CUDA; on the CPU wall clock after one untimed call."""
    if device.type == "cuda":
        from triton.testing import do_bench

        with torch.cuda.device(device):  # do_bench's events on the model's card
            return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def _decode_ms(model, ids, gen: int, cuda_graph: bool | None) -> tuple[float, bool]:
    """(median ms of one decode step over `gen` steps after prefilling `ids` (one untimed step first), whether the
    steps were replayed from a CUDA graph)."""
    from .model.decoding import sample

    batch, length = ids.shape
    cuda = model.device.type == "cuda"
    runner = None
    if cuda and cuda_graph is not False:
        try:
            runner = model._graph_runner(batch, length + gen + 1, exact=True)
        except RuntimeError as e:  # memory is the caller's to word (CacheTooBig is an ArchDSLError)
            if out_of_memory(e):
                raise
            why = " ".join(str(e).split())[:300]
            if cuda_graph:
                raise ArchDSLError(f"bench: the decode step could not be captured in a CUDA graph ({why})",
                                   hint="time it eagerly: cuda_graph=False (archdsl bench --no-cuda-graph)") from None
            warn(f"bench: the decode step could not be captured in a CUDA graph ({why}); the eager steps are timed")
    if runner is not None:
        cache, step = runner.cache, runner
        cache.reset()
    else:
        cache = model.init_cache(batch, max_len=length + gen + 1)
        step = lambda tok: model.step(tok, cache)  # noqa: E731
    tok = sample(model(ids, cache, logits_to_keep=1)[:, -1], 0)
    tok = sample(step(tok), 0)  # untimed: kernel compilation, the allocator
    times = []
    for _ in range(gen):
        if cuda:
            with torch.cuda.device(model.device):  # the events on the model's card's stream
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                logits = step(tok)
                end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            logits = step(tok)
            times.append((time.perf_counter() - t0) * 1e3)
        tok = sample(logits, 0)
    return statistics.median(times), runner is not None


def format_rows(rows: list[BenchRow]) -> list[list[str]]:
    """Table cells: case, tokens a call, ms, tokens/s, work, achieved rate."""
    out = []
    for r in rows:
        work = f"{r.flops / 1e9:,.1f} GFLOP" if r.flops else f"{r.bytes / 1e6:,.1f} MB"
        if r.flops:
            rate = f"{r.rate:,.2f} TFLOP/s" if r.rate >= 1 else f"{r.rate * 1e3:,.2f} GFLOP/s"
        else:
            rate = f"{r.rate:,.1f} GB/s"
        out.append([r.case, f"{r.tokens:,}", f"{r.ms:,.3f}", f"{r.tokens_per_s:,.0f}", work, rate])
    return out
