"""Synthetic recall probes, generated in-process from seeded torch generators (nothing downloaded).

    task = make_task("mqar", seq_len=256, num_kv_pairs=16)
    inputs, labels = task.batch(64, torch.Generator().manual_seed(0), train=True)   # [B, L] each

Labels are -100 where nothing is scored. Accuracy is per scored token. MQAR is generated on
the generator's device (CUDA generators work); the MAD tasks on the CPU.

- MQAR (Arora, Eyuboglu et al., Zoology 2023): `num_kv_pairs` key-value pairs (keys from
  1..V/2-1, values from V/2..V-1, distinct within a sequence), then the keys asked again at
  power-law distributed gaps (power_a = 0.01; any positive finite power_a, the larger the later
  the queries); the answer is scored at the query position,
  everything else (random tokens) is not. Vocabulary 8192; sequence 64–512; 4–64 pairs.
  Train and test labels are the same: the loss is on answer positions only.
- Selective copying (MAD, Poli et al. 2024): `num_tokens_to_copy` tokens at random positions
  among blank tokens, a copy token, then as many blanks, at which the tokens are to be
  reproduced in order. Token V-1 = copy, V-2 = blank.
- Noisy in-context recall (MAD): key-value pairs from a small vocabulary, a share `frac_noise`
  of the pairs replaced by tokens from a separate noise vocabulary; at the end a copy token
  and a key seen before, whose value is to be recalled. MAD trains on next-token prediction
  over the whole sequence (train=True) and scores only the final value (train=False);
  `multi_query` scores every repeated key instead, and (as in MAD) has no copy token: its sequences are
  one token shorter, [B, seq_len - 1].
- Fuzzy in-context recall (MAD): keys and values are motifs of 1..k_motif_size (1..v_motif_size)
  distinct tokens; test sequences use keys of the full motif size; left-padded to seq_len.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from ..errors import ArchDSLError, did_you_mean, shown

IGNORE = -100


@dataclass(frozen=True, kw_only=True)
class Task:
    name: ClassVar[str] = "task"
    vocab_size: int
    seq_len: int

    def batch(self, n: int, gen: torch.Generator, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"task": self.name, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class MQAR(Task):
    name: ClassVar[str] = "mqar"
    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self):
        if self.seq_len % 2:
            raise ArchDSLError(f"mqar: seq_len must be even, got {self.seq_len}")
        if self.vocab_size <= self.seq_len:
            raise ArchDSLError(f"mqar: vocab_size {self.vocab_size} must exceed seq_len {self.seq_len}")
        if self.num_kv_pairs < 1 or 4 * self.num_kv_pairs > self.seq_len:
            raise ArchDSLError(f"mqar: need 1 <= 4·num_kv_pairs <= seq_len, got {self.num_kv_pairs} pairs "
                               f"at seq_len {self.seq_len}")
        if not self.power_a > 0:  # the gaps' density power_a·x^(power_a-1) is all zeros at 0
            raise ArchDSLError(f"mqar: power_a must be positive, got {self.power_a}")
        if not math.isfinite(self.power_a):  # any positive finite one draws (in log space: _gaps)
            raise ArchDSLError(f"mqar: power_a must be a finite number, got {self.power_a}")

    def batch(self, n, gen, train=True):
        V, L, k = self.vocab_size, self.seq_len, self.num_kv_pairs
        C = 2 * k
        key_vocab = V // 2
        dev = gen.device
        # the k largest of uniform draws: a uniform k-subset in uniform order (topk is O(V), argsort is not)
        keys = torch.rand(n, key_vocab - 1, generator=gen, device=dev).topk(k, dim=1).indices + 1
        values = torch.rand(n, V - key_vocab, generator=gen, device=dev).topk(k, dim=1).indices + key_vocab
        kvs = torch.stack([keys, values], dim=2).reshape(n, C)
        gaps = self._gaps(n, (L - C) // 2, k, gen)
        queries = torch.zeros(n, L - C + 1, dtype=torch.long, device=dev)
        queries.scatter_(1, gaps * 2, keys)
        examples = torch.cat([kvs, queries], dim=1)
        labels = torch.full((n, L + 1), IGNORE, dtype=torch.long, device=dev)
        labels.scatter_(1, gaps * 2 + C + 1, values)
        inputs, labels = examples[:, :-1].clone(), labels[:, 1:].clone()
        if self.random_non_queries:
            fill = torch.randint(V, inputs.shape, generator=gen, device=dev)
            inputs = torch.where(inputs == 0, fill, inputs)
        return inputs, labels

    def _gaps(self, n: int, space: int, k: int, gen: torch.Generator) -> torch.Tensor:
        """[n, k]: each row k distinct gaps of 0..space-1, drawn without replacement with Zoology's power-law weights
        x^(power_a - 1) at x = gap + 1 (its factor power_a cancels), first drawn first.

        Drawn in log space, by the exponential trick torch.multinomial uses: the k largest of log w - log E, E ~ Exp(1)
        (the same gaps from the same generator, and as many draws taken from it). The weights themselves leave
        float64's range past power_a ≈ 150 at seq_len 256 (x^(power_a - 1) overflows: NaN probabilities); their logs
        do not, for any positive finite power_a. The exponent is capped at 1e300, where the log weights of neighbouring
        gaps are already further apart than any draw of log E moves them (the k largest gaps, largest first, as for
        any larger power_a), and where (power_a - 1)·log x cannot overflow."""
        x = torch.arange(1, space + 1, dtype=torch.float64, device=gen.device)
        log_w = min(self.power_a - 1, 1e300) * torch.log(x)
        draws = torch.empty(n, space, dtype=torch.float64, device=gen.device).exponential_(1, generator=gen)
        return (log_w - torch.log(draws)).topk(k, dim=1).indices


@dataclass(frozen=True, kw_only=True)
class SelectiveCopying(Task):
    name: ClassVar[str] = "selective_copying"
    vocab_size: int = 16
    seq_len: int = 256
    num_tokens_to_copy: int = 16

    def __post_init__(self):
        if self.seq_len <= 2 * self.num_tokens_to_copy + 1 or self.num_tokens_to_copy < 1:
            raise ArchDSLError(f"selective_copying: seq_len {self.seq_len} must exceed 2·num_tokens_to_copy + 1")
        if self.vocab_size < 3:
            raise ArchDSLError("selective_copying: vocab_size must be at least 3 (tokens, blank, copy)")

    def batch(self, n, gen, train=True):
        V, L, k = self.vocab_size, self.seq_len, self.num_tokens_to_copy
        copy, blank = V - 1, V - 2
        tokens = torch.randint(V - 2, (n, k), generator=gen)
        head = L - k - 1  # positions holding the tokens and the blanks between them
        pos = torch.rand(n, head, generator=gen).argsort(dim=1)[:, :k].sort(dim=1).values
        inputs = torch.full((n, L), blank, dtype=torch.long)
        inputs.scatter_(1, pos, tokens)
        inputs[:, head] = copy
        labels = torch.full((n, L), IGNORE, dtype=torch.long)
        labels[:, head + 1:] = tokens
        return inputs, labels


@dataclass(frozen=True, kw_only=True)
class NoisyRecall(Task):
    name: ClassVar[str] = "noisy_recall"
    vocab_size: int = 32
    seq_len: int = 128
    noise_vocab_size: int = 16
    frac_noise: float = 0.2
    multi_query: bool = False

    def __post_init__(self):
        if self.seq_len % 2 or self.seq_len < 4:
            raise ArchDSLError(f"noisy_recall: seq_len must be even and >= 4, got {self.seq_len}")
        if not 0 <= self.frac_noise < 1:
            raise ArchDSLError(f"noisy_recall: frac_noise must be in [0, 1), got {self.frac_noise}")
        if self.noise_vocab_size < 0 or (self.frac_noise > 0 and self.noise_vocab_size < 1):
            raise ArchDSLError(f"noisy_recall: noise_vocab_size must be >= 0, and >= 1 when frac_noise > 0; "
                               f"got {self.noise_vocab_size}")
        if self.vocab_size - 1 - self.noise_vocab_size < 2:
            raise ArchDSLError("noisy_recall: vocab_size must leave room for keys and values beside the noise "
                               "vocabulary and the copy token")

    def batch(self, n, gen, train=True):
        V, L = self.vocab_size, self.seq_len
        copy = V - 1
        plain = (V - 1 if not self.multi_query else V) - self.noise_vocab_size
        nk, nv = plain // 2, plain - plain // 2
        P = L // 2 - 1  # pairs before the probe
        table = torch.randint(nv, (n, nk), generator=gen) + nk  # each sequence's key → value map
        keys = torch.randint(nk, (n, P), generator=gen)
        vals = table.gather(1, keys)
        noise = torch.rand(n, P, generator=gen) < self.frac_noise
        keep = torch.randint(P, (n,), generator=gen)  # at least one real pair
        noise[torch.arange(n), keep] = False
        noise_tok = torch.randint(max(1, self.noise_vocab_size), (n, P, 2), generator=gen) + plain  # unused if 0
        pairs = torch.where(noise[..., None], noise_tok, torch.stack([keys, vals], 2))
        # first occurrence of each real key: the probe is one of them, uniformly over distinct keys
        same = (keys[:, :, None] == keys[:, None, :]) & ~noise[:, None, :]
        earlier = torch.tril(torch.ones(P, P, dtype=torch.bool), -1)
        seen_before = (same & earlier).any(-1)
        first = ~noise & ~seen_before
        probe_slot = torch.multinomial(first.double(), 1, generator=gen)[:, 0]
        k_probe = keys.gather(1, probe_slot[:, None])
        v_probe = table.gather(1, k_probe)
        tail = [k_probe, v_probe] if self.multi_query else [torch.full((n, 1), copy), k_probe, v_probe]
        seq = torch.cat([pairs.reshape(n, 2 * P)] + tail, dim=1)
        targets = torch.full_like(seq, IGNORE)
        if self.multi_query:
            rep = ~noise & seen_before
            targets[:, 1:2 * P:2] = torch.where(rep, vals, IGNORE)
        targets[:, -1] = v_probe[:, 0]
        inputs = seq[:, :-1]
        return (inputs, seq[:, 1:]) if train else (inputs, targets[:, 1:])


@dataclass(frozen=True, kw_only=True)
class FuzzyRecall(Task):
    name: ClassVar[str] = "fuzzy_recall"
    vocab_size: int = 16
    seq_len: int = 128
    k_motif_size: int = 3
    v_motif_size: int = 3
    multi_query: bool = False

    def __post_init__(self):
        if self.k_motif_size < 1 or self.v_motif_size < 1:
            raise ArchDSLError(f"fuzzy_recall: motif sizes must be at least 1, got k_motif_size "
                               f"{self.k_motif_size}, v_motif_size {self.v_motif_size}")
        plain = self.vocab_size - (1 if self.multi_query else 2)
        if plain // 2 < max(self.k_motif_size, self.v_motif_size):
            raise ArchDSLError(f"fuzzy_recall: vocab_size {self.vocab_size} is too small for motifs of "
                               f"{max(self.k_motif_size, self.v_motif_size)} distinct tokens")
        if self.seq_len < 4 * (self.k_motif_size + self.v_motif_size):
            raise ArchDSLError(f"fuzzy_recall: seq_len {self.seq_len} too short for motifs of "
                               f"{self.k_motif_size} + {self.v_motif_size}")

    def _motif(self, vocab0, size, count, gen):
        return tuple((torch.randperm(count, generator=gen)[:size] + vocab0).tolist())

    def _one(self, gen, train):
        V, L, K, W = self.vocab_size, self.seq_len, self.k_motif_size, self.v_motif_size
        copy = V - 1
        pad = V - 2 if not self.multi_query else V - 1
        plain = V - (1 if self.multi_query else 2)
        nk = plain // 2
        ksizes = list(range(1, K + 1)) if train else [K]

        def rint(hi):
            return int(torch.randint(hi, (1,), generator=gen))

        def key(size):
            return self._motif(0, size, nk, gen)

        def value():
            return self._motif(nk, 1 + rint(W), plain - nk, gen)

        k_probe, v_probe = key(ksizes[rint(len(ksizes))]), value()
        probe_len = len(k_probe) + len(v_probe)
        probe_at = rint(max(1, L - 2 * probe_len))
        kv, seq, tgt, presented, added = {}, [], [], set(), False
        while len(seq) < L - probe_len - (K + W):
            if len(seq) >= probe_at and not added:
                seq += k_probe + v_probe
                tgt += [IGNORE] * probe_len
                kv[k_probe] = v_probe
                presented.add(k_probe)
                added = True
                continue
            k = key(ksizes[rint(len(ksizes))])
            v = v_probe if k == k_probe else kv.setdefault(k, value())
            added = added or k == k_probe
            seq += k + v
            tgt += [IGNORE] * len(k) + (list(v) if self.multi_query and k in presented else [IGNORE] * len(v))
            presented.add(k)
        if not added:  # the loop ended before probe_at: put the pair in now
            seq += k_probe + v_probe
            tgt += [IGNORE] * probe_len
        tail = ([] if self.multi_query else [copy]) + list(k_probe) + list(v_probe)
        seq += tail
        tgt += [IGNORE] * (len(tail) - len(v_probe)) + list(v_probe)
        n_pad = L + 1 - len(seq)
        seq, tgt = [pad] * n_pad + seq, [IGNORE] * n_pad + tgt
        return seq[-(L + 1):], tgt[-(L + 1):]

    def batch(self, n, gen, train=True):
        rows = [self._one(gen, train) for _ in range(n)]
        seq = torch.tensor([r[0] for r in rows], dtype=torch.long)
        tgt = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return (seq[:, :-1], seq[:, 1:]) if train else (seq[:, :-1], tgt[:, 1:])


TASKS: dict[str, type[Task]] = {"mqar": MQAR, "selective_copying": SelectiveCopying, "noisy_recall": NoisyRecall,
                                "fuzzy_recall": FuzzyRecall}
ALIASES = {"selective_copy": "selective_copying", "copy": "selective_copying", "noisy": "noisy_recall",
           "fuzzy": "fuzzy_recall", "noisy_icr": "noisy_recall", "fuzzy_icr": "fuzzy_recall"}


def make_task(name: str, **kwargs) -> Task:
    """A task by name with its arguments; ArchDSLError for unknown names or arguments, an argument of the wrong
    type, and arguments that do not go together (the task's own checks)."""
    cls, args = task_args(name, kwargs)
    return cls(**args)


def task_args(name: str, kwargs: dict) -> tuple[type[Task], dict]:
    """(the task class of `name`, its arguments typed), each argument checked alone: a known name of the task, of
    its type (an integer below 2^31, a finite number, a bool); ArchDSLError "TASK: NAME ..." else."""
    key = ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in TASKS:
        raise ArchDSLError(f"unknown probe {shown(name)}", hint=did_you_mean(str(name), TASKS))
    cls = TASKS[key]
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}  # "int", "float" or "bool" (annotation text)
    args = {}
    for k, v in kwargs.items():
        if k not in kinds:
            raise ArchDSLError(f"{key}: unknown argument {k!r}", hint=did_you_mean(k, kinds))
        integer = _integer(v)
        if kinds[k] == "bool" and not isinstance(v, bool):
            raise ArchDSLError(f"{key}: {k} must be true or false, got {shown(v)}")
        if kinds[k] == "int" and not (integer is not None and abs(integer) < 2**31):
            raise ArchDSLError(f"{key}: {k} must be an integer below 2^31, got {shown(v)}")
        if kinds[k] == "float" and not (integer is not None and abs(integer) < 2**31
                                        or isinstance(v, float) and math.isfinite(v)):
            raise ArchDSLError(f"{key}: {k} must be a number, got {shown(v)}")
        args[k] = integer if integer is not None else v  # numpy's integers as ints: the task's to_dict is JSON
    return cls, args


def _integer(v) -> int | None:
    """`v` as an int when it is an integral number (an int, numpy's integers: whatever has __index__) and not a
    bool (numpy's neither); else None."""
    if isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", None) == "b":
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, scored) over positions whose label is not -100."""
    mask = labels != IGNORE
    return int((logits.argmax(-1)[mask] == labels[mask]).sum()), int(mask.sum())
