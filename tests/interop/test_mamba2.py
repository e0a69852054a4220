from interop.common import check_family, make_hf


def test_mamba2(tmp_path):
    hf = make_hf("Mamba2Config", "Mamba2ForCausalLM", hidden_size=32, num_hidden_layers=3, vocab_size=120,
                 state_size=8, num_heads=8, head_dim=8, n_groups=2, chunk_size=8, layer_norm_epsilon=1e-6)
    check_family(tmp_path, hf, 120)


def test_mamba2_tied_biased(tmp_path):
    hf = make_hf("Mamba2Config", "Mamba2ForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=100,
                 state_size=16, num_heads=4, head_dim=16, n_groups=1, chunk_size=16, use_bias=True,
                 conv_kernel=3, tie_word_embeddings=True)
    check_family(tmp_path, hf, 100)
