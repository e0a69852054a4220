"""ArchModel: embedding → layers → final norm → LM head, built from a spec's layer graph.

    model(input_ids [B, L], cache=None) → logits [B, L, V]     (a fresh cache is filled: prefill)
    model.init_cache(batch) → Cache ; model.step(tokens [B], cache) → logits [B, V]
    model.set_ssm_state_dtype(torch.bfloat16)   (the SSM states of later caches; float32 by default)
    model.generate(input_ids, max_new_tokens, temperature=None, top_k=None, seed=None, ...)   (greedy by default)
    model(input_ids, cache, attention_mask=mask [B, L])   (left-padded prompts: pads first; model/packed.py)
    model.save(dir) → spec.yaml + model.safetensors (written aside, then renamed into place)
"""
from __future__ import annotations

import itertools
import numbers
import os
import re

import torch
import torch.nn as nn

from ..atomic import atomic_dir, cannot_write, check_control
from ..blocks.base import INJECT
from ..errors import ArchDSLError, check_flag, check_path, out_of_memory, shown
from ..graph import layers as graph_layers
from ..units import human
from .companions import check_companions, write_companions
from .fusions import Fusable, Fuse, resolve_fuse
from .layer import Layer, Norm
from .decoding import CacheTooBig, GraphedStep, graph_len
from .packed import Packed, refusal, unpacked_blocks

