"""Export refuses, naming the layer and the setting, a spec whose layers differ where the family's config.json
has one field for all of them: written from the first layer, transformers loaded another model (wrong logits,
no error)."""
import pytest

H = "name: t\nd_model: 32\nvocab_size: 64\n"
ATTN = "ffn: mlp\nblocks:\n  attn: {heads: 4, kv_heads: 2}\n  mlp: {act: swiglu, hidden: 40}\n"
M2 = "  mamba2: {d_state: 8, heads: 4, headdim: 16, ngroups: 1, chunk_size: 8}\n"

DIFFERING = {  # family: (spec, the setting named)
    "llama window": (H + "layout: attn, attn(window=4)\n" + ATTN, "layer 1's attn has window 4"),
    "llama rope_theta": (H + "layout: attn, attn(rope_theta=10.0)\n" + ATTN, "layer 1's attn has rope_theta 10.0"),
    "llama act": (H + "layout: attn, attn+mlp(act=geglu)\n" + ATTN, "layer 1's mlp has act 'geglu'"),
    "llama bias": (H + "layout: attn, attn(bias=true, out_bias=true)\n" + ATTN, "layer 1's attn has bias True"),
    "llama mlp bias": (H + "layout: attn, attn+mlp(bias=true)\n" + ATTN, "layer 1's mlp has bias True"),
    "mamba inner_norms": (H + "layout: mamba, mamba(inner_norms=unweighted)\nblocks:\n  mamba: {d_state: 8}\n",
                          "layer 1's mamba has inner_norms 'unweighted'"),
    "mamba2 norm_eps": (H + "layout: mamba2, mamba2(norm_eps=0.1)\nblocks:\n" + M2, "layer 1's mamba2 has norm_eps"),
    "mamba2 dt_floor": (H + "layout: mamba2, mamba2(dt_floor=0.5)\nblocks:\n" + M2, "layer 1's mamba2 has dt_floor"),
    "bamba rope_theta": (H + "ffn: mlp\nlayout: mamba2, attn, attn(rope_theta=5.0)\nblocks:\n" + M2
                         + "  attn: {heads: 4, kv_heads: 2, rope_fraction: 0.5}\n  mlp: {act: swiglu, hidden: 40}\n",
                         "layer 2's attn has rope_theta 5.0"),
    "nemotron_h act": (H + "layout: mamba2, mlp, mlp(act=relu)\nblocks:\n" + M2 + "  mlp: {act: relu2, hidden: 40}\n",
                       "layer 2's mlp has act 'relu'"),
}


