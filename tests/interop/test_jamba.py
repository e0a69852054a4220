"""Jamba: mamba (weighted dt/B/C norms) + attention + MoE, against transformers' JambaForCausalLM."""
import pytest

from interop.common import check_family, make_hf

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


def test_jamba_export_of_a_native_spec(tmp_path):
    """A spec written in archdsl exports as Jamba (attention every 2, MoE on the others)."""
    import archdsl
    import torch
    from archdsl.convert.hf_io import export_hf
    from archdsl.spec import spec_from_yaml
    from interop.common import rel, transformers

    spec = spec_from_yaml("d_model: 32\nvocab_size: 100\nnorm_eps: 1.0e-5\nffn: mlp\nlayout: 4×mamba(inner_norms=weighted, "
                          "d_state=8, inner_norm_eps=1.0e-5), attn(heads=4, rope=false) every 2, "
                          "moe(experts=3, top_k=2, hidden=48) every 2 offset 0\nblocks:\n  mlp: {hidden: 48}")
    model = archdsl.compile(spec)
    back = transformers().AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "x")).eval()
    assert type(back).__name__ == "JambaForCausalLM"
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(back(ids).logits, model(ids)) <= 1e-5
    assert model.num_params() == sum(p.numel() for p in back.parameters())


def test_jamba_num_local_experts_is_read():
    """num_local_experts (JambaConfig's attribute_map name of num_experts; it wins over num_experts) sets the
    experts: read, not the default 16."""
    from archdsl.convert.hf import hf_config_to_spec
    from hf_util import spec_params
    from interop.common import transformers

    for extra in ({}, {"num_experts": 3}):
        config = dict(model_type="jamba", vocab_size=64, num_local_experts=4, **extra, **SMALL)
        cfg = transformers().JambaConfig.from_dict(config)
        assert cfg.num_experts == 4
        hf = transformers().JambaForCausalLM(cfg)
        spec = hf_config_to_spec(config)
        assert spec["blocks"]["moe"]["experts"] == 4
        assert spec_params(spec) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("field, period", [("attn_layer_offset", "attn_layer_period"),
                                           ("expert_layer_offset", "expert_layer_period")])
def test_jamba_refuses_an_offset_not_below_its_period(field, period):
    """JambaConfig refuses an offset >= its period; archdsl refused it by the converted spec's layout line
    ("offset 3 is out of range for 'every 2'"), or not at all (an expert offset with num_experts 1): now by
    the config fields, as transformers does."""
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError
    from interop.common import transformers

    for experts in (4, 1):
        config = dict(model_type="jamba", vocab_size=64, num_experts=experts, **{field: 3, period: 2}, **SMALL)
        with pytest.raises(Exception, match="must be smaller than"):  # a StrictDataclassClassValidationError
            transformers().JambaConfig.from_dict(config)
        with pytest.raises(ArchDSLError, match=f"unsupported value 3 of config field '{field}': must be smaller "
                                               rf"than {period} \(2\), as transformers requires"):
            hf_config_to_spec(config)


def test_jamba_router_aux_loss_coef_round_trips(tmp_path):
    """router_aux_loss_coef is the moe block's aux_loss_coef, read (JambaConfig's 0.001 when absent, not archdsl's
    0.01: a Jamba trained with it weighed its balancing loss 10× over) and written back on export."""
    import archdsl
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.convert.hf_io import export_hf
    from interop.common import transformers

    base = dict(model_type="jamba", vocab_size=64, num_experts=4, **SMALL)
    assert hf_config_to_spec(base)["blocks"]["moe"]["aux_loss_coef"] == 0.001
    assert hf_config_to_spec({**base, "router_aux_loss_coef": 0.02})["blocks"]["moe"]["aux_loss_coef"] == 0.02
    make_hf("JambaConfig", "JambaForCausalLM", vocab_size=64, num_experts=4, router_aux_loss_coef=0.005,
            **SMALL).save_pretrained(tmp_path / "hf")
    model = archdsl.compile(archdsl.from_hf(tmp_path / "hf"))
    back = transformers().AutoConfig.from_pretrained(export_hf(model, tmp_path / "x"))
    assert back.router_aux_loss_coef == 0.005