SAVE_FILES = frozenset({"spec.yaml", "model.safetensors"})  # what save() writes, all of it
class Cache:
    """Every layer's decode state (states[i][role] = the block's state dict) and the position."""

    def __init__(self, states: list, batch: int, static: bool = False, max_len: int | None = None,
                 made_for: tuple | None = None):
        self.states, self.batch, self.static, self.max_len = states, batch, static, max_len
        self.made_for = made_for  # (spec, dtype, device) of the model that made it: only that model takes it
        self.pos = 0
        # some of its tensors may be inference tensors (made or written under torch.inference_mode()): _writable
        self.inference = torch.is_inference_mode_enabled()

    def bound(self, positions: int) -> None:
        """This cache will never hold more than `positions` tokens (generate's prompt + max_new_tokens): the KV
        buffers that grow by doubling stop there rather than double past it."""
        for layer in self.states:
            for s in layer.values():
                if s and "limit" in s:
                    s["limit"] = positions

    def _writable(self) -> None:
        """Before a call that writes the states in place (forward, step, reset). Under torch.inference_mode() the
        states may become inference tensors, which torch then refuses to write in place outside the mode ("Inplace
        update to inference tensor outside InferenceMode"): a call outside it first replaces each of those by a
        normal copy, once (a cache filled under inference_mode, then stepped under no_grad, as transformers'
        caches allow)."""
        if torch.compiler.is_compiling():
            return
        if torch.is_inference_mode_enabled():
            self.inference = True
            return
        if not self.inference:
            return
        with torch.no_grad():
            for layer in self.states:
                for s in layer.values():
                    for name, t in (s or {}).items():
                        if isinstance(t, torch.Tensor) and t.is_inference():
                            s[name] = t.clone()
        self.inference = False

    def tensors(self):
        for layer in self.states:
            for s in layer.values():
                if s:
                    yield from (t for t in s.values() if isinstance(t, torch.Tensor))

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (KV buffers as allocated, SSM / conv / shift states;
        integer position counters left out)."""
        return sum(t.numel() * t.element_size() for t in self.tensors() if t.is_floating_point() or t.is_complex())

    def counts(self) -> list[dict]:
        """The layer states that count their tokens in Python (state["n"], attention's and zamba's): a chunked
        forward continues such a cache when its count is above 0, and takes the chunk for a fresh prefill
        otherwise."""
        return [s for layer in self.states for s in layer.values() if s and "n" in s]

    def advance(self, n: int = 1) -> None:
        """Count n tokens that a CUDA graph's replay wrote: the graph advances the position tensors, but not the
        Python counts, which only the eager calls advance."""
        self.pos += n
        for s in self.counts():
            s["n"] += n

    def reset(self):
        """Back to position 0 in place (static buffers keep their addresses, unless they were made under
        torch.inference_mode() and the reset runs outside it: _writable)."""
        self._writable()
        for t in self.tensors():
            t.zero_()
        for s in self.counts():
            s["n"] = 0
        self.pos = 0


class ArchModel(nn.Module):
    def __init__(self, spec, modules: dict | None = None):
        super().__init__()
        from .modules import MODULES

        self.spec = spec
        self.companions: dict[str, bytes] = {}  # COMPANIONS files read with the weights, written with them
        d = spec.d_model
        # its own init is skipped (_weight): the one below replaces it, and on the meta device torch's
        # normal_ imports torch._dynamo (1.5 s, most of a meta build of jamba-v0.1)
        self.embeddings = nn.Embedding(spec.vocab_size, d, _weight=torch.empty(spec.vocab_size, d))
        self.embed_norm = Norm(spec.norm, d, spec.norm_eps) if spec.embed_norm else None
        shared: dict[str, nn.Module] = {}
        built = []
        for i, subs in enumerate(graph_layers(spec.graph)):
            blocks, inject_use = {}, None
            for s in subs:
                if s.kind not in MODULES:
                    raise ArchDSLError(f"layer {i}: block {s.kind!r} has no module yet (have: {', '.join(sorted(MODULES))})")
                cls = MODULES[s.kind]
                if s.group is not None:
                    if s.group not in shared:
                        shared[s.group] = _build(cls, s.config, i)
                    m = shared[s.group]
                else:
                    m = _build(cls, s.config, i)
                blocks[s.role] = m
                if s.role == INJECT and hasattr(cls, "per_use"):
                    inject_use = cls.per_use(s.config)
            built.append(Layer(i, blocks, spec.norm, d, spec.norm_eps, inject_use))
        self.layers = nn.ModuleList(built)
        self.norm_f = Norm(spec.norm, d, spec.norm_eps)
        self.lm_head = nn.Linear(d, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight
        if self.embeddings.weight.device.type != "meta":
            nn.init.normal_(self.embeddings.weight, std=0.02)
            if not spec.tie_embeddings:
                nn.init.normal_(self.lm_head.weight, std=0.02)
        self.aux_loss = torch.zeros(())
        self._graphs = {}
        self.cuda_graph = None  # generate on CUDA: a graph where one captures (the property below)
        self._ssm_dtype = None  # set_ssm_state_dtype
        self._unpacked = unpacked_blocks(spec)  # forward refuses seq_idx where these are (model/packed.py)
        self._unpadded = unpacked_blocks(spec, "PADS")  # and attention_mask with pads where these are

    # --- info ----------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameters, a tied or shared tensor counted once (analyze's `params`)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self):
        return self.embeddings.weight.device

    @property
    def dtype(self):
        return self.embeddings.weight.dtype

    def set_fuse(self, fuse: Fuse = True) -> "ArchModel":
        """Switch the fusions (archdsl.model.fusions.FUSIONS): True all, False none, a set of names
        exactly those (an unknown name raises ArchDSLError). Drops a captured decode graph, which
        holds the fusions of its capture. Returns the model."""
        names = resolve_fuse(fuse)
        for m in self.modules():
            if isinstance(m, Fusable):
                m.fused = names & frozenset(m.FUSES)
        self._drop_graphs()
        return self

    def set_ssm_state_dtype(self, dtype=None) -> "ArchModel":
        """The dtype of the Mamba and Mamba-2 SSM states in the decode caches made from now on: None (the
        default) float32, float64 in a float64 model; or float32, bfloat16, float16, float64 (a torch dtype or
        its name). A 16-bit state (mamba_ssm's default in a 16-bit model) halves the largest part of an SSM
        model's cache and the bytes a decode step moves; the steps still compute in float32 and round only
        what they store, but a state rounded every token keeps less of the distant past. Drops a captured
        decode graph, whose cache holds the old dtype. Returns the model."""
        self._ssm_dtype = resolve_ssm_dtype(dtype)
        self._drop_graphs()
        return self

    @property
    def cuda_graph(self) -> bool | None:
        """How generate steps on CUDA: None (the default) replays a CUDA graph, and steps eagerly where a capture
        fails (a warning says why); True replays one (a failed capture raises); False steps eagerly. Setting it
        tries a capture again, and False drops the graph held, with its cache."""
        return self._cuda_graph

    @cuda_graph.setter
    def cuda_graph(self, value) -> None:
        self._cuda_graph = check_flag("model", "cuda_graph", value, none_ok=True)
        self._graph_failed = self._graph_too_big = None  # asked again
        if self._cuda_graph is False:
            self._graphs = {}

    _cuda_graph = None  # a model pickled before cuda_graph was a property: the default
    _graph_failed = None  # why a capture under cuda_graph None failed: generate then steps eagerly
    _graph_too_big = None  # (batch, positions) whose static cache did not fit under None: no bigger one is tried

    def _drop_graphs(self) -> None:
        """Forget the captured decode graph, with its cache, and what a capture that failed said: the step changed
        (fusions, state dtype, a move or cast), or the user asks again."""
        self._graphs, self._graph_failed, self._graph_too_big = {}, None, None

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half() and the like: the parameters' storage changes (attention re-packs its q/k/v even
        for a move to where it is), so a graph captured over the old storage would replay on freed memory."""
        self._drop_graphs()
        return super()._apply(fn, recurse)

    def __setstate__(self, state):
        if "cuda_graph" in state:  # pickled when cuda_graph was a plain attribute: the property's value now
            state["_cuda_graph"] = state.pop("cuda_graph")
        super().__setstate__(state)

    def __getstate__(self):
        """Pickled and deep-copied without the captured graph (a CUDA graph and its cache are not copied)."""
        state = {**super().__getstate__(), "_graphs": {}, "_graph_failed": None, "_graph_too_big": None}
        state.pop("_graph_lock", None)  # decoding.graph_lock's: a lock is not copied; the copy makes its own
        state.pop("_graph_done", None)
        return state

    @property
    def ssm_state_dtype(self) -> torch.dtype:
        """The Mamba / Mamba-2 SSM states' dtype in a new decode cache (set_ssm_state_dtype)."""
        from .modules.mamba import state_dtype

        return state_dtype(self.dtype, self._ssm_dtype)

    @property
    def fusions(self) -> frozenset[str]:
        """The fusions switched on in this model's modules (those it has no module for are left out)."""
        return frozenset().union(*(m.fused for m in self.modules() if isinstance(m, Fusable)))

    # --- running ---------------------------------------------------------------------------
    def init_cache(self, batch: int, max_len: int | None = None, static: bool = False) -> Cache:
        """Empty decode state for `batch` sequences. `max_len` preallocates the attention KV
        buffers (else they grow by doubling); `static` fixes every buffer for CUDA graphs. The SSM
        states are in `ssm_state_dtype`. A cache filled under torch.inference_mode() may be used outside it: its
        inference tensors are copied once at the first such call (Cache._writable)."""
        _check_count("init_cache", "batch", batch)
        if max_len is not None:
            _check_count("init_cache", "max_len", max_len)
        if not isinstance(static, bool):
            raise ArchDSLError(f"init_cache: static must be True or False, got {static!r}")
        return self._new_cache("init_cache", batch, max_len, static)

    def _new_cache(self, where: str, batch: int, max_len: int | None, static: bool) -> Cache:
        """init_cache's work; a state too big to allocate is ArchDSLError "where: ...", not the allocator's."""
        try:
            if max(batch, max_len or 0) >= 2**62:  # no tensor is that long: torch's sizes are int64
                raise MemoryError
            states = [layer.init_state(batch, self.device, self.dtype, max_len=max_len, static=static,
                                       ssm_dtype=self._ssm_dtype)
                      for layer in self.layers]
        except ValueError as e:  # a block's own check: a static attention or zamba cache needs max_len
            raise ArchDSLError(f"{where}: {e}") from None
        except (RuntimeError, MemoryError) as e:
            if not (isinstance(e, MemoryError) or out_of_memory(e) or "overflow" in str(e)):
                raise
            held = f"batch {batch:,}" + (f", {max_len:,} positions" if max_len is not None else "")
            asked = re.search(r"allocate (\d+) bytes", str(e))  # the CPU allocator's; CUDA's gives GiB itself
            asked = human(int(asked[1]), "B") if asked else re.search(r"allocate ([\d.]+ [KMGTP]?i?B)", str(e))
            raise CacheTooBig(f"{where}: the decode cache ({held}) does not fit in memory on {self.device}"
                              + (f" (one buffer alone asks for {asked if isinstance(asked, str) else asked[1]})"
                                 if asked else "")) from None
        return Cache(states, batch, static, max_len, made_for=self._cache_for())

    def _cache_for(self) -> tuple:
        """What a cache's states are shaped by: the spec (layers, widths, state sizes), dtype and device."""
        return self.spec, self.dtype, self.device

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None,
                logits_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids [B, L] (int64 or int32) → logits [B, L, V] in the model's dtype; sets self.aux_loss (sum of MoE
        balancing losses). cache (init_cache(B)): takes the L tokens' states and advances by L, for step or another
        forward to continue from (prefill); a cache that already holds tokens is continued in parallel, the chunk
        attending over the cached keys and its own in one call (a static cache's zamba block steps through it).
        logits_mask [B, L] bool: only the logits of the True positions, [n, V] in row-major order
        (a loss that scores a few positions skips the head's [B, L, V] product and its memory).
        logits_to_keep (transformers' argument): 0 for every position's logits, else only the last N positions',
        [B, min(N, L), V] (a prefill that samples from its last token: [B, 1, V] with 1, not [B, L, V]).
        seq_idx [B, L] integers: packed sequences, a new one wherever the value changes (mamba_ssm's
        convention); every token gets the logits it would have alone (model/packed.py; no cache).
        attention_mask [B, L] bool or 0/1 (HF's): left-padded rows, 0 at the pads, all before the row's tokens;
        every token gets the logits it would have without the pads (the pads' own logits mean nothing), and a
        fresh cache is left as the unpadded prompt would leave it, so that steps and generate continue each row
        (model/packed.py; every block must take padding, PADS)."""
        self._check_tokens("forward", "input_ids", input_ids, 2, cache)
        if cache is not None:
            self._check_room("forward", cache, input_ids.shape[1])
            cache._writable()
        if logits_mask is not None:
            _check_per_token("forward", "logits_mask", "a bool", logits_mask, input_ids, bool_ok=True)
            if logits_mask.dtype != torch.bool:  # an integer mask would index rows, not pick them
                raise ArchDSLError(f"forward: logits_mask must be a bool tensor of the shape of input_ids "
                                   f"{list(input_ids.shape)}, got {str(logits_mask.dtype).replace('torch.', '')}")
            if logits_mask.is_meta:
                raise ArchDSLError("forward: logits_mask on the meta device: the rows it picks are in its values, "
                                   "which a meta tensor does not hold")
        if not isinstance(logits_to_keep, numbers.Integral) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
            raise ArchDSLError(f"forward: logits_to_keep must be an int >= 0 (0: every position's logits), got "
                               f"{shown(logits_to_keep)}")
        if logits_to_keep and logits_mask is not None:
            raise ArchDSLError("forward: logits_mask and logits_to_keep each pick the positions to score; give one")
        packed = self._padded("forward", attention_mask, input_ids, cache, seq_idx)
        if packed is None:
            packed = self._packed(seq_idx, input_ids, cache)
        emb = self.embeddings(input_ids)
        h = self._stream(emb)
        delta = None
        aux = []
        for i, layer in enumerate(self.layers):
            h, delta = layer(h, delta, None if cache is None else cache.states[i], emb=emb, packed=packed)
            if layer.aux_loss is not None:
                aux.append(layer.aux_loss)
        _, x = self.norm_f.add_norm(h, delta)
        self.aux_loss = torch.stack(aux).sum() if aux else torch.zeros((), device=h.device)
        if cache is not None:
            cache.pos += input_ids.shape[1]
        if logits_mask is not None:
            x = x[logits_mask]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.lm_head(x)

    def _packed(self, seq_idx, input_ids, cache):
        """forward's seq_idx as the blocks read it (model/packed.py's Packed), None for None; ArchDSLError for
        one that is not an integer tensor of input_ids' shape and device, with a cache, or in a model with a
        block that cannot keep sequences apart (no PACKS)."""
        if seq_idx is None:
            return None
        # a bool start-of-document flag is not a sequence number
        _check_per_token("forward", "seq_idx", "an integer", seq_idx, input_ids, bool_ok=False)
        if cache is not None:
            raise ArchDSLError("forward: seq_idx (packed sequences) takes no cache: a cache continues one sequence a row")
        if self._unpacked:
            raise refusal("forward: seq_idx (packed sequences)", *self._unpacked[0])
        return None if seq_idx.is_meta else Packed.of(seq_idx)  # meta: shapes only, which the packing keeps

    def _padded(self, where, mask, input_ids, cache, seq_idx=None):
        """attention_mask as the blocks read it (a Packed with `keep`), None for None or a mask without a pad;
        ArchDSLError for one that is not a bool or 0/1 integer tensor of input_ids' shape and device, pads
        anywhere but a row's start, a row of pads only, a cache already holding tokens, seq_idx beside it, or
        pads in a model with a block that cannot skip them (no PADS). Reads the mask on the host."""
        if mask is None:
            return None
        _check_per_token(where, "attention_mask", "a bool or 0/1 integer", mask, input_ids, bool_ok=True)
        if seq_idx is not None:
            raise ArchDSLError(f"{where}: attention_mask and seq_idx together: pad the rows or pack them, not both")
        if mask.is_meta:  # shapes only: where the pads are is in the values, and the shapes do not depend on it
            return None
        m = mask.detach().to("cpu", torch.int64)
        if ((m != 0) & (m != 1)).any():
            raise ArchDSLError(f"{where}: attention_mask holds {sorted(set(m.unique().tolist()) - {0, 1})[:3]}: "
                               f"1 marks a token, 0 a pad")
        if (m[:, 1:] < m[:, :-1]).any() or not m[:, -1].all():
            row = int(((m[:, 1:] < m[:, :-1]).any(1) | (m[:, -1] == 0)).nonzero()[0])
            what = "holds pads only" if not m[row].any() else "has a pad after a token"
            raise ArchDSLError(f"{where}: attention_mask row {row} {what}: the pads must come first (left "
                               f"padding), each row ending in a token")
        if bool(m.all()):
            return None
        if cache is not None and cache.pos:
            raise ArchDSLError(f"{where}: attention_mask with pads takes a fresh cache (this one holds "
                               f"{cache.pos} tokens): the pads come before a prompt's first token")
        if self._unpadded:
            raise refusal(f"{where}: attention_mask (left padding)", *self._unpadded[0], flag="PADS")
        return Packed.padding(mask.bool())

    def _stream(self, emb):
        """The residual stream's start from the embeddings: embed_norm'd if the spec says so, float32
        with residual_fp32 in a 16-bit model."""
        h = self.embed_norm(emb) if self.embed_norm is not None else emb
        return h.float() if self.spec.residual_fp32 and h.dtype in (torch.bfloat16, torch.float16) else h

    def _step(self, tokens, cache):
        emb = self.embeddings(tokens)
        h = self._stream(emb)
        delta = None
        for i, layer in enumerate(self.layers):
            h, delta = layer(h, delta, cache.states[i], emb=emb, step=True)
        _, x = self.norm_f.add_norm(h, delta)
        return self.lm_head(x)

    def step(self, tokens: torch.Tensor, cache: Cache) -> torch.Tensor:
        """tokens [B] → logits [B, V]; advances the cache by one token. Call it under torch.no_grad() to decode: where
        autograd records and the weights require grad, the steps take their differentiable torch paths, not the
        Triton kernels (which have no backward)."""
        if not isinstance(cache, Cache):
            raise ArchDSLError(f"step: cache must be a Cache (model.init_cache(batch)), got {type(cache).__name__}")
        self._check_tokens("step", "tokens", tokens, 1, cache)
        self._check_room("step", cache, 1)
        cache._writable()
        out = self._step(tokens, cache)
        cache.pos += 1
        return out

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float | None = None, top_k: int | None = None,
                 seed: int | None = None, attention_mask: torch.Tensor | None = None, top_p: float | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 repetition_penalty: float | None = None, min_p: float | None = None,
                 min_new_tokens: int | None = None, num_return_sequences: int = 1):
        """Prefill input_ids [B, L] (int64 or int32) through the parallel path, then decode step by step, under
        torch.no_grad(). temperature 0 = greedy; above 0, sampling from softmax(logits / temperature), cut to the
        top_k likeliest tokens, then to the nucleus of top_p (the fewest likeliest tokens whose probability
        reaches top_p), then to the tokens at least min_p times as likely as the likeliest, as transformers'
        generate does. temperature None (the default): greedy, as transformers' and mamba_ssm's generate are by
        default, unless top_k, top_p or min_p is given, which then samples at 1 (top_k 0 and min_p 0 are no cut,
        as transformers', and ask for no sampling).
        seed (an int): the draws come from a generator of that seed, the same tokens for the same seed; None: from
        torch's global generator. Returns [B, L + max_new_tokens], the prompt then the new tokens, in input_ids'
        dtype. On CUDA the decode steps are replayed from a CUDA graph (model.cuda_graph: None, the default, from 8
        new tokens on, or True; False steps eagerly), captured for each batch size and cache length, the length
        rounded up to one of four an octave (at least 64) so that generates of nearby lengths replay one graph;
        docs/kernels.md says where None steps eagerly instead (autocast, forward hooks, a capture that failed, with
        an ArchDSLWarning saying why). attention_mask [B, L] (bool or 0/1, HF's): prompts of different
        lengths, left-padded (the pads first); each row continues as its prompt alone would (forward).
        eos_token_id (one id or a list, as transformers'): a row that has produced one goes on with pad_token_id
        (default: the first eos id), and generation stops once every row has, so the result may be shorter,
        [B, L + n] with n <= max_new_tokens (one wait for the device a step). min_new_tokens: the eos ids are not
        drawn before that many new tokens (their logits -inf, as transformers'); it needs eos_token_id.
        num_return_sequences n (sampling only, as transformers'): n continuations of each prompt, rows
        [B·n, ...] with prompt b's at b·n .. b·n + n - 1, each drawn on its own.
        The decode cache: with eos_token_id its attention KV buffers grow by doubling as the tokens come, never
        past L + max_new_tokens positions, so a large max_new_tokens costs no memory until it is used; without
        one every step runs, and the cache is allocated for L + max_new_tokens positions at once, as is the
        static cache the CUDA graph replays on (rounded up; exactly that where the rounded one does not fit). A
        cache that does not fit, then or while growing, is ArchDSLError naming max_new_tokens.
        repetition_penalty θ (CTRL's, as transformers' RepetitionPenaltyLogitsProcessor; None or 1: off): before
        the temperature, the logit of every token already in the row is divided by θ where positive, multiplied
        where negative; the pads of attention_mask do not count as in the row."""
        from .decoding import generate

        return generate(self, input_ids, max_new_tokens, temperature, top_k, seed, attention_mask, top_p,
                        eos_token_id, pad_token_id, repetition_penalty, min_p, min_new_tokens, num_return_sequences)

    def _check_tokens(self, where: str, name: str, ids, ndim: int, cache: Cache | None = None) -> None:
        """Token ids as `where` takes them, else ArchDSLError: an int64 or int32 tensor, [batch, length] (ndim 2)
        or [batch] (ndim 1), with a token, on the model's device, fitting the cache (_check_cache). Their values
        lie in [0, vocab) where checking needs no wait for the GPU: on the CPU, not while torch.compile traces.
        (On CUDA an id past the vocabulary ends in the embedding's device-side assert; generate checks its prompt
        there too.)"""
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != ndim:
            got = (f"{str(ids.dtype).replace('torch.', '')} {list(ids.shape)}" if isinstance(ids, torch.Tensor)
                   else type(ids).__name__)
            shape = "[batch, length]" if ndim == 2 else "[batch]"
            raise ArchDSLError(f"{where}: {name} must be an int64 or int32 tensor {shape} of token ids, got {got}")
        if ids.layout != torch.strided:  # sparse: no path reads it
            raise ArchDSLError(f"{where}: {name} must be a dense tensor of token ids, got layout {ids.layout}")
        if ids.numel() == 0:
            raise ArchDSLError(f"{where}: {name} holds no token (shape {list(ids.shape)})")
        if ids.device != self.device:
            raise ArchDSLError(f"{where}: {name} is on {ids.device}, the model on {self.device}")
        if cache is not None:
            self._check_cache(where, name, ids, cache)
        if ids.device.type not in ("cuda", "meta") and not torch.compiler.is_compiling():  # meta: no values
            self._check_range(where, name, ids)

    def _check_cache(self, where: str, name: str, ids, cache: Cache) -> None:
        """A Cache with a row of ids for each of its sequences, made by this model in its present dtype and on its
        present device (one of the same spec fits too), else ArchDSLError."""
        if not isinstance(cache, Cache):
            raise ArchDSLError(f"{where}: cache must be a Cache (model.init_cache(batch)) or None, "
                               f"got {type(cache).__name__}")
        if ids.shape[0] != cache.batch:
            raise ArchDSLError(f"{where}: {name} has {ids.shape[0]} sequences, the cache {cache.batch}")
        if cache.made_for is None or torch.compiler.is_compiling() or cache.made_for == self._cache_for():
            return
        spec, dtype, device = cache.made_for
        if spec != self.spec:
            raise ArchDSLError(f"{where}: the cache was made by a model of another spec: make one with this model's "
                               f"init_cache")
        raise ArchDSLError(f"{where}: the cache was made for {str(dtype).replace('torch.', '')} on {device}, the model "
                           f"is now {str(self.dtype).replace('torch.', '')} on {self.device}: make a new one with "
                           f"init_cache")

    @staticmethod
    def _check_room(where: str, cache: Cache, n: int) -> None:
        """ArchDSLError unless a static cache has room for `n` more tokens (its buffers would wrap around)."""
        if cache.static and cache.max_len is not None and cache.pos + n > cache.max_len:
            raise ArchDSLError(f"{where}: the cache is full: max_len {cache.max_len}, {cache.pos} tokens held, "
                               f"{n} more given")

    def _check_range(self, where: str, name: str, ids) -> None:
        """Every id in [0, vocab), else ArchDSLError naming the argument and one id out of it (a CUDA tensor: one
        wait for the GPU)."""
        lo, hi = (int(v) for v in torch.aminmax(ids))
        vocab = self.embeddings.num_embeddings
        if lo < 0 or hi >= vocab:
            raise ArchDSLError(f"{where}: {name}: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab})")

    def _graph_runner(self, batch: int, need: int, exact: bool = False) -> GraphedStep:
        """The decode step captured for `batch` rows over a static cache of graph_len(need) positions (`exact`:
        need, as the timings take it), or of `need` where that does not fit; the one held if it is either and the
        parameters and buffers are where they were at its capture. One is held at a time: its buffers are big.
        Memory too short for the exact one is CacheTooBig."""
        sizes = [need] if exact else list(dict.fromkeys((graph_len(need), need)))
        # where the weights are: a replaced parameter (a move or cast drops the graph itself: _apply)
        where = tuple(t.data_ptr() for t in itertools.chain(self.parameters(), self.buffers()))
        keys = [(batch, n, where) for n in sizes]
        for key in keys:
            if key in self._graphs:
                return self._graphs[key]
        for n, key in zip(sizes, keys):
            self._graphs = {}  # the old graph's buffers go before the new ones are made
            try:
                self._graphs = {key: GraphedStep(self, batch, n)}
            except CacheTooBig:  # init_cache's
                if n == need:
                    raise
            except RuntimeError as e:  # memory short in the capture
                if not out_of_memory(e):
                    raise
                if n == need:
                    raise CacheTooBig(f"init_cache: the decode cache and its CUDA graph (batch {batch:,}, {n:,} "
                                      f"positions) do not fit in memory on {self.device}") from None
            else:
                return self._graphs[key]

    # --- saving ----------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write spec.yaml + model.safetensors into the directory `path` (a str or os.PathLike; made if need be),
        and the Hugging Face tokenizer and generation files the model carries (self.companions: read by load or
        from_hf): first into a temporary directory beside it, then renamed into place, so a failed save never
        replaces a good one. A directory there holding anything but an earlier save's files is refused
        (ArchDSLError), as is an earlier save with companion files this save would drop (its tokenizer.json); a
        write that fails (a full disk, a file too large) is ArchDSLError `cannot write PATH: reason`, nothing left
        behind. Before anything is written, the companions are checked (names of COMPANIONS, bytes), and the
        tensors' dtypes (float32, float64, bfloat16, float16: what load reads)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        path = check_path("save", path, "directory's path")
        check_control(path, "save: path")
        check_spec_layout(self, "save")
        check_has_weights(self, "save")
        check_companions(self.companions, "save")
        check_saved_dtypes(self, "save")
        try:
            with atomic_dir(path, SAVE_FILES, frozenset(self.companions)) as tmp:  # a tokenizer it lacks: refused
                with open(os.path.join(tmp, "spec.yaml"), "w", encoding="utf-8") as f:
                    f.write(self.spec.to_yaml())
                write_companions(self.companions, tmp)
                save_file(self._tensors_to_save(), os.path.join(tmp, "model.safetensors"),
                          metadata={"format": "pt", "dtype": str(self.dtype).replace("torch.", "")})
        except (OSError, SafetensorError) as e:  # atomic_dir removed the temporary directory
            raise cannot_write(path, e) from None

    def _tensors_to_save(self) -> dict:
        """name → tensor, each parameter once (a tied or shared one under its first name, as
        load_weights accepts any alias); views into a larger storage (the packed q/k/v) copied out."""
        out, seen = {}, set()
        for name, t in self.state_dict(keep_vars=True).items():
            if id(t) in seen:
                continue
            seen.add(id(t))
            t = t.detach()
            whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
            out[name] = t if whole else t.contiguous().clone()
        return out


def resolve_ssm_dtype(dtype) -> torch.dtype | None:
    """None, or a floating torch dtype or its name ("bf16", "float32", ...), as a torch dtype; else
    ArchDSLError naming the argument."""
    if dtype is None:
        return None
    from . import resolve_dtype

    try:
        return resolve_dtype(dtype)
    except ArchDSLError as e:
        raise ArchDSLError(f"ssm_state_dtype must be float32, bfloat16, float16 or float64, got {dtype!r}",
                           hint=e.hint if "did you mean" in e.hint else "") from None


def _check_per_token(where: str, name: str, kind: str, t, input_ids, bool_ok: bool) -> None:
    """ArchDSLError unless t is an integer (or, bool_ok, bool) tensor of input_ids' shape and device."""
    if (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex()
            or (t.dtype == torch.bool and not bool_ok) or t.shape != input_ids.shape):
        got = f"{str(t.dtype).replace('torch.', '')} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ArchDSLError(f"{where}: {name} must be {kind} tensor of the shape of input_ids {list(input_ids.shape)}, "
                           f"got {got}")
    if t.layout != torch.strided:  # sparse: no path reads it
        raise ArchDSLError(f"{where}: {name} must be a dense tensor, got layout {t.layout}")
    if t.device != input_ids.device:
        raise ArchDSLError(f"{where}: {name} is on {t.device}, input_ids on {input_ids.device}")


def _check_count(where: str, name: str, value) -> None:
    """ArchDSLError unless value is an int >= 1."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ArchDSLError(f"{where}: {name} must be an int >= 1, got {value!r}")


def check_has_weights(model: nn.Module, where: str) -> None:
    """ArchDSLError for a model on the meta device (compile(device="meta")): it has no weights to write. Entries of
    the state_dict that are not tensors (a quantized Linear's dtype and packed parameters) are passed over:
    check_spec_layout says what is wrong with those."""
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in model.state_dict().values()):
        raise ArchDSLError(f"{where}: the model is on the meta device and has no weights to write (compile it on "
                           f"a real device, or load weights into it first)")


SAVED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # what compile builds and load reads


def check_saved_dtypes(model: nn.Module, where: str) -> None:
    """ArchDSLError, before anything is written, for a floating or complex tensor of the state_dict in a dtype no
    model computes in (model.to(torch.float8_e4m3fn), .to(torch.complex64)): load and transformers would refuse
    what was written. Names the first such tensor."""
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.dtype not in SAVED_DTYPES:
            raise ArchDSLError(f"{where}: {name} is {str(t.dtype).replace('torch.', '')}; a saved model's tensors "
                               f"are float32, float64, bfloat16 or float16 (model.to(torch.bfloat16), say)")


def check_spec_layout(model: "ArchModel", where: str) -> None:
    """ArchDSLError, before anything is written, unless `model`'s state_dict holds the tensors of its spec's model
    under their names: a sublayer wrapped (PEFT's LoRA: base_layer, lora_A, lora_B) or replaced (torch.ao's
    quantize_dynamic, a parametrization) changes them, and what save or export would write then is no model that
    load or transformers read. Names the first such module (where the model and a fresh one of its spec, built on
    the meta device, hold modules of other types), else the first tensor missing or unexpected. Forward hooks,
    which change no tensor, pass."""
    with torch.device("meta"):
        fresh = ArchModel(model.spec)
    have, want = model.state_dict(keep_vars=True), fresh.state_dict(keep_vars=True)
    if have.keys() == want.keys():
        return
    module = None
    built = dict(fresh.named_modules())
    for name, mod in model.named_modules():
        if name in built and type(mod) is not type(built[name]):
            module = (name, mod, built[name])
            break
    if module is not None:
        name, mod, base = module
        cls = type(mod)
        what = (f"{name} is a {cls.__module__}.{cls.__qualname__}, not the {type(base).__name__} the spec's model has "
                f"there")
    else:
        extra, missing = [k for k in have if k not in want], [k for k in want if k not in have]
        what = (f"tensor {extra[0]!r} is not in the model of this spec" if extra
                else f"tensor {missing[0]!r} of the spec's model is missing")
    quantized = any("_packed_params" in k for k in have) or module is not None and "quantized" in cls.__module__
    raise ArchDSLError(
        f"{where}: the model's sublayers are wrapped or replaced ({what}); its weights are not laid out as its "
        f"spec's, and no archdsl or Hugging Face loader would read what would be written",
        hint=("dequantize it first (save or export the model from before quantize_dynamic, and quantize after "
              "loading)" if quantized else
              "merge the adapter into the base weights first (PEFT: model = peft_model.merge_and_unload()), or save "
              "the base model without the adapter"))


def _build(cls, cfg, index):
    try:
        return cls(cfg)
    except (ValueError, RuntimeError) as e:
        raise ArchDSLError(f"layer {index}: cannot build {cfg.kind}: {e}") from None
