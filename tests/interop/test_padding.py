"""Left-padded batches against transformers: greedy generate with an attention_mask (HF's convention, 0 at the
pads) gives transformers' tokens for the same padded batch, and each row the tokens of its prompt alone; and
generate's repetition_penalty gives transformers' tokens."""
import pytest
import torch

from interop.common import make_hf

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=32, num_hidden_layers=2, vocab_size=120, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2)),
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=32, num_hidden_layers=3, vocab_size=120, state_size=8, time_step_rank=3)),
    "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM",
                     dict(hidden_size=32, num_hidden_layers=3, vocab_size=120, state_size=8, time_step_rank=3)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(hidden_size=32, num_hidden_layers=3, vocab_size=120, state_size=8, num_heads=8, head_dim=8,
                    n_groups=2, chunk_size=8)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM",
               dict(vocab_size=120, num_hidden_layers=3, layers_block_type=["mamba", "hybrid", "hybrid"], num_mem_blocks=1,
                    hidden_size=32, num_attention_heads=4, n_mamba_heads=4, mamba_d_state=8, adapter_rank=4,
                    intermediate_size=48, chunk_size=8)),
    "jamba": ("JambaConfig", "JambaForCausalLM",
              dict(vocab_size=120, num_experts=4, num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
                   attn_layer_period=4, attn_layer_offset=2, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, mamba_d_state=8, mamba_dt_rank=4, mamba_d_conv=4)),
    "bamba": ("BambaConfig", "BambaForCausalLM",
              dict(hidden_size=32, num_hidden_layers=4, vocab_size=120, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, attn_layer_indices=[1, 3], mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=2,
                   mamba_d_state=8, mamba_chunk_size=8)),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM",
                   dict(hidden_size=32, vocab_size=120, hybrid_override_pattern="M-M*ME", ssm_state_size=8,
                        mamba_num_heads=8, mamba_head_dim=8, n_groups=2, chunk_size=8, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, intermediate_size=64, n_routed_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=24)),
}  # RWKV (v4) is left out: transformers' RWKV ignores attention_mask (archdsl's RWKV-4 restarts its WKV at the prompt)


def hf_generate(model, ids, mask, n):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, min_new_tokens=n,
                              pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_left_padded_generate_matches_transformers(family, tmp_path):
    """Prompts of 9, 3 and 14 tokens (a chunk of 8 cut, a prompt shorter than the conv window), 10 new tokens;
    the hybrids (zamba2, jamba, bamba, nemotron_h) hold attention layers, so transformers' generate runs on its
    cache (docs/interop.md: it fails on a cache without one)."""
    import archdsl

    config, cls, kw = FAMILIES[family]
    hf = make_hf(config, cls, **kw)
    hf.save_pretrained(tmp_path)
    _, ours = archdsl.from_hf(tmp_path, weights=True)
    lengths = [9, 3, 14]
    L = max(lengths)
    mask = (torch.arange(L)[None] >= L - torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 120, (3, L), generator=torch.Generator().manual_seed(0)) * mask
    out = ours.generate(ids, 10, temperature=0, attention_mask=mask)
    assert torch.equal(out, hf_generate(hf, ids, mask, 10))
    for b, n in enumerate(lengths):
        alone = ids[b:b + 1, L - n:]
        assert torch.equal(out[b, L:], hf_generate(hf, alone, torch.ones_like(alone), 10)[0, n:])


@pytest.mark.parametrize("family", ["llama", "mamba2", "jamba"])
@pytest.mark.parametrize("penalty", [1.5, 0.7])  # < 1 favours repeats
def test_repetition_penalty_matches_transformers(family, penalty, tmp_path):
    """Greedy generate with repetition_penalty: transformers' RepetitionPenaltyLogitsProcessor's tokens, over 12 new
    tokens of a random 6-token prompt (a repeat-prone tiny model: the penalty changes the greedy tokens)."""
    import archdsl

    config, cls, kw = FAMILIES[family]
    hf = make_hf(config, cls, **kw)
    hf.save_pretrained(tmp_path)
    _, ours = archdsl.from_hf(tmp_path, weights=True)
    ids = torch.randint(1, 120, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                           do_sample=False, repetition_penalty=penalty, pad_token_id=0, eos_token_id=None)
    got = ours.generate(ids, 12, temperature=0, repetition_penalty=penalty)
    assert torch.equal(got, want)
    assert not torch.equal(got, ours.generate(ids, 12, temperature=0))
