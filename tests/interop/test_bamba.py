from interop.common import check_family, make_hf


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
