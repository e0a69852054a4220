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


def hf_count(config_cls: str, model_cls: str, meta: bool = True, **kwargs) -> int:
    """Parameters of an HF model (tied weights once), built on the meta device by default."""
    import torch

    tf = transformers()
    config = getattr(tf, config_cls)(**kwargs)
    if meta:
        with torch.device("meta"):
            model = getattr(tf, model_cls)(config)
    else:
        model = getattr(tf, model_cls)(config)
    return sum(p.numel() for p in model.parameters())


def spec_params(spec) -> int:
    """archdsl's analyzer count for a spec path or a spec dict."""
    import archdsl
    from archdsl.spec import spec_from_yaml

    if isinstance(spec, dict):
        spec = spec_from_yaml(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), file="<converted>")
    else:
        spec = archdsl.load_spec(spec)
    return archdsl.analyze(spec).params
