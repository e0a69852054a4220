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
    """router_aux_loss_coef weighs HF's balancing loss averaged over the MoE layers; archdsl sums the per-layer
    losses, so the moe block's aux_loss_coef is router_aux_loss_coef / (MoE layers) (JambaConfig's 0.001 when
    absent, not archdsl's 0.01), and export multiplies back, to the number it came from (0.01 / 3 · 3 is 0.01, not
    0.009999999999999998), with output_router_logits true (HF computes the loss only then)."""
    import archdsl
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.convert.hf_io import export_hf
    from archdsl.spec import spec_from_yaml
    from interop.common import transformers

    base = dict(model_type="jamba", vocab_size=64, num_experts=4, **SMALL)  # 4 layers, MoE at 1 and 3
    assert hf_config_to_spec(base)["blocks"]["moe"]["aux_loss_coef"] == 0.001 / 2
    assert hf_config_to_spec({**base, "router_aux_loss_coef": 0.02})["blocks"]["moe"]["aux_loss_coef"] == 0.01
    for layers, coef in ((4, 0.005), (6, 0.01), (6, 0.007), (32, 0.001), (4, 0.0)):
        (tmp_path / "hf").mkdir(exist_ok=True)
        make_hf("JambaConfig", "JambaForCausalLM", vocab_size=64, num_experts=4, router_aux_loss_coef=coef,
                **{**SMALL, "num_hidden_layers": layers, "hidden_size": 16}).save_pretrained(tmp_path / "hf")
        spec = archdsl.from_hf(tmp_path / "hf")
        ours = spec.blocks["moe"]["aux_loss_coef"]
        assert ours == coef / (layers // 2)
        back = transformers().AutoConfig.from_pretrained(export_hf(archdsl.compile(spec), tmp_path / "x"))
        assert back.router_aux_loss_coef == coef and back.output_router_logits == (coef > 0)
        # and again: archdsl → HF → archdsl gives the spec's own number
        assert hf_config_to_spec(back.to_dict())["blocks"]["moe"]["aux_loss_coef"] == ours
    # a spec's own coefficient, written by hand, comes back exactly
    text = ("d_model: 16\nvocab_size: 64\nnorm_eps: 1.0e-6\nffn: mlp\nlayout: 6×mamba(inner_norms=weighted), moe "
            "every 2 offset 1\nblocks:\n  mlp: {hidden: 32}\n"
            "  moe: {experts: 4, top_k: 2, hidden: 32, aux_loss_coef: 0.0123}\n")
    cfg = transformers().AutoConfig.from_pretrained(export_hf(archdsl.compile(spec_from_yaml(text)), tmp_path / "y"))
    assert cfg.router_aux_loss_coef == 0.0369 and cfg.output_router_logits
    assert hf_config_to_spec(cfg.to_dict())["blocks"]["moe"]["aux_loss_coef"] == 0.0123


def test_jamba_v01_spec_has_the_imported_balancing_weight():
    """specs/jamba-v0.1.yaml's aux_loss_coef is what importing Jamba-v0.1's config gives: router_aux_loss_coef
    0.001 (JambaConfig's default too) over its 16 MoE layers."""
    import os

    import archdsl
    from archdsl.convert.hf import hf_config_to_spec

    path = os.path.join(os.path.dirname(__file__), "..", "..", "specs", "jamba-v0.1.yaml")
    imported = hf_config_to_spec({"model_type": "jamba", "router_aux_loss_coef": 0.001, "output_router_logits": True})
    assert archdsl.load_spec(path).blocks["moe"]["aux_loss_coef"] == imported["blocks"]["moe"]["aux_loss_coef"] == 6.25e-5


def test_jamba_router_aux_loss_coef_is_refused_below_zero():
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    with pytest.raises(ArchDSLError, match="router_aux_loss_coef'.*expected a number >= 0"):
        hf_config_to_spec(dict(model_type="jamba", vocab_size=64, num_experts=4, router_aux_loss_coef=-0.1, **SMALL))


@pytest.mark.parametrize("layers", [4, 6])
def test_jamba_imported_balancing_loss_is_hfs(tmp_path, layers):
    """An imported Jamba trains with the balancing loss transformers' would add: HF's router_aux_loss_coef · aux
    on the same batch (2 and 3 MoE layers), not (MoE layers)× it, as the 1:1 copy of the coefficient gave.
    transformers pools the layers' router statistics (mean f_e times mean P_e over the layers), archdsl averages the
    per-layer products, so the two agree to well under 1 % on a real batch, and exactly with HF's loss taken layer by
    layer."""
    import archdsl
    import torch
    from transformers.models.jamba.modeling_jamba import load_balancing_loss_func

    coef, moe_layers = 0.01, layers // 2
    hf = make_hf("JambaConfig", "JambaForCausalLM", vocab_size=64, num_experts=4, num_experts_per_tok=2,
                 router_aux_loss_coef=coef, output_router_logits=True, attn_layer_period=layers, attn_layer_offset=2,
                 **{**SMALL, "num_hidden_layers": layers})
    hf.save_pretrained(tmp_path / "hf")
    spec, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    assert spec.blocks["moe"]["aux_loss_coef"] == coef / moe_layers
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    hf.train()
    model.train()
    with torch.no_grad():
        out = hf(ids, labels=ids)
        model(ids)
    assert len(out.router_logits) == moe_layers
    ours, theirs = model.aux_loss.item(), coef * out.aux_loss.item()
    assert ours == pytest.approx(theirs, rel=1e-2)
    per_layer = torch.stack([load_balancing_loss_func((r,), 4, 2) for r in out.router_logits]).mean()
    assert ours == pytest.approx(coef * per_layer.item(), rel=1e-5)


def test_jamba_refusal_names_the_epsilon_that_differs(tmp_path):
    """specs/demo-jamba.yaml with the default norm_eps 1e-5 (the mamba's inner_norm_eps default is 1e-6) is no
    Jamba: the refusal said "mamba inner_norms 'weighted' (eps 1e-06)", not which epsilon differs from which or
    what to do. Without --model-type the refusal names Jamba as the nearest family and gives the same reason."""
    import os

    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import with_sizes

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    spec = archdsl.load_spec(os.path.join(root, "specs", "demo-jamba.yaml"))
    model = archdsl.compile(with_sizes(spec, d_model=32, vocab_size=64, norm_eps=1e-5))
    with pytest.raises(ArchDSLError) as nearest:
        export_hf(model, tmp_path / "x")
    assert "nearest family, jamba (the same kinds of block): cannot export to Hugging Face Jamba: mamba " \
           "inner_norm_eps 1e-06 differs" in str(nearest.value), str(nearest.value)
    with pytest.raises(ArchDSLError) as e:
        export_hf(model, tmp_path / "x", model_type="jamba")
    text = str(e.value)
    assert ("model_type 'jamba': cannot export to Hugging Face Jamba: mamba inner_norm_eps 1e-06 differs from the "
            "model's norm_eps 1e-05" in text), text
    assert "transformers would use 1e-05 in both" in text
    assert "give the spec norm_eps: 1e-06 or the mamba block inner_norm_eps: 1e-05" in e.value.hint
    assert not (tmp_path / "x").exists()


def test_jamba_demo_spec_exports_as_jamba():
    """specs/demo-jamba.yaml sets norm_eps 1e-6, Jamba's, so that it exports as the family it demonstrates."""
    import os

    import archdsl
    from archdsl.convert.hf_io import hf_model_type

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    assert hf_model_type(archdsl.load_spec(os.path.join(root, "specs", "demo-jamba.yaml"))) == "jamba"
