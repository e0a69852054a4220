"""The interop check every family test runs: a tiny seeded transformers model, saved, imported
with archdsl.from_hf(weights=True), compared (logits, greedy decoding, parameter count), exported
and loaded back by transformers."""
from __future__ import annotations

import torch

from hf_util import transformers

TOL = 1e-5


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_hf(config_cls: str, model_cls: str, seed: int = 0, init=None, **kwargs):
    """A random float32 transformers model; `init(model)` may perturb parameters HF initialises
    to constants (norm weights, biases) so that the check sees them."""
    tf = transformers()
    config = getattr(tf, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(tf, model_cls)(config).float().eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith(".bias") or name.endswith("_layernorm")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        if init is not None:
            init(model)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def hf_greedy(model, ids, n, use_cache=True):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              min_new_tokens=n, pad_token_id=0, eos_token_id=None, use_cache=use_cache)


def check_family(tmp_path, hf_model, vocab: int, batch: int = 2, length: int = 21, new: int = 32, seed: int = 0,
                 hf_cache: bool = True):
    """→ dict of figures; asserts every property of the interop contract."""
    import archdsl
    from archdsl.convert.hf_io import export_hf

    tf = transformers()
    src = tmp_path / "hf"
    hf_model.save_pretrained(src)
    spec, model = archdsl.from_hf(src, weights=True)
    assert model.num_params() == sum(p.numel() for p in hf_model.parameters())
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    ref = hf_logits(hf_model, ids)
    with torch.no_grad():
        ours = model(ids)
    err = rel(ours, ref)
    assert err <= TOL, f"logits relative error {err:.2e}"
    # greedy continuation: ours decodes through step(); HF through its cache
    prompt = ids[:1, :8]
    out = model.generate(prompt, new, temperature=0)
    ref_out = hf_greedy(hf_model, prompt, new, use_cache=hf_cache)
    assert torch.equal(out, ref_out), f"greedy differs:\n{out}\n{ref_out}"
    # export → transformers' own class → the same logits
    dst = tmp_path / "export"
    export_hf(model, dst)
    back = tf.AutoModelForCausalLM.from_pretrained(dst).float().eval()
    assert type(back) is type(hf_model)
    err_back = rel(hf_logits(back, ids), ref)
    assert err_back <= TOL, f"exported logits relative error {err_back:.2e}"
    # saved archdsl model → export from its directory too
    saved = tmp_path / "ours"
    model.save(saved)
    export_hf(saved, tmp_path / "export2")
    figures = {"err": err, "err_export": err_back, "params": model.num_params()}
    print(f"{type(hf_model).__name__}: logits rel err {err:.1e}, after export {err_back:.1e}, "
          f"params {figures['params']:,}, greedy {new} tokens equal")
    return figures
