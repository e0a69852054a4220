"""Block modules: kind → nn.Module class (a plain dict; configs live in archdsl/blocks/).

Every module: __init__(cfg); forward(x [B, L, d], state=None, **ctx) → [B, L, d] (a given state
is left holding the state after the last token); step(x [B, d], state, **ctx) → [B, d] (state
updated in place; where autograd records, in new tensors: state.py);
init_state(batch, device, dtype, max_len=None, static=False, ssm_dtype=None) → dict
of tensors or None (`max_len` preallocates a growing KV cache; `static` fixes every buffer and keeps the
position in a tensor, for CUDA graphs; fixed-size states ignore both; `ssm_dtype`, where given, is the
dtype of Mamba's and Mamba-2's SSM states, which the other blocks ignore).
ctx carries `emb` (the original embedding, [B, L, d] / [B, d]) to every block. An INJECT class
(zamba) may define `per_use(cfg) -> nn.Module` (a staticmethod): compile builds one per use,
and the layer calls inject(h, state, emb=emb, use=<that module>) (step likewise).
"""
from .attn import Attention
from .mamba import Mamba
from .mamba2 import Mamba2
from .mlp import Mlp
from .moe import Moe
from .rwkv4 import ChannelMix, Rwkv4TimeMix
from .rwkv6 import Rwkv6TimeMix
from .s4d import S4D
from .zamba import Zamba

MODULES = {
    "mamba": Mamba,
    "mamba2": Mamba2,
    "attn": Attention,
    "mlp": Mlp,
    "moe": Moe,
    "rwkv6": Rwkv6TimeMix,
    "rwkv4": Rwkv4TimeMix,
    "cmix": ChannelMix,
    "s4d": S4D,
    "zamba": Zamba,
}
