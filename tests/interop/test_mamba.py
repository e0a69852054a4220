import json

import pytest
import torch

from archdsl.cli import main
from interop.common import check_family, hf_greedy, make_hf


def test_mamba(tmp_path):
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=3, vocab_size=120,
                 state_size=8, time_step_rank=3)
    check_family(tmp_path, hf, 120)


def test_mamba_untied_biased(tmp_path):
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=48, num_hidden_layers=2, vocab_size=100,
                 state_size=4, conv_kernel=3, expand=2, use_bias=True, tie_word_embeddings=False,
                 layer_norm_epsilon=1e-6)
    check_family(tmp_path, hf, 100)


def test_generate_command_matches_transformers(tmp_path, capsys):
    """`archdsl generate` on a transformers save (its tokenizer.json beside it): transformers' greedy tokens."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8)
    hf.save_pretrained(tmp_path / "hf")
    words = ["[UNK]"] + "the cat sat on a mat".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "hf"), "the cat sat", "--max-new-tokens", "12", "--eos", "none",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = hf_greedy(hf, torch.tensor([[1, 2, 3]]), 12)[0, 3:].tolist()
    assert doc["prompt_ids"] == [1, 2, 3] and doc["new_ids"] == expected


@pytest.mark.parametrize("config", [{"model_type": "mamba", "conv_kernel": 5},
                                    {"model_type": "falcon_mamba", "conv_kernel": 5},
                                    {"model_type": "mamba2", "conv_kernel": 6},
                                    {"model_type": "bamba", "mamba_d_conv": 5},
                                    {"model_type": "jamba", "mamba_d_conv": 1}])
def test_conv_kernel_out_of_range_is_refused_by_its_config_key(config):
    """archdsl's conv kernels take widths 2..4; another is refused naming the config's key, not the spec's d_conv."""
    from archdsl.convert.hf import hf_config_to_spec
    from archdsl.errors import ArchDSLError

    key = next(k for k in config if k != "model_type")
    with pytest.raises(ArchDSLError, match=f"unsupported value {config[key]} of config field '{key}'"):
        hf_config_to_spec(config)


def test_tokenizer_and_generation_config_survive_a_round_trip_through_training(tmp_path, capsys):
    """HF → convert --weights → train → export-checkpoint → export --to hf dropped the tokenizer and
    generation_config.json at the first step: the export could not be used as the model it came from (no
    tokenizer; transformers' default generation settings, another eos). Now every step carries them, byte for
    byte, and generate of the saved model reads both (the eos from its generation_config.json)."""
    tokenizers = pytest.importorskip("tokenizers")
    from interop.common import transformers

    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8)
    hf.generation_config.eos_token_id = 5
    hf.save_pretrained(tmp_path / "hf")
    words = ["[UNK]"] + "the cat sat on a mat".split()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                                       "unk_token": "[UNK]"}))
    carried = {n: (tmp_path / "hf" / n).read_bytes()
               for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json")}

    def held(d):
        return {n: (d / n).read_bytes() for n in carried if (d / n).exists()}

    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", str(tmp_path / "saved"), "--weights"]) == 0
    assert held(tmp_path / "saved") == carried
    assert main(["train", str(tmp_path / "saved"), "--data", "mqar:seq=16,pairs=2", "--steps", "2", "--batch", "2",
                 "--save-every", "2", "--no-progress", "--threads", "1", "-o", str(tmp_path / "run")]) == 0
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "tuned")]) == 0
    assert held(tmp_path / "tuned") == carried
    assert main(["export", str(tmp_path / "tuned"), "--to", "hf", "-o", str(tmp_path / "back")]) == 0
    assert held(tmp_path / "back") == carried
    back = transformers().AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back("the cat sat")["input_ids"] == [1, 2, 3]
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "tuned"), "the cat sat", "--max-new-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eos"] == [5]
    assert main(["export", str(tmp_path / "tuned"), "--to", "hf", "-o", str(tmp_path / "back")]) == 0  # replaced


def test_companions_never_replace_a_tokenizer_the_new_output_lacks(tmp_path, capsys):
    """A Hugging Face directory or a save holding a tokenizer is replaced only by an output that writes that
    tokenizer again: an export of a model without one into a user's HF directory used to be refused (it holds
    files archdsl does not write there), and must stay so, nothing lost."""
    import archdsl

    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8)
    hf.save_pretrained(tmp_path / "user")
    (tmp_path / "user" / "tokenizer.json").write_text("{}")
    before = sorted(p.name for p in (tmp_path / "user").iterdir())
    archdsl.compile(archdsl.parse("2×mamba", d_model=32, vocab_size=64)).save(tmp_path / "plain")
    assert main(["export", str(tmp_path / "plain"), "--to", "hf", "-o", str(tmp_path / "user")]) == 2
    assert "holds what this output does not write (generation_config.json, tokenizer.json)" in \
        capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "user").iterdir()) == before
    (tmp_path / "plain" / "tokenizer.json").write_text("{}")  # a tokenizer put beside a save by hand
    assert main(["compile", "2×mamba", "--set", "d_model=32", "--set", "vocab_size=64", "-o",
                 str(tmp_path / "plain")]) == 2
    assert (tmp_path / "plain" / "tokenizer.json").read_text() == "{}"
    model = archdsl.load(tmp_path / "plain")  # carries it: its own save replaces the directory, tokenizer and all
    model.save(tmp_path / "plain")
    assert (tmp_path / "plain" / "tokenizer.json").read_text() == "{}"


