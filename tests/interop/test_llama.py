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
