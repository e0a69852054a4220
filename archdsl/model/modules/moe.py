"""Mixture-of-experts FFN, laid out as HF (transformers 5) Jamba / Mixtral:

    router.weight [E, d]  (router.bias [E] with router_bias)
    experts.gate_up_proj [E, 2·I, d] (gated acts; [E, I, d] named up_proj otherwise), experts.down_proj [E, d, I]
    shared_expert: an Mlp (gate_proj, up_proj, down_proj) when shared_hidden > 0

Routing (Jamba): p = softmax(router(x)) in float32 (the logits in x's dtype, as Mixtral's and Jamba's), the top_k
experts by p, each weighted by its p (not renormalised). With router="sigmoid": s = σ(router(x)), the logits
computed in float32 (DeepSeek-V3's and NemotronH's), top_k, weights renormalised to sum 1.
norm_topk sets the renormalisation either way (Mixtral: softmax with it); routed_scale then multiplies
the weights (DeepSeek-V3 / NemotronH's routed_scaling_factor). Balancing without a loss (DeepSeek-V3), with
balance_rate γ > 0: the training loops call `balance` after each optimizer step, which moves the score bias of
each expert by γ·sign(mean load - its load), the loads those of the global batch since the last call.
Load balancing (Switch / Mixtral): aux = coef · E · Σ_e f_e · P_e with f_e the fraction of
top-k assignments to e per token and P_e the mean router probability; kept in self.aux_loss.
Training under torch.distributed (data parallel, equal tokens per rank), f_e counts the assignments
of the whole global batch (one all-reduce of E numbers), so the mean over ranks of the ranks' losses,
which FSDP's gradient averaging optimises, is the balancing loss of one process on the whole batch.
The experts run as two grouped GEMMs over the token-expert assignments sorted by expert (Experts.grouped) where
torch, the card and the dtype allow (`grouped_ok`: bf16 on Hopper and Blackwell, float32 / 16-bit on the CPU),
else one at a time (Experts.looped); a decode step captured in a CUDA graph gathers the chosen experts' weights
instead (Experts.gathered) where that copy is small (GATHER_BYTES) or the grouped GEMMs do not apply.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mlp import ACT_FNS, Mlp
from .precision import keep_float32


class Experts(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        E, d, I = cfg.experts, cfg.d_model, cfg.width
        self.gated = cfg.act in ("swiglu", "geglu")
        self.act = ACT_FNS[cfg.act]
        self.I = I
        first = torch.empty(E, (2 if self.gated else 1) * I, d)
        if self.gated:
            self.gate_up_proj = nn.Parameter(first)
        else:
            self.up_proj = nn.Parameter(first)
        self.down_proj = nn.Parameter(torch.empty(E, d, I))
        if cfg.bias:
            self.up_bias = nn.Parameter(torch.zeros(E, first.shape[1]))
            self.down_bias = nn.Parameter(torch.zeros(E, d))
        else:
            self.up_bias = self.down_bias = None
        self.reset_parameters()

    def reset_parameters(self):
        for w in (self.first, self.down_proj):
            if w.device.type != "meta":
                nn.init.kaiming_uniform_(w.view(-1, w.shape[-1]), a=math.sqrt(5))  # as nn.Linear, per row

    @property
    def first(self):
        return self.gate_up_proj if self.gated else self.up_proj

    def expert(self, e, x):
        """Expert e on tokens x [T, d] → [T, d]."""
        return self._ffn(x, *(None if t is None else t[e] for t in self._tensors()))

    def _tensors(self):
        """The weights and biases an expert takes, [E, ...] each (biases None without them)."""
        return self.first, self.up_bias, self.down_proj, self.down_bias

    def _ffn(self, x, w1, b1, w2, b2):
        return F.linear(self._hidden(F.linear(x, w1, b1)), w2, b2)

    def _hidden(self, h):
        """The activation of the first projection's output h [..., 2I | I] → [..., I]."""
        if self.gated:
            g, u = h.chunk(2, dim=-1)
            return self.act(g) * u
        return self.act(h)

    def looped(self, x, idx, w):
        """x [T, d], idx, w [T, k] → [T, d], one expert at a time, adding each expert's part expert after expert,
        tokens ascending. Eager, the token-expert assignments are grouped by expert with one stable sort, so the
        group sizes cost one host sync (on CUDA) rather than one an expert; traced, by torch.where (the sizes
        stay symbolic); the same bits either way. The weights are split into experts by one unbind each, whose
        backward stacks the experts' gradients once: indexed an expert at a time, each expert's backward wrote
        a zero-filled gradient of the whole weight (jamba-v0.1's layer, bf16, T 4096 on the H200: forward+backward
        105.8 → 21.7 ms)."""
        E, k = len(self.down_proj), idx.shape[1]
        weights = list(zip(*((None,) * E if t is None else t.unbind(0) for t in self._tensors())))
        out = torch.zeros_like(x)
        if torch.compiler.is_compiling():
            for e in range(E):
                tok, slot = torch.where(idx == e)
                out.index_add_(0, tok, self._ffn(x.index_select(0, tok), *weights[e]) * w[tok, slot, None])
            return out
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)
        tok, wt = order // k, w.reshape(-1)[order]
        start = 0
        for e, n in enumerate(torch.bincount(flat, minlength=E).tolist()):
            if n:
                t = tok[start:start + n]
                out.index_add_(0, t, self._ffn(x.index_select(0, t), *weights[e]) * wt[start:start + n, None])
                start += n
        return out

    def gathered(self, x, idx, w):
        """Static-shape form for decoding / CUDA graphs: x [T, d], idx, w [T, k] → [T, d], by
        gathering each token's k expert matrices (no data-dependent shapes)."""
        W1 = self.first[idx]  # [T, k, 2I|I, d]
        h = torch.einsum("td,tkfd->tkf", x, W1)
        if self.up_bias is not None:
            h = h + self.up_bias[idx]
        h = self._hidden(h)
        y = torch.einsum("tkf,tkdf->tkd", h, self.down_proj[idx])
        if self.down_bias is not None:
            y = y + self.down_bias[idx]
        return (y * w[..., None]).sum(1)

    def gathered_bytes(self, idx) -> int:
        """Bytes of the expert weights `gathered` copies for routing idx [T, k]."""
        return idx.numel() * (self.first[0].numel() + self.down_proj[0].numel()) * self.first.element_size()

    def one_token(self, x, idx, w):
        """x [1, d], idx, w [1, k] → [1, d], float32 on the CPU (a decode step at batch 1): the k chosen experts'
        GEMMs one by one, the experts read off the host, where `grouped` spent ~50 µs a layer sorting and grouping
        its k rows. The bits of `grouped`: a float32 grouped GEMM of one row per expert is that GEMM (the CPU runs
        one per group), and the elementwise steps run on the k rows together as there (an activation row by row
        can round otherwise), in slot order rather than by expert, which elementwise ops do not mind."""
        experts = idx[0].tolist()
        h = torch.cat([F.linear(x, self.first[e]) for e in experts])  # [k, 2I|I]
        if self.up_bias is not None:
            h = _add_rows(h, self.up_bias, idx[0])
        h = self._hidden(h)
        y = torch.cat([F.linear(h[s:s + 1], self.down_proj[e]) for s, e in enumerate(experts)])  # [k, d]
        if self.down_bias is not None:
            y = _add_rows(y, self.down_bias, idx[0])
        return (y.view(1, len(experts), -1) * w[..., None]).sum(1)

    def grouped(self, x, idx, w):
        """x [T, d], idx, w [T, k] → [T, d] by two grouped GEMMs (torch._grouped_mm) over the T·k token-expert
        assignments sorted by expert: each chosen expert's weights are read once, and nothing waits on the host
        or takes a data-dependent shape (CUDA graphs capture it, torch.compile traces it as it is). A token's k
        parts are summed in slot order. Only where `grouped_ok` holds."""
        T, k = idx.shape
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)  # [T·k]: the assignments, expert by expert, tokens ascending
        experts = flat.index_select(0, order)
        ends = torch.searchsorted(experts, torch.arange(len(self.down_proj), device=x.device), right=True,
                                  out_int32=True)  # [E]: where each expert's rows end
        h = torch._grouped_mm(x.index_select(0, order // k), self.first.transpose(-2, -1), offs=ends)
        if self.up_bias is not None:
            h = _add_rows(h, self.up_bias, experts)
        h = self._hidden(h)
        y = torch._grouped_mm(h, self.down_proj.transpose(-2, -1), offs=ends)
        if self.down_bias is not None:
            y = _add_rows(y, self.down_bias, experts)
        back = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=x.device))
        return (y.index_select(0, back).view(T, k, -1) * w[..., None]).sum(1)


