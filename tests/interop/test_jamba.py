"""Jamba: mamba (weighted dt/B/C norms) + attention + MoE, against transformers' JambaForCausalLM."""
import pytest

from tests.interop.common import check_family, make_hf

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             mamba_d_state=8, mamba_dt_rank=4, mamba_d_conv=4, rms_norm_eps=1e-6)


def test_jamba_moe_attention(tmp_path):
    hf = make_hf("JambaConfig", "JambaForCausalLM", vocab_size=128, num_experts=4, num_experts_per_tok=2,
                 expert_layer_period=2, expert_layer_offset=1, attn_layer_period=4, attn_layer_offset=2, **SMALL)
    check_family(tmp_path, hf, 128)


def test_jamba_dense_tied_biased(tmp_path):
    """no MoE (num_experts 1), tied head, biased mamba projections, attention at layers 1 and 3."""
    hf = make_hf("JambaConfig", "JambaForCausalLM", vocab_size=100, num_experts=1, attn_layer_period=2,
                 attn_layer_offset=1, tie_word_embeddings=True, mamba_proj_bias=True,
                 **{**SMALL, "mamba_dt_rank": "auto", "mamba_d_conv": 3})
    check_family(tmp_path, hf, 100)


def test_jamba_fused_expert_layout(tmp_path):
    """transformers 5's own fused expert tensors (save_original_format=False) import the same."""
    import archdsl
    import torch

    hf = make_hf("JambaConfig", "JambaForCausalLM", vocab_size=64, num_experts=2, num_experts_per_tok=1,
                 attn_layer_period=4, attn_layer_offset=3, **{**SMALL, "num_hidden_layers": 2})
    hf.save_pretrained(tmp_path / "a")
    hf.save_pretrained(tmp_path / "b", save_original_format=False)
    _, a = archdsl.from_hf(tmp_path / "a", weights=True)
    _, b = archdsl.from_hf(tmp_path / "b", weights=True)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_jamba_refuses_gelu():
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    with pytest.raises(ArchDSLError, match="hidden_act"):
        hf_config_to_spec({"model_type": "jamba", "hidden_act": "gelu"})
