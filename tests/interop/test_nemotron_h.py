import torch

from interop.common import check_family, make_hf


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


def test_nemotron_h_dt_floor(tmp_path):
    """time_step_limit[0] clamps dt in HF's chunked path: large negative dt_bias makes it bite."""
    hf = _tiny(time_step_limit=(0.01, float("inf")))
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's decode step skips the clamp; compare uncached


def test_nemotron_h_time_step_min_is_init_only(tmp_path):
    """transformers >= 5.25 (like mamba_ssm's kernels) clamps at time_step_limit only: a dt far below
    time_step_min must pass unclamped."""
    hf = _tiny(time_step_min=0.01)
    check_family(tmp_path, hf, 100, hf_cache=False)  # HF's generate needs an attention layer in its cache