def _add_rows(h, bias, experts):
    """h [R, F] + bias [E, F] of each row's expert, in float32: the bias's gradient sums many rows (index_select's
    backward), which in bf16 would round at every row."""
    return (h.float() + bias.float().index_select(0, experts)).to(h.dtype)


# A graphed decode step's MoE: the gathered form copies each token's k experts, then two batched products; the
# grouped GEMMs read each chosen expert once but take a dozen small kernels (the sort among them). H200, bf16,
# graph replay: hybrid-1.3b (8 experts of width 2304, d 1280, batch 1, a 35 MB copy) 1.63 ms a step gathered,
# 1.96 grouped (+27 µs a MoE layer); jamba-v0.1's layer (a 704 MB copy at batch 1) 0.555 ms gathered, 0.373
# grouped, at batch 4 2.00 / 1.01. The two lines cross near 120 MB.
GATHER_BYTES = 128 << 20

_SUPPORT: dict = {}  # CUDA device index → its (major, minor); "cpu" → whether torch's CPU build runs _grouped_mm


def grouped_ok(x, experts) -> bool:
    """Whether `Experts.grouped` takes x [T, d]: torch has `_grouped_mm` (2.8 and later); rows of x, of the weights
    and of the hidden activations are multiples of 16 bytes, as it requires; on CUDA x is bf16 on a Hopper or
    Blackwell card (its CUTLASS kernels; torch.compile traces it there); on the CPU float32 or 16-bit where this
    torch runs it (a loop in C++; one tiny call tells, once), and not while torch.compile traces (its shape function
    takes bf16 alone). Elsewhere (float64, other cards, odd widths) the experts run one by one."""
    if not hasattr(torch, "_grouped_mm") or x.shape[0] == 0 or x.dtype != experts.down_proj.dtype:
        return False
    size = x.element_size()
    if (x.shape[-1] * size) % 16 or (experts.I * size) % 16:
        return False
    if x.is_cuda:
        if x.device.index not in _SUPPORT:
            _SUPPORT[x.device.index] = torch.cuda.get_device_capability(x.device)
        return x.dtype == torch.bfloat16 and _SUPPORT[x.device.index][0] in (9, 10)
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if torch.compiler.is_compiling():
        return False
    if "cpu" not in _SUPPORT:
        try:
            torch._grouped_mm(torch.ones(2, 8), torch.ones(1, 8, 8).transpose(-2, -1),
                              offs=torch.tensor([2], dtype=torch.int32))
            _SUPPORT["cpu"] = True
        except (RuntimeError, NotImplementedError):
            _SUPPORT["cpu"] = False
    return _SUPPORT["cpu"]


