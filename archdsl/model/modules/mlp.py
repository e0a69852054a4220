"""Position-wise FFN, laid out as HF Llama (gated: gate_proj, up_proj, down_proj) and NemotronH
(plain: up_proj, down_proj).

    gated (swiglu, geglu): down(act(gate(x)) · up(x))       plain: down(act(up(x)))
    acts: gelu (tanh-free), relu, relu2 (squared ReLU), silu; swiglu = silu-gated, geglu = gelu-gated.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def relu2(x):
    return F.relu(x).square()


ACT_FNS = {"gelu": F.gelu, "relu": F.relu, "relu2": relu2, "silu": F.silu, "swiglu": F.silu, "geglu": F.gelu}


class Mlp(nn.Module):
    PACKS = True  # position-wise: packed sequences need nothing (model/packed.py)
    PADS = True  # nor left padding

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.d_model, cfg.width
        self.act = ACT_FNS[cfg.act]
        if cfg.gated:
            self.gate_proj = nn.Linear(d, h, bias=cfg.bias)
        self.up_proj = nn.Linear(d, h, bias=cfg.bias)
        self.down_proj = nn.Linear(h, d, bias=cfg.bias)

    def forward(self, x, state=None, **ctx):
        """x [B, L, d] (or [B, d]) → same shape; stateless."""
        if self.cfg.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))

    def step(self, x, state=None, **ctx):
        return self.forward(x)

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        return None
