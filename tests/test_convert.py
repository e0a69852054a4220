"""HF config → spec converters and the Megatron pattern converter.

For every family: a tiny HF config → our spec → our parameter count == transformers' count of
that tiny model (built for real on the CPU); the reference configs likewise on the meta device.
"""
from __future__ import annotations

import json
import os
import re

import pytest

import archdsl
from archdsl.convert.hf import hf_config_to_spec
from archdsl.convert.megatron import pattern_layers, pattern_to_layout
from archdsl.errors import ArchDSLError
from hf_util import hf_count, hf_model, spec_params, transformers
from test_reference_counts import NEMOTRON_PATTERN, REFERENCES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=8, expand=2, conv_kernel=4)),
    "mamba-bias-rank": ("MambaConfig", "MambaForCausalLM",
                        dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=8, time_step_rank=7,
                             use_bias=True, use_conv_bias=False, tie_word_embeddings=False)),
    "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM",
                     dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=8, expand=2)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, state_size=16, expand=2, head_dim=16,
                    num_heads=8, n_groups=2, tie_word_embeddings=False)),
    "jamba": ("JambaConfig", "JambaForCausalLM",
              dict(hidden_size=64, num_hidden_layers=4, vocab_size=100, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, attn_layer_period=4,
                   attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8,
                   mamba_dt_rank=8)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM",
               dict(hidden_size=64, num_hidden_layers=6, vocab_size=100, mamba_d_state=8, n_mamba_heads=4,
                    num_attention_heads=4, intermediate_size=128, adapter_rank=8,
                    layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"])),
    "zamba2-abab": ("Zamba2Config", "Zamba2ForCausalLM",
                    dict(hidden_size=64, num_hidden_layers=6, vocab_size=100, mamba_d_state=8, n_mamba_heads=4,
                         num_attention_heads=4, intermediate_size=128, adapter_rank=8, num_mem_blocks=2,
                         use_shared_attention_adapter=True,
                         layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"])),
    "bamba": ("BambaConfig", "BambaForCausalLM",
              dict(hidden_size=64, num_hidden_layers=4, vocab_size=100, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, mamba_n_heads=8, mamba_d_state=16, attn_layer_indices=[1])),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM",
                   dict(hidden_size=64, vocab_size=100, intermediate_size=96, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
                        ssm_state_size=16, hybrid_override_pattern="M-*-ME", n_routed_experts=4,
                        moe_intermediate_size=32, moe_shared_expert_intermediate_size=48)),
    "rwkv": ("RwkvConfig", "RwkvForCausalLM",
             dict(hidden_size=64, num_hidden_layers=2, vocab_size=100)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=100)),
    "llama-tied-bias": ("LlamaConfig", "LlamaForCausalLM",
                        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             vocab_size=100, tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
}


def _hf(config_cls, model_cls, kwargs, meta):
    config, model = hf_model(config_cls, model_cls, meta, **kwargs)
    return config.to_dict(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_family(family):
    config, count = _hf(*TINY[family], meta=False)
    spec = hf_config_to_spec(config, f"tiny-{family}")
    assert spec["name"] == f"tiny-{family}"
    assert spec_params(spec) == count


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_config(name):
    config_cls, model_cls, kwargs, expected = REFERENCES[name]
    config, count = _hf(config_cls, model_cls, kwargs, meta=True)
    assert count == expected
    assert spec_params(hf_config_to_spec(config, name)) == expected


def test_missing_fields_take_the_transformers_defaults():
    """A config holding only model_type converts as transformers' default config of that class: Falcon Mamba's
    missing keys were falcon-mamba-7b's sizes and untied (FalconMambaConfig: Mamba's sizes, tied), Mamba-2's
    hidden_size 2048 and tied (Mamba2Config: 4096, untied)."""
    t = transformers()
    for mt, cls in (("mamba", "MambaConfig"), ("falcon_mamba", "FalconMambaConfig"), ("mamba2", "Mamba2Config"),
                    ("jamba", "JambaConfig"), ("zamba2", "Zamba2Config"), ("bamba", "BambaConfig"),
                    ("nemotron_h", "NemotronHConfig"), ("rwkv", "RwkvConfig"), ("llama", "LlamaConfig")):
        full = getattr(t, cls)().to_dict()
        assert hf_config_to_spec({"model_type": mt}, "x") == hf_config_to_spec(full, "x"), mt


def test_head_dim_and_kv_heads_as_transformers_reads_them():
    """NemotronHConfig's head_dim defaults to 128, not hidden_size / heads (read so, a config without it converted to
    a model of other shapes); Bamba's num_key_value_heads null means as many as the query heads (transformers), not
    the default 8."""
    t = transformers()
    kw = dict(hidden_size=64, vocab_size=100, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
              mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16, hybrid_override_pattern="M-*")
    config = t.NemotronHConfig(**kw).to_dict()
    del config["head_dim"]
    assert hf_config_to_spec(config)["blocks"]["attn"]["head_dim"] == 128
    bamba = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, vocab_size=64, mamba_n_heads=4,
                 num_attention_heads=4, intermediate_size=64, attn_layer_indices=[1], num_key_value_heads=None)
    assert hf_config_to_spec(bamba)["blocks"]["attn"]["kv_heads"] == 4
    config = t.BambaConfig(**{k: v for k, v in bamba.items() if k != "model_type"})
    assert config.num_key_value_heads == 4
    # Bamba's attention reads head_dim when the config has it, as Jamba's
    bamba.update(num_key_value_heads=2, head_dim=16)
    assert spec_params(hf_config_to_spec(bamba)) == hf_count("BambaConfig", "BambaForCausalLM",
                                                              **{k: v for k, v in bamba.items() if k != "model_type"})


def test_unsupported_family_and_field():
    with pytest.raises(ArchDSLError, match="model_type"):
        hf_config_to_spec({"model_type": "gpt2"})
    with pytest.raises(ArchDSLError, match="intermediate_size"):
        hf_config_to_spec({"model_type": "mamba", "hidden_size": 64, "expand": 2, "intermediate_size": 100})
    with pytest.raises(ArchDSLError, match="hidden_act"):
        hf_config_to_spec({"model_type": "llama", "hidden_act": "tanh"})
    with pytest.raises(ArchDSLError, match="moe_latent_size"):
        hf_config_to_spec({"model_type": "nemotron_h", "hybrid_override_pattern": "ME", "moe_latent_size": 64})
    from archdsl.convert.hf_io import family

    with pytest.raises(ArchDSLError, match="its config converts to a spec") as e:  # not "did you mean 'rwkv'"
        family("rwkv6")
    assert "rwkv'" not in str(e.value) and "weights of: " in str(e.value)


def test_a_quantized_checkpoint_is_refused_up_front(tmp_path, capsys):
    """quantization_config was never read: an FP8 checkpoint's scales were 'unexpected tensors', and without them its
    weights loaded upcast, unscaled. Refused by name, before any tensor is read; config-only convert too."""
    from archdsl.cli import main
    from archdsl.convert.hf import from_hf

    config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 64,
              "num_attention_heads": 4, "intermediate_size": 64, "quantization_config": {"quant_method": "fp8"}}
    with pytest.raises(ArchDSLError, match="config field 'quantization_config': quantized checkpoints are not "
                                           "supported; dequantize first"):
        hf_config_to_spec(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(ArchDSLError, match="quantization_config") as e:
        from_hf(tmp_path, weights=True)
    assert e.value.file == str(tmp_path / "config.json")
    assert main(["convert", "--from", "hf", str(tmp_path)]) == 2
    assert "dequantize first" in capsys.readouterr().err
    hf_config_to_spec({**config, "quantization_config": None})  # null: not quantized


def test_a_config_without_model_type_says_so():
    """It was 'unsupported model_type None'; a mamba_ssm config (the state-spaces/mamba* releases) is named as one."""
    with pytest.raises(ArchDSLError, match=r"^<hf config>: no model_type \(and no architectures\); model types "
                                           r"archdsl reads: mamba, "):
        hf_config_to_spec({"hidden_size": 64})
    with pytest.raises(ArchDSLError, match="knows none of its architectures \\['GPT2LMHeadModel'\\]"):
        hf_config_to_spec({"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ArchDSLError) as e:
        hf_config_to_spec({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"}})
    assert "looks like a mamba_ssm checkpoint" in str(e.value) and "transformers format first" in str(e.value)
    assert "conversion script" in e.value.hint


@pytest.mark.parametrize("config_cls, kw", [
    ("Mamba2Config", dict(hidden_size=64, num_heads=8, head_dim=16)),
    ("Zamba2Config", dict(hidden_size=64, n_mamba_heads=4, num_hidden_layers=1, layers_block_type=["mamba"])),
    ("NemotronHConfig", dict(hidden_size=64, mamba_num_heads=8, mamba_head_dim=16, hybrid_override_pattern="M")),
])
def test_mamba2_dt_init_range_is_read(config_cls, kw):
    """time_step_min / time_step_max set the mamba2 dt init range (dt_min, dt_max); they were left at 0.001 / 0.1
    (Zamba2's time_step_min is its dt clamp too, dt_floor). A range transformers' init cannot take is refused."""
    config = getattr(transformers(), config_cls)(time_step_min=0.002, time_step_max=0.2, **kw).to_dict()
    block = hf_config_to_spec(config, "x")["blocks"]["mamba2"]
    assert (block["dt_min"], block["dt_max"]) == (0.002, 0.2)
    block = hf_config_to_spec({**config, "time_step_min": 0.001, "time_step_max": 0.1}, "x")["blocks"]["mamba2"]
    assert "dt_min" not in block and "dt_max" not in block  # the block's defaults, left out
    with pytest.raises(ArchDSLError, match="config field 'time_step_max'.*0 < time_step_min <= time_step_max"):
        hf_config_to_spec({**config, "time_step_max": 0.001}, "x")


def test_refusals_name_the_config_file(tmp_path):
    """From a file, every refusal names it: an unsupported field by its name, a config whose converted spec will not
    build (a block's check) with the converted line; the CLI says the same and writes nothing."""
    import json

    from archdsl.cli import main
    from archdsl.convert.hf import convert_config, from_hf

    bad_field = tmp_path / "a.json"
    bad_field.write_text(json.dumps({"model_type": "mamba2", "hidden_size": 256, "rmsnorm": False}))
    with pytest.raises(ArchDSLError) as e:
        convert_config(bad_field)
    assert str(e.value) == f"{bad_field}: unsupported value False of config field 'rmsnorm': the gated RMSNorm is always present"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 256, "num_heads": 8,
                                                   "head_dim": 64, "n_groups": 3, "num_hidden_layers": 2}))
    with pytest.raises(ArchDSLError) as e:
        from_hf(model)
    assert str(e.value).startswith(f"{model / 'config.json'}: the model of this config is not one archdsl can build: "
                                   "mamba2: ngroups 3 must divide heads 8 (the converted spec's line ")
    assert main(["convert", str(model), "--from", "hf", "-o", str(tmp_path / "out.yaml")]) == 2
    assert not (tmp_path / "out.yaml").exists()


def test_convert_never_replaces_a_file(tmp_path, capsys, monkeypatch):
    """`convert -o FILE` refuses a FILE that exists (a spec the user may have edited since), before any work: it
    was replaced in silence. A write that fails midway, or finds a file made meanwhile, leaves no file and no
    temporary one behind, and that file as it was."""
    import json
    import os

    from archdsl.cli import main

    out = tmp_path / "spec.yaml"
    out.write_text("name: mine\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2}))
    for argv in (["--from", "megatron", "M-M"], ["--from", "hf", str(config)],
                 ["--from", "hf", str(tmp_path / "missing.json")]):  # refused before the input is read
        capsys.readouterr()
        assert main(["convert", *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: -o {out}: exists; archdsl will not replace it"), err
        assert "pick another output or remove it" in err and out.read_text() == "name: mine\n"
    os.remove(out)

    real_fdopen = os.fdopen

    def full_disk(fd, mode):  # the first bytes land, then the disk is full
        f = real_fdopen(fd, mode)
        write = f.write

        def cut_short(data):
            write(data[:10])
            f.flush()
            raise OSError(28, "No space left on device")
        f.write = cut_short
        return f

    monkeypatch.setattr("archdsl.atomic.os.fdopen", full_disk)
    capsys.readouterr()
    assert main(["convert", "--from", "hf", str(config), "-o", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["config.json"]

    def meanwhile(fd, mode):  # another program writes the file while convert does
        out.write_text("name: theirs\n")
        return real_fdopen(fd, mode)

    monkeypatch.setattr("archdsl.atomic.os.fdopen", meanwhile)
    assert main(["convert", "--from", "megatron", "M-M", "-o", str(out)]) == 2
    assert "exists; archdsl will not replace it" in capsys.readouterr().err
    assert out.read_text() == "name: theirs\n" and sorted(os.listdir(tmp_path)) == ["config.json", "spec.yaml"]
    monkeypatch.undo()
    assert main(["convert", "--from", "megatron", "MM", "-o", str(tmp_path / "new" / "s.yaml")]) == 0
    assert "layout: 2×mamba2" in (tmp_path / "new" / "s.yaml").read_text()


def test_every_path_names_the_spec_alike(tmp_path, capsys):
    """`convert --from hf DIR` named the spec by model_type, from_hf(DIR) by the directory: now both by the
    config's _name_or_path (its last part), else the directory; --name / name= first."""
    from archdsl.cli import main

    d = tmp_path / "my-mamba"
    d.mkdir()
    cfg = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}
    (d / "config.json").write_text(json.dumps(cfg))
    assert archdsl.from_hf(d).name == "my-mamba"
    assert main(["convert", "--from", "hf", str(d)]) == 0
    assert "name: my-mamba" in capsys.readouterr().out
    (d / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "state-spaces/mamba-130m-hf"}))
    assert archdsl.from_hf(d).name == "mamba-130m-hf" and archdsl.from_hf(d, name="x").name == "x"
    assert main(["convert", "--from", "hf", str(d / "config.json")]) == 0
    assert "name: mamba-130m-hf" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["/", "//", ".", "./", "models/.."])
def test_a_name_or_path_without_a_last_part_names_the_spec_by_its_directory(tmp_path, capsys, given):
    """As documented: "/" named the spec after its model_type ("mamba"), "." and ".." were names themselves."""
    from archdsl.cli import main

    d = tmp_path / "my-mamba"
    d.mkdir()
    cfg = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "_name_or_path": given}
    (d / "config.json").write_text(json.dumps(cfg))
    assert archdsl.from_hf(d).name == "my-mamba" and archdsl.from_hf(d, name="x").name == "x"
    assert main(["convert", "--from", "hf", str(d / "config.json")]) == 0
    assert "name: my-mamba\n" in capsys.readouterr().out
    assert hf_config_to_spec(cfg)["name"] == "mamba"  # a dict has no directory: its model_type


@pytest.mark.parametrize("given", ["a\nb", "models/x\u2028y/", "org/ ", "a\tb"])
def test_a_name_or_path_that_cannot_be_a_name_is_named(tmp_path, capsys, given):
    """The field is blamed, not "the converted spec's line 1: name: 'a" (the YAML the user never saw)."""
    import archdsl
    from archdsl.cli import main

    config = tmp_path / "config.json"
    cfg = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "_name_or_path": given}
    config.write_text(json.dumps(cfg))
    assert main(["convert", "--from", "hf", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: {config}: unsupported value {given!r} of config field '_name_or_path'" in err, err
    assert "converted spec" not in err and "Traceback" not in err
    with pytest.raises(ArchDSLError, match="config field '_name_or_path'"):
        hf_config_to_spec(cfg)
    assert archdsl.from_hf(config, name="ok").name == "ok"


def test_architectures_dispatch():
    spec = hf_config_to_spec({"architectures": ["MambaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2})
    assert spec["layout"] == "2×mamba"


def test_megatron_pattern():
    layout = pattern_to_layout(NEMOTRON_PATTERN)
    assert layout == "4×(3×(mamba2, mlp), mamba2, attn, mlp, mamba2, mlp), 4×(mamba2, mlp)"
    assert pattern_to_layout("*-*-") == "2×(attn, mlp)"
    assert pattern_to_layout("MME") == "2×mamba2, moe"
    assert pattern_layers("M*-E") == ["mamba2", "attn", "mlp", "moe"]


def test_megatron_pattern_layers_roundtrip():
    import archdsl
    from archdsl.graph import layers

    spec = archdsl.parse(pattern_to_layout(NEMOTRON_PATTERN))
    kinds = [next(s.name for s in subs) for subs in layers(spec.graph)]
    assert kinds == pattern_layers(NEMOTRON_PATTERN)


def test_megatron_bad_character():
    with pytest.raises(ArchDSLError) as e:
        pattern_to_layout("MM-x*")
    assert "position 3" in str(e.value) and "valid characters" in str(e.value)
    assert e.value.col == 4
    for empty, why in (("", "empty hybrid pattern"), ("||", "has no layer"), ("|/MM", "has no layer before its '/'")):
        with pytest.raises(ArchDSLError, match=why):
            pattern_to_layout(empty)


def test_megatron_pipeline_marks_and_mtp_layers():
    """Megatron's `|` (a pipeline stage's end) and `/` (the multi-token-prediction layers follow) were 'bad
    characters'; `|` adds no layer, the MTP part is left out with a warning."""
    import warnings

    from archdsl.errors import ArchDSLWarning

    assert pattern_to_layout("M-M-|M-M*-") == pattern_to_layout("M-M-M-M*-")
    with pytest.warns(ArchDSLWarning, match=r"multi-token-prediction layers after its first '/' \('MM/MM'\)"):
        assert pattern_layers("M*|M*/MM/MM") == ["mamba2", "attn", "mamba2", "attn"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pattern_layers("M-|M-")


@pytest.mark.parametrize("ch, name", [("G", "Gated DeltaNet"), ("D", "DeepSeek sparse attention"),
                                      ("+", "multi-latent attention")])
def test_megatron_layers_archdsl_lacks_are_named(ch, name):
    with pytest.raises(ArchDSLError, match=f"is Megatron's {name}") as e:
        pattern_to_layout(f"MM{ch}-")
    assert e.value.col == 3


def test_megatron_spec_takes_megatrons_hybrid_defaults():
    """The converted spec had archdsl's defaults where Megatron's hybrid model differs: one Mamba group, not 8;
    RoPE, where its attention has no positional encoding. Only the kinds the pattern has get an entry."""
    from archdsl.convert.megatron import pattern_to_spec

    assert pattern_to_spec("M*-", "x") == {"name": "x", "layout": "mamba2, attn, mlp", "blocks": {
        "mamba2": {"ngroups": 8, "chunk_size": 128}, "attn": {"rope": False}}}
    assert pattern_to_spec("-E") == {"name": "megatron-hybrid", "layout": "mlp, moe"}
    spec = archdsl.load_spec(os.path.join(ROOT, "specs", "nemotron-h-8b.yaml"))  # Nemotron-H keeps them
    ours = pattern_to_spec(NEMOTRON_PATTERN)
    assert ours["layout"] == spec.layout_text
    assert all(spec.blocks[kind][k] == v for kind, args in ours["blocks"].items() for k, v in args.items())


def test_garbage_config_fields_only_raise_archdsl_error():
    """Each family's default config with one to three fields replaced by values of the wrong
    kind (lists, strings, NaN, 10^12, ...) converts or ends in ArchDSLError, never anything else."""
    import random

    import yaml

    import archdsl
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.spec import spec_from_yaml

    t = pytest.importorskip("transformers")
    names = ["MambaConfig", "FalconMambaConfig", "Mamba2Config", "JambaConfig", "Zamba2Config", "BambaConfig",
             "NemotronHConfig", "RwkvConfig", "LlamaConfig"]
    configs = [getattr(t, n)().to_dict() for n in names]
    values = [None, 0, -1, 3, 2.5, "x", True, [], {}, [1, 2], 10**12, float("nan"), float("inf")]
    rng = random.Random(0)
    for _ in range(600):
        c = dict(rng.choice(configs))
        for _ in range(rng.randint(1, 3)):
            c[rng.choice(list(c))] = rng.choice(values)
        try:
            archdsl.analyze(spec_from_yaml(yaml.safe_dump(hf_config_to_spec(c, "fuzz"), allow_unicode=True)))
        except archdsl.ArchDSLError:
            pass


def test_configs_that_converted_to_another_model_are_refused():
    """Each of these converted silently to a model other than the config's: Llama's rope_scaling under its old key
    `type` (linear scaling, read by transformers) became plain RoPE; Zamba2's num_mem_blocks 0 dropped every hybrid
    layer; Bamba's attention indices as strings (which transformers never matches) still placed attention; NemotronH's
    empty pattern (no layer in transformers) became a default layout."""
    llama = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, vocab_size=64, num_attention_heads=4,
                 intermediate_size=64)
    zamba2 = dict(model_type="zamba2", hidden_size=32, vocab_size=64, layers_block_type=["mamba", "hybrid"],
                  n_mamba_heads=4, num_attention_heads=4, intermediate_size=64, adapter_rank=4)
    bamba = dict(model_type="bamba", hidden_size=32, num_hidden_layers=3, vocab_size=64, mamba_n_heads=4,
                 num_attention_heads=4, intermediate_size=64)
    for config, message in (({**llama, "rope_scaling": {"type": "linear", "factor": 4.0}}, "'rope_scaling.type'"),
                            ({**llama, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3'"),
                            # transformers reads a scaling from rope_scaling though rope_parameters is plain
                            ({**llama, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
                              "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'rope_scaling.rope_type'"),
                            ({**zamba2, "num_mem_blocks": 0}, "'num_mem_blocks'"),
                            ({**bamba, "attn_layer_indices": ["1"]}, "'attn_layer_indices'"),
                            (dict(model_type="nemotron_h", hybrid_override_pattern=""), "'hybrid_override_pattern'"),
                            # a size of 0 was read as archdsl's own default (kv_heads 0: as many as the heads)
                            ({**llama, "num_key_value_heads": 0}, "'num_key_value_heads': expected a size >= 1"),
                            ({**llama, "head_dim": 0}, "'head_dim'"), ({**llama, "intermediate_size": 0},
                                                                      "'intermediate_size'"),
                            ({**bamba, "mamba_n_groups": -1}, "'mamba_n_groups'"),
                            # a count given as a float (transformers' typed configs refuse it): hidden_size 32.5 became
                            # d_model 32; 2.0 layers failed in the layout parser, naming no config field
                            ({**llama, "hidden_size": 32.5}, "'hidden_size': expected an integer"),
                            ({**llama, "vocab_size": 64.0}, "'vocab_size': expected an integer"),
                            ({**llama, "num_hidden_layers": 2.0}, "'num_hidden_layers': expected an integer"),
                            ({**llama, "head_dim": 8.0}, "'head_dim': expected an integer"),
                            (dict(model_type="jamba", attn_layer_offset=-1), "'attn_layer_offset'")):
        with pytest.raises(ArchDSLError, match=message):
            hf_config_to_spec(config)
    assert hf_config_to_spec({**llama, "rope_scaling": {"type": "default", "rope_theta": 5e5}})["blocks"]["attn"][
        "rope_theta"] == 5e5
    assert hf_config_to_spec({**bamba, "attn_layer_indices": [2, 1]})["layout"] == "3×mamba2, attn at 1 2"
    assert "attn every 2 offset 0" in hf_config_to_spec(dict(model_type="jamba", hidden_size=32, num_hidden_layers=4,
                                                             attn_layer_period=2, attn_layer_offset=0,
                                                             num_experts=1))["layout"]  # an offset may be 0
    # HF's Jamba may place no attention or no MoE layer (offset past the last): the modifier is left out, as an
    # `every` that selects no layer is refused by the language
    assert hf_config_to_spec(dict(model_type="jamba", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  num_experts=4))["layout"] == "1×mamba"



_BAMBA_ATTN = dict(model_type="bamba", hidden_size=32, num_hidden_layers=2, mamba_n_heads=4, num_attention_heads=4,
                   attn_layer_indices=[1])


@pytest.mark.parametrize("config, message", [
    # num_mem_blocks passed the 10^9 cap and the converter looped once a block (a hang)
    (dict(model_type="zamba2", num_mem_blocks=10**9), "unsupported value 1000000000 of config field 'num_mem_blocks': "
     "more shared blocks than the config's 54 layers (Zamba2 builds at most one per hybrid layer)"),
    (dict(model_type="zamba2", num_mem_blocks=3, layers_block_type=["mamba", "hybrid"]),
     "'num_mem_blocks': more shared blocks than the config's 2 layers"),
    # architectures was iterated unchecked: an int raised TypeError
    (dict(architectures=5), "unsupported value 5 of config field 'architectures': expected a list of model class "
     'names, like ["MambaForCausalLM"]'),
    (dict(architectures="MambaForCausalLM"),
     "value 'MambaForCausalLM' of config field 'architectures': expected a list"),
    (dict(architectures=[["MambaForCausalLM"]]),
     "of config field 'architectures': expected a list of model class names"),
    # RoPE settings that are no object ended in 'malformed llama config: AttributeError: ...'
    (dict(model_type="llama", rope_parameters=[1]), "unsupported value [1] of config field 'rope_parameters': expected "
     'an object of RoPE settings, like {"rope_type": "default"}'),
    (dict(model_type="llama", rope_scaling="linear"),
     "value 'linear' of config field 'rope_scaling': expected an object"),
    (dict(model_type="llama", rope_parameters={"rope_theta": "x"}),
     "unsupported value 'x' of config field 'rope_parameters.rope_theta': expected a number, like the default 10000.0"),
    (dict(model_type="llama", rope_parameters={"rope_type": 5}),
     "value 5 of config field 'rope_parameters.rope_type': expected a string, like the default 'default'"),
    ({**_BAMBA_ATTN, "rope_parameters": [1]}, "value [1] of config field 'rope_parameters': expected an object"),
    ({**_BAMBA_ATTN, "rope_parameters": {"partial_rotary_factor": "x"}},
     "value 'x' of config field 'rope_parameters.partial_rotary_factor': expected a number"),
    # a list of layer types that is no list of strings: read character by character, as keys, or TypeError
    (dict(model_type="zamba2", layers_block_type="hybrid"), "unsupported value 'hybrid' of config field "
     "'layers_block_type': expected a list of layer type names (strings), one per layer"),
    (dict(model_type="zamba2", layers_block_type=[["a"]]),
     "value [['a']] of config field 'layers_block_type': expected a list of layer type names"),
    (dict(model_type="zamba2", layers_block_type={"mamba": 1, "hybrid": 2}),
     "of config field 'layers_block_type': expected a list of layer type names"),
    (dict(model_type="zamba2", layer_types="mamba"), "value 'mamba' of config field 'layer_types': expected a list"),
    (dict(model_type="zamba2", layers_block_type=[]), "value [] of config field 'layers_block_type': expected at "
     "least one layer (transformers builds no layer from an empty list)"),
    (dict(model_type="zamba2", layer_types=["mamba", "mlp"]), "value 'mlp' of config field 'layer_types': supported"),
    (dict(model_type="nemotron_h", layers_block_type="mlp"),
     "value 'mlp' of config field 'layers_block_type': expected a list of layer type names"),
    (dict(model_type="nemotron_h", layer_types={"mlp": 1}), "of config field 'layer_types': expected a list"),
    (dict(model_type="nemotron_h", hybrid_override_pattern="M-", layers_block_type=[["mlp"]]),
     "of config field 'layers_block_type': expected a list of layer type names"),
    # _name_or_path became the model name "['x']"
    (dict(model_type="mamba", _name_or_path=["x"]),
     "unsupported value ['x'] of config field '_name_or_path': expected a string (the model's hub id or directory)"),
    # strings and 'auto'-or-integer fields of another kind: TypeError (unhashable), or carried into the spec
    (dict(model_type="llama", hidden_act=["silu"]),
     "value ['silu'] of config field 'hidden_act': expected a string, like the default 'silu'"),
    (dict(model_type="mamba", time_step_rank="x"), "value 'x' of config field 'time_step_rank': expected 'auto' or an "
     "integer"),
    (dict(model_type="mamba", time_step_rank=[8]), "value [8] of config field 'time_step_rank': expected 'auto' or"),
    (dict(model_type="jamba", mamba_dt_rank={"a": 1}),
     "of config field 'mamba_dt_rank': expected 'auto' or an integer"),
    (dict(model_type="bamba", mamba_d_head="xx"), "value 'xx' of config field 'mamba_d_head': expected 'auto' or"),
    (dict(model_type="mamba2", time_step_limit={"0": 1, "inf": 2}), "of config field 'time_step_limit': expected "
     "[lo, hi]"),
    (dict(model_type="jamba", head_dim="x"), "value 'x' of config field 'head_dim': expected a number"),
    (dict(model_type="llama", head_dim=10**12), "value 1000000000000 of config field 'head_dim': absurd size"),
])
def test_config_fields_of_the_wrong_kind_are_named(config, message):
    """A field of the wrong kind is refused by its name and what it should be, not as leaked Python text
    ('malformed ... config: TypeError: ...'), a raw exception, a hang or another model."""
    with pytest.raises(ArchDSLError) as e:
        hf_config_to_spec(config)
    assert message in str(e.value) and "Error" not in str(e.value), str(e.value)


def test_fields_checked_for_kind_still_convert():
    """What transformers reads alike converts alike: num_mem_blocks past the hybrid layers (transformers builds one
    block a hybrid layer), layer_types for layers_block_type, a known class after an unknown one in architectures."""
    zamba2 = dict(hidden_size=32, num_hidden_layers=3, vocab_size=64, n_mamba_heads=4, num_attention_heads=4,
                  intermediate_size=64, adapter_rank=4, use_shared_attention_adapter=True,
                  layers_block_type=["mamba", "hybrid", "mamba"])
    spec = hf_config_to_spec({"model_type": "zamba2", **zamba2, "num_mem_blocks": 3})
    assert spec["layout"] == "3×mamba2, zamba(shared=z0, lora=4) at 1"
    assert spec_params(spec) == hf_count("Zamba2Config", "Zamba2ForCausalLM", **zamba2, num_mem_blocks=3)
    assert hf_config_to_spec(dict(model_type="nemotron_h", layer_types=["mamba", "attention"]))["layout"] == \
        "mamba2, attn"
    assert hf_config_to_spec(dict(architectures=["GPT2LMHeadModel", "MambaForCausalLM"]))["layout"] == "32×mamba"
    assert hf_config_to_spec(dict(model_type="mamba", _name_or_path="org/tiny-mamba/"))["name"] == "tiny-mamba"


def test_bad_config_files_exit_2_and_write_nothing(tmp_path, capsys):
    """A number past Python's 4300-digit limit failed inside json.loads with ValueError; num_mem_blocks 10^9 hung.
    Both: the file named, exit 2, no output."""
    from archdsl.cli import main

    long = tmp_path / "long.json"
    long.write_text('{"model_type": "mamba", "hidden_size": 1' + "0" * 5000 + "}")
    mem = tmp_path / "mem.json"
    mem.write_text(json.dumps({"model_type": "zamba2", "num_mem_blocks": 10**9}))
    for config, message in ((long, "not a config.json: a number is too long (over 4300 digits)"),
                            (mem, "unsupported value 1000000000 of config field 'num_mem_blocks'")):
        out = tmp_path / "out.yaml"
        assert main(["convert", "--from", "hf", str(config), "-o", str(out)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {config}: {message}")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json", "mem.json"]


def test_mismatched_weights_name_the_checkpoint(tmp_path):
    """A tensor of the wrong shape names the model directory it came from, not only the tensor."""
    import json

    import torch
    from safetensors.torch import save_file

    from archdsl.convert.hf_io import from_hf

    config = dict(model_type="llama", hidden_size=32, num_hidden_layers=1, vocab_size=64, num_attention_heads=4,
                  intermediate_size=64, tie_word_embeddings=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ArchDSLError) as e:
        from_hf(tmp_path, weights=True)
    assert e.value.file == str(tmp_path) and "model.embed_tokens.weight" in str(e.value), str(e.value)


def test_a_failed_replace_keeps_the_earlier_output(tmp_path, monkeypatch):
    """Replacing an earlier export: the old directory is moved aside, then the new one renamed into place; when that
    last rename failed (Ctrl-C between the two, or another process making the path) the earlier output was gone,
    left under a hidden .old- name. It is put back."""
    import os

    import archdsl
    from archdsl.convert.hf_io import export_hf

    model = archdsl.compile(archdsl.parse("attn+mlp"), device="cpu", seed=0)
    out = tmp_path / "hf"
    export_hf(model, out)
    before = (out / "model.safetensors").read_bytes()
    rename = os.rename

    def failing(src, dst):
        if os.path.basename(str(src)).startswith(".hf.tmp-"):
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(KeyboardInterrupt):
        export_hf(archdsl.compile(archdsl.parse("attn+mlp"), device="cpu", seed=1), out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_activations_transformers_computes_otherwise_are_refused():
    """HF's Mamba, Falcon Mamba, Mamba-2 and Bamba mixers apply hidden_act after their conv (ours: SiLU), and
    gelu_pytorch_tanh / gelu_new are tanh GELUs (ours: exact): each converted silently to another function (a
    Mamba with hidden_act gelu: logits off by 0.1). Export of a Bamba with a geglu MLP wrote hidden_act gelu, which
    transformers also applies to the conv."""
    import archdsl
    from archdsl.convert.weights import bamba

    for config in (dict(model_type="mamba", hidden_act="gelu"), dict(model_type="falcon_mamba", hidden_act="relu"),
                   dict(model_type="mamba2", hidden_size=2048, hidden_act="gelu"),
                   dict(model_type="bamba", hidden_act="gelu")):
        with pytest.raises(ArchDSLError, match="config field 'hidden_act'"):
            hf_config_to_spec(config)
    for act in ("gelu_pytorch_tanh", "gelu_new"):
        with pytest.raises(ArchDSLError, match=f"unsupported value '{act}' of config field 'hidden_act'"):
            hf_config_to_spec(dict(model_type="llama", hidden_act=act))
    assert hf_config_to_spec(dict(model_type="llama", hidden_act="gelu"))["blocks"]["mlp"]["act"] == "geglu"
    assert hf_config_to_spec(dict(model_type="mamba", hidden_act="swish"))["layout"] == "32×mamba"
    spec = archdsl.parse("2×mamba2(headdim=16)+mlp(act=geglu)")
    with pytest.raises(ArchDSLError, match="Bamba's MLP is swiglu"):
        bamba.hf_config(spec)


MAMBA_CFG = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}


@pytest.mark.parametrize("name, why", [
    ("a\nb", r"it holds '\\n'; a name is one line, without line breaks, tabs or other control characters"),
    ("a\u2028b", r"it holds '\\u2028'; a name is one line"),
    ("a\tb", r"it holds '\\t'; a name is one line"),
    ("", "it is blank"),  # was taken as no name: the spec named 'mamba'
    ("  ", "it is blank"),
    ("\udcff", "it holds bytes that are not UTF-8"),  # was an 'invalid YAML' message about the converted spec
])
def test_a_name_that_cannot_be_one_is_blamed_on_the_argument(tmp_path, name, why):
    """from_hf(..., name="a\\nb") said "the model of this config is not one archdsl can build: ... (the converted
    spec's line 1: name: 'a)": the YAML the user never saw, of a config that was fine."""
    import archdsl
    from archdsl.convert.hf_io import from_hf

    (tmp_path / "config.json").write_text(json.dumps(MAMBA_CFG))
    for call, where in ((lambda: archdsl.from_hf(tmp_path, name=name), "from_hf: name"),
                        (lambda: from_hf(tmp_path, weights=True, name=name), "from_hf: name"),
                        (lambda: hf_config_to_spec(MAMBA_CFG, name), "hf_config_to_spec: source_name")):
        with pytest.raises(ArchDSLError) as e:
            call()
        assert str(e.value).startswith(f"{where} {name!r} cannot name a spec: "), str(e.value)
        assert re.search(why, str(e.value)) and "converted spec" not in str(e.value), str(e.value)


def test_a_model_directory_that_cannot_name_the_spec_is_named(tmp_path, capsys):
    import archdsl
    from archdsl.cli import main

    d = tmp_path / "my\nmodel"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(MAMBA_CFG))
    with pytest.raises(ArchDSLError, match=r"the model directory '.*my\\nmodel' names the spec \(its config has no "
                                           r"_name_or_path\), and its name cannot: it holds '\\n'"):
        archdsl.from_hf(d)
    assert main(["convert", "--from", "hf", str(d)]) == 2
    err = capsys.readouterr().err
    assert "give a name (--name" in err and "converted spec" not in err, err
    assert archdsl.from_hf(d, name="fine").name == "fine"


@pytest.mark.parametrize("call, message", [
    (lambda: hf_config_to_spec(3), "hf_config_to_spec: config must be a dict (a config.json read), got 3"),
    (lambda: hf_config_to_spec(MAMBA_CFG, 5), "hf_config_to_spec: source_name must be None or a str, got 5"),
    (lambda: __import__("archdsl").from_hf(".", name=5), "from_hf: name must be None or a str, got 5"),
    (lambda: __import__("archdsl.convert.hf_io").convert.hf_io.from_hf(3),  # a TypeError from os.fspath
     "from_hf: expected a directory's path (str or os.PathLike), got int"),
])
def test_odd_convert_arguments_are_named(call, message):
    with pytest.raises(ArchDSLError) as e:
        call()
    assert message in str(e.value)


def test_export_names_a_model_type_that_is_not_a_name(tmp_path):
    import archdsl
    from archdsl.convert.hf_io import export_hf

    model = archdsl.compile(archdsl.parse("attn+mlp"), device="cpu", seed=0)
    with pytest.raises(ArchDSLError, match=r"model_type must be None or a family name \(.*llama.*\), got \['x'\]"):
        export_hf(model, tmp_path / "hf", model_type=["x"])  # was TypeError: unhashable type: 'list'
    assert not (tmp_path / "hf").exists()


def test_a_name_given_is_kept_whole():
    """--name org/model named the spec 'model' from HF configs and 'org/model' from Megatron ones: a name given is
    the user's, kept as written; only an _name_or_path is cut to its last part."""
    assert hf_config_to_spec(MAMBA_CFG, "org/model")["name"] == "org/model"
    assert hf_config_to_spec(dict(MAMBA_CFG, _name_or_path="state-spaces/mamba-130m"))["name"] == "mamba-130m"


@pytest.mark.parametrize("layout, named, message", [
    # a plain Mamba exported as falcon_mamba: transformers built a FalconMamba (norms on dt, B, C), logits off by 0.2
    ("2×mamba", "falcon_mamba", "exports as 'mamba', not 'falcon_mamba'"),
    ("2×mamba(inner_norms=unweighted)", "mamba", "exports as 'falcon_mamba', not 'mamba'"),
    ("2×mamba", "llama", "model_type 'llama': not a Llama"),
])
def test_export_refuses_a_model_type_that_is_not_the_spec(tmp_path, layout, named, message):
    import archdsl
    from archdsl.convert.hf_io import export_hf

    model = archdsl.compile(archdsl.parse(layout), device="cpu", seed=0)
    with pytest.raises(ArchDSLError, match=message):
        export_hf(model, tmp_path / "hf", model_type=named)
    assert not (tmp_path / "hf").exists()
    export_hf(model, tmp_path / "ok")  # the type it is exports


@pytest.mark.parametrize("pattern", [None, 3, ["M"]])
def test_a_pattern_that_is_not_a_string_is_named(pattern):  # each was an AttributeError: no attribute 'strip'
    with pytest.raises(ArchDSLError, match="a hybrid pattern is a string such as 'M-M-\\*-', got"):
        pattern_to_layout(pattern)


def test_from_hf_checks_its_arguments_before_reading_a_file(tmp_path, monkeypatch):
    """from_hf(..., weights=True, device="tpu") read every safetensors file and built the model before it refused
    the device (and a bad dtype only after reading them too). Now the device, the dtype, the name and a path that
    is no directory are refused before any file is read, each with the error it gave after."""
    import torch

    import archdsl
    from archdsl.convert import hf, hf_io
    from archdsl.convert.hf_io import export_hf
    from archdsl.model import check_device, resolve_dtype

    d = tmp_path / "m"
    export_hf(archdsl.compile(archdsl.parse("attn+mlp", d_model=32, vocab_size=64), dtype=torch.bfloat16), d)

    def said(call):
        with pytest.raises(ArchDSLError) as e:
            call()
        return str(e.value)

    late = said(lambda: check_device("tpu", torch.float32))  # what the check after loading said
    assert late.startswith("unknown device 'tpu'")

    def unread(*a, **k):
        raise AssertionError("a file was read before the arguments were checked")

    monkeypatch.setattr(hf, "read_hf_config", unread)
    monkeypatch.setattr(hf_io, "read_safetensors", unread)
    cases = [(dict(device="tpu"), late), (dict(dtype="int7"), said(lambda: resolve_dtype("int7"))),
             (dict(dtype=torch.int8), "a model computes in float32, float64, bfloat16 or float16, not torch.int8"),
             (dict(name="a\nb"), "from_hf: name 'a\\nb' cannot name a spec"),
             (dict(weights="yes"), "from_hf: weights must be True or False, got 'yes'")]
    if not torch.cuda.is_available():
        cases.append((dict(device="cuda"), "device 'cuda': CUDA is not available on this machine"))
    for call in (archdsl.from_hf, hf_io.from_hf):
        for kw, message in cases:
            assert said(lambda: call(d, **{"weights": True, **kw})).startswith(message)
        config = str(d / "config.json")  # weights need the directory: a config file's path is said so, unread
        assert said(lambda: call(config, weights=True)) == f"{config}: not a directory: expected a Hugging Face " \
                                                           f"model directory"
    monkeypatch.undo()
    spec, model = archdsl.from_hf(d, weights=True, device="cpu")  # the checkpoint's dtype, checked after reading
    assert model.dtype == torch.bfloat16 and spec.d_model == 32
    assert archdsl.from_hf(d, weights=True, dtype="float32")[1].dtype == torch.float32


def test_export_refuses_an_out_dir_with_a_control_character(tmp_path, monkeypatch):
    """export_hf(model, "hf\\ndir") wrote the directory (the CLI's -o refused it): now refused before any work,
    naming the argument; a relative path stays fine under a working directory whose own name would not be."""
    import archdsl
    from archdsl.convert.hf_io import export_hf

    model = archdsl.compile(archdsl.parse("attn+mlp", d_model=32, vocab_size=64))
    monkeypatch.chdir(tmp_path)
    for char in ("\n", "\x1b", "\u2028"):
        with pytest.raises(ArchDSLError) as e:
            export_hf(model, f"hf{char}dir")
        assert str(e.value) == f"export: out_dir: the path {'hf' + char + 'dir'!r} holds the control character " \
                               f"{char!r}; give one without"
    assert list(tmp_path.iterdir()) == []
    odd = tmp_path / "a\nb"
    odd.mkdir()
    monkeypatch.chdir(odd)
    assert export_hf(model, "hf") == str(odd / "hf") and (odd / "hf" / "model.safetensors").is_file()
