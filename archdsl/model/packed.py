"""Packed sequences: several documents in one row of a batch, told apart by seq_idx [B, L] (mamba_ssm's and
causal-conv1d's convention: any integers, a new sequence wherever the value changes).

model(input_ids, seq_idx=...) gives every token the logits it would have in a row of its own: Mamba-2 restarts
its conv window and SSD state where seq_idx changes (kernels' seq_idx), RWKV-6 its WKV state (wkv6's seq_idx)
and token shifts (zeros at a sequence's start), attention sees only its own sequence's keys and counts RoPE
positions from that sequence's start, and position-wise blocks (MLP, MoE) need nothing.
A module class that keeps sequences apart says so with PACKS = True; the others (Mamba-1, RWKV-4, S4D, whose
kernels carry state across tokens with no reset) are refused before anything runs.
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

    def attn_mask(self, window: int | None = None) -> torch.Tensor:
        """[B, 1, L, L] bool, query i may see key j: j <= i in i's sequence (and within `window` of i). A dense
        mask (L² bytes a row: 64 MiB at 8K tokens) keeps SDPA off flash attention, on its memory-efficient or
        math kernels; varlen flash attention would need neither."""
        if window not in self.masks:
            i = torch.arange(self.runs.shape[1], device=self.runs.device)
            see = (i[None, :] <= i[:, None]) & (self.runs[:, :, None] == self.runs[:, None, :])
            if window is not None:
                see = see & (i[:, None] - i[None, :] < window)
            self.masks[window] = see[:, None]
        return self.masks[window]


def unpacked_blocks(spec) -> list[tuple[int, str]]:
    """(layer, block kind) of the spec's blocks that cannot keep packed sequences apart (no PACKS)."""
    from ..graph import layers
    from .modules import MODULES

    return [(i, s.kind) for i, subs in enumerate(layers(spec.graph)) for s in subs
            if not getattr(MODULES.get(s.kind), "PACKS", False)]


def refusal(where: str, layer: int, kind: str):
    """The ArchDSLError for packed sequences in a model whose layer `layer` has a `kind` block that cannot pack."""
    from ..errors import ArchDSLError
    from .modules import MODULES

    ok = ", ".join(sorted(k for k, cls in MODULES.items() if getattr(cls, "PACKS", False)))
    return ArchDSLError(f"{where}: layer {layer}'s {kind} carries its state from one sequence into the next "
                        f"(the blocks that pack: {ok})")
