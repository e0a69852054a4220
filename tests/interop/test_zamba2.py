"""Zamba2: mamba2 layers + shared transformer blocks (one, or two cycled ABAB) with per-use LoRA
adapters, against transformers' Zamba2ForCausalLM."""
import pytest
import torch

from interop.common import check_family, make_hf

SMALL = dict(hidden_size=32, num_attention_heads=4, n_mamba_heads=4, mamba_d_state=8, adapter_rank=4,
             intermediate_size=48, chunk_size=8)


def _floor_some_dt(model):
    """Push one head's dt below time_step_min in every mamba layer, so the dt clamp matters; and
    scale the projections up so that greedy decoding does not settle on one token at once."""
    for name, p in model.named_parameters():
        if name.endswith("mamba.dt_bias"):
            p[0] = -9.0
    for name, p in model.named_parameters():
        if p.ndim == 2 and "embed" not in name:
            p.mul_(8.0)  # HF std 0.02 → about unit gain at these widths


def test_zamba2_one_shared_block(tmp_path):
    hf = make_hf("Zamba2Config", "Zamba2ForCausalLM", vocab_size=128, num_hidden_layers=3,
                 layers_block_type=["mamba", "hybrid", "hybrid"], num_mem_blocks=1, init=_floor_some_dt, **SMALL)
    check_family(tmp_path, hf, 128)


ABAB = ["mamba", "hybrid", "hybrid", "mamba", "hybrid", "hybrid"]  # blocks A B A B at 1 2 4 5


def _tie_shared_blocks(model):
    """transformers ties the shared blocks only along with the embeddings; untied, give every use of
    a block the same weights (what the config means) so the model is a Zamba2."""
    _floor_some_dt(model)
    hybrid = [layer for layer in model.model.layers if hasattr(layer, "shared_transformer")]
    M = model.config.num_mem_blocks
    for j, layer in enumerate(hybrid[M:], start=M):
        layer.shared_transformer.load_state_dict(hybrid[j % M].shared_transformer.state_dict())


def test_zamba2_abab_attention_adapters_rope(tmp_path):
    """num_mem_blocks=2: blocks A B A B, q/k/v adapters, RoPE."""
    hf = make_hf("Zamba2Config", "Zamba2ForCausalLM", vocab_size=100, num_hidden_layers=6, layers_block_type=ABAB,
                 num_mem_blocks=2, use_shared_attention_adapter=True, use_mem_rope=True, init=_floor_some_dt, **SMALL)
    check_family(tmp_path, hf, 100)
    import archdsl

    spec, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    assert model.layers[1].inject is model.layers[4].inject is not model.layers[2].inject
    assert model.layers[2].inject is model.layers[5].inject
    assert "shared=" in spec.layout_text


def test_zamba2_abab_untied_head(tmp_path):
    """An untied head: transformers keeps a copy of each shared block per layer; equal copies import,
    and export writes one per layer."""
    import archdsl
    from archdsl.errors import ArchDSLWarning
    from archdsl.convert.hf_io import export_hf
    from interop.common import TOL, hf_greedy, hf_logits, rel, transformers

    kw = dict(vocab_size=100, num_hidden_layers=6, layers_block_type=ABAB, num_mem_blocks=2, **SMALL)
    hf = make_hf("Zamba2Config", "Zamba2ForCausalLM", tie_word_embeddings=False, init=_tie_shared_blocks, **kw)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.warns(ArchDSLWarning, match="builds a copy of a shared block for each of the 4 hybrid layers, "
                                                    "where this spec .* holds 2, so its parameter count is below"):
        spec = archdsl.from_hf(tmp_path / "hf")  # config alone: the count it reports is said to differ
    _, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    assert archdsl.analyze(spec).params == model.num_params()
    tied = make_hf("Zamba2Config", "Zamba2ForCausalLM", **kw)  # one copy per block: the true count
    assert model.num_params() == sum(p.numel() for p in tied.parameters()) + 100 * 32
    ids = torch.randint(0, 100, (2, 21), generator=torch.Generator().manual_seed(0))
    ref = hf_logits(hf, ids)
    with torch.no_grad():
        assert rel(model(ids), ref) <= TOL
    assert torch.equal(model.generate(ids[:1, :8], 32, temperature=0), hf_greedy(hf, ids[:1, :8], 32))
    export_hf(model, tmp_path / "export")
    back = transformers().AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert rel(hf_logits(back, ids), ref) <= TOL


