"""A model's companion files: its Hugging Face tokenizer and generation settings, kept beside the weights.

A model read from an HF directory or a save carries them (ArchModel.companions, name → bytes) into its saves and
exports, byte for byte; `--tokenizer PATH` gives them to a model that has none (compile, export-checkpoint).

    read_companions(dir) → {name: bytes}        companion_names(dir) → the names there
    check_companions(companions, where)         write_companions(companions, dir)
    tokenizer_companions(path, vocab_size) → {name: bytes}, checked
    check_vocab(companions, vocab_size, file, where)   a tokenizer.json's ids within the vocabulary
    eos_companion(config) → a generation_config.json's bytes of config.json's token ids, or None
"""
from __future__ import annotations

import json
import os

from ..errors import ArchDSLError

COMPANIONS = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                        "generation_config.json"})


def read_companions(directory, strict: bool = False) -> dict[str, bytes]:
    """The COMPANIONS files in `directory` (plain files; a link is followed), name → their bytes. One that cannot be
    read is left out with an ArchDSLWarning (the weights do not need it); strict: ArchDSLError instead (a directory
    the user named for its tokenizer)."""
    from ..errors import warn

    out = {}
    for name in sorted(COMPANIONS):
        path = os.path.join(os.fspath(directory), name)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    out[name] = f.read()
            except OSError as e:
                if strict:
                    raise ArchDSLError(f"cannot read {path}: {e.strerror or e}") from None
                warn(f"cannot read {path}: {e.strerror or e}; the model goes on without it")
    return out


def companion_names(directory) -> frozenset[str]:
    """The names of the COMPANIONS files in `directory` (what a model read from it writes again)."""
    return frozenset(n for n in COMPANIONS if os.path.isfile(os.path.join(os.fspath(directory), n)))


def check_companions(companions, where: str) -> None:
    """A model's companions as a save or an export writes them, else ArchDSLError naming `where`: a dict of
    COMPANIONS names (a name such as spec.yaml or ../x would overwrite the save's own files or write outside it)
    to bytes."""
    if not isinstance(companions, dict):
        raise ArchDSLError(f"{where}: model.companions must be a dict of file name → bytes, got "
                           f"{type(companions).__name__}")
    for name, data in companions.items():
        if name not in COMPANIONS:
            raise ArchDSLError(f"{where}: model.companions holds {name!r}, which is no tokenizer or generation file "
                               f"(one of {', '.join(sorted(COMPANIONS))})")
        if not isinstance(data, (bytes, bytearray)):
            raise ArchDSLError(f"{where}: model.companions[{name!r}] must be bytes, got {type(data).__name__}")


def write_companions(companions: dict[str, bytes], directory: str) -> None:
    """Write `companions` (name → bytes, names of COMPANIONS: check_companions) into `directory`."""
    for name, data in companions.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def eos_companion(config: dict) -> bytes | None:
    """A generation_config.json of an HF config.json's bos, eos and pad token ids (None without any): where a
    model keeps them in config.json alone, transformers makes its GenerationConfig of them (from_model_config),
    and an export without them would lose the eos."""
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    return (json.dumps(ids, indent=2) + "\n").encode() if ids else None


MAX_BYTES = 1 << 30  # a tokenizer file past this is some other file named by mistake (the largest are ~30 MB)
IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")  # generation settings' token ids


