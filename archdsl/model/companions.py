"""A model's companion files: its Hugging Face tokenizer and generation settings, kept beside the weights.

A model read from an HF directory or a save carries them (ArchModel.companions, name → bytes) into its saves and
exports, byte for byte; `--tokenizer PATH` gives them to a model that has none (compile, export-checkpoint).

    read_companions(dir) → {name: bytes}        companion_names(dir) → the names there
    write_companions(companions, dir)           tokenizer_companions(path, vocab_size) → {name: bytes}, checked
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


def read_companions(directory) -> dict[str, bytes]:
    """The COMPANIONS files in `directory` (plain files; a link is followed), name → their bytes. One that cannot be
    read is left out with an ArchDSLWarning: the weights do not need it."""
    from ..errors import warn

    out = {}
    for name in sorted(COMPANIONS):
        path = os.path.join(os.fspath(directory), name)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    out[name] = f.read()
            except OSError as e:
                warn(f"cannot read {path}: {e.strerror or e}; the model goes on without it")
    return out


def companion_names(directory) -> frozenset[str]:
    """The names of the COMPANIONS files in `directory` (what a model read from it writes again)."""
    return frozenset(n for n in COMPANIONS if os.path.isfile(os.path.join(os.fspath(directory), n)))


def write_companions(companions: dict[str, bytes], directory: str) -> None:
    """Write `companions` (name → bytes, names of COMPANIONS) into `directory`."""
    for name, data in companions.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def eos_companion(config: dict) -> bytes | None:
    """A generation_config.json of an HF config.json's bos, eos and pad token ids (None without any): where a
    model keeps them in config.json alone, transformers makes its GenerationConfig of them (from_model_config),
    and an export without them would lose the eos."""
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    return (json.dumps(ids, indent=2) + "\n").encode() if ids else None


def tokenizer_companions(path, vocab_size: int, where: str = "--tokenizer") -> dict[str, bytes]:
    """The companions a model of `vocab_size` ids takes from `path`: a directory (a save, an HF model directory, a
    tokenizer's own; its COMPANIONS, and a generation_config.json of its config.json's ids where it has none) or a
    tokenizer.json file. ArchDSLError, naming `where`, for a path that is neither, a directory holding no tokenizer,
    or a tokenizer.json that is not one or that gives an id past the vocabulary (a tokenizer of another model)."""
    from ..yamlio import read_text

    path = os.fspath(path)
    if os.path.isdir(path):
        out = read_companions(path)
        if not out.keys() & (COMPANIONS - {"generation_config.json"}):
            raise ArchDSLError(f"{where}: {path} holds no tokenizer (none of "
                               f"{', '.join(sorted(COMPANIONS - {'generation_config.json'}))})")
        config = os.path.join(path, "config.json")
        if "generation_config.json" not in out and os.path.isfile(config):
            try:
                data = json.loads(read_text(config))
            except ValueError:
                data = None  # not the HF config we look for: its ids are not read
            made = eos_companion(data) if isinstance(data, dict) else None
            if made is not None:
                out["generation_config.json"] = made
    elif os.path.isfile(path):  # saved as tokenizer.json, whatever its name
        with open(path, "rb") as f:
            out = {"tokenizer.json": f.read()}
    else:
        raise ArchDSLError(f"{where}: {path}: no such file or directory (give a tokenizer.json or a directory "
                           f"holding one)")
    check_vocab(out, vocab_size, os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path, where)
    return out


def check_vocab(companions: dict[str, bytes], vocab_size: int, file: str, where: str) -> None:
    """ArchDSLError, naming `where` and `file`, where the companions' tokenizer.json is not one or gives an id past a
    vocabulary of `vocab_size` (a tokenizer of another model); nothing to check without one."""
    if "tokenizer.json" not in companions:
        return
    top = _top_id(companions["tokenizer.json"], f"{where}: {file}")
    if top >= vocab_size:
        raise ArchDSLError(f"{where}: {file}: the tokenizer gives ids up to {top:,}, past the model's vocabulary of "
                           f"{vocab_size:,} (a tokenizer of another model?)")


def _top_id(data: bytes, file: str) -> int:
    """The largest id a tokenizer.json gives: its model's vocabulary (BPE's and WordLevel's {token: id}, Unigram's
    [[piece, score], ...]) and its added tokens; -1 when it gives none."""
    try:
        tok = json.loads(data)
        model = tok.get("model") or {}
        vocab = model.get("vocab") or {}
        ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1] if vocab else []
        ids += [t["id"] for t in tok.get("added_tokens") or []]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError("an id that is not an integer")
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ArchDSLError(f"{file}: not a tokenizer.json ({e})") from None
    return max(ids, default=-1)