class Router(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.experts, cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.experts)) if cfg.router_bias else None
        self.keeps_float32 = cfg.router == "sigmoid"  # its weight, as transformers keeps DeepSeek-V3's and NemotronH's
        if cfg.score_bias:  # a buffer (HF: e_score_correction_bias), not a parameter
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.experts, dtype=torch.float32))
        if self.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def _apply(self, fn, recurse=True):
        """.to() / .half() cast every floating tensor; the score bias stays float32, and a sigmoid router's weight
        too (as transformers keeps both, _keep_in_fp32_modules_strict = e_score_correction_bias, gate.weight), with
        their values: in 16 bits they round away the small differences between scores that pick the experts (a
        bf16 weight changed 1.2% of tokens' choice of experts against transformers' NemotronH)."""
        bias = self._buffers.get("e_score_correction_bias")
        was = {"weight": self._parameters["weight"].data} if self.keeps_float32 else {}
        super()._apply(fn, recurse)
        new = self._buffers.get("e_score_correction_bias")
        if bias is not None and new.dtype not in (torch.float32, torch.float64):
            self._buffers["e_score_correction_bias"] = bias.to(new.device, torch.float32)
        keep_float32(self, was)
        return self

    def forward(self, x, dtype: torch.dtype | None = None):
        """x [..., d] → logits [..., E]: in x's dtype, or computed in `dtype` where given, autocast or not (the
        sigmoid router's float32, as DeepSeek-V3's and NemotronH's: in bf16 the logits round enough to change
        ~1% of tokens' choice of experts, which the float32 score bias cannot then tell apart)."""
        dev = x.device.type
        autocast = dev != "meta" and torch.is_autocast_enabled(dev)  # traced by torch.compile
        if dtype is None or (x.dtype == self.weight.dtype == dtype and not autocast):
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(dev, enabled=False) if autocast else contextlib.nullcontext():
            return F.linear(x.to(dtype), self.weight.to(dtype), bias)