@pytest.mark.parametrize("case", sorted(DIFFERING))
def test_export_refuses_layers_that_differ(case, tmp_path):
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    text, message = DIFFERING[case]
    model = archdsl.compile(spec_from_yaml(text))
    with pytest.raises(ArchDSLError, match=f"cannot export to Hugging Face .*{message}") as e:
        export_hf(model, tmp_path / "x")
    assert "layer 0's is" in str(e.value) or "layer 1's is" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_export_of_layers_alike_still_works(tmp_path):
    """The same setting given per layer (an alias, an item argument equal to the default) is one config."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.spec import spec_from_yaml
    from interop.common import transformers

    model = archdsl.compile(spec_from_yaml(H + "layout: attn, attn(kv_heads=2)\n" + ATTN))
    back = transformers().AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "x"))
    assert type(back).__name__ == "LlamaForCausalLM"
    # mamba2's expand 2 written out on one layer only (its default, None, is 2 where heads is not given)
    model = archdsl.compile(archdsl.parse("mamba2(d_state=8, headdim=8, expand=2), mamba2(d_state=8, headdim=8)",
                                          d_model=32, vocab_size=64))
    back = transformers().AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "m2"))
    assert type(back).__name__ == "Mamba2ForCausalLM"


@pytest.mark.parametrize("family, layout", [("bamba", "2×mamba2"), ("nemotron_h", "mamba2, mlp, mamba2")])
def test_export_refuses_a_mamba2_without_its_gated_norm(family, layout, tmp_path):
    """Bamba's and NemotronH's mamba2 always have the gated RMSNorm: a spec with gated_norm false was written as
    one, and transformers loaded it with a fresh norm (reported as a missing tensor only): logits 1.15 off."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError

    ffn = {"ffn": "mlp", "blocks": {"mlp": {"act": "swiglu", "hidden": 48}}} if family == "bamba" else \
        {"blocks": {"mlp": {"act": "relu2", "hidden": 48}}}
    ffn["blocks"]["mamba2"] = {"d_state": 8, "headdim": 8, "chunk_size": 8, "gated_norm": False}
    model = archdsl.compile(archdsl.parse(layout, d_model=32, vocab_size=64, **ffn))
    with pytest.raises(ArchDSLError, match=f"model_type '{family}': cannot export .*gated_norm false"):
        export_hf(model, tmp_path / "x", model_type=family)
    with pytest.raises(ArchDSLError, match="does not export to Hugging Face; the families with its kinds of "
                                           f"block refuse it: .*{family}: .*gated_norm"):  # and says why
        export_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("layout, blocks, message", [
    ("2×s4d", {"s4d": {"d_state": 8}}, "no family archdsl exports has s4d blocks"),
    ("mamba, mamba2", {"mamba": {"d_state": 8}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8}},
     "no family archdsl exports has all of mamba, mamba2 in one model"),
    ("2×rwkv4", {"cmix": {"version": 4}},
     "its nearest family, rwkv \\(the same kinds of block\\): cannot export to Hugging Face RWKV: norm_eps 1e-06"),
])
def test_export_without_a_model_type_says_why_no_family_takes_the_spec(layout, blocks, message, tmp_path):
    """Without a model_type the refusal named no reason ("name the one you mean to see what it lacks"): now it gives
    the reason of the family whose blocks are the spec's, or the blocks no family has."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError

    extra = {"norm": "layernorm", "embed_norm": True, "ffn": "cmix", "norm_eps": 1e-6} if "cmix" in blocks else {}
    model = archdsl.compile(archdsl.parse(layout, d_model=32, vocab_size=64, blocks=blocks, **extra))
    with pytest.raises(ArchDSLError, match=message):
        export_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family, layout, rope", [("llama", "2×attn", ""),
                                                  ("bamba", "mamba2, attn", ", rope_fraction: 0.5")])
def test_export_names_a_qwen2_style_attention_bias(family, layout, rope, tmp_path):
    """q/k/v biases without an output bias (Qwen2's attention): the Llama and Bamba refusals listed conditions that
    all held ("every layer must be attn (full RoPE, no window) with an mlp, rmsnorm, no embed_norm"), not the one
    that failed: one attention_bias flag for all four projections. Now they name it, with the spec's values."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    text = (H + f"ffn: mlp\nlayout: {layout}\nblocks:\n" + M2
            + f"  attn: {{heads: 4, kv_heads: 2, bias: true{rope}}}\n  mlp: {{act: swiglu, hidden: 40}}\n")
    model = archdsl.compile(spec_from_yaml(text))
    name = {"llama": "Llama", "bamba": "Bamba"}[family]
    with pytest.raises(ArchDSLError, match=f"model_type '{family}': not a {name} model: attn bias true with out_bias "
                                           rf"false \(q/k/v projections with biases, the output projection without\): "
                                           f"transformers' {name} has one flag, attention_bias, for all four") as e:
        export_hf(model, tmp_path / "x", model_type=family)
    assert "every layer must" not in str(e.value)
    assert not (tmp_path / "x").exists()
    with_out = archdsl.compile(spec_from_yaml(text.replace("bias: true", "bias: true, out_bias: true")))
    export_hf(with_out, tmp_path / "ok", model_type=family)  # both biases: one flag, exported


