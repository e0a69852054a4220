"""RWKV-4: rwkv4 time-mix + cmix v4, LayerNorms and the embedding LayerNorm, against transformers'
RwkvForCausalLM."""
import pytest
import torch

from interop.common import check_family, make_hf

SMALL = dict(hidden_size=32, attention_hidden_size=32, intermediate_size=64, context_length=64)


def _jitter(model):
    """HF's init sets time_first to ones and time_mix to ramps; move them so the check sees them."""
    g = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():
        if "time_" in name:
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_rwkv(tmp_path):
    hf = make_hf("RwkvConfig", "RwkvForCausalLM", vocab_size=128, num_hidden_layers=3, rescale_every=0,
                 init=_jitter, **SMALL)
    check_family(tmp_path, hf, 128, hf_cache=True)


def test_rwkv_tied(tmp_path):
    hf = make_hf("RwkvConfig", "RwkvForCausalLM", vocab_size=90, num_hidden_layers=2, rescale_every=0,
                 tie_word_embeddings=True, init=_jitter, **SMALL)
    check_family(tmp_path, hf, 90)


def test_rwkv_epsilon_other_than_torchs_is_refused(tmp_path):
    """transformers' RWKV takes layer_norm_epsilon in every LayerNorm but ln_out (torch's 1e-5): one norm_eps
    cannot be both, so such a config is refused on import (it converted into logits 1e-3 off), and a spec with
    another norm_eps on export."""
    import archdsl
    from archdsl.errors import ArchDSLError

    hf = make_hf("RwkvConfig", "RwkvForCausalLM", vocab_size=64, num_hidden_layers=2, rescale_every=0,
                 layer_norm_epsilon=1e-3, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ArchDSLError, match=r"value 0.001 of config field 'layer_norm_epsilon': .*epsilon 1e-5"):
        archdsl.from_hf(tmp_path / "hf", weights=True)
    spec = archdsl.parse("2×rwkv4", d_model=32, vocab_size=64, norm="layernorm", norm_eps=1e-3, embed_norm=True,
                         ffn="cmix", blocks={"cmix": {"version": 4}})
    from archdsl.convert.weights import rwkv
    with pytest.raises(ArchDSLError, match=r"norm_eps 0.001: transformers' RWKV ends in a LayerNorm of epsilon"):
        rwkv.hf_config(spec)
    assert rwkv.hf_config(archdsl.parse("2×rwkv4", d_model=32, vocab_size=64, norm="layernorm", embed_norm=True,
                                        ffn="cmix", blocks={"cmix": {"version": 4}}))["layer_norm_epsilon"] == 1e-5


def test_rwkv_rescale_every_is_the_same_function(tmp_path):
    """transformers halves the residual stream every `rescale_every` layers at inference (weights
    divided to match): the same function up to the LayerNorm eps, which we leave out."""
    import archdsl
    from interop.common import hf_logits, rel

    hf = make_hf("RwkvConfig", "RwkvForCausalLM", vocab_size=64, num_hidden_layers=4, rescale_every=2,
                 init=_jitter, **SMALL)
    hf.save_pretrained(tmp_path / "hf")  # before any eval forward: the weights on disk are unscaled
    _, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel(model(ids), hf_logits(hf, ids)) < 1e-3


def test_rwkv_float16_import_of_a_rescaled_config_warns(tmp_path):
    """Unscaled, a float16 RWKV-4 residual stream can overflow where transformers' (halved every rescale_every
    layers) does not: the float16 import says so and names the ways out; bfloat16 and rescale_every 0 do not."""
    import archdsl
    from archdsl.errors import ArchDSLWarning

    hf = make_hf("RwkvConfig", "RwkvForCausalLM", vocab_size=64, num_hidden_layers=2, rescale_every=6, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.warns(ArchDSLWarning, match=r"halves this RWKV-4's residual stream every rescale_every = 6 layers .*"
                                            r"import it in bfloat16 or float32, or set residual_fp32: true"):
        archdsl.from_hf(tmp_path / "hf", weights=True, dtype=torch.float16)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchDSLWarning)
        archdsl.from_hf(tmp_path / "hf", weights=True, dtype=torch.bfloat16)


def test_rwkv_export_refuses_other_specs():
    import archdsl
    from archdsl.convert.weights import rwkv
    from archdsl.errors import ArchDSLError

    spec = archdsl.parse("2×rwkv4+cmix(version=6)")  # RMSNorm, no embed_norm, v6 channel-mix
    with pytest.raises(ArchDSLError):
        rwkv.hf_config(spec)
