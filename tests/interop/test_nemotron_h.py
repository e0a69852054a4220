import json

import pytest
import torch

from interop.common import TOL, check_family, hf_logits, make_hf, rel, transformers


def _router_bias(model):
    g = torch.Generator().manual_seed(5)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g))


def test_nemotron_h(tmp_path):
    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_router_bias, hidden_size=32, vocab_size=120,
                 hybrid_override_pattern="M-M*ME", ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8,
                 n_groups=2, chunk_size=8, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                 moe_shared_expert_intermediate_size=24, layer_norm_epsilon=1e-6)
    check_family(tmp_path, hf, 120)


def test_nemotron_h_routing_options(tmp_path):
    """routed_scaling_factor (2.5 in Nemotron-3 Nano) and norm_topk_prob false: moe routed_scale, norm_topk; the
    export writes them back (check_family: convert, logits, export, transformers loads it)."""
    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_router_bias, hidden_size=32, vocab_size=120,
                 hybrid_override_pattern="MEME", ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8,
                 n_groups=2, chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                 moe_shared_expert_intermediate_size=24, routed_scaling_factor=2.5, norm_topk_prob=False)
    check_family(tmp_path, hf, 120, hf_cache=False)  # HF's generate needs an attention layer in its cache


def _small_dt(model):
    """dt_bias from -9 to -3: softplus gives dt from 1e-4 to 0.05, across a clamp at 0.01."""
    for name, p in model.named_parameters():
        if name.endswith("dt_bias"):
            p.copy_(torch.linspace(-9.0, -3.0, p.numel()))


def _tiny(**kwargs):
    return make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_small_dt, hidden_size=32, vocab_size=100,
                   hybrid_override_pattern="MM-", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16,
                   n_groups=1, chunk_size=16, intermediate_size=48, tie_word_embeddings=True, **kwargs)


def test_nemotron_h_inner_width_is_heads_times_head_dim(tmp_path):
    """transformers' NemotronH mixer is mamba_num_heads·mamba_head_dim wide whatever expand says: NVIDIA's
    Nemotron-Nano-9B-v2 has 128·80 = 10240 at hidden 4480, no whole expand. It had been refused as a bad config;
    the mamba2 block takes its width from heads·headdim where expand is left out."""
    import archdsl

    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_small_dt, hidden_size=28, vocab_size=100,
                 hybrid_override_pattern="M*M-", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16,
                 n_groups=2, chunk_size=8, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 intermediate_size=40)
    from archdsl.convert.hf_io import export_hf

    check_family(tmp_path, hf, 100)  # the parameters, logits, greedy tokens, and the export transformers loads
    spec = archdsl.from_hf(tmp_path / "hf")
    assert "expand" not in spec.blocks["mamba2"] and archdsl.analyze(spec).params == hf.num_parameters()
    model = archdsl.compile(archdsl.parse("mamba2(heads=4, headdim=16)", d_model=28, vocab_size=100))
    with pytest.raises(archdsl.ArchDSLError, match=r"Mamba-2: its mamba mixer's inner width is expand·hidden_size, "
                                                   r"and the mamba2 blocks' heads·headdim = 64 is not a whole"):
        export_hf(model, tmp_path / "m2", model_type="mamba2")


def test_nemotron_h_dt_floor(tmp_path):
    """time_step_limit[0] clamps dt in HF's chunked path: large negative dt_bias makes it bite."""
    hf = _tiny(time_step_limit=(0.01, float("inf")))
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's decode step skips the clamp; compare uncached


def test_nemotron_h_time_step_min_is_init_only(tmp_path):
    """transformers >= 5.25 (like mamba_ssm's kernels) clamps at time_step_limit only: a dt far below
    time_step_min must pass unclamped."""
    hf = _tiny(time_step_min=0.01)
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's generate needs an attention layer in its cache


def _config_dict(**kwargs) -> dict:
    """config.json of a tiny NemotronH, as transformers writes it (to_dict): every field under its new name."""
    base = dict(hidden_size=32, vocab_size=100, hybrid_override_pattern="M*-", ssm_state_size=8, mamba_num_heads=4,
                mamba_head_dim=16, n_groups=2, chunk_size=8, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=48)
    return transformers().NemotronHConfig(**{**base, **kwargs}).to_dict()


def _counts_agree(config: dict, cfg=None):
    """archdsl's count of the converted spec against transformers' model of the same config.json (cfg: as
    transformers read it, default from_dict)."""
    from archdsl.convert.hf import hf_config_to_spec
    from hf_util import spec_params

    cfg = cfg or transformers().NemotronHConfig.from_dict(config)
    with torch.device("meta"):
        hf = transformers().NemotronHForCausalLM(cfg)
    assert spec_params(hf_config_to_spec(config, "x")) == sum(p.numel() for p in hf.parameters())


def test_nemotron_h_attention_bias_is_never_built(tmp_path):
    """transformers' NemotronH attention has no biases whatever attention_bias says: import builds none (the
    weights load, the counts and logits agree) and export writes attention_bias false."""
    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", hidden_size=32, vocab_size=100,
                 hybrid_override_pattern="M*-", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=2,
                 chunk_size=8, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
                 attention_bias=True)
    assert hf.config.attention_bias
    check_family(tmp_path, hf, 100)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["attention_bias"] is False


