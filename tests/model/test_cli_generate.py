"""`archdsl generate MODEL PROMPT`: text through a saved model or a Hugging Face directory and its tokenizer.json,
the same tokens as ArchModel.generate; every bad input refused naming it, before the weights are read."""
import json

import pytest
import torch

import archdsl
from archdsl.cli import main

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[UNK]", "<eos>"] + "the cat sat on a mat and dog ran to its home in sun".split()


def _tokenizer(path):
    """A word-level tokenizer.json of WORDS (ids 0..15), split at whitespace."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved 2×mamba model of vocabulary 16 (the tokenizer's) with its tokenizer.json, and its HF export."""
    root = tmp_path_factory.mktemp("generate")
    model = root / "m"
    assert main(["compile", "2×mamba", "--set", "d_model=32", "--set", "vocab_size=16", "-o", str(model),
                 "--seed", "2"]) == 0
    _tokenizer(model / "tokenizer.json")
    hf = root / "hf"
    assert main(["export", str(model), "--to", "hf", "-o", str(hf)]) == 0
    _tokenizer(hf / "tokenizer.json")
    return model, hf


def _run(capsys, *argv):
    capsys.readouterr()
    rc = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_greedy_text_is_model_generate_decoded(saved, capsys):
    model_dir, _ = saved
    rc, out, err = _run(capsys, model_dir, "the cat sat", "--max-new-tokens", 6, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode("the cat sat").ids
    expected = archdsl.load(model_dir).generate(torch.tensor([ids]), 6, temperature=0)[0, 3:].tolist()
    assert doc["prompt_ids"] == ids == [2, 3, 4] and doc["new_ids"] == expected and len(expected) == 6
    assert doc["text"] == tok.decode(ids + expected) and doc["continuation"] == tok.decode(expected)
    assert not doc["stopped_at_eos"]
    rc, out, _ = _run(capsys, model_dir, "the cat sat", "--max-new-tokens", 6)
    assert rc == 0 and out == doc["text"] + "\n"


def test_sampling_is_seeded(saved, capsys):
    model_dir, _ = saved
    args = (model_dir, "the dog", "--max-new-tokens", 8, "--temperature", 1.5, "--top-p", 0.95, "--top-k", 10,
            "--repetition-penalty", 1.2, "--json")
    first = json.loads(_run(capsys, *args, "--seed", 7)[1])
    assert first == json.loads(_run(capsys, *args, "--seed", 7)[1])
    ids = torch.tensor([first["prompt_ids"]])
    expected = archdsl.load(model_dir).generate(ids, 8, temperature=1.5, top_k=10, top_p=0.95, seed=7,
                                                repetition_penalty=1.2)[0, 2:].tolist()
    assert first["new_ids"] == expected


def test_min_p_and_min_new_tokens_are_model_generate_s(saved, capsys):
    """--min-p samples (at temperature 1 alone) and --min-new-tokens holds --eos back, as model.generate does."""
    model_dir, _ = saved
    plain = json.loads(_run(capsys, model_dir, "a mat", "--max-new-tokens", 6, "--json")[1])
    stop = plain["new_ids"][0]
    got = json.loads(_run(capsys, model_dir, "a mat", "--max-new-tokens", 6, "--min-p", 0.05, "--seed", 3,
                          "--eos", stop, "--min-new-tokens", 2, "--json")[1])
    ids = torch.tensor([got["prompt_ids"]])
    want = archdsl.load(model_dir).generate(ids, 6, temperature=1.0, min_p=0.05, seed=3, eos_token_id=stop,
                                            min_new_tokens=2)
    assert got["new_ids"] == want[0, ids.shape[1]:].tolist() and stop not in got["new_ids"][:2]


def test_top_k_alone_samples_at_temperature_1(saved, capsys):
    """--top-k (or --top-p) without --temperature samples at temperature 1, as model.generate does; greedy
    needs neither."""
    model_dir, _ = saved
    got = json.loads(_run(capsys, model_dir, "the dog", "--max-new-tokens", 8, "--top-k", 12, "--seed", 5,
                          "--json")[1])
    ids = torch.tensor([got["prompt_ids"]])
    model = archdsl.load(model_dir)
    assert got["new_ids"] == model.generate(ids, 8, temperature=1.0, top_k=12, seed=5)[0, 2:].tolist()


def test_a_hugging_face_directory_and_its_eos(saved, capsys):
    """The HF export gives the same tokens as the save it came from; its generation_config.json's eos_token_id
    stops the text (config.json's when there is none), --eos overrides it, --eos none drops it."""
    model_dir, hf = saved
    plain = json.loads(_run(capsys, model_dir, "a mat", "--max-new-tokens", 10, "--json")[1])["new_ids"]
    assert json.loads(_run(capsys, hf, "a mat", "--max-new-tokens", 10, "--json")[1])["new_ids"] == plain
    stop = plain[3]
    first = plain.index(stop)
    (hf / "generation_config.json").write_text(json.dumps({"eos_token_id": [15, stop]}))
    doc = json.loads(_run(capsys, hf, "a mat", "--max-new-tokens", 10, "--json")[1])
    assert doc["new_ids"] == plain[:first + 1] and doc["stopped_at_eos"]
    assert json.loads(_run(capsys, hf, "a mat", "--max-new-tokens", 10, "--json", "--eos", "none")[1])[
        "new_ids"] == plain
    doc = json.loads(_run(capsys, model_dir, "a mat", "--max-new-tokens", 10, "--json", "--eos", f"14,{stop}")[1])
    assert doc["new_ids"] == plain[:first + 1]
    (hf / "generation_config.json").unlink()


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "error: --temperature: must be a finite number >= 0"),
    (["--top-p", "1.5"], "error: --top-p: must be a number in (0, 1]"),
    (["--top-k", "-1"], "error: --top-k: must be an int >= 0"),
    (["--min-p", "-0.1"], "error: --min-p: must be a number in [0, 1] (0: no cut), got -0.1"),
    (["--min-new-tokens", "4", "--eos", "none"], "error: --min-new-tokens 4 holds back the end-of-text ids, and "
                                                 "there are none (--eos none)"),
    (["--repetition-penalty", "0"], "error: --repetition-penalty: must be a finite number > 0"),
    (["--eos", "1,x"], "error: --eos: expected token ids separated by commas, or none, got '1,x'"),
    (["--eos", "99"], "error: --eos: id 99 is past the model's vocabulary of 16"),
    (["--tokenizer", "nowhere"], "error: --tokenizer: no tokenizer.json in nowhere"),
    (["--device", "meta"], "error: --device meta: generate computes on real tokens"),
    (["--dtype", "float7"], "error: --dtype: unknown dtype 'float7'"),
    (["--cuda-graph"], "error: --cuda-graph needs a CUDA device (--device cuda), got --device cpu"),
])
def test_bad_options_are_named(saved, capsys, argv, message):
    rc, out, err = _run(capsys, saved[0], "the cat", *argv)
    assert rc == 2 and out == "" and err.startswith(message), err


