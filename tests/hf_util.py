"""Helpers for tests that compare against Hugging Face transformers.

The repository's top-level `kernels/` folder shadows the hub package named `kernels` that
transformers imports when the repository root is on sys.path (transformers >= 5.25 installs
that package and turns hub kernels on by default); tests/conftest.py imports the hub package
first and switches hub kernels off (USE_HUB_KERNELS=0). Tests compare against transformers' own
PyTorch paths.
"""
from __future__ import annotations

import os

import pytest
import yaml


def transformers():
    os.environ.setdefault("USE_HUB_KERNELS", "0")
    return pytest.importorskip("transformers")


def hf_model(config_cls: str, model_cls: str, meta: bool = True, **kwargs):
    """(config, model) of transformers' config_cls(**kwargs) and model_cls, built on the meta device by default."""
    import contextlib

    import torch

    tf = transformers()
    config = getattr(tf, config_cls)(**kwargs)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return config, getattr(tf, model_cls)(config)


def hf_count(config_cls: str, model_cls: str, meta: bool = True, **kwargs) -> int:
    """Parameters of an HF model (tied weights once), built on the meta device by default."""
    return sum(p.numel() for p in hf_model(config_cls, model_cls, meta, **kwargs)[1].parameters())


def spec_params(spec) -> int:
    """archdsl's analyzer count for a spec path or a spec dict."""
    import archdsl
    from archdsl.spec import spec_from_yaml

    if isinstance(spec, dict):
        spec = spec_from_yaml(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), file="<converted>")
    else:
        spec = archdsl.load_spec(spec)
    return archdsl.analyze(spec).params
