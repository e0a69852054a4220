import torch

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


def _small_dt(model):
    """dt_bias from -9 to -3: softplus gives dt from 1e-4 to 0.05, across a floor at 0.01."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dt_bias"):
                p.copy_(torch.linspace(-9.0, -3.0, p.numel()))


def test_mamba2_dt_floor_binds_and_survives_the_export(tmp_path):
    """time_step_limit[0] is the mamba2 block's dt_floor, both ways: here it binds (dt below 0.01 for half the
    heads), so an export that wrote another floor gives transformers other logits."""
    hf = make_hf("Mamba2Config", "Mamba2ForCausalLM", init=_small_dt, hidden_size=32, num_hidden_layers=2,
                 vocab_size=100, state_size=8, num_heads=8, head_dim=8, n_groups=1, chunk_size=8,
                 time_step_limit=(0.01, float("inf")))
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's decode step skips the clamp: compare uncached