def test_bad_models_prompts_and_tokenizers(saved, tmp_path, capsys):
    model_dir, _ = saved
    rc, _, err = _run(capsys, tmp_path, "the cat")
    assert rc == 2 and err.startswith(f"error: MODEL: {tmp_path} is neither a saved model"), err
    rc, _, err = _run(capsys, model_dir, "")
    assert rc == 2 and err.startswith("error: PROMPT: the tokenizer makes no token of ''"), err
    rc, _, err = _run(capsys, model_dir, b"caf\xe9".decode("utf-8", "surrogateescape"))  # a Latin-1 argument
    assert rc == 2 and err.startswith("error: PROMPT: not UTF-8 text: b'caf\\xe9'"), err  # was tokenizers' TypeError
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, _, err = _run(capsys, model_dir, "the", "--tokenizer", bad)
    assert rc == 2 and err.startswith(f"error: --tokenizer: {bad} is not a tokenizer.json"), err
    wide = tmp_path / "wide.json"  # ids past the model's vocabulary of 16
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "big": 40}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(wide))
    rc, _, err = _run(capsys, model_dir, "big", "--tokenizer", wide)
    assert rc == 2 and err.startswith("error: PROMPT: the tokenizer gives id 40, past the model's vocabulary of 16")
    no_tok = tmp_path / "bare"
    assert main(["compile", "mamba", "--set", "d_model=16", "--set", "vocab_size=16", "-o", str(no_tok)]) == 0
    rc, _, err = _run(capsys, no_tok, "the")
    assert rc == 2 and err.startswith(f"error: MODEL: no tokenizer.json in {no_tok} (give --tokenizer"), err


