"""Decoding beyond the one step: ArchModel.generate's loop (prefill, then sampling with temperature, top-k,
top-p, min-p, a repetition penalty, stop ids and a least count of new tokens) and the decode step replayed from a
CUDA graph."""
from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass

import torch

from ..errors import ArchDSLError, out_of_memory, warn


class CacheTooBig(ArchDSLError):
    """A decode cache that does not fit in memory (ArchModel._new_cache): generate says which of its arguments
    made it so."""


def generate(model, input_ids, max_new_tokens, temperature, top_k, seed, attention_mask, top_p, eos_token_id,
             pad_token_id, repetition_penalty, min_p=None, min_new_tokens=None, num_return_sequences=1):
    """ArchModel.generate (its docstring says what each argument does): prefill, then sample step by step."""
    model._check_tokens("generate", "input_ids", input_ids, 2)
    model._padded("generate", attention_mask, input_ids, None)  # refused before any cache is made
    if input_ids.is_cuda:  # once a call: the prompt's ids checked on the card too (one wait for it)
        model._check_range("generate", "input_ids", input_ids)
    check_sampling(max_new_tokens, temperature, top_k, seed, top_p, repetition_penalty, min_p, min_new_tokens)
    top_k = top_k or None  # 0: no top-k cut, as transformers' (and no sampling asked for)
    min_p = min_p or None  # 0: no cut, as transformers'
    if temperature is None:  # greedy unless a sampling cut is asked for
        temperature = 1.0 if top_k is not None or top_p is not None or min_p is not None else 0.0
    eos = stop_ids(model.embeddings.num_embeddings, eos_token_id, pad_token_id)
    if min_new_tokens and eos is None:
        raise ArchDSLError(f"generate: min_new_tokens {min_new_tokens} holds back the eos ids, and no eos_token_id "
                           f"is given: give one, or leave min_new_tokens out (every step runs without one)")
    min_new_tokens = min_new_tokens or 0
    n = num_return_sequences
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ArchDSLError(f"generate: num_return_sequences must be an int >= 1, got {n!r}")
    if n > 1:  # each prompt's row n times, one after another (transformers' order), each drawing its own tokens
        if temperature == 0:
            raise ArchDSLError(f"generate: num_return_sequences {n} asks for {n} continuations of each prompt, and "
                               f"greedy decoding gives one (as transformers refuses it): sample (temperature, "
                               f"top_k, top_p or min_p)")
        input_ids = input_ids.repeat_interleave(int(n), 0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(int(n), 0)
    B, L = input_ids.shape
    if max_new_tokens == 0:  # a new tensor, as for any other count: writing to it leaves the prompt alone
        return input_ids.clone()
    gen = None
    if seed is not None and not input_ids.is_meta:  # meta: shapes only, nothing is drawn
        gen = torch.Generator(device=input_ids.device).manual_seed(int(seed))  # a numpy integer passes check_seed
    graphed = (input_ids.is_cuda and model.cuda_graph is not False
               and graph_fits(model, "generate", B, L + max_new_tokens, max_new_tokens))
    lock = graph_lock(model) if graphed else None
    if lock is not None and not lock.acquire(blocking=False):  # another thread replays this model's graph, whose
        graphed, lock = False, None  # buffers it writes: this call steps eagerly (under True too)
    try:
        done = model.__dict__.get("_graph_done") if lock is not None else None
        if done is not None:  # the last holder's work on the graph's buffers, queued on its stream, comes first
            torch.cuda.current_stream(input_ids.device).wait_event(done)
        how = Sampling(temperature, top_k, top_p, min_p, repetition_penalty)
        return _decode(model, input_ids, max_new_tokens, how, gen, attention_mask, eos, min_new_tokens, graphed)
    finally:
        if lock is not None:
            try:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(input_ids.device))
                model._graph_done = done
            finally:
                lock.release()


