"""Packed sequences: several documents in one row of a batch, told apart by seq_idx [B, L] (mamba_ssm's and
causal-conv1d's convention: any integers, a new sequence wherever the value changes).

model(input_ids, seq_idx=...) gives every token the logits it would have in a row of its own: Mamba-2 and
Mamba-1 restart their conv window and scan state where seq_idx changes (kernels' seq_idx), RWKV-6 and RWKV-4 their
WKV states (wkv6's and wkv4's seq_idx) and token shifts (zeros at a sequence's start), attention sees only its own
sequence's keys and counts RoPE positions from that sequence's start, S4D's convolution (no restart) runs on each
sequence in a row of its own (`in_rows`: sequences of like length share rows of a power-of-two width, so the
rows' steps stay under twice the tokens'), and position-wise blocks (MLP, MoE)
need nothing. A module class that keeps sequences apart says so with PACKS = True; one without it is refused
before anything runs.

Left padding (model(ids, cache, attention_mask=...), generate(..., attention_mask=...)) is the same thing with
two sequences a row, the pads then the prompt: `Packed.padding(mask)` adds `keep`, the mask as bool. The blocks
that pack need only that the conv states they leave hold zeros, not pads (Mamba-2 zeroes its conv input at the
pads), and attention keeps each row's pad count in its cache (state["start"]), so that decode steps skip those
keys and count RoPE positions from the prompt. From a zero state a zero input leaves S4D and Mamba-1 at zero:
they zero their inputs at the pads (S4D's u; Mamba-1's conv and scan inputs, which keeps its scan on the Gluon
kernels), which keeps every prompt token's output and the final state exact. RWKV-4 restarts its WKV at the prompt
(wkv4's seq_idx, as when packed) and zeroes the pads' outputs. A class that takes left padding says so with PADS = True.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Packed:
    """What the blocks read of seq_idx, computed once a forward: runs [B, L] int32 (the sequences numbered
    0, 1, ... in each row, as kernels.seq_runs numbers them) and pos [B, L] int64, each token's position
    in its own sequence; the attention masks are made once a forward for each window and kept here."""
    runs: torch.Tensor
    pos: torch.Tensor
    masks: dict = field(default_factory=dict)
    keep: torch.Tensor | None = None  # left padding only: [B, L] bool, False at the pads

    @classmethod
    def padding(cls, mask: torch.Tensor) -> "Packed":
        """A checked left-padding mask [B, L] (bool or 0/1, pads first, each row ending in a token) as two
        sequences a row: the pads and the prompt."""
        keep = mask.bool()
        packed = cls.of(keep.to(torch.int32))
        packed.keep = keep
        return packed

    def pads(self) -> torch.Tensor:
        """[B] int64: each row's pad count (left padding)."""
        return (~self.keep).sum(1)

    def zero_pads(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """x with its steps (along `dim`, length L) at the pads set to zero; x itself without padding."""
        if self.keep is None:
            return x
        shape = [1] * x.dim()
        shape[0], shape[dim] = self.keep.shape
        return x * self.keep.view(shape).to(x.dtype)

    @classmethod
    def of(cls, seq_idx: torch.Tensor) -> "Packed":
        from archdsl.kernels._host import seq_runs

        runs = seq_runs(seq_idx)
        B, L = runs.shape
        t = torch.arange(L, device=runs.device).expand(B, L)
        begins = torch.ones_like(runs, dtype=torch.bool)
        begins[:, 1:] = runs[:, 1:] != runs[:, :-1]
        start = torch.where(begins, t, 0).cummax(1).values
        return cls(runs, t - start)

    def _rows(self) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
        """Where `in_rows` lays the B·L tokens: each sequence gets a slot of W steps in one flat buffer, W the
        power of two (from 16, at most the longest sequence) that holds it, the slots sorted by W; returns each
        token's place in the buffer [B·L] int64, the buckets (W, sequences of that W) in order, and the longest
        sequence's length (one wait for the device, once a forward)."""
        if "rows" not in self.masks:
            starts = (self.pos == 0).view(-1)
            seq = starts.cumsum(0) - 1                                          # [B·L] each token's sequence
            lengths = torch.bincount(seq)                                       # [n]
            longest = int(lengths.max())
            width = (2 ** torch.log2(lengths.double()).ceil()).long().clamp(16, max(longest, 16))
            order = width.argsort(stable=True)
            widths, counts = torch.unique_consecutive(width[order], return_counts=True)
            slot = torch.empty_like(width)
            slot[order] = width[order].cumsum(0) - width[order]                 # each sequence's first step
            buckets = list(zip(widths.tolist(), counts.tolist()))
            self.masks["rows"] = slot[seq] + self.pos.reshape(-1), buckets, longest
        return self.masks["rows"]

    @property
    def widest(self) -> int:
        """The widest row `in_rows` gives fn (a power of two, or the longest sequence's length)."""
        return self._rows()[1][-1][0]

    def in_rows(self, fn, *xs: torch.Tensor) -> torch.Tensor:
        """fn run on each sequence in a row of its own, for a block whose kernels cannot restart: xs [B, L, ...]
        each; fn(*rows) takes them as [n, W, ...] (n sequences, each from step 0 of its row, zeros after it) and
        returns [n, W, ...] → [B, L, ...], each token's output from its place. fn runs once for each width W
        (powers of two from 16 up to the longest sequence; sequences of like length share one), so the rows'
        steps stay under twice the tokens' plus 16 a sequence, however the lengths are spread."""
        at, buckets, _ = self._rows()
        B, L = self.pos.shape
        total = sum(w * n for w, n in buckets)
        flats = [x.new_zeros(total, *x.shape[2:]).index_copy(0, at, x.reshape(B * L, *x.shape[2:])) for x in xs]
        outs, begin = [], 0
        for w, n in buckets:
            rows = [f[begin:begin + w * n].view(n, w, *f.shape[1:]) for f in flats]
            out = fn(*rows)
            outs.append(out.reshape(n * w, *out.shape[2:]))
            begin += w * n
        return torch.cat(outs)[at].view(B, L, *outs[0].shape[1:])

    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """The sequences of the B·L tokens read row after row, as varlen attention takes them: cu_seqlens
        [n + 1] int32 (each sequence's first token, then B·L) and the longest sequence's length (one wait
        for the device, once a forward)."""
        if "cu" not in self.masks:
            starts = (self.pos == 0).view(-1).nonzero().view(-1)
            cu = torch.cat([starts, starts.new_full((1,), self.pos.numel())]).to(torch.int32)
            self.masks["cu"] = cu, self._rows()[2]
        return self.masks["cu"]

    def attn_mask(self, window: int | None = None) -> torch.Tensor:
        """[B, 1, L, L] bool, query i may see key j: j <= i in i's sequence (and within `window` of i). A dense
        mask (L² bytes a row: 64 MiB at 8K tokens) keeps SDPA off flash attention, on its memory-efficient or
        math kernels; attention's `packed_sdpa` takes varlen flash attention instead where it can."""
        if window not in self.masks:
            i = torch.arange(self.runs.shape[1], device=self.runs.device)
            see = (i[None, :] <= i[:, None]) & (self.runs[:, :, None] == self.runs[:, None, :])
            if window is not None:
                see = see & (i[:, None] - i[None, :] < window)
            self.masks[window] = see[:, None]
        return self.masks[window]


def unpacked_blocks(spec, flag: str = "PACKS") -> list[tuple[int, str]]:
    """(layer, block kind) of the spec's blocks that cannot keep packed sequences apart (no PACKS), or with
    flag="PADS" cannot take left padding."""
    from ..graph import layers
    from .modules import MODULES

    return [(i, s.kind) for i, subs in enumerate(layers(spec.graph)) for s in subs
            if not getattr(MODULES.get(s.kind), flag, False)]


def refusal(where: str, layer: int, kind: str, flag: str = "PACKS"):
    """The ArchDSLError for packed sequences (or, flag="PADS", left padding) in a model whose layer `layer` has
    a `kind` block that cannot take them."""
    from ..errors import ArchDSLError
    from .modules import MODULES

    ok = ", ".join(sorted(k for k, cls in MODULES.items() if getattr(cls, flag, False)))
    if flag == "PADS":
        return ArchDSLError(f"{where}: layer {layer}'s {kind} cannot skip the pads (no input leaves its state "
                            f"unchanged; the blocks that take left padding: {ok})")
    return ArchDSLError(f"{where}: layer {layer}'s {kind} carries its state from one sequence into the next "
                        f"(the blocks that pack: {ok})")
