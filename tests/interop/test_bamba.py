import copy

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
    """BambaConfig sets the top-level partial_rotary_factor to 0.5 whatever it says: only rope_parameters' counts.
    (BambaConfig.from_dict writes the 0.5 into the dict it is given: each call gets a copy, or the default would
    never be read.)"""
    from archdsl.convert.hf import hf_config_to_spec
    from interop.common import transformers

    config = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                  num_attention_heads=4, intermediate_size=64, attn_layer_indices=[1], partial_rotary_factor=1.0,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    assert transformers().BambaConfig.from_dict(copy.deepcopy(config)).rope_parameters["partial_rotary_factor"] == 0.5
    assert hf_config_to_spec(config)["blocks"]["attn"]["rope_fraction"] == 0.5
    config["rope_parameters"]["partial_rotary_factor"] = 1.0
    assert transformers().BambaConfig.from_dict(copy.deepcopy(config)).rope_parameters["partial_rotary_factor"] == 1.0
    assert hf_config_to_spec(config)["blocks"]["attn"]["rope_fraction"] == 1.0


def test_bamba_without_rope_parameters_rotates_half_of_each_head():
    """A config of transformers 4 (rope_theta at the top, no rope_parameters) rotates half of each head, as
    BambaConfig's default: 1.0 would import full RoPE where transformers rotates half."""
    from archdsl.convert.hf import hf_config_to_spec

    config = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                  num_attention_heads=4, head_dim=8, intermediate_size=48, attn_layer_indices=[1], rope_theta=1e4)
    assert hf_config_to_spec(copy.deepcopy(config))["blocks"]["attn"]["rope_fraction"] == 0.5


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


def test_bamba_head_dim_round_trips(tmp_path):
    """transformers' Bamba reads head_dim (its q/k/v/o widths and its RoPE); archdsl imported it but export
    refused it ("Bamba's head_dim is hidden_size / heads"): now written back, as Jamba's and Llama's export do."""
    hf = make_hf("BambaConfig", "BambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=90,
                 intermediate_size=40, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8)
    assert hf.model.layers[1].self_attn.q_proj.out_features == 4 * 16
    check_family(tmp_path, hf, 90)


@pytest.mark.parametrize("head_dim, fraction, field", [
    (8, 0.375, "rope_parameters.partial_rotary_factor"),
    (12, 0.25, "rope_parameters.partial_rotary_factor"),
    (6, None, "rope_parameters.partial_rotary_factor"),  # not given: BambaConfig's 0.5, int(6·0.5) = 3
    (8, 0.375, "rope_scaling.partial_rotary_factor"),  # transformers takes rope_scaling whole where given
])
def test_bamba_import_refuses_an_odd_rotated_width(head_dim, fraction, field):
    """transformers rotates int(head_dim·partial_rotary_factor) channels, an odd count taken as the next even one
    with frequencies over the odd count; archdsl's rope_fraction rotates whole pairs: another function (logits up
    to 0.4 off), imported without a word. Refused, naming the field and the head_dim."""
    import torch

    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    rope = {"rope_type": "default", "rope_theta": 1e4}
    if fraction is not None:
        rope["partial_rotary_factor"] = fraction
    key = field.split(".")[0]
    config = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, intermediate_size=48,
                  attn_layer_indices=[1], **{key: rope})
    width = int(head_dim * (fraction or 0.5))
    hf = transformers().BambaForCausalLM(transformers().BambaConfig.from_dict(copy.deepcopy(config)))
    inv_freq = hf.model.rotary_emb.inv_freq  # what transformers computes: (width + 1) / 2 frequencies over width
    assert torch.allclose(inv_freq, 1e4 ** -(torch.arange(0, width, 2, dtype=torch.float) / width))
    with pytest.raises(ArchDSLError, match=f"'{field}': .*head_dim {head_dim} the rotated width "
                                           rf"int\({head_dim}·[0-9.]+\) = {width} would be odd: transformers then "
                                           f"rotates {width + 1} channels"):
        hf_config_to_spec(config)
    config["attn_layer_indices"] = []  # no attention layer, no RoPE: nothing to refuse
    assert hf_config_to_spec(config)["layout"] == "2×mamba2"


def test_bamba_import_keeps_even_rotated_widths():
    from archdsl.convert.hf import hf_config_to_spec

    for head_dim, fraction in ((8, 0.5), (12, 0.5), (8, 0.25), (16, 0.375), (8, 1.0)):
        config = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                      num_attention_heads=4, head_dim=head_dim, intermediate_size=48, attn_layer_indices=[1],
                      rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": fraction})
        assert hf_config_to_spec(config)["blocks"]["attn"]["rope_fraction"] == fraction


def test_bamba_export_refuses_an_odd_rotated_width(tmp_path):
    """A native spec whose attn rope_fraction·head_dim is odd (0.375·8 = 3: archdsl rotates 2 channels) was
    exported as partial_rotary_factor 0.375, which transformers reads as 4 rotated channels (logits 0.37 off).
    Refused, naming rope_fraction and the attn block; the same archdsl model with rope_fraction 0.25 exports."""
    import archdsl
    import torch
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from interop.common import hf_logits, rel

    def native(fraction):
        spec = archdsl.parse("mamba2, attn", d_model=32, vocab_size=64, ffn="mlp", blocks={
            "mamba2": {"d_state": 8, "headdim": 16, "chunk_size": 8},
            "attn": {"heads": 4, "kv_heads": 2, "rope_fraction": fraction, "rope_theta": 50.0},
            "mlp": {"act": "swiglu", "hidden": 48}})
        torch.manual_seed(0)
        model = archdsl.compile(spec).eval()
        with torch.no_grad():  # attention large enough for RoPE to show in the logits
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(4)
        return model

    odd = native(0.375)
    with pytest.raises(ArchDSLError, match=r"cannot export to Hugging Face Bamba: attn rope_fraction 0.375 of "
                                           r"head_dim 8: the rotated width int\(8·0.375\) = 3 is odd.*"
                                           r"rope_fraction 0.25 \(2/8\) is the same archdsl model"):
        export_hf(odd, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    even = native(0.25)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(odd(ids), even(ids))
        back = transformers().AutoModelForCausalLM.from_pretrained(export_hf(even, tmp_path / "y")).float().eval()
        assert rel(hf_logits(back, ids), even(ids)) <= 1e-5