def tokenizer_companions(path, vocab_size: int, where: str = "--tokenizer") -> dict[str, bytes]:
    """The companions a model of `vocab_size` ids takes from `path`: a directory (a save, an HF model directory, a
    tokenizer's own; its COMPANIONS, and a generation_config.json of its config.json's ids where it has none) or a
    tokenizer.json file. ArchDSLError, naming `where`, for a path that is neither, a file that cannot be read, a
    directory holding no tokenizer, or files that give an id past the vocabulary (check_vocab)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        try:
            out = read_companions(path, strict=True)
        except ArchDSLError as e:
            raise ArchDSLError(f"{where}: {e.message}") from None
        if not out.keys() & (COMPANIONS - {"generation_config.json"}):
            raise ArchDSLError(f"{where}: {path} holds no tokenizer (none of "
                               f"{', '.join(sorted(COMPANIONS - {'generation_config.json'}))})")
        if "generation_config.json" not in out:
            made = eos_companion(_config(os.path.join(path, "config.json")))
            if made is not None:
                out["generation_config.json"] = made
    elif os.path.isfile(path):  # saved as tokenizer.json, whatever its name
        out = {"tokenizer.json": _read(path, where)}
    elif os.path.exists(path):
        raise ArchDSLError(f"{where}: {path} is not a regular file or a directory (a device, FIFO or socket)")
    else:
        raise ArchDSLError(f"{where}: {path}: no such file or directory (give a tokenizer.json or a directory "
                           f"holding one)")
    check_vocab(out, vocab_size, path, where, " (a tokenizer of another model?)")
    return out


def _read(path: str, where: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise ArchDSLError(f"{where}: {path}: {size:,} bytes, too large for a tokenizer.json (another file?)")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ArchDSLError(f"{where}: cannot read {path}: {e.strerror or e}") from None


def _config(path: str) -> dict:
    """An HF config.json's object, for its token ids; {} where there is none, or it is no JSON object (its ids are
    a convenience: the tokenizer comes without them)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def check_vocab(companions: dict[str, bytes], vocab_size: int, where_from: str, where: str, why: str = "") -> None:
    """ArchDSLError, naming `where` and the file, where a companion gives a token id past a vocabulary of
    `vocab_size` (a tokenizer of another model, or a vocabulary made smaller), or is not what its name says:
    tokenizer.json's model vocabulary and added tokens, vocab.json's and added_tokens.json's {token: id}, and the
    token ids of generation_config.json. tokenizer.model (SentencePiece's binary) is not read. `where_from`: the
    directory they came from, or the one file they were read or made from (a tokenizer.json, a config.json);
    `why`: what the message adds where an id is past."""
    for name, read in (("tokenizer.json", _tokenizer_ids), ("vocab.json", _map_ids), ("added_tokens.json", _map_ids),
                       ("generation_config.json", _generation_ids)):
        if name not in companions:
            continue
        file = where_from if not os.path.isdir(where_from) else os.path.join(where_from, name)
        try:
            ids = read(json.loads(companions[name]))
        except (ValueError, RecursionError) as e:
            what = "not JSON" if not isinstance(e, _Shape) else str(e)
            raise ArchDSLError(f"{where}: {file}: not a {name} ({what})") from None
        if ids and max(ids) >= vocab_size:
            top = max(ids)
            said = f"a token id of {top:,}" if name == "generation_config.json" else f"ids up to {top:,}"
            raise ArchDSLError(f"{where}: {file} gives {said}, past the model's vocabulary of {vocab_size:,}{why}")


def fitting(companions: dict[str, bytes], vocab_size: int, where_from: str, where: str) -> dict[str, bytes]:
    """The companions that check_vocab passes one by one; each other is left out with a warning naming it (a
    generation_config.json whose eos is past the vocabulary, a tokenizer.json that is not JSON), so that one bad file
    costs the model only itself."""
    from ..errors import warn

    kept = {}
    for name, data in companions.items():
        try:
            check_vocab({name: data}, vocab_size, where_from, where)
        except ArchDSLError as e:
            warn(f"{e.message}: it is not carried with the model")
            continue
        kept[name] = data
    return kept


class _Shape(ValueError):
    """A companion whose JSON is not shaped as its name says."""


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tokenizer_ids(tok) -> list[int]:
    """A tokenizer.json's ids: its model's vocabulary (BPE's, WordLevel's and WordPiece's {token: id}, Unigram's
    [[piece, score], ...], whose ids are the positions) and its added tokens."""
    model = tok.get("model") if isinstance(tok, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, (dict, list)):
        raise _Shape("expected an object whose model holds a vocab, as the tokenizers library saves one")
    ids = _map_ids(vocab) if isinstance(vocab, dict) else list(range(len(vocab)))
    added = tok.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) and _is_id(t.get("id")) for t in added):
        raise _Shape("its added_tokens must be a list of objects, each with an id >= 0")
    return ids + [t["id"] for t in added]


def _map_ids(vocab) -> list[int]:
    if not isinstance(vocab, dict) or not all(_is_id(v) for v in vocab.values()):
        raise _Shape("expected an object of token → id >= 0")
    return list(vocab.values())


def _generation_ids(config) -> list[int]:
    """The token ids of a generation_config.json (each an id or a list of them; null where unset)."""
    if not isinstance(config, dict):
        raise _Shape("expected an object")
    ids = []
    for key in IDS:
        value = config.get(key)
        values = [] if value is None else value if isinstance(value, list) else [value]
        if not all(_is_id(v) for v in values):
            raise _Shape(f"its {key} must be a token id >= 0 or a list of them, got {value!r}"[:200])
        ids += values
    return ids