@pytest.mark.parametrize("family, layout, message", [
    ("llama", "2×mamba", "it has mamba blocks: every Llama layer is attn with an mlp"),
    ("llama", "2×attn(window=4)", "attn window 4: Llama's attention is full"),
    ("llama", "2×attn(rope=false)", "attn rope false: Llama's attention has RoPE"),
    ("bamba", "2×attn", "no mamba2 layer: Bamba is a Mamba-2 model"),
    ("bamba", "mamba2, attn(window=4)", "attn window 4: Bamba's attention is full"),
])
def test_llama_and_bamba_refusals_name_what_fails(family, layout, message, tmp_path):
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    model = archdsl.compile(spec_from_yaml(H + f"layout: {layout}\n" + ATTN + M2))
    with pytest.raises(ArchDSLError, match=f"model_type '{family}': not a .* model: {message}"):
        export_hf(model, tmp_path / "x", model_type=family)


def test_export_of_shared_blocks_warns_that_each_layer_gets_a_copy(tmp_path, capsys):
    """A block shared between layers (attn(shared)) was exported as a copy per layer without a word: the export
    computes the same (checked against transformers), but a model trained from it in transformers unties them.
    Now an ArchDSLWarning names the layers, the group and the copies, in Python and on the CLI; Zamba2's own shared
    blocks, tied in its checkpoint, are no copies and warn of nothing."""
    import os
    import warnings

    import torch

    import archdsl
    from archdsl.cli import main
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLWarning
    from archdsl.spec import spec_from_yaml
    from interop.common import hf_logits, rel, transformers

    model = archdsl.compile(spec_from_yaml(H + "layout: attn(shared), attn, attn(shared)\n" + ATTN), seed=3)
    with pytest.warns(ArchDSLWarning, match=r"export as llama: layers 0, 2 share one attn \(group 'attn'\); a llama "
                                            r"checkpoint has its own block in every layer, .* \(1 extra\)"):
        out = export_hf(model, tmp_path / "x")
    back = transformers().AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel(hf_logits(back, ids), model(ids)) < 1e-5
    model.save(tmp_path / "saved")
    assert main(["export", str(tmp_path / "saved"), "--to", "hf", "-o", str(tmp_path / "y")]) == 0
    assert "warning: export as llama: layers 0, 2 share one attn" in capsys.readouterr().err

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    zamba = archdsl.compile(archdsl.spec.with_sizes(archdsl.load_spec(os.path.join(root, "specs", "demo-zamba.yaml")),
                                                    d_model=64, vocab_size=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_hf(zamba, tmp_path / "z")


def test_nemotron_h_refusal_names_the_condition_that_fails(tmp_path):
    """attn, mlp, attn, mlp (no RoPE, relu2, rmsnorm) meets every condition the NemotronH refusal listed, and was
    refused with that list: it lacks a mamba2 or moe block, which is what the refusal now says."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError

    blocks = {"attn": {"heads": 4, "rope": False}, "mlp": {"act": "relu2", "hidden": 48}}
    model = archdsl.compile(archdsl.parse("attn, mlp, attn, mlp", d_model=32, vocab_size=64, blocks=blocks))
    with pytest.raises(ArchDSLError, match="nemotron_h: cannot export to Hugging Face NemotronH: no mamba2 or moe "
                                           "block"):
        export_hf(model, tmp_path / "x")


M2_NEM = {"d_state": 8, "heads": 4, "headdim": 16, "ngroups": 1, "chunk_size": 8}
MOE_NEM = {"experts": 4, "top_k": 2, "hidden": 16, "act": "relu2", "shared_hidden": 16}


@pytest.mark.parametrize("layout, blocks, extra, match", [
    ("mamba2, attn(window=4)", {"mamba2": M2_NEM, "attn": {"heads": 4, "rope": False}}, {}, "attn window 4"),
    ("mamba2, moe", {"mamba2": M2_NEM, "moe": {**MOE_NEM, "router": "softmax"}}, {}, "moe router 'softmax'"),
    ("mamba2, moe", {"mamba2": M2_NEM, "moe": {**MOE_NEM, "router": "sigmoid", "router_bias": True}}, {},
     "moe router_bias or bias"),
    ("2×mamba2", {"mamba2": M2_NEM}, {"embed_norm": True}, "embed_norm"),
])
def test_nemotron_h_refusals_name_each_condition(layout, blocks, extra, match, tmp_path):
    """Each of NemotronH's conditions refused by its own words (mutants dropping one check each went unseen)."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError

    model = archdsl.compile(archdsl.parse(layout, d_model=32, vocab_size=64, blocks=blocks, **extra))
    with pytest.raises(ArchDSLError, match=f"NemotronH: {match}"):
        export_hf(model, tmp_path / "x", model_type="nemotron_h")


def test_the_nearest_families_are_each_named_once(tmp_path):
    """mamba and falcon_mamba are one module: its reason is given once, under the first model type."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError

    model = archdsl.compile(archdsl.parse("2×mamba", d_model=32, vocab_size=64, blocks={"mamba": {"d_state": 8}},
                                          norm="layernorm"))
    with pytest.raises(ArchDSLError, match="refuse it: mamba: ") as e:
        export_hf(model, tmp_path / "x")
    assert "falcon_mamba" not in str(e.value)


def test_a_group_used_by_one_layer_is_no_copy(tmp_path):
    """attn(shared) used once: nothing is copied, nothing said."""
    import warnings

    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.spec import spec_from_yaml

    model = archdsl.compile(spec_from_yaml(H + "layout: attn(shared), attn\n" + ATTN))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_hf(model, tmp_path / "x")


def test_jamba_export_refuses_a_moe_of_one_expert(tmp_path):
    """num_experts 1 is transformers' switch for Jamba's dense MLP: a moe of one expert was written with it, and
    transformers loaded fresh MLPs in its place (the expert's tensors unexpected; logits 0.27 off) or crashed in its
    balancing loss (output_router_logits true, no MoE layer)."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    text = (H + "norm_eps: 1.0e-6\nffn: mlp\nlayout: 4×mamba, attn every 2 offset 1, moe every 2 offset 0\nblocks:\n"
            "  mamba: {d_state: 4, inner_norms: weighted}\n  attn: {heads: 2, rope: false}\n"
            "  mlp: {act: swiglu, hidden: 24}\n  moe: {experts: 1, top_k: 1, hidden: 24}\n")
    model = archdsl.compile(spec_from_yaml(text))
    with pytest.raises(ArchDSLError, match="cannot export to Hugging Face Jamba: moe of one expert: transformers' "
                                           "Jamba builds a dense MLP") as e:
        export_hf(model, tmp_path / "x", model_type="jamba")
    assert "write it as an mlp" in e.value.hint
    assert not (tmp_path / "x").exists()


def test_export_warns_that_residual_fp32_has_no_field(tmp_path):
    """A family without residual_in_fp32 (Llama) dropped the spec's residual_fp32 without a word; Mamba's config
    states it, and warns of nothing."""
    import warnings

    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLWarning
    from archdsl.spec import spec_from_yaml

    model = archdsl.compile(spec_from_yaml(H + "residual_fp32: true\nlayout: 2×attn\n" + ATTN))
    with pytest.warns(ArchDSLWarning, match="export as llama: the spec's residual_fp32 has no field in a llama "
                                            "config"):
        export_hf(model, tmp_path / "x")
    text = H + "residual_fp32: true\nlayout: 2×mamba\nblocks:\n  mamba: {d_state: 8}\n"
    mamba = archdsl.compile(spec_from_yaml(text))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_hf(mamba, tmp_path / "m")


def test_a_model_type_that_leaves_the_spec_to_another_names_it(tmp_path):
    """zamba2 named for mamba2 layers alone (Zamba2's config could hold them, but such a spec exports as Mamba-2)
    said only 'does not export as one'; now it names the family the spec is."""
    import archdsl
    from archdsl.convert.hf_io import export_hf
    from archdsl.errors import ArchDSLError
    from archdsl.spec import spec_from_yaml

    model = archdsl.compile(spec_from_yaml(H + "layout: 2×mamba2\nblocks:\n" + M2))
    with pytest.raises(ArchDSLError, match="model_type 'zamba2': spec 't' exports as 'mamba2', not as 'zamba2'") as e:
        export_hf(model, tmp_path / "x", model_type="zamba2")
    assert "give --model-type mamba2" in e.value.hint
