"""Weight mappings between Hugging Face checkpoints and archdsl models, one module per family.

Each family module defines

    MODEL_TYPES = ("mamba", ...)                          # HF config.json model_type values it handles
    KINDS = frozenset({"mamba"})                          # the block kinds its layers hold
    SHARES = frozenset({"zamba"})                         # optional: the blocks it shares between layers itself
    to_archdsl(hf_state, spec, model) -> dict[str, Tensor]  # HF tensor names → model.state_dict() names
    to_hf(state, spec, hf_config) -> dict[str, Tensor]      # the inverse
    hf_config(spec) -> dict                                 # config.json for export
    HEAD = ("lm_head.weight", "model.embed_tokens.weight")  # the HF names of the LM head and the embeddings
    IGNORED = (regular expression, ...)                     # optional: checkpoint tensors dropped on import,
                                                            # as transformers ignores them (NemotronH's mtp.*)

A family whose mapping is a pure renaming defines `pairs(spec, names) -> [(hf, ours), ...]`
instead of the two functions, and `renaming()` derives them.

and is registered in FAMILIES under each of its model types. archdsl/convert/hf_io.py drives them:
it reads the safetensors, checks names and shapes, and writes models and exports atomically.
"""
from __future__ import annotations

from types import ModuleType

FAMILIES: dict[str, ModuleType] = {}


def renaming(module: ModuleType) -> None:
    """to_archdsl / to_hf of a family that is a renaming by `module.pairs`."""
    from ._common import rename, unrename

    def to_archdsl(hf_state, spec, model):
        return rename(hf_state, module.pairs(spec, set(model.state_dict())), model)

    def to_hf(state, spec, hf_config):
        return unrename(state, module.pairs(spec, set(state)), spec.tie_embeddings)

    module.to_archdsl, module.to_hf = to_archdsl, to_hf


def register(module: ModuleType) -> ModuleType:
    if not hasattr(module, "to_archdsl"):
        renaming(module)
    for model_type in module.MODEL_TYPES:
        FAMILIES[model_type] = module
    return module


def _load() -> None:
    import importlib

    for name in ("mamba", "mamba2", "bamba", "nemotron_h", "llama",  # H1
                 "jamba", "zamba2", "rwkv"):                         # H2
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        register(module)


_load()
