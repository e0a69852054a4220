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
    assert f"note: SPEC: {tmp_path / 'a' / 'tokenizer.json'} gives ids up to 6, past the model's vocabulary of 4" in err
    assert "its tokenizer and generation files are not saved with the model" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["model.safetensors", "spec.yaml"]


CASES = {  # a bad --tokenizer: how it is made, what the error says ({p}: its path)
    "missing": (None, "--tokenizer: {p}: no such file or directory"),
    "empty_dir": ({"generation_config.json": "{}"},  # generation settings alone are no tokenizer
                  "--tokenizer: {p} holds no tokenizer (none of added_tokens.json, chat_template.jinja"),
    "past_vocab": ("big", "--tokenizer: {p}/tokenizer.json gives ids up to 69, past the model's vocabulary of 64 (a "
                          "tokenizer of another model?)"),
    "not_json": ("not json", "--tokenizer: {p}: not a tokenizer.json (not JSON)"),
    "not_a_tokenizer": ('{"model_type": "mamba"}', "--tokenizer: {p}: not a tokenizer.json (expected an object whose "
                                                   "model holds a vocab"),
    "empty_object": ("{}", "--tokenizer: {p}: not a tokenizer.json (expected an object whose model holds a vocab"),
    "string_id": ('{"model": {"vocab": {"a": "0"}}}', "not a tokenizer.json (expected an object of token → id >= 0)"),
    "negative_id": ('{"model": {"vocab": {"a": -1}}}', "not a tokenizer.json (expected an object of token → id >= 0)"),
    "bad_added": ('{"model": {"vocab": {"a": 0}}, "added_tokens": [{"content": "x"}]}',
                  "not a tokenizer.json (its added_tokens must be a list of objects, each with an id >= 0)"),
    "list": ("[1, 2]", "not a tokenizer.json (expected an object whose model holds a vocab"),
    "vocab_json": ({"vocab.json": json.dumps({"a": 0, "world": 99999}), "merges.txt": "#version: 0.2\n"},
                   "--tokenizer: {p}/vocab.json gives ids up to 99,999, past the model's vocabulary of 64"),
    "added_json": ({"tokenizer.model": "x", "added_tokens.json": json.dumps({"<x>": 64})},
                   "--tokenizer: {p}/added_tokens.json gives ids up to 64, past the model's vocabulary of 64"),
    "eos_in_config": ("config", "--tokenizer: {p}/generation_config.json gives a token id of 50,000, past the "
                                "model's vocabulary of 64"),
    "eos_in_generation": ({"tokenizer.model": "x", "generation_config.json": '{"eos_token_id": [2, 70]}'},
                          "--tokenizer: {p}/generation_config.json gives a token id of 70, past"),
    "bad_generation": ({"tokenizer.model": "x", "generation_config.json": '{"eos_token_id": "2"}'},
                       "not a generation_config.json (its eos_token_id must be a token id >= 0 or a list of them, "
                       "got '2')"),
    "device": ("/dev/null", "--tokenizer: /dev/null is not a regular file or a directory"),
    "deep_json": ("[" * 100000, "--tokenizer: {p}: not a tokenizer.json (not JSON)"),
    "unigram_past": (json.dumps({"model": {"type": "Unigram", "vocab": [[f"w{i}", 0.0] for i in range(70)]}}),
                     "--tokenizer: {p} gives ids up to 69, past the model's vocabulary of 64"),
    "added_past": ('{"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 64, "content": "<x>"}]}',
                   "--tokenizer: {p} gives ids up to 64, past the model's vocabulary of 64"),
    "vocab_json_list": ({"vocab.json": "[1, 2]"},
                        "--tokenizer: {p}/vocab.json: not a vocab.json (expected an object of token → id >= 0)"),
    "generation_list": ({"tokenizer.model": "x", "generation_config.json": "[1]"},
                        "--tokenizer: {p}/generation_config.json: not a generation_config.json (expected an object)"),
    "bool_eos": ({"tokenizer.model": "x", "generation_config.json": '{"eos_token_id": true}'},
                 "not a generation_config.json (its eos_token_id must be a token id >= 0 or a list of them, got True)"),
    "decoder_start": ({"tokenizer.model": "x", "generation_config.json": '{"decoder_start_token_id": 64}'},
                      "--tokenizer: {p}/generation_config.json gives a token id of 64, past"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys, case):
    made, message = CASES[case]
    p = tmp_path / "tok"
    if isinstance(made, dict):
        p.mkdir()
        for name, text in made.items():
            (p / name).write_text(text)
    elif made == "big":
        tokenizer_dir(p, WORDS + [f"w{i}" for i in range(63)])
    elif made == "config":
        tokenizer_dir(p)
        (p / "config.json").write_text(json.dumps({"eos_token_id": 50000}))
    elif made == "/dev/null":
        p = made
    elif made is not None:
        p.write_text(made)
    capsys.readouterr()
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(p)]) == 2
    err = capsys.readouterr().err
    assert message.format(p=p) in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_an_unreadable_tokenizer_is_an_error_not_a_warning(tmp_path, capsys, monkeypatch):
    """A directory named for its tokenizer whose tokenizer.json cannot be read: exit 2 naming it (a save read for its
    weights only warns and goes on without it); and a file given as --tokenizer likewise."""
    import builtins

    src = tokenizer_dir(tmp_path / "tok")
    real = builtins.open

    def refusing(file, *a, **kw):
        if str(file).endswith("tokenizer.json"):
            raise PermissionError(13, "Permission denied")
        return real(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", refusing)
    for given in (src, src / "tokenizer.json"):
        capsys.readouterr()
        assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(given)]) == 2
        assert f"error: --tokenizer: cannot read {src / 'tokenizer.json'}: Permission denied" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()