def graph_lock(model) -> threading.Lock:
    """The lock a generate holds while it replays the model's graph (made at the first, kept out of copies, with the
    event its last holder recorded, _graph_done)."""
    return model.__dict__.setdefault("_graph_lock", threading.Lock())  # dict.setdefault: one lock, even if raced


CAPTURING = threading.Lock()  # one capture at a time in the process: torch.cuda.graph syncs the device as it starts


@dataclass(frozen=True)
class Sampling:
    """generate's draw of each token, checked (check_sampling) and resolved: temperature 0 is greedy; top_k and min_p
    None where off; repetition_penalty None or 1 where off."""
    temperature: float
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repetition_penalty: float | None


def _decode(model, input_ids, max_new_tokens, how: Sampling, gen, attention_mask, eos, min_new_tokens, graphed):
    """generate after its checks: prefill, then sample step by step, replaying the graph where `graphed`. The eos
    ids are held back (-inf, as transformers' MinNewTokensLengthLogitsProcessor) for the first min_new_tokens."""
    B, L = input_ids.shape
    try:
        if graphed:  # a static cache, all L + max_new_tokens positions at once (and up to a quarter more)
            runner = graph_runner(model, B, L + max_new_tokens)
            graphed = runner is not None
        if graphed:
            cache = runner.cache
            cache.reset()
        elif eos is None:  # every step runs: the whole cache at once (doubling would copy it and overshoot)
            cache = model._new_cache("generate", B, L + max_new_tokens, False)
        else:  # an eos may stop it any time: the KV buffers grow by doubling as the tokens come, up to the last
            cache = model._new_cache("generate", B, None, False)
            cache.bound(L + max_new_tokens)
    except CacheTooBig as e:  # _new_cache's, or init_cache's under GraphedStep
        if not graphed:
            why = ("no eos_token_id stops it: ask for fewer new tokens, or give an eos_token_id, with which the cache "
                   "grows as the tokens come")
        else:
            why = "a CUDA graph replays a static cache: ask for fewer new tokens" + (
                ", or decode eagerly (model.cuda_graph = False), where the cache grows as the tokens come"
                if eos is not None else "")
        raise ArchDSLError(f"generate: {e.message.split(': ', 1)[-1]}: it holds the prompt's {L:,} tokens and "
                           f"max_new_tokens {max_new_tokens:,} ({why})") from None
    logits = model(input_ids, cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]
    out = [input_ids]
    seen = None
    repetition_penalty = how.repetition_penalty
    if repetition_penalty is not None and repetition_penalty != 1:
        real = (torch.ones_like(input_ids, dtype=torch.long) if attention_mask is None
                else (attention_mask != 0).long())
        seen = torch.zeros(B, logits.shape[-1], dtype=torch.long, device=logits.device).scatter_add_(
            1, input_ids.long(), real) > 0  # [B, V]: the tokens each row holds
    if eos is not None:
        eos_ids = torch.tensor(eos[0], device=input_ids.device)
        pad = torch.tensor(eos[1], device=input_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    # sampling on a card: the logits' finite check waits for the device every CHECK_EVERY steps, not each token
    deferred = Deferred(B, input_ids.device) if defers(input_ids, how.temperature, eos) else None
    for i in range(max_new_tokens):
        if i < min_new_tokens:  # before the penalty, as transformers' order: -inf stays -inf under it
            logits = logits.index_fill(-1, eos_ids, float("-inf"))
        if seen is not None:
            logits = penalize(logits, seen, repetition_penalty)
        if deferred is not None:
            logits = deferred.note(logits, i)
            if i % CHECK_EVERY == CHECK_EVERY - 1 or i + 1 == max_new_tokens:
                deferred.check()
        tok = sample(logits, how.temperature, how.top_k, gen, how.top_p, checked=deferred is None, min_p=how.min_p,
                     where=f"generate: step {i} (new token {i + 1})")
        if seen is not None:
            seen.scatter_(1, tok[:, None], True)
        if eos is not None:
            tok = torch.where(done, pad, tok)
            done |= torch.isin(tok, eos_ids)
        out.append(tok[:, None].to(input_ids.dtype))  # the prompt's dtype, as with max_new_tokens=0
        if eos is not None and not done.is_meta and bool(done.all()):
            break
        if i + 1 < max_new_tokens:
            try:
                logits = runner(tok) if graphed else model.step(tok, cache)
            except (RuntimeError, MemoryError) as e:  # a KV buffer that could not grow
                if not out_of_memory(e):
                    raise
                raise ArchDSLError(f"generate: out of memory on {input_ids.device} after {i + 1:,} new tokens of "
                                   f"max_new_tokens {max_new_tokens:,} (batch {B}, the decode cache growing to "
                                   f"{L + i + 1:,} positions): ask for fewer new tokens") from None
    return torch.cat(out, dim=1)


def stop_ids(vocab: int, eos_token_id, pad_token_id) -> tuple[list[int], int] | None:
    """generate's (eos ids, pad id), or None without eos_token_id; ids are ints in [0, vocab), eos_token_id also an
    integer tensor of them (transformers takes one). A pad_token_id without eos ids pads nothing (as transformers',
    which passes tokenizer.pad_token_id along whatever the eos): checked, then unused."""
    is_id = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < vocab  # noqa: E731
    if pad_token_id is not None and not is_id(pad_token_id):
        raise ArchDSLError(f"generate: pad_token_id must be a token id in [0, {vocab}), got {pad_token_id!r}")
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, torch.Tensor) and eos_token_id.dim() <= 1 and not eos_token_id.is_floating_point() \
            and not eos_token_id.is_complex() and eos_token_id.dtype != torch.bool and not eos_token_id.is_meta \
            and eos_token_id.layout == torch.strided:  # a meta or sparse one: no values to read, refused below
        eos_token_id = eos_token_id.tolist()
    ids = [eos_token_id] if isinstance(eos_token_id, numbers.Integral) else eos_token_id
    if not isinstance(ids, (list, tuple)) or not ids or not all(is_id(v) for v in ids):
        raise ArchDSLError(f"generate: eos_token_id must be a token id or a non-empty list of them, each in "
                           f"[0, {vocab}), got {eos_token_id!r}")
    return [int(v) for v in ids], int(ids[0] if pad_token_id is None else pad_token_id)