def test_zamba2_untied_copies_that_differ_are_refused(tmp_path):
    import archdsl
    from archdsl.errors import ArchDSLError

    hf = make_hf("Zamba2Config", "Zamba2ForCausalLM", vocab_size=64, num_hidden_layers=3,
                 layers_block_type=["hybrid", "mamba", "hybrid"], tie_word_embeddings=False, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ArchDSLError, match="differs from 'model.layers.0.shared_transformer"):
        archdsl.from_hf(tmp_path / "hf", weights=True)


def test_zamba2_dt_floor_is_applied(tmp_path):
    """HF clamps dt at time_step_min; with a head far below it our logits still match."""
    import archdsl
    from interop.common import hf_logits, rel

    hf = make_hf("Zamba2Config", "Zamba2ForCausalLM", vocab_size=64, num_hidden_layers=2,
                 layers_block_type=["mamba", "hybrid"], init=_floor_some_dt, **SMALL)
    hf.save_pretrained(tmp_path / "hf")
    _, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    assert all(layer.mixer.cfg.dt_floor == pytest.approx(1e-3) for layer in model.layers)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(ids)
        for layer in model.layers:
            layer.mixer.dt_bias[0] = -30.0  # still clamped to the floor: same function
        assert rel(model(ids), base) < 1e-6
    assert rel(base, hf_logits(hf, ids)) <= 1e-5


def test_zamba2_export_refuses_non_cycling_groups():
    import archdsl
    from archdsl.convert.weights import zamba2
    from archdsl.errors import ArchDSLError

    spec = archdsl.parse("4×mamba2(headdim=16), zamba(shared=a, lora=4, heads=4) at 0 1, zamba(shared=b, lora=4, heads=4) at 2")
    with pytest.raises(ArchDSLError, match="ABAB"):
        zamba2.hf_config(spec)
    assert zamba2.accepts(spec) is None


def test_zamba2_export_of_a_native_spec(tmp_path):
    """A spec written in archdsl (mamba2 without a dt floor) exports, and transformers computes the same."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.spec import spec_from_yaml
    from interop.common import hf_logits, rel, transformers

    spec = spec_from_yaml("d_model: 32\nvocab_size: 100\n"
                          "layout: 4×mamba2(headdim=16, d_state=8), zamba(shared, lora=4, heads=4, hidden=48) at 1 3")
    model = archdsl.compile(spec)
    back = transformers().AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "x")).eval()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(hf_logits(back, ids), model(ids)) <= 1e-5
    assert model.num_params() == sum(p.numel() for p in back.parameters())


@pytest.mark.parametrize("key", ["attention_head_dim", "head_dim"])
def test_zamba2_head_dim_other_than_twice_d_over_heads_is_refused_by_name(key):
    """transformers reads attention_head_dim (or head_dim, its attribute_map name) when given; archdsl's zamba block
    has head_dim 2·d/heads only: another value is refused naming the key, 2·d/heads converts."""
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError
    from hf_util import spec_params
    from interop.common import transformers

    config = dict(model_type="zamba2", vocab_size=64, num_hidden_layers=2, layers_block_type=["mamba", "hybrid"],
                  **SMALL)
    assert transformers().Zamba2Config.from_dict({**config, key: 8}).attention_head_dim == 8
    with pytest.raises(ArchDSLError, match=f"'{key}'"):
        hf_config_to_spec({**config, key: 8})
    same = {**config, key: 16}
    hf = transformers().Zamba2ForCausalLM(transformers().Zamba2Config.from_dict(same))
    assert spec_params(hf_config_to_spec(same)) == sum(p.numel() for p in hf.parameters())
