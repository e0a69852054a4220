import pytest

from interop.common import check_family, make_hf, transformers


def test_bamba(tmp_path):
    hf = make_hf("BambaConfig", "BambaForCausalLM", hidden_size=32, num_hidden_layers=4, vocab_size=120,
                 intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1, 3],
                 mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=8,
                 rms_norm_eps=1e-6)
    check_family(tmp_path, hf, 120)


def test_bamba_mamba_only_tied(tmp_path):
    hf = make_hf("BambaConfig", "BambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=100,
                 intermediate_size=48, mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=16,
                 tie_word_embeddings=True, mamba_proj_bias=True)
    # transformers 5.24's and 5.25's generate() fail on a Bamba cache without attention layers: greedy without cache
    check_family(tmp_path, hf, 100, hf_cache=False)


def test_bamba_top_level_partial_rotary_factor_is_not_read():
    """BambaConfig sets the top-level partial_rotary_factor to 0.5 whatever it says: only rope_parameters' counts."""
    from archdsl.convert.hf import hf_config_to_spec
    from interop.common import transformers

    config = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                  num_attention_heads=4, intermediate_size=64, attn_layer_indices=[1], partial_rotary_factor=1.0,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    assert transformers().BambaConfig.from_dict(config).rope_parameters["partial_rotary_factor"] == 0.5
    assert hf_config_to_spec(config)["blocks"]["attn"]["rope_fraction"] == 0.5
    config["rope_parameters"]["partial_rotary_factor"] = 1.0
    assert transformers().BambaConfig.from_dict(config).rope_parameters["partial_rotary_factor"] == 1.0
    assert hf_config_to_spec(config)["blocks"]["attn"]["rope_fraction"] == 1.0


@pytest.mark.parametrize("indices, attn", [([1, 1], [1]), ([3, 1, 3], [1, 3]), ([5], []), ([-1, 2], [2])])
def test_bamba_attn_layer_indices_as_transformers_reads_them(indices, attn):
    """transformers asks `i in attn_layer_indices` of each layer: a repeat counts once, an index of no layer (past
    the last, or negative) never matches; each was refused as a layout error. The dropped ones are warned of."""
    import warnings

    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLWarning
    from hf_util import hf_count, spec_params

    kw = dict(hidden_size=32, num_hidden_layers=4, vocab_size=64, mamba_n_heads=4, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, attn_layer_indices=indices)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        spec = hf_config_to_spec({"model_type": "bamba", **kw}, "b")
    dropped = sorted({i for i in indices if not 0 <= i < 4})
    assert [str(w.message) for w in said if w.category is ArchDSLWarning] == (
        [f"config field 'attn_layer_indices': {dropped} name no layer of the 4-layer model; ignored, as "
         "transformers does"] if dropped else [])
    assert spec["layout"] == "4×mamba2" + (", attn at " + " ".join(map(str, attn)) if attn else "")
    assert spec_params(spec) == hf_count("BambaConfig", "BambaForCausalLM", **kw)


def test_bamba_dt_init_range_round_trips(tmp_path):
    """BambaConfig has no time_step_min / time_step_max; export writes the mamba2 dt_min / dt_max under those
    names (transformers keeps them) and import reads them back: they were lost."""
    import archdsl
    from archdsl.convert.hf_io import export_hf

    spec = archdsl.parse("mamba2, attn", d_model=32, vocab_size=64, ffn="mlp", blocks={
        "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8, "dt_min": 0.002, "dt_max": 0.05},
        "attn": {"heads": 4, "kv_heads": 2}, "mlp": {"act": "swiglu", "hidden": 48}})
    export_hf(archdsl.compile(spec), tmp_path / "x")
    assert transformers().AutoConfig.from_pretrained(tmp_path / "x").time_step_min == 0.002
    m = archdsl.from_hf(tmp_path / "x").blocks["mamba2"]
    assert (m["dt_min"], m["dt_max"]) == (0.002, 0.05)
