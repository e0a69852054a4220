from interop.common import check_family, make_hf


def test_mamba(tmp_path):
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=3, vocab_size=120,
                 state_size=8, time_step_rank=3)
    check_family(tmp_path, hf, 120)


def test_mamba_untied_biased(tmp_path):
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=48, num_hidden_layers=2, vocab_size=100,
                 state_size=4, conv_kernel=3, expand=2, use_bias=True, tie_word_embeddings=False,
                 layer_norm_epsilon=1e-6)
    check_family(tmp_path, hf, 100)
