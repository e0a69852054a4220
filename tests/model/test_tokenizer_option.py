"""--tokenizer on compile and export-checkpoint: a model built from random weights (or trained from them) saved with
the tokenizer and generation files of a directory or a tokenizer.json, checked against its vocabulary; compile of a
saved model keeps the save's own. Bad input exits 2 with nothing written."""
from __future__ import annotations

import json

import pytest

from archdsl.cli import main

tokenizers = pytest.importorskip("tokenizers")
WORDS = ["[UNK]"] + "the cat sat on a mat".split()
SPEC = ["2×mamba", "--set", "d_model=32", "--set", "vocab_size=64"]


def tokenizer_dir(path, words=WORDS, eos_in_config=True):
    """An HF-like directory: tokenizer.json (WordLevel over `words`), tokenizer_config.json, and a config.json whose
    eos_token_id is the only place the eos is kept (no generation_config.json)."""
    path.mkdir()
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    if eos_in_config:
        (path / "config.json").write_text(json.dumps({"model_type": "mamba", "eos_token_id": 5}))
    return path


def test_compile_with_a_tokenizer_directory(tmp_path, capsys):
    src = tokenizer_dir(tmp_path / "tok")
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(src)]) == 0
    out = capsys.readouterr().out
    assert "with generation_config.json, tokenizer.json, tokenizer_config.json from" in out
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "m" / name).read_bytes() == (src / name).read_bytes()
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text()) == {"eos_token_id": 5}
    assert not (tmp_path / "m" / "config.json").exists()
    assert main(["generate", str(tmp_path / "m"), "the cat sat", "--max-new-tokens", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt_ids"] == [1, 2, 3] and doc["eos"] == [5]


def test_compile_with_a_tokenizer_file_of_any_name(tmp_path, capsys):
    src = tokenizer_dir(tmp_path / "tok")
    (src / "tokenizer.json").rename(tmp_path / "mine.json")
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "mine.json")]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "spec.yaml", "tokenizer.json"]
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (tmp_path / "mine.json").read_bytes()


def test_compile_of_a_saved_model_keeps_its_tokenizer(tmp_path, capsys):
    src = tokenizer_dir(tmp_path / "tok")
    assert main(["compile", *SPEC, "-o", str(tmp_path / "a"), "--tokenizer", str(src)]) == 0
    assert main(["compile", str(tmp_path / "a"), "-o", str(tmp_path / "b"), "--seed", "1"]) == 0
    names = ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    for name in names:
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    assert main(["compile", str(tmp_path / "a"), "-o", str(tmp_path / "b"), "--seed", "2"]) == 0  # replaced
    # a smaller vocabulary than the tokenizer's ids: left behind, with a note
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "a"), "--set", "vocab_size=4", "-o", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "the tokenizer gives ids up to 6, past the model's vocabulary of 4" in err
    assert "its tokenizer and generation files are not saved with the model" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors", "spec.yaml"]


@pytest.mark.parametrize("case, message", [
    ("missing", "--tokenizer: {p}: no such file or directory"),
    ("empty_dir", "--tokenizer: {p} holds no tokenizer (none of added_tokens.json, chat_template.jinja"),
    ("past_vocab", "--tokenizer: {p}/tokenizer.json: the tokenizer gives ids up to 69, past the model's vocabulary "
                   "of 64 (a tokenizer of another model?)"),
    ("not_json", "--tokenizer: {p}: not a tokenizer.json ("),
    ("bad_ids", "--tokenizer: {p}: not a tokenizer.json (an id that is not an integer)"),
], ids=["missing", "empty_dir", "past_vocab", "not_json", "bad_ids"])
def test_a_bad_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys, case, message):
    p = tmp_path / "tok"
    if case == "empty_dir":
        p.mkdir()
        (p / "generation_config.json").write_text("{}")  # generation settings alone are no tokenizer
    elif case == "past_vocab":
        tokenizer_dir(p, WORDS + [f"w{i}" for i in range(63)])
    elif case == "not_json":
        p.write_text("not json")
    elif case == "bad_ids":
        p.write_text(json.dumps({"model": {"vocab": {"a": "0"}}}))
    capsys.readouterr()
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(p)]) == 2
    assert message.format(p=p) in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_export_checkpoint_of_a_run_from_random_weights_with_a_tokenizer(tmp_path, capsys):
    """A run started from a spec (random weights) has no tokenizer to carry: --tokenizer gives the one its data was
    made with; it replaces the run's own (RUNDIR/hf) where the run has one, and a bad one leaves -o unwritten."""
    src = tokenizer_dir(tmp_path / "tok")
    assert main(["train", *SPEC, "--data", "mqar:seq=16,pairs=2", "--steps", "2", "--batch", "2", "--save-every",
                 "2", "--no-progress", "--threads", "1", "-o", str(tmp_path / "run")]) == 0
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "plain")]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["model.safetensors", "spec.yaml"]
    capsys.readouterr()
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--tokenizer",
                 str(src)]) == 0
    assert "with generation_config.json, tokenizer.json, tokenizer_config.json from" in capsys.readouterr().out
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--tokenizer",
                 str(src)]) == 0  # its own earlier output: replaced
    # into the directory that holds a tokenizer, without one: refused, the tokenizer kept
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "out")]) == 2
    assert (tmp_path / "out" / "tokenizer.json").exists()
    big = tokenizer_dir(tmp_path / "big", WORDS + [f"w{i}" for i in range(63)])
    capsys.readouterr()
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "other"), "--tokenizer",
                 str(big)]) == 2
    assert "--tokenizer: " + str(big / "tokenizer.json") + ": the tokenizer gives ids up to 69" in \
        capsys.readouterr().err
    assert not (tmp_path / "other").exists()
