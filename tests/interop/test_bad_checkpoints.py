"""Damaged or mismatched checkpoints: an ArchDSLError naming the tensor, field or file; nothing written."""
import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import archdsl
from archdsl.cli import main
from archdsl.convert.hf_io import export_hf
from archdsl.errors import ArchDSLError
from interop.common import make_hf

NAME = "backbone.layers.1.mixer.in_proj.weight"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    hf = make_hf("MambaConfig", "MambaForCausalLM", hidden_size=16, num_hidden_layers=2, vocab_size=50, state_size=4)
    d = tmp_path_factory.mktemp("good")
    hf.save_pretrained(d)
    return d


def copy(good, dst, edit=None, config=None):
    os.makedirs(dst, exist_ok=True)
    cfg = json.load(open(good / "config.json"))
    if config:
        cfg.update(config)
    json.dump(cfg, open(dst / "config.json", "w"))
    state = load_file(good / "model.safetensors")
    if edit:
        edit(state)
    save_file(state, dst / "model.safetensors")
    return dst


def refused(path, *words):
    with pytest.raises(ArchDSLError) as e:
        archdsl.from_hf(path, weights=True)
    text = e.value.render() if hasattr(e.value, "render") else str(e.value)
    for w in words:
        assert w in text, text
    return text


def test_good_loads(good):
    spec, model = archdsl.from_hf(good, weights=True)
    assert model.num_params() > 0


def test_missing_tensor(good, tmp_path):
    refused(copy(good, tmp_path / "m", lambda s: s.pop(NAME)), "missing", NAME)


def test_extra_tensor(good, tmp_path):
    refused(copy(good, tmp_path / "x", lambda s: s.update({"backbone.layers.9.norm.weight": torch.ones(16)})),
            "unexpected", "backbone.layers.9.norm.weight")


def test_wrong_shape(good, tmp_path):
    def edit(s):
        s[NAME] = torch.zeros(10, 16)
    refused(copy(good, tmp_path / "s", edit), NAME, "[10, 16]", "[64, 16]")


def test_truncated(good, tmp_path):
    d = copy(good, tmp_path / "t")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    refused(d, "truncated", "model.safetensors")


def test_malformed_header(good, tmp_path):
    d = copy(good, tmp_path / "h")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    refused(d, "malformed", "model.safetensors")



@pytest.mark.parametrize("header, words", [
    # a number past Python's 4300-digit limit: ValueError from json.loads
    (b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}', ["over 4300 digits"]),
    # offsets or sizes that are no integers: TypeError, OverflowError, or a shape read from a string's characters
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}', ["bad header entry for tensor 'a'"]),
    (b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', ["bad header entry for tensor 'a'"]),
    (b'{"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}', ["bad header entry for tensor 'a'"]),
    (b'{"a": {"dtype": "F32", "shape": [-1, -1], "data_offsets": [0, 4]}}', ["bad header entry for tensor 'a'"]),
    # a shape of a hundred thousand huge sizes: the product stops past the file's size
    (b'{"a": {"dtype": "F32", "shape": [' + b", ".join([b"1000000000"] * 100000) + b'], "data_offsets": [0, 4]}}',
     ["tensor 'a' takes 4 bytes", "...] and dtype F32 need at least 4000000000"]),
])
def test_malformed_header_entries(good, tmp_path, header, words):
    d = copy(good, tmp_path / "h")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    refused(d, "malformed safetensors file", "model.safetensors", *words)


def test_garbage_file(good, tmp_path):
    d = copy(good, tmp_path / "g")
    (d / "model.safetensors").write_bytes(b"abc")
    refused(d, "model.safetensors")


def test_pickle_only(good, tmp_path):
    d = copy(good, tmp_path / "p")
    os.remove(d / "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    refused(d, "pytorch_model.bin", "pickle")


def test_sharded(good, tmp_path):
    d = copy(good, tmp_path / "sh")
    state = load_file(d / "model.safetensors")
    os.remove(d / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    for f, ns in shards.items():
        save_file({n: state[n] for n in ns}, d / f)
    json.dump({"weight_map": {n: f for f, ns in shards.items() for n in ns}}, open(d / "model.safetensors.index.json", "w"))
    spec, model = archdsl.from_hf(d, weights=True)
    ref_spec, ref = archdsl.from_hf(good, weights=True)
    ids = torch.arange(10)[None]
    assert torch.equal(model(ids), ref(ids))
    os.remove(d / "b.safetensors")
    refused(d, "missing shard", "b.safetensors")
    # model.safetensors beside the index: transformers loads it, not the shards, and so does archdsl (it took the
    # shards, another model than AutoModelForCausalLM's, without a word)
    save_file({n: torch.zeros_like(t) for n, t in state.items()}, d / "model.safetensors")
    _, both = archdsl.from_hf(d, weights=True)
    assert all(float(p.abs().sum()) == 0 for p in both.parameters())


def test_unsupported_field(good, tmp_path):
    refused(copy(good, tmp_path / "f", config={"intermediate_size": 40}), "intermediate_size")
    d = copy(good, tmp_path / "mt", config={"model_type": "gpt2"})
    refused(d, "model_type")


def test_cli_nothing_half_written(good, tmp_path, capsys):
    bad = copy(good, tmp_path / "bad", lambda s: s.pop(NAME))
    out = tmp_path / "out"
    assert main(["convert", "--from", "hf", str(bad), "-o", str(out), "--weights"]) == 2
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    assert NAME in capsys.readouterr().err
    assert main(["convert", "--from", "hf", str(good), "-o", str(out), "--weights"]) == 0
    # the HF save's generation_config.json travels with the model
    assert sorted(os.listdir(out)) == ["generation_config.json", "model.safetensors", "spec.yaml"]
    hf_out = tmp_path / "hf_out"
    assert main(["export", str(out), "--to", "hf", "-o", str(hf_out)]) == 0
    assert sorted(os.listdir(hf_out)) == ["config.json", "generation_config.json", "model.safetensors"]
    # a spec no HF family holds: refused, nothing written
    model = archdsl.compile(archdsl.parse("2×mamba, attn", d_model=16, vocab_size=50))
    with pytest.raises(ArchDSLError, match="does not export to Hugging Face: its nearest family, jamba .*every "
                                           "Jamba layer is a mamba or attn mixer followed by an mlp or moe FFN"):
        export_hf(model, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_a_config_far_larger_than_its_checkpoint_is_refused_before_anything_is_allocated(good, tmp_path,
                                                                                         monkeypatch):
    # 10^8 × 16 float32 embeddings and head would be 12.8 GB: the names and shapes are checked on the meta device,
    # and the model is given storage only once they match
    import archdsl.convert.hf_io as hf_io

    def no_storage(model):
        raise AssertionError("the model was allocated before the checkpoint's shapes were checked")
    monkeypatch.setattr(hf_io, "materialize", no_storage)
    d = copy(good, tmp_path / "v", config={"vocab_size": 10**8, "pad_vocab_size_multiple": 1,
                                           "tie_word_embeddings": False})
    refused(d, "backbone.embeddings.weight", "[50, 16]", "[100000000, 16]")