def test_nemotron_h_export_refuses_attention_biases(tmp_path):
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    spec = spec_from_yaml("d_model: 32\nvocab_size: 64\nlayout: mamba2, attn\nblocks:\n  mamba2: {d_state: 8, "
                          "heads: 4, headdim: 16, ngroups: 1, chunk_size: 8}\n  attn: {heads: 4, kv_heads: 2, "
                          "rope: false, bias: true, out_bias: true}\n")
    with pytest.raises(ArchDSLError, match="NemotronH: attn with biases"):
        export_hf(archdsl.compile(spec), tmp_path / "x", model_type="nemotron_h")
    with pytest.raises(ArchDSLError, match="NemotronH: attn with biases"):
        export_hf(archdsl.compile(spec), tmp_path / "x")  # found as NemotronH, and refused as one


LEGACY = {"conv_kernel": "mamba_d_conv", "n_groups": "mamba_n_groups", "use_conv_bias": "mamba_conv_bias",
          "chunk_size": "mamba_chunk_size", "time_step_limit": "mamba_dt_limit", "expand": "mamba_expand"}


def test_nemotron_h_old_mamba_names_are_read_as_transformers_reads_them(tmp_path):
    """NemotronHConfig takes mamba_d_conv, mamba_n_groups, mamba_conv_bias, mamba_chunk_size, mamba_dt_limit and
    mamba_expand (old names) over the new ones: a checkpoint whose config.json says them loads to the same logits,
    though the new names beside them say otherwise."""
    import archdsl

    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_small_dt, hidden_size=32, vocab_size=100,
                 hybrid_override_pattern="MM-", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16,
                 intermediate_size=48, conv_kernel=2, n_groups=4, use_conv_bias=False, chunk_size=8,
                 time_step_limit=(0.01, float("inf")))
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    wrong = {"conv_kernel": 4, "n_groups": 1, "use_conv_bias": True, "chunk_size": 16, "time_step_limit": [0.0, 1.0],
             "expand": 3}
    for new, old in LEGACY.items():
        config[old] = config[new]
        config[new] = wrong[new]
    path.write_text(json.dumps(config))
    back = transformers().AutoConfig.from_pretrained(tmp_path / "hf")
    assert (back.conv_kernel, back.n_groups, back.use_conv_bias, back.expand) == (2, 4, False, 2)
    _counts_agree(config, back)
    spec, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    ids = torch.randint(0, 100, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(model(ids), hf_logits(hf, ids)) <= TOL


def test_nemotron_h_old_names_are_refused_by_name():
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    config = _config_dict()
    with pytest.raises(ArchDSLError, match="'mamba_dt_limit'"):
        hf_config_to_spec({**config, "mamba_dt_limit": [0.01, 1e30]})
    with pytest.raises(ArchDSLError, match="'mamba_d_conv'"):
        hf_config_to_spec({**config, "mamba_d_conv": 5})
    spec = hf_config_to_spec({**config, "mamba_expand": 1})  # ignored, as transformers' mixer ignores it
    assert "expand" not in spec["blocks"]["mamba2"] and spec["blocks"]["mamba2"]["heads"] == config["mamba_num_heads"]


def test_nemotron_h_moe_with_mlp_bias_is_refused():
    """mlp_bias gives transformers' shared experts biases too, which archdsl's moe has not: refused by name."""
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    with pytest.raises(ArchDSLError, match="'mlp_bias'"):
        hf_config_to_spec(_config_dict(hybrid_override_pattern="ME*-E", n_routed_experts=4, mlp_bias=True,
                                       moe_intermediate_size=12, moe_shared_expert_intermediate_size=24))
    hf_config_to_spec(_config_dict(mlp_bias=True))  # without MoE layers, mlp_bias is the mlp's biases


def test_nemotron_h_shared_expert_width_0_is_intermediate_size(tmp_path):
    """moe_shared_expert_intermediate_size 0: transformers' shared expert takes intermediate_size (`0 or ...`)."""
    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_router_bias, hidden_size=32, vocab_size=100,
                 hybrid_override_pattern="ME-E", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=2,
                 chunk_size=8, intermediate_size=40, n_routed_experts=4, num_experts_per_tok=2,
                 moe_intermediate_size=12, moe_shared_expert_intermediate_size=0)
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's generate needs an attention layer in its cache


def test_nemotron_h_num_local_experts_wins():
    """num_local_experts (NemotronHConfig's attribute_map name of n_routed_experts) wins when both are given."""
    config = _config_dict(hybrid_override_pattern="ME", n_routed_experts=4, moe_intermediate_size=12,
                          moe_shared_expert_intermediate_size=24)
    config["num_local_experts"] = 6
    assert transformers().NemotronHConfig.from_dict(config).n_routed_experts == 6
    _counts_agree(config)


