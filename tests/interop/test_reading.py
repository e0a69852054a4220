"""How a checkpoint is read where its config.json and its tensors do not quite agree, as transformers reads it: a
tied config with a head of other values, the dtype to import in, tensors transformers ignores; and the model is
built without a random initialisation that the checkpoint then overwrites."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import archdsl
from archdsl.errors import ArchDSLError, ArchDSLWarning
from interop.common import TOL, hf_logits, make_hf, rel, transformers

M2 = dict(ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2, chunk_size=8)
TINY = {  # family: (config class, model class, vocab, kwargs), a layer of every kind the family has
    "mamba": ("MambaConfig", "MambaForCausalLM", 50, dict(hidden_size=16, num_hidden_layers=2, state_size=4)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM", 50,
               dict(hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=8, head_dim=8, n_groups=2,
                    chunk_size=8)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", 50,
              dict(hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                   num_key_value_heads=2)),
    "bamba": ("BambaConfig", "BambaForCausalLM", 50,
              dict(hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
                   num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=8,
                   mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=8)),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM", 50,
                   dict(hidden_size=32, hybrid_override_pattern="M*-E", num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, intermediate_size=48, n_routed_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=16, moe_shared_expert_intermediate_size=24, **M2)),
    "jamba": ("JambaConfig", "JambaForCausalLM", 50,
              dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, mamba_d_state=8, mamba_dt_rank=4, num_experts=2, num_experts_per_tok=1,
                   expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=0)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM", 50,
               dict(hidden_size=32, num_hidden_layers=2, layers_block_type=["mamba", "hybrid"], num_attention_heads=4,
                    n_mamba_heads=4, mamba_d_state=8, adapter_rank=4, intermediate_size=48, chunk_size=8)),
    "rwkv": ("RwkvConfig", "RwkvForCausalLM", 50,
             dict(hidden_size=32, attention_hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  rescale_every=0)),
}
HEADS = {"mamba": ("lm_head.weight", "backbone.embeddings.weight"),
         "llama": ("lm_head.weight", "model.embed_tokens.weight"),
         "jamba": ("lm_head.weight", "model.embed_tokens.weight"),
         "zamba2": ("lm_head.weight", "model.embed_tokens.weight"),
         "rwkv": ("head.weight", "rwkv.embeddings.weight")}


def saved(tmp_path, family, **kwargs):
    """(directory, the transformers model) of the family's tiny model, saved."""
    config_cls, model_cls, vocab, kw = TINY[family]
    hf = make_hf(config_cls, model_cls, vocab_size=vocab, **{**kw, **kwargs})
    d = tmp_path / family
    hf.save_pretrained(d)
    return d, hf


def rewrite(d, edit=None, config=None):
    """Edit a saved checkpoint's tensors (edit(state)) and config.json (config: keys to set, None to remove)."""
    if edit is not None:
        state = load_file(d / "model.safetensors")
        edit(state)
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config)
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


def quietly(path, **kwargs):
    """from_hf(path, weights=True) that fails on any ArchDSLWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ArchDSLWarning)
        return archdsl.from_hf(path, weights=True, **kwargs)


@pytest.mark.parametrize("family", sorted(HEADS))
def test_a_tied_config_with_a_head_of_other_values_is_read_untied(family, tmp_path):
    """tie_word_embeddings true (Mamba's and Zamba2's default) and a checkpoint head that is not the embeddings:
    transformers warns and uses the checkpoint's head; the head was dropped here and the logits were the
    embeddings', relative error 1.0. A head equal to the embeddings keeps the tie."""
    d, _ = saved(tmp_path, family, tie_word_embeddings=True)
    head, emb = HEADS[family]
    other = torch.randn(load_file(d / "model.safetensors")[emb].shape, generator=torch.Generator().manual_seed(3))
    rewrite(d, lambda s: s.update({head: other}))
    hf = transformers().AutoModelForCausalLM.from_pretrained(d).float().eval()
    with pytest.warns(ArchDSLWarning, match=f"{head}'.* differs from '{emb}'.*untied"):
        spec, model = archdsl.from_hf(d, weights=True)
    assert not spec.tie_embeddings and torch.equal(model.lm_head.weight, other)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(model(ids), hf_logits(hf, ids)) <= TOL
    rewrite(d, lambda s: s.update({head: s[emb].clone()}))
    spec, model = quietly(d)
    assert spec.tie_embeddings and model.lm_head.weight is model.embeddings.weight