def check_sampling(max_new_tokens, temperature, top_k, seed, top_p=None, repetition_penalty=None, min_p=None,
                   min_new_tokens=None) -> None:
    """generate's options: max_new_tokens an int >= 0, temperature None or a finite number >= 0 (0: greedy), top_k None
    or an int >= 0 (0: none, as transformers'), seed None or an int, top_p None or a number in (0, 1],
    repetition_penalty None or a finite number > 0, min_p None or a number in [0, 1] (0: none), min_new_tokens None
    or an int >= 0."""
    count = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not count(max_new_tokens) or max_new_tokens < 0:
        raise ArchDSLError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                                    or not 0 <= temperature < math.inf):
        raise ArchDSLError(f"generate: temperature must be None or a finite number >= 0 (0: greedy), "
                           f"got {temperature!r}")
    if top_k is not None and (not count(top_k) or top_k < 0):
        raise ArchDSLError(f"generate: top_k must be None or an int >= 0 (0: no top-k cut), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ArchDSLError(f"generate: top_p must be None or a number in (0, 1], got {top_p!r}")
    if repetition_penalty is not None and (isinstance(repetition_penalty, bool)
                                           or not isinstance(repetition_penalty, numbers.Real)
                                           or not 0 < repetition_penalty < math.inf):
        raise ArchDSLError(f"generate: repetition_penalty must be None or a finite number > 0 (1: off), "
                           f"got {repetition_penalty!r}")
    if min_p is not None and (isinstance(min_p, bool) or not isinstance(min_p, numbers.Real) or not 0 <= min_p <= 1):
        raise ArchDSLError(f"generate: min_p must be None or a number in [0, 1] (0: no cut), got {min_p!r}")
    if min_new_tokens is not None and (not count(min_new_tokens) or min_new_tokens < 0):
        raise ArchDSLError(f"generate: min_new_tokens must be None or an int >= 0, got {min_new_tokens!r}")
    check_seed("generate", seed, none_ok=True)


def penalize(logits, seen, penalty: float):
    """logits [B, V] with those of the tokens `seen` [B, V] (bool) made less likely: divided by `penalty` where
    positive, multiplied where negative (CTRL; transformers' RepetitionPenaltyLogitsProcessor). Computed in float64
    (a penalty past float32's range, 1e-300, stays a number), returned in float32, clamped to its finite range (so
    that sample's subtraction of the max never meets inf - inf)."""
    logits, big = logits.double(), torch.finfo(torch.float32).max
    out = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
    return out.clamp(-big, big).float()


def sample(logits, temperature=1.0, top_k=None, generator=None, top_p=None, where="sample", checked=True, min_p=None):
    """logits [B, V] → tokens [B]: greedy at temperature 0, else softmax sampling from `warp`'s logits (the
    temperature, then top_k, top_p and min_p's cuts). Sampling needs every row's largest logit finite (a -inf logit
    is a token never drawn): a row with a NaN or +inf logit, or with -inf logits only, is ArchDSLError "`where`:
    ... row r ..." (one wait for the device a call; checked=False: the caller checks, as generate's Deferred).
    Greedy takes the argmax as it is (+inf wins; NaN, which torch ranks above every number, too)."""
    if temperature == 0:
        return logits.argmax(-1)
    if checked:
        check_finite(logits, where)
    probs = torch.softmax(warp(logits, temperature, top_k, top_p, min_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def warp(logits, temperature: float, top_k=None, top_p=None, min_p=None):
    """Finite logits [B, V] → those sampling draws from, in transformers' order: divided by temperature (> 0), cut
    to the top_k likeliest tokens (and those tied with the k-th), then to the nucleus of top_p (the likeliest
    tokens, in order, until their probability reaches it: `nucleus`, as transformers computes it, so that tokens
    tied at its edge fall alike: bf16 logits tie), then to the tokens at least min_p times as likely as the
    likeliest (min-p sampling); -inf where cut. The likeliest token is never cut. float32, or float64 where the
    temperature is below float32's smallest normal number (where float32 would take it for 0 and give 0/0)."""
    logits = logits.float() if temperature >= torch.finfo(torch.float32).tiny else logits.double()
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature  # <= 0: a tiny temperature gives -inf, never nan
    if top_k:  # (0: none, as transformers')
        v, _ = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
    if top_p is not None and top_p < 1:
        logits = nucleus(logits, top_p)
    if min_p:  # the likeliest at 0, so p / p_max = exp(logit): kept where >= min_p (0: none, as transformers')
        logits = logits.masked_fill(logits < math.log(min_p), float("-inf"))
    return logits


def nucleus(logits, top_p: float):
    """logits [B, V] with -inf outside each row's nucleus for top_p, as transformers' TopPLogitsWarper: sorted
    ascending (ties fall where its sort puts them), the least likely tokens dropped while their probability sums
    to at most 1 - top_p; the likeliest is always kept, also where 1 - top_p rounds to 1 (top_p 1e-46)."""
    s, order = logits.sort(dim=-1)
    drop = s.softmax(-1).cumsum(-1) <= 1 - top_p
    drop[:, -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


CHECK_EVERY = 32  # generate's steps between two waits for the device to read the deferred finite check


def defers(input_ids, temperature, eos) -> bool:
    """Whether generate defers the logits' finite check (Deferred): sampling (not greedy, which needs none) on a
    card, without an eos (whose stop test waits for the device each step anyway)."""
    return input_ids.is_cuda and temperature != 0 and eos is None


class Deferred:
    """check_finite without a wait for the device each step: note() records, on the device, each row's first step
    whose logits are not finite (and its largest logit, which tells NaN, +inf or -inf only), and gives the logits
    with those rows made 0, which sampling takes (NaN in multinomial is a device-side assert, fatal to the process);
    check() reads the record and raises check_finite's ArchDSLError for the earliest step, naming it."""

    def __init__(self, batch: int, device):
        self.first = torch.full((batch,), -1, dtype=torch.long, device=device)  # [B]: the step, -1 while finite
        self.top = torch.zeros(batch, device=device)  # [B]: the largest logit at that step

    def note(self, logits, step: int):
        top = logits.amax(-1)
        new = ~torch.isfinite(top) & (self.first < 0)
        self.first.masked_fill_(new, step)
        self.top = torch.where(new, top.float(), self.top)
        return logits.masked_fill(~torch.isfinite(top)[:, None], 0.0)

    def check(self) -> None:
        first = self.first.tolist()  # the one wait
        steps = [s for s in first if s >= 0]
        if steps:
            step = min(steps)
            row = first.index(step)
            top = float(self.top[row])
            holds = "NaN" if top != top else "+inf" if top > 0 else "-inf only"
            raise ArchDSLError(f"generate: step {step} (new token {step + 1}): {_no_distribution(row, holds)}")


def _no_distribution(row: int, holds: str) -> str:
    return (f"the logits of row {row} hold {holds}: sampling needs finite logits (NaN or inf weights, or a float16 "
            f"model's overflow, which float32 or bfloat16 may not have)")


def check_finite(logits, where: str) -> None:
    """ArchDSLError naming the first row of logits [B, V] whose largest logit is not finite: it holds NaN or +inf
    (NaN weights, or a 16-bit model's overflow), or nothing but -inf; softmax has no distribution there."""
    if logits.is_meta:  # shapes only
        return
    top = logits.amax(-1)  # NaN where a row holds one, +inf where it holds one, -inf where all are
    bad = ~torch.isfinite(top)
    if not bool(bad.any()):
        return
    row = int(bad.nonzero()[0, 0])
    holds = ("NaN" if bool(logits[row].isnan().any()) else "+inf" if bool(top[row] > 0) else "-inf only")
    raise ArchDSLError(f"{where}: {_no_distribution(row, holds)}")


SEEDS = (-2**63, 2**64)  # what torch's generators take: an int64 or a uint64


def check_seed(where: str, seed, none_ok: bool = False) -> None:
    """ArchDSLError unless seed is an int in SEEDS (or, none_ok, None)."""
    if seed is None and none_ok:
        return
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ArchDSLError(f"{where}: seed must be {'None or ' if none_ok else ''}an int, got {seed!r}")
    if not SEEDS[0] <= seed < SEEDS[1]:
        raise ArchDSLError(f"{where}: seed {seed} is outside what torch's generators take, [-2**63, 2**64)")


GRAPH_MIN_TOKENS = 8  # under cuda_graph None, a generate of fewer new tokens steps eagerly: a capture costs ~3 steps


def graph_fits(model, where: str, batch: int, need: int, new_tokens: int) -> bool:
    """Whether generate replays its steps from a CUDA graph (model.cuda_graph True or None; the input on CUDA).
    Under None not for fewer than GRAPH_MIN_TOKENS new tokens, nor after a capture failed, nor for a cache as big
    as one that did not fit, nor where a replay would differ from the eager steps: under torch.autocast (the
    capture would keep its cast weights, freed when the autocast block ends) or with forward hooks (a replay does
    not call them). Under True autocast is ArchDSLError; hooks run at the capture alone (its warm-up steps and the
    captured one)."""
    autocast = torch.is_autocast_enabled("cuda")
    if model.cuda_graph:
        if autocast:
            raise ArchDSLError(f"{where}: model.cuda_graph is True, but this call runs under torch.autocast, whose "
                               f"cast weights a CUDA graph cannot keep: call it outside autocast (a bf16 model decodes "
                               f"in bf16 without it), or set model.cuda_graph = None or False")
        return True
    too_big = model._graph_too_big
    return (new_tokens >= GRAPH_MIN_TOKENS and model._graph_failed is None and not autocast
            and (too_big is None or batch < too_big[0] or need < too_big[1]) and not hooked(model))


def hooked(model) -> bool:
    """Whether a forward hook (or pre-hook) would run in the decode step: on a module of the model below it (the
    step does not call the model itself), or global."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules() if m is not model)


def graph_runner(model, batch: int, need: int, where: str = "generate", exact: bool = False):
    """model._graph_runner(batch, need, exact), or None where model.cuda_graph is None (the default) and it fails:
    the caller then steps eagerly. A capture that raises makes this model step eagerly from then on, since the same
    step would fail the same way; memory too short for the cache and its graph, every call whose cache is as big
    or bigger (the eager cache is smaller, and with an eos grows as the tokens come). An ArchDSLWarning says why,
    once. Under True each raises (CacheTooBig, which generate words)."""
    try:
        return model._graph_runner(batch, need, exact)
    except CacheTooBig as e:
        if model.cuda_graph is not None:
            raise
        model._graph_too_big = (batch, need)
        warn(f"{where}: {e.message.split(': ', 1)[-1]}; this call, and any whose cache is as big, decodes eagerly")
        return None
    except RuntimeError as e:  # CUDA's and torch's: a wait for the device in a step, an op a graph cannot hold
        if model.cuda_graph is not None:
            raise
        model._graph_failed = " ".join(str(e).split())[:300]
        warn(f"{where}: the decode step could not be captured in a CUDA graph ({model._graph_failed}); this model "
             f"decodes eagerly from now on, which on a card is many times slower (model.cuda_graph = False skips "
             f"the attempt, True raises instead)")
        return None


def graph_len(n: int) -> int:
    """The static cache's length for a graph of n positions: n rounded up to one of four lengths an octave (5, 6,
    7 or 8 × 2^k, at most a quarter more), at least 64, so that generates of nearby lengths replay one graph."""
    if n <= 64:
        return 64
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


class GraphedStep:
    """The decode step captured in a CUDA graph over a static cache (fixed buffers, position in
    tensors); each call copies the tokens in, replays, and returns the logits."""

    def __init__(self, model, batch: int, max_len: int):
        # the capture stream on the model's card, not the current one; and outside torch.inference_mode(), so that
        # the buffers the graph replays on are normal tensors, which a generate under the mode and one outside it
        # both write in place (an inference tensor would be copied outside the mode, off the graph's buffers)
        with CAPTURING, torch.cuda.device(model.device), torch.inference_mode(False):
            self._capture(model, batch, max_len)

    def _capture(self, model, batch: int, max_len: int):
        self.model = model
        self.cache = model.init_cache(batch, max_len=max_len, static=True)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=model.device)
        snapshot = [t.clone() for t in self.cache.tensors()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm up: allocator pools, fused weights, Triton autotuning
                model._step(self.tokens, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # captured on the warm-up's stream, on the model's card: torch.cuda.graph's default capture stream is one a
        # process, made on the card current at its first capture (a second card's capture then went to the first's);
        # thread_local: CUDA calls of the process's other threads meanwhile are not refused (global mode's)
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"), torch.no_grad():
            self.logits = model._step(self.tokens, self.cache)
        for t, s in zip(self.cache.tensors(), snapshot):
            t.copy_(s)
        for s in self.cache.counts():  # the warm-up's and the capture's eager counts
            s["n"] = 0

    def __call__(self, tokens):
        self.tokens.copy_(tokens)
        with torch.cuda.device(self.model.device):
            self.graph.replay()
        self.cache.advance()
        return self.logits.clone()