def test_nemotron_h_export_of_a_sigmoid_moe_without_score_bias(tmp_path):
    """A sigmoid router without score_bias is transformers' NemotronH router with e_score_correction_bias zero:
    export writes that (float32) tensor; it was a KeyError traceback."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from safetensors.torch import load_file

    spec = archdsl.parse("mamba2, moe", d_model=32, vocab_size=64, blocks={
        "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
        "moe": {"experts": 4, "top_k": 2, "hidden": 16, "act": "relu2", "router": "sigmoid", "shared_hidden": 16}})
    model = archdsl.compile(spec)
    export_hf(model, tmp_path / "x")
    bias = load_file(tmp_path / "x" / "model.safetensors")["backbone.layers.1.mixer.gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32 and torch.equal(bias, torch.zeros(4))
    hf = transformers().AutoModelForCausalLM.from_pretrained(tmp_path / "x").float().eval()
    ids = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(hf_logits(hf, ids), model(ids)) <= TOL


def test_nemotron_h_dt_init_range_is_read_and_written(tmp_path):
    """time_step_min / time_step_max (the dt init range; mamba_dt_min / mamba_dt_max, the old names, win) are the
    mamba2 dt_min / dt_max, and export writes them back: a round trip kept 0.001 / 0.1 whatever they were."""
    import archdsl
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.convert.hf_io import export_hf

    config = _config_dict(time_step_min=0.002, time_step_max=0.2)
    assert {k: hf_config_to_spec(config)["blocks"]["mamba2"][k] for k in ("dt_min", "dt_max")} == \
        {"dt_min": 0.002, "dt_max": 0.2}
    old = hf_config_to_spec({**config, "mamba_dt_min": 0.003, "mamba_dt_max": 0.3})["blocks"]["mamba2"]
    assert (old["dt_min"], old["dt_max"]) == (0.003, 0.3)
    back = transformers().NemotronHConfig.from_dict({**config, "mamba_dt_min": 0.003, "mamba_dt_max": 0.3})
    assert (back.time_step_min, back.time_step_max) == (0.003, 0.3)
    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", hidden_size=32, vocab_size=100,
                 hybrid_override_pattern="M-", ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=16, n_groups=2,
                 chunk_size=8, intermediate_size=48, time_step_min=0.002, time_step_max=0.2)
    hf.save_pretrained(tmp_path / "hf")
    spec, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    export_hf(model, tmp_path / "x")
    m = archdsl.from_hf(tmp_path / "x").blocks["mamba2"]
    assert (m["dt_min"], m["dt_max"]) == (0.002, 0.2)


def test_nemotron_h_moe_adds_no_balancing_loss():
    """transformers' NemotronH computes no load-balancing loss (its routing is balanced by the score bias): the
    imported moe has aux_loss_coef 0, so training it adds none (archdsl's default, 0.01, was taken)."""
    import archdsl
    import yaml
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.spec import spec_from_yaml

    spec = hf_config_to_spec(dict(model_type="nemotron_h", hidden_size=32, vocab_size=64, hybrid_override_pattern="ME",
                                  ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2, chunk_size=8,
                                  n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                  moe_shared_expert_intermediate_size=24))
    assert spec["blocks"]["moe"]["aux_loss_coef"] == 0.0
    model = archdsl.compile(spec_from_yaml(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))).train()
    model(torch.randint(0, 64, (2, 8)))
    moe = [m for m in model.modules() if type(m).__name__ == "Moe"]
    assert moe and all(float(m.aux_loss.detach()) == 0.0 for m in moe)


def test_nemotron_h_bf16_keeps_its_float32_router_as_transformers(tmp_path):
    """transformers keeps NemotronH's gate.weight float32 in a bf16 model (_keep_in_fp32_modules_strict), and its
    bf16 save stores it so: the import keeps those values and float32 (rounded to bf16 they chose other experts for
    ~1% of tokens), routes as transformers does, and the export writes it float32 again."""
    from safetensors import safe_open

    import archdsl

    hf = make_hf("NemotronHConfig", "NemotronHForCausalLM", init=_router_bias, hidden_size=64, vocab_size=64,
                 hybrid_override_pattern="E", n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=16,
                 moe_shared_expert_intermediate_size=16, mamba_num_heads=8, mamba_head_dim=16, num_attention_heads=4,
                 head_dim=16)
    with torch.no_grad():
        hf.model.layers[0].mixer.gate.weight.normal_(0, 0.05)
    hf.save_pretrained(tmp_path / "fp32")
    half = transformers().AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    gate = half.model.layers[0].mixer.gate
    assert gate.weight.dtype == torch.float32
    spec, ours = archdsl.from_hf(tmp_path / "bf16", weights=True)
    router = ours.layers[0].ffn.router
    assert ours.dtype == torch.bfloat16 and router.weight.dtype == torch.float32
    assert torch.equal(router.weight, gate.weight)
    x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        want, got = gate(x)[2].sort(-1).values, ours.layers[0].ffn.route(x)[2].sort(-1).values
    assert torch.equal(want, got)
    from archdsl.convert.hf_io import export_hf

    export_hf(ours, tmp_path / "out")
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("backbone.layers.0.mixer.gate.weight").dtype == torch.float32