def test_a_config_json_that_is_no_json_object_gives_no_ids(tmp_path, capsys):
    """The eos of a config.json is a convenience: one that is not JSON, not an object, or not UTF-8 is passed over,
    and the tokenizer goes with the model without a generation_config.json."""
    for i, data in enumerate((b"not json", b"[1, 2]", b"\xff\xfe")):
        src = tokenizer_dir(tmp_path / f"tok{i}")
        (src / "config.json").write_bytes(data)
        assert main(["compile", *SPEC, "-o", str(tmp_path / f"m{i}"), "--tokenizer", str(src)]) == 0
        assert sorted(p.name for p in (tmp_path / f"m{i}").iterdir()) == [
            "model.safetensors", "spec.yaml", "tokenizer.json", "tokenizer_config.json"]


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
    assert "--tokenizer: " + str(big / "tokenizer.json") + " gives ids up to 69" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_tokenizer_file_past_the_size_limit_is_refused(tmp_path, capsys, monkeypatch):
    from archdsl.model import companions

    src = tokenizer_dir(tmp_path / "tok")
    monkeypatch.setattr(companions, "MAX_BYTES", 100)  # a stand-in for 1 GiB
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(src / "tokenizer.json")]) == 2
    assert "bytes, too large for a tokenizer.json (another file?)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_generation_config_without_token_ids_is_kept(tmp_path, capsys):
    """generation_config.json holding settings but no token id (max_length, ...) gives no id to check."""
    src = tokenizer_dir(tmp_path / "tok", eos_in_config=False)
    (src / "generation_config.json").write_text('{"max_length": 20}')
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(src)]) == 0
    assert (tmp_path / "m" / "generation_config.json").read_bytes() == (src / "generation_config.json").read_bytes()


def test_the_ids_of_a_config_json_leave_out_nulls(tmp_path, capsys):
    src = tokenizer_dir(tmp_path / "tok")
    (src / "config.json").write_text(json.dumps({"bos_token_id": None, "eos_token_id": 5, "pad_token_id": 0}))
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m"), "--tokenizer", str(src)]) == 0
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text()) == {"eos_token_id": 5,
                                                                                     "pad_token_id": 0}
    (src / "config.json").write_text(json.dumps({"bos_token_id": None, "eos_token_id": None}))
    assert main(["compile", *SPEC, "-o", str(tmp_path / "n"), "--tokenizer", str(src)]) == 0
    assert not (tmp_path / "n" / "generation_config.json").exists()


def test_compile_without_a_tokenizer_says_nothing_of_one(tmp_path, capsys):
    assert main(["compile", *SPEC, "-o", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.endswith(", float32\n")  # not ", float32, with "


def test_export_checkpoint_refuses_an_id_equal_to_the_vocabulary(tmp_path, capsys):
    assert main(["train", *SPEC, "--data", "mqar:seq=16,pairs=2", "--steps", "2", "--batch", "2", "--save-every",
                 "2", "--no-progress", "--threads", "1", "-o", str(tmp_path / "run")]) == 0
    src = tokenizer_dir(tmp_path / "tok")
    (src / "added_tokens.json").write_text(json.dumps({"<x>": 64}))
    capsys.readouterr()
    assert main(["export-checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--tokenizer",
                 str(src)]) == 2
    assert f"--tokenizer: {src / 'added_tokens.json'} gives ids up to 64, past the model's vocabulary of 64" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()