def test_ids_the_tokenizer_lacks_are_warned_of_and_listed(saved, tmp_path, capsys):
    """A tokenizer smaller than the model's vocabulary is warned of before the weights are read, and the generated ids
    it has no token for are listed (--json: undecoded_ids; else on stderr): its decode() left them out silently,
    and the text showed nothing. A tokenizer that matches gives no warning and an empty list."""
    model_dir, _ = saved
    rc, out, err = _run(capsys, model_dir, "the cat", "--max-new-tokens", 4, "--json")
    assert rc == 0 and err == "" and json.loads(out)["undecoded_ids"] == [], err
    wide = tmp_path / "wide"  # vocabulary 64 for the 16 words of the tokenizer
    assert main(["compile", "2×mamba", "--set", "d_model=32", "--set", "vocab_size=64", "-o", str(wide)]) == 0
    tok_file = model_dir / "tokenizer.json"
    rc, out, err = _run(capsys, wide, "the cat", "--max-new-tokens", 8, "--json", "--tokenizer", tok_file)
    doc = json.loads(out)
    lacking = sorted({i for i in doc["new_ids"] if i >= 16})
    assert rc == 0 and lacking and doc["undecoded_ids"] == lacking, (doc, err)
    assert err == (f"warning: {tok_file}: the tokenizer has 16 ids, the model's vocabulary 64 (a tokenizer of "
                   f"another model?): a generated id the tokenizer lacks has no text\n"), err
    rc, out, err = _run(capsys, wide, "the cat", "--max-new-tokens", 8, "--tokenizer", tok_file)
    assert rc == 0 and out == doc["text"] + "\n"
    assert err.endswith(f"\nwarning: {len(lacking)} generated ids the tokenizer lacks, left out of the text: "
                        f"{', '.join(map(str, lacking))}\n"), err


def test_weights_that_are_not_finite_are_warned_of(saved, tmp_path, capsys):
    """NaN weights made `0 0 0` (argmax of NaN logits) with no word, where run and bench warn."""
    nan = tmp_path / "nan"
    model = archdsl.load(saved[0])
    with torch.no_grad():
        model.embeddings.weight[3, 0] = float("nan")
    model.save(nan)
    rc, _, err = _run(capsys, nan, "the cat", "--max-new-tokens", 2, "--tokenizer", saved[0])
    assert rc == 0 and err == (f"warning: {nan}: 1 weight tensor holds NaN or inf (the first: embeddings.weight); so "
                               f"will what the model computes\n"), err



def test_sampling_from_logits_that_are_not_finite_exits_2(saved, tmp_path, capsys):
    """NaN weights with --temperature: the warning, then an error naming the step and row, exit 2 (multinomial's
    RuntimeError and a traceback before)."""
    nan = tmp_path / "nan"
    model = archdsl.load(saved[0])
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    model.save(nan)
    rc, out, err = _run(capsys, nan, "the cat", "--max-new-tokens", 2, "--tokenizer", saved[0], "--temperature", 1,
                        "--seed", 0)
    assert rc == 2 and out == "" and "Traceback" not in err, err
    assert err.splitlines()[1].startswith("error: generate: step 0 (new token 1): the logits of row 0 hold NaN: "
                                          "sampling needs finite logits"), err

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_generate_replays_a_cuda_graph_with_the_eager_tokens(saved, capsys):
    """On CUDA generate replays its decode steps from a CUDA graph unless --no-cuda-graph; greedy float32 tokens
    are the eager steps' and model.generate's on the card; bf16 runs and gives ids of the vocabulary."""
    model_dir, hf = saved
    docs = [json.loads(_run(capsys, path, "the cat sat", "--max-new-tokens", 12, "--json", "--device", "cuda",
                            "--dtype", "float32", *flags)[1]) for path in (model_dir, hf)
            for flags in ([], ["--no-cuda-graph"])]
    ids = torch.tensor([docs[0]["prompt_ids"]], device="cuda")
    expected = archdsl.load(model_dir, cuda_graph=False).to("cuda").generate(ids, 12, temperature=0)[0, 3:].tolist()
    assert all(d["new_ids"] == expected for d in docs) and len(expected) == 12
    rc, out, err = _run(capsys, model_dir, "a dog", "--max-new-tokens", 8, "--json", "--device", "cuda",
                        "--dtype", "bfloat16", "--temperature", "0.8", "--seed", "3")
    doc = json.loads(out)
    assert rc == 0, err
    assert len(doc["new_ids"]) == 8 and all(0 <= i < 16 for i in doc["new_ids"])