def test_the_dtype_is_the_configs_else_that_of_most_of_the_weights(tmp_path):
    """The first floating tensor in the header (safetensors puts the widest dtypes first) was the dtype: a bfloat16
    checkpoint with one float32 tensor (NemotronH's router, kept in float32 by transformers) came in as float32."""
    d, _ = saved(tmp_path, "mamba")
    rewrite(d, config={"dtype": "bfloat16"})  # a float32 checkpoint its config calls bfloat16: as transformers
    assert quietly(d)[1].dtype == torch.bfloat16
    rewrite(d, config={"dtype": None, "torch_dtype": "float16"})  # transformers 4's name
    assert quietly(d)[1].dtype == torch.float16
    assert quietly(d, dtype="float32")[1].dtype == torch.float32  # an explicit dtype wins

    def mostly_bf16(s):
        for n in s:
            if not n.endswith("A_log"):
                s[n] = s[n].to(torch.bfloat16)
    rewrite(d, mostly_bf16, config={"torch_dtype": None})
    assert quietly(d)[1].dtype == torch.bfloat16
    rewrite(d, config={"dtype": "int8"})
    with pytest.raises(ArchDSLError, match="config field 'dtype'") as e:
        archdsl.from_hf(d, weights=True)
    assert e.value.file.endswith("config.json")


def test_a_bfloat16_nemotron_h_saved_by_transformers_stays_bfloat16(tmp_path):
    from archdsl.convert.hf_io import check_safetensors

    d, _ = saved(tmp_path, "nemotron_h")
    tf = transformers()
    tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    dtypes = [dt for dt, _ in check_safetensors(str(tmp_path / "bf16" / "model.safetensors")).values()]
    assert dtypes[0] == "F32" and dtypes.count("BF16") > dtypes.count("F32")  # the router's first
    _, model = quietly(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    assert model.layers[3].ffn.router.e_score_correction_bias.dtype == torch.float32


def test_tensors_transformers_ignores_are_dropped_with_a_warning(tmp_path):
    """NemotronH's multi-token-prediction layers (mtp.*) and a Llama checkpoint's per-layer rotary_emb.inv_freq
    (older transformers saved it) load in transformers; they were refused as unexpected tensors."""
    d, hf = saved(tmp_path, "nemotron_h", num_nextn_predict_layers=1)
    rewrite(d, lambda s: s.update({"mtp.layers.0.norm.weight": torch.ones(32), "mtp.fc.weight": torch.ones(32, 64)}))
    with pytest.warns(ArchDSLWarning, match=r"dropped 2 checkpoint tensors matching '\^mtp\\\\\.'"):
        _, model = archdsl.from_hf(d, weights=True)
    ids = torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(model(ids), hf_logits(hf, ids)) <= TOL
    rewrite(d, lambda s: s.update({"backbone.mtp.weight": torch.ones(3)}))  # only at the top: still unexpected
    with pytest.warns(ArchDSLWarning, match="mtp"), pytest.raises(ArchDSLError, match="unexpected tensor "
                                                                                      "'backbone.mtp.weight'"):
        archdsl.from_hf(d, weights=True)

    d, hf = saved(tmp_path, "llama")
    inv_freq = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4) for i in range(2)}
    rewrite(d, lambda s: s.update(inv_freq))
    assert transformers().AutoModelForCausalLM.from_pretrained(d) is not None
    with pytest.warns(ArchDSLWarning, match="dropped 2 checkpoint tensors matching .*rotary_emb"):
        _, model = archdsl.from_hf(d, weights=True)
    with torch.no_grad():
        assert rel(model(ids), hf_logits(hf, ids)) <= TOL
    d, _ = saved(tmp_path, "mamba")  # a family without RoPE: such a tensor is no part of it
    rewrite(d, lambda s: s.update({"backbone.layers.0.mixer.rotary_emb.inv_freq": torch.ones(4)}))
    with pytest.raises(ArchDSLError, match="unexpected tensor 'backbone.layers.0.mixer.rotary_emb.inv_freq'"):
        archdsl.from_hf(d, weights=True)


@pytest.mark.parametrize("family", sorted(TINY))
def test_weights_are_loaded_into_a_model_never_initialised(family, tmp_path, monkeypatch):
    """from_hf built the model with its random initialisation (minutes at 7B on a CPU) and then overwrote every
    tensor. Now nothing is initialised, and the model is the one compile + load gives: every parameter and buffer
    the same, the ties and shared blocks kept, no tensor left on the meta device."""
    from archdsl.convert.hf_io import family as family_of, read_safetensors
    from archdsl.model import load_weights

    d, _ = saved(tmp_path, family)
    kaiming = torch.nn.init.kaiming_uniform_

    def no_init(tensor, *args, **kwargs):
        assert tensor.device.type == "meta", "a weight was randomly initialised before the checkpoint was loaded"
        return kaiming(tensor, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(torch.nn.init, "kaiming_uniform_", no_init)
        spec, model = archdsl.from_hf(d, weights=True)
    fam = family_of(json.loads((d / "config.json").read_text())["model_type"])
    ref = archdsl.compile(spec, dtype=model.dtype)  # initialised, then overwritten: what from_hf did
    load_weights(ref, fam.to_archdsl(read_safetensors(d), spec, ref))
    ours, theirs = model.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    assert model.num_params() == ref.num_params()
    assert (model.lm_head.weight is model.embeddings.weight) == spec.tie_embeddings
    for module in model.modules():
        for key, value in vars(module).items():
            assert not (isinstance(value, torch.Tensor) and value.is_meta), f"{type(module).__name__}.{key}"
    assert torch.equal(model.aux_loss, ref.aux_loss)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))