class Moe(nn.Module):
    PACKS = True  # position-wise: packed sequences need nothing (model/packed.py)
    PADS = True  # nor left padding (routing is per token, no capacity)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg)
        self.experts = Experts(cfg)
        self.shared_expert = None
        if cfg.shared_hidden:
            from archdsl.blocks.mlp import MlpConfig

            self.shared_expert = Mlp(MlpConfig(d_model=cfg.d_model, act=cfg.act, hidden=cfg.shared_hidden, bias=cfg.bias))
        self.aux_loss = torch.zeros(())
        self.load = None  # [E]: fractions of assignments summed over the training passes since `balance`
        # whether the balancing loss's f counts the assignments of every data-parallel rank (`_global`); the
        # training loop turns it off under --micro-batch, where each micro-batch balances its own rows
        self.balance_over_ranks = True

    def route(self, x):
        """x [T, d] → (probs [T, E] float, top_k weights [T, k] in x's dtype, indices [T, k])."""
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        logits = self.router(x, wd if self.cfg.router == "sigmoid" else None)  # softmax: x's dtype, as Mixtral's
        if self.cfg.router == "softmax":
            probs = F.softmax(logits, dim=-1, dtype=wd)
            w, idx = probs.topk(self.cfg.top_k, dim=-1)
        else:
            scores = torch.sigmoid(logits.to(wd))
            if self.cfg.score_bias:  # the bias steers the choice; the weights are the plain scores
                _, idx = (scores + self.router.e_score_correction_bias.to(wd)).topk(self.cfg.top_k, dim=-1)
                w = scores.gather(-1, idx)
            else:
                w, idx = scores.topk(self.cfg.top_k, dim=-1)
            probs = scores / scores.sum(-1, keepdim=True)
        if self.cfg.renormalises:
            w = w / w.sum(-1, keepdim=True)
        if self.cfg.routed_scale != 1.0:
            w = w * self.cfg.routed_scale
        return probs, w.to(x.dtype), idx

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; sets self.aux_loss (a scalar). ctx "packed" with left padding
        (model/packed.py): the pads take no part in the balancing loss (as HF's attention_mask)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, w, idx = self.route(x)
        out = self._mix(x, w, idx)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x)
        E = self.cfg.experts
        packed = ctx.get("packed")
        keep = None if packed is None or packed.keep is None else packed.keep.reshape(-1, 1).to(probs.dtype)  # [T, 1]
        ones = torch.ones_like(idx, dtype=probs.dtype) if keep is None else keep.expand_as(idx)
        counts = torch.zeros(E, dtype=probs.dtype, device=x.device).scatter_add_(0, idx.reshape(-1), ones.reshape(-1))
        tokens = x.shape[0] if keep is None else keep.sum()
        f = self._global(counts, tokens) if self.balance_over_ranks else counts / tokens
        if self.cfg.balance_rate and self.training and torch.is_grad_enabled():
            g = f if self.balance_over_ranks else self._global(counts, tokens)  # one bias on every rank: all loads
            self.load = g.detach() if self.load is None else self.load + g.detach()
        mean = probs.mean(0) if keep is None else (probs * keep).sum(0) / tokens
        self.aux_loss = self.cfg.aux_loss_coef * E * (f * mean).sum()
        return out.view(shape)

    @torch.no_grad()
    def balance(self) -> None:
        """After an optimizer step (balance_rate > 0): each expert's score bias rises by balance_rate when its load
        was below the mean, falls when above (DeepSeek-V3); the loads start again from zero."""
        if self.load is not None:
            bias = self.router.e_score_correction_bias
            bias += self.cfg.balance_rate * torch.sign(self.load.mean() - self.load).to(bias.dtype)
            self.load = None

    def _mix(self, x, w, idx):
        """Σ over each token's top_k experts of weight · expert(x): x [T, d], w, idx [T, k] → [T, d], by grouped
        GEMMs where they apply (`grouped_ok`), else one expert at a time; on the meta device (shapes only, no
        values to group by) in the static-shape gathered form."""
        if x.is_meta:
            return self.experts.gathered(x, idx, w)
        if grouped_ok(x, self.experts):
            return self.experts.grouped(x, idx, w)
        return self.experts.looped(x, idx, w)

    def _global(self, counts, tokens: int):
        """Assignments per expert [E] as a fraction of the tokens: of the whole data-parallel batch when
        training with more than one process (every rank runs the same layers, so the all-reduces pair
        up), else of this batch. Not differentiable either way: the gradient flows through P_e."""
        import torch.distributed as dist

        if self.training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            if world > 1:
                counts = counts.detach().clone()
                dist.all_reduce(counts)
                return counts / (tokens * world)
        return counts / tokens

    def step(self, x, state=None, **ctx):
        """x [B, d] → [B, d]: forward's experts (`_mix`: it reads only the chosen experts' weights), without the
        balancing loss. While a CUDA graph is being captured, the gathered static-shape form where the grouped
        GEMMs do not apply or where its copy of the chosen experts is small (GATHER_BYTES); one float32 token on the
        CPU, its experts one by one (Experts.one_token), with the grouped GEMMs' bits."""
        probs, w, idx = self.route(x)
        if x.is_cuda and torch.cuda.is_current_stream_capturing() and (
                not grouped_ok(x, self.experts) or self.experts.gathered_bytes(idx) <= GATHER_BYTES):
            out = self.experts.gathered(x, idx, w)
        elif x.shape[0] == 1 and x.dtype == torch.float32 and x.device.type == "cpu" and grouped_ok(x, self.experts):
            out = self.experts.one_token(x, idx, w)
        else:
            out = self._mix(x, w, idx)
        if self.shared_expert is not None:
            out = out + self.shared_expert(x)
        return out

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        return None


def balance_experts(model: nn.Module) -> None:
    """Moe.balance for every MoE layer of `model` (the training loops call it after each optimizer step)."""
    for m in model.modules():
        if isinstance(m, Moe):
            m.balance()