def test_export_never_replaces_the_checkpoint_the_model_came_from(tmp_path, capsys):
    """A transformers checkpoint holds the very files export writes (config.json, model.safetensors, generation and
    tokenizer files), so it had been taken for an earlier export and replaced: `export m --to hf -o HF` of a model
    converted from HF lost its original weights. An export's model.safetensors is marked as one (its metadata);
    only such a directory is replaced, by the CLI and by export_hf alike."""
    import hashlib

    import archdsl
    from archdsl.convert.hf_io import export_hf

    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8)
    hf.save_pretrained(tmp_path / "hf")
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}
    before = digest(tmp_path / "hf")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "--weights", "--dtype", "bfloat16",
                 "-o", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m"), "--to", "hf", "-o", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "will not replace" in err and "model.safetensors was not written by archdsl's export" in err
    with pytest.raises(archdsl.ArchDSLError, match="was not written by archdsl's export"):
        export_hf(str(tmp_path / "m"), tmp_path / "hf")
    assert digest(tmp_path / "hf") == before
    assert main(["export", str(tmp_path / "m"), "--to", "hf", "-o", str(tmp_path / "out")]) == 0
    assert main(["export", str(tmp_path / "m"), "--to", "hf", "-o", str(tmp_path / "out")]) == 0  # its own: replaced


def test_a_companion_that_does_not_fit_is_left_out_alone(tmp_path):
    """An HF directory whose generation_config.json gives an eos past the vocabulary (or whose tokenizer.json is not
    JSON) had been carried through convert --weights and export silently, while compile dropped it: the import now
    leaves that file out with a warning naming it, and keeps the others."""
    import archdsl
    from archdsl.errors import ArchDSLWarning

    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps({"eos_token_id": 5000}))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    (tmp_path / "hf" / "tokenizer.json").write_text("{not json")
    with pytest.warns(ArchDSLWarning) as seen:
        _, model = archdsl.from_hf(tmp_path / "hf", weights=True)
    said = " | ".join(str(w.message) for w in seen)
    assert "generation_config.json gives a token id of 5,000, past the model's vocabulary of 64" in said
    assert "tokenizer.json: not a tokenizer.json (not JSON): it is not carried with the model" in said
    assert set(model.companions) == {"tokenizer_config.json", "generation_config.json"}  # the latter of config.json
    assert json.loads(model.companions["generation_config.json"])["eos_token_id"] == hf.config.eos_token_id


def test_an_eos_in_config_json_alone_is_kept_as_a_generation_config(tmp_path, capsys):
    """A Hugging Face directory without generation_config.json keeps its eos in config.json, which archdsl does not
    carry (export writes its own): the eos was lost on convert --weights, and generate of the save never stopped.
    Now a generation_config.json of config.json's token ids goes with the model, as transformers makes one."""
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8,
                 eos_token_id=5, bos_token_id=1)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").unlink()
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", str(tmp_path / "saved"), "--weights"]) == 0
    written = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert written["eos_token_id"] == 5 and written["bos_token_id"] == 1
    from archdsl.cli.generate_command import _eos

    assert _eos(None, str(tmp_path / "saved")) == [5]


def test_converting_and_exporting_again_into_the_same_directory(tmp_path):
    """convert --weights twice into one -o (its generation_config.json made of config.json's ids, pad included),
    export-checkpoint twice into one -o (the run's tokenizer): each replaces its own earlier output."""
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=32, num_hidden_layers=2, vocab_size=64, state_size=8,
                 eos_token_id=5, bos_token_id=1, pad_token_id=3)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "generation_config.json").unlink()
    tokenizer = json.dumps({"model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}})
    (tmp_path / "hf" / "tokenizer.json").write_text(tokenizer)
    for _ in range(2):
        assert main(["convert", "--from", "hf", str(tmp_path / "hf"), "-o", str(tmp_path / "saved"), "--weights"]) == 0
    assert json.loads((tmp_path / "saved" / "generation_config.json").read_text())["pad_token_id"] == 3
    assert main(["train", str(tmp_path / "saved"), "--data", "mqar:seq=16,pairs=2", "--steps", "1", "--batch", "2",
                 "--no-progress", "--threads", "1", "-o", str(tmp_path / "run")]) == 0
    for _ in range(2):
        assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "tuned")]) == 0
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == tokenizer
