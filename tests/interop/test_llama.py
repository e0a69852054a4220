from interop.common import check_family, make_hf


def test_llama(tmp_path):
    hf = make_hf("LlamaConfig", "LlamaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=120,
                 intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                 rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    check_family(tmp_path, hf, 120)


def test_llama_tied_biased_head_dim(tmp_path):
    hf = make_hf("LlamaConfig", "LlamaForCausalLM", hidden_size=48, num_hidden_layers=2, vocab_size=100,
                 intermediate_size=40, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                 attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    check_family(tmp_path, hf, 100)


def test_llama_rope_scaling_wins_over_rope_parameters():
    """Both given: transformers takes rope_scaling whole (`rope_parameters = rope_scaling or rope_parameters`), its
    theta included; a scaling type in the rope_parameters it ignores is no reason to refuse."""
    from archdsl.convert.hf import hf_config_to_spec
    from interop.common import transformers

    base = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, vocab_size=64, num_attention_heads=4,
                intermediate_size=64)
    for params in ({"rope_type": "default", "rope_theta": 10000.0}, {"rope_type": "linear", "factor": 2.0}):
        config = {**base, "rope_parameters": params, "rope_scaling": {"rope_type": "default", "rope_theta": 10.0}}
        assert transformers().LlamaConfig.from_dict(config).rope_parameters == {"rope_type": "default",
                                                                                "rope_theta": 10.0}
        assert hf_config_to_spec(config)["blocks"]["attn"]["rope_theta"] == 10.0
