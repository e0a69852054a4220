"""Weight mappings between Hugging Face checkpoints and archdsl models, one module per family.

Each family module defines

    MODEL_TYPES = ("mamba", ...)                          # HF config.json model_type values it handles
    to_archdsl(hf_state, spec, model) -> dict[str, Tensor]  # HF tensor names → model.state_dict() names
    to_hf(state, spec, hf_config) -> dict[str, Tensor]      # the inverse
    hf_config(spec) -> dict                                 # config.json for export

and is registered in FAMILIES under each of its model types. archdsl/convert/hf_io.py drives them:
it reads the safetensors, checks names and shapes, and writes models and exports atomically.
"""
from __future__ import annotations

from types import ModuleType

FAMILIES: dict[str, ModuleType] = {}


def register(module: ModuleType) -> ModuleType:
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
