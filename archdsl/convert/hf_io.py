"""Hugging Face checkpoints in and out: safetensors reading with checks, import, export.

    spec, model = from_hf("dir", weights=True)        # config.json + model.safetensors (or an index + shards)
    export_hf(model_or_saved_dir, "out/")              # config.json + model.safetensors that transformers loads

Only local files and only safetensors are read (never the network, never pickle: a directory holding
only pytorch_model.bin is refused). A checkpoint whose tensors do not match the model its config
describes (missing, unexpected, wrong shape) or whose files are damaged gives an ArchDSLError naming
the tensor or the file. Outputs are written into a temporary directory beside the target and renamed
into place, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import struct
import sys

from ..atomic import atomic_dir, cannot_write, check_control
from ..errors import ArchDSLError, check_flag, check_path, did_you_mean, shown, warn

SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


# --- reading -------------------------------------------------------------------------------

def read_header(path: str) -> tuple[dict, int]:
    """A safetensors file's header (a JSON object) and the bytes of data after it, read without mapping the file;
    ArchDSLError naming the file where it is short, unreadable or not JSON."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ArchDSLError("not a safetensors file: shorter than its 8-byte header length", file=path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ArchDSLError(f"truncated or not a safetensors file: header of {n} bytes, file of {size}",
                                   file=path)
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise ArchDSLError(f"cannot read checkpoint file: {e.strerror}", file=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: [[[...]]] thousands deep
        raise ArchDSLError("malformed safetensors file: its header is not JSON", file=path) from None
    except ValueError:  # int() of a number past Python's digit limit
        raise ArchDSLError("malformed safetensors file: its header holds a number of over "
                           f"{sys.get_int_max_str_digits()} digits", file=path) from None
    if not isinstance(header, dict):
        raise ArchDSLError("malformed safetensors file: its header is not a JSON object", file=path)
    return header, size - 8 - n


def check_safetensors(path: str) -> dict:
    """Validate a safetensors file's header against its size, as safetensors itself reads it (its metadata text
    to text; the tensors' bytes one after another from the data's start to the file's end, no gap, no overlap);
    → {name: (dtype, shape)}."""
    header, data = read_header(path)
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ArchDSLError("malformed safetensors file: its __metadata__ is not a mapping of text to text", file=path)
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            want = SAFETENSORS_DTYPES[dtype]
            if not isinstance(shape, list) or not all(type(v) is int and v >= 0 for v in (*shape, start, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ArchDSLError(f"malformed safetensors file: bad header entry for tensor {name!r}", file=path) from None
        if 0 in shape:
            want = 0
        for s in shape:
            want *= s
            if want > data:  # past what the file holds: a thousand more huge sizes would only slow the product
                break
        if end > data:
            raise ArchDSLError(f"truncated safetensors file: tensor {name!r} ends at byte {end} of the data, "
                               f"the file holds {data}", file=path)
        if end - start != want:
            raise ArchDSLError(f"malformed safetensors file: tensor {name!r} takes {end - start} bytes, its "
                               f"shape {shown(shape)} and dtype {dtype} need {'at least ' * (want > data)}{want}",
                               file=path)
        out[name] = (dtype, shape)
        spans.append((start, end, name))
    at, last = 0, None  # the data's bytes, tensor by tensor in the order of their offsets
    for start, end, name in sorted(spans):
        if start != at:
            what = (f"overlaps {last!r}" if start < at else f"starts at byte {start}, after a gap from byte {at}")
            raise ArchDSLError(f"malformed safetensors file: tensor {name!r} {what}", file=path)
        at, last = end, name
    if at != data:
        raise ArchDSLError(f"malformed safetensors file: its tensors take {at} bytes of data, the file holds {data} "
                           f"(bytes after the last tensor)", file=path)
    return out


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of an HF model directory: model.safetensors, else an index's shards (transformers'
    order: where both are there, it loads model.safetensors, and so does this)."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):  # ValueError: JSON, UTF-8
            raise ArchDSLError("malformed safetensors index: expected {\"weight_map\": {tensor: shard}}",
                               file=index) from None
        files = []
        for s in shards:
            if not isinstance(s, str) or os.path.basename(s) != s:
                raise ArchDSLError(f"malformed safetensors index: bad shard name {s!r}", file=index)
            f = os.path.join(path, s)
            if not os.path.isfile(f):
                raise ArchDSLError(f"missing shard {s!r} named by the index", file=index)
            files.append(f)
        return files
    others = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if others:
        return [os.path.join(path, f) for f in others]
    pickled = [f for f in ("pytorch_model.bin", "pytorch_model.bin.index.json") if os.path.exists(os.path.join(path, f))]
    if pickled:
        raise ArchDSLError(f"{pickled[0]} is a pickle, which archdsl does not load (it can run code); convert "
                           "the checkpoint to safetensors first (transformers: save_pretrained(..., "
                           "safe_serialization=True))", file=path)
    raise ArchDSLError("no weights: expected model.safetensors or model.safetensors.index.json", file=path)


def read_safetensors(path) -> dict:
    """name → tensor (CPU) for every tensor of an HF model directory's safetensors files."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ArchDSLError("not a directory: expected a Hugging Face model directory", file=path)
    tensors, where = {}, {}
    for file in checkpoint_files(path):
        names = check_safetensors(file)
        try:
            with safe_open(file, framework="pt") as f:
                for name in names:
                    if name in where:
                        raise ArchDSLError(f"tensor {name!r} is in two files: {os.path.basename(where[name])} "
                                           f"and {os.path.basename(file)}", file=path)
                    tensors[name] = f.get_tensor(name)
                    where[name] = file
        except ArchDSLError:
            raise
        except Exception as e:  # safetensors raises its own error types on damaged files
            raise ArchDSLError(f"malformed safetensors file: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                               file=file) from None
    return tensors


# --- import ----------------------------------------------------------------------------------

def family(model_type: str):
    from . import hf
    from .weights import FAMILIES

    if model_type in hf.FAMILIES and model_type not in FAMILIES:  # a config archdsl reads, weights it does not
        raise ArchDSLError(f"weights of model_type {model_type!r} are not supported (config field 'model_type'): "
                           f"its config converts to a spec (convert without --weights), its weights do not",
                           hint=f"weights of: {', '.join(sorted(FAMILIES))}")
    if model_type not in FAMILIES:
        raise ArchDSLError(f"weights of model_type {model_type!r} are not supported (config field 'model_type')",
                           hint=did_you_mean(str(model_type), FAMILIES) or f"supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def ignored(fam, tensors: dict) -> dict:
    """`tensors` less those the family's transformers model ignores on load (fam.IGNORED, regular expressions:
    NemotronH's multi-token-prediction layers, an old checkpoint's RoPE inv_freq buffers), with a warning for
    each pattern that matched, saying how many and the first; every other tensor is kept, to be checked."""
    import re

    out = dict(tensors)
    for pattern in getattr(fam, "IGNORED", ()):
        hits = [n for n in out if re.search(pattern, n)]
        if hits:
            for n in hits:
                del out[n]
            warn(f"dropped {len(hits)} checkpoint tensor{'s' * (len(hits) > 1)} matching {pattern!r} "
                 f"(e.g. {hits[0]!r}), as transformers does: not part of the model")
    return out


def tied_head(spec, fam, tensors: dict):
    """(spec, tensors) as transformers reads a config that ties the LM head to the embeddings (fam.HEAD: the two
    HF names): no head in the checkpoint, or one equal to the embeddings, keeps the tie (the copy is dropped); a
    head of other values is not tied: a warning names both tensors, and the spec says tie_embeddings: false."""
    import torch

    head, emb = fam.HEAD
    if not spec.tie_embeddings or head not in tensors:
        return spec, tensors
    h, e = tensors[head], tensors.get(emb)
    if e is not None and h.shape == e.shape and h.dtype == e.dtype and torch.equal(h, e):
        return spec, {n: t for n, t in tensors.items() if n != head}
    from ..spec import with_sizes

    warn(f"config.json ties the LM head to the embeddings (tie_word_embeddings), but the checkpoint's "
         f"{head!r} differs from {emb!r}: imported untied (tie_embeddings: false) with the checkpoint's "
         "head, as transformers does")
    return with_sizes(spec, tie_embeddings=False), tensors


def checkpoint_dtype(config: dict, tensors: dict):
    """The dtype a checkpoint is imported in by default: config.json's `dtype` (transformers 5) or `torch_dtype`
    (4.x) when given, else the floating dtype holding the most elements (a bfloat16 checkpoint with a few float32
    tensors, as transformers keeps NemotronH's router, is bfloat16)."""
    import torch
    from ..model import resolve_dtype
    from .hf_families import refusal

    field = "dtype" if config.get("dtype") is not None else "torch_dtype"
    given = config.get(field)
    if given is not None:
        try:
            return resolve_dtype(str(given))
        except ArchDSLError:
            raise refusal(field, given, "a model computes in float32, float64, bfloat16 or float16; give the "
                          "dtype to import in (dtype=, --dtype)") from None
    counts = {}
    for t in tensors.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return resolve_dtype(max(counts, key=counts.get) if counts else torch.float32)


def materialize(model):
    """A meta model given storage on the CPU, allocated but not initialised. That gives every parameter a tensor
    of its own, so the ties (the LM head's) are made again, and the plain tensors an ArchModel holds outside its
    state (aux_loss, zeros that forward replaces) are made as zeros on the CPU. Every parameter and buffer must then
    be loaded: load_weights refuses a model it leaves a tensor of."""
    import torch

    ties = {}  # id of a parameter → its names
    for name, p in model.named_parameters(remove_duplicate=False):
        ties.setdefault(id(p), []).append(name)
    # to_empty(device="cpu"), but each tensor made by torch.empty: to_empty's empty_like of a meta tensor imports
    # sympy (a second, more than the random init of a 130M model)
    model = model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype))
    for first, *others in ties.values():
        for name in others:
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, model.get_parameter(first))
    for m in model.modules():
        for key, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(m, key, torch.zeros(value.shape, dtype=value.dtype))
    return model


def from_hf(path, weights: bool = False, device="cpu", dtype=None, name: str | None = None):
    """A local HF model directory → its Spec, or with weights=True → (spec, model) with its weights.

    device: where the model goes; dtype: the model's dtype (default: config.json's dtype, else the checkpoint's
    most common floating dtype). The stages: config → spec; read the safetensors; drop the tensors transformers
    ignores; read the head's tie as transformers does; build the model on the meta device; map the names (the
    family's to_archdsl, which checks them and the shapes); allocate the model, without initialising it; load;
    keep its tokenizer and generation files (model.companions)."""
    import torch
    from . import hf
    from ..model import check_device, load_weights, resolve_dtype
    from ..model.companions import eos_companion, fitting, read_companions

    path = check_path("from_hf", path, "directory's path")
    if not check_flag("from_hf", "weights", weights):
        return hf.from_hf(path, name=name)
    # every argument before any file is read: a bad device was said only once the weights were loaded
    hf.check_name(name, "from_hf: name")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ArchDSLError("not a directory: expected a Hugging Face model directory", file=path)
    if dtype is not None:
        dtype = resolve_dtype(dtype)
    check_device(device, dtype if dtype is not None else torch.float32)  # again below in the checkpoint's dtype, when none is given
    spec = hf.from_hf(path, name=name)
    config = hf.read_hf_config(path)
    fam = family(hf.model_type_of(config))
    tensors = ignored(fam, read_safetensors(path))
    spec, tensors = tied_head(spec, fam, tensors)
    if dtype is None:
        try:
            dtype = checkpoint_dtype(config, tensors)
        except ArchDSLError as e:
            raise ArchDSLError(e.message, file=hf.config_file(path), hint=e.hint) from None
    from ..model import compile as compile_model

    # names and shapes on the meta device (no storage, no random init: minutes at 7B), checked against the
    # checkpoint's before anything is allocated; a wrong checkpoint is an error, not an allocation of its config's size
    model = compile_model(spec, device="meta", dtype=dtype)
    try:
        state = fam.to_archdsl(tensors, spec, model)
    except ArchDSLError as e:  # the family names the tensor; say which checkpoint it is in
        if e.file:
            raise
        raise ArchDSLError(e.message, file=path, hint=e.hint) from None
    model = materialize(model)
    load_weights(model, state, source=path)
    # its tokenizer and generation files, carried into saves and exports: each that reads and fits the vocabulary
    model.companions = fitting(read_companions(path), spec.vocab_size, os.fspath(path), "from_hf")
    if "generation_config.json" not in model.companions and eos_companion(config) is not None:
        model.companions |= fitting({"generation_config.json": eos_companion(config)}, spec.vocab_size,
                                    hf.config_file(path), "from_hf")  # its ids in config.json alone
    if dtype == torch.float16 and hf.model_type_of(config) == "rwkv" and (config.get("rescale_every") or 0) > 0:
        warn(f"{hf.config_file(path)}: transformers halves this RWKV-4's residual stream every rescale_every = "
             f"{config['rescale_every']} layers at inference so that float16 holds it; archdsl computes the same "
             f"function unscaled, whose float16 residual stream may overflow (inf, then NaN logits) in a deep or "
             f"large-weighted model: import it in bfloat16 or float32, or set residual_fp32: true in its spec")
    dev = check_device(device, dtype)
    return spec, (model.to(dev) if dev.type != "cpu" else model)


# --- export ----------------------------------------------------------------------------------

def hf_model_type(spec, model_type: str | None = None) -> str:
    """The HF family a spec exports as: `model_type` if given, else the first family that accepts it."""
    from .weights import FAMILIES

    if model_type is not None and not isinstance(model_type, str):  # a list was TypeError: unhashable type
        raise ArchDSLError(f"model_type must be None or a family name ({', '.join(sorted(FAMILIES))}), "
                           f"got {shown(model_type)}")
    if model_type is not None:  # the one named must be what the spec is: its config is built from the spec
        fam = family(model_type)
        got = fam.accepts(spec)
        if got is None:
            try:
                fam.hf_config(spec)  # raises, saying what the spec lacks
            except ArchDSLError as e:  # named as the option it answers (the CLI's --model-type)
                raise ArchDSLError(f"model_type {model_type!r}: {e.message}", hint=e.hint) from None
            try:  # a family whose fields could hold it leaves it to another (Zamba2's to Mamba-2 without zamba)
                other = hf_model_type(spec)
            except ArchDSLError:
                raise ArchDSLError(f"model_type {model_type!r}: spec {spec.name!r} does not export as one") from None
            raise ArchDSLError(f"model_type {model_type!r}: spec {spec.name!r} exports as {other!r}, not as "
                               f"{model_type!r}", hint=f"give --model-type {other} (model_type={other!r}), "
                               f"or leave it out")
        if got != model_type:  # falcon_mamba named for a plain Mamba: transformers would build another model
            raise ArchDSLError(f"spec {spec.name!r} exports as {got!r}, not {model_type!r}: a config saying "
                               f"{model_type!r} would make transformers build a model that computes something "
                               f"else", hint=f"give --model-type {got} (model_type={got!r}), or leave it out")
        return model_type
    for mt, fam in FAMILIES.items():
        accepts = getattr(fam, "accepts", None)
        got = accepts(spec) if accepts else None
        if got:
            return got if isinstance(got, str) else mt
    raise not_exportable(spec)


def not_exportable(spec) -> ArchDSLError:
    """Why no family exports `spec`: the reason of each family whose blocks are the spec's kinds (its nearest),
    or the kinds no family holds."""
    from .weights import FAMILIES
    from .weights._common import kinds_used

    kinds = kinds_used(spec)
    near = {}  # one model type per module (mamba and falcon_mamba share one)
    for mt, fam in FAMILIES.items():
        if kinds <= fam.KINDS and fam not in near.values():
            near[mt] = fam
    start = f"spec {spec.name!r} does not export to Hugging Face"
    if not near:
        held = set().union(*(fam.KINDS for fam in FAMILIES.values()))
        what = (f"no family archdsl exports has {', '.join(sorted(kinds - held))} blocks" if kinds - held
                else f"no family archdsl exports has all of {', '.join(sorted(kinds))} in one model")
        return ArchDSLError(f"{start}: {what}", hint=f"the families: {', '.join(sorted(FAMILIES))}")
    reasons = {}
    for mt, fam in near.items():
        try:
            fam.hf_config(spec)
            reasons[mt] = (f"spec {spec.name!r} does not export as one", None)
        except ArchDSLError as e:
            reasons[mt] = (e.message, e.hint)
    if len(reasons) == 1:
        (mt, (why, hint)), = reasons.items()
        return ArchDSLError(f"{start}: its nearest family, {mt} (the same kinds of block): {why}", hint=hint)
    return ArchDSLError(f"{start}; the families with its kinds of block refuse it: "
                        + "; ".join(f"{mt}: {why}" for mt, (why, _) in reasons.items()))


def warn_copies(spec, model_type: str, fam) -> None:
    """An ArchDSLWarning for blocks the spec shares between layers (a group) where the family has its own in each
    layer: the export computes the same function, with a copy of the shared weights in every layer using them,
    which training in transformers then updates apart. Blocks the family itself shares (fam.SHARES: Zamba2's
    hybrid blocks) are not copies."""
    from ..graph import layers as graph_layers

    uses = {}
    for i, layer in enumerate(graph_layers(spec.graph)):
        for s in layer:
            if s.group is not None and s.kind not in getattr(fam, "SHARES", ()):
                uses.setdefault((s.group, s.kind), []).append(i)
    shared = {k: v for k, v in uses.items() if len(v) > 1}
    if not shared:
        return
    said = "; ".join(f"layers {', '.join(map(str, v))} share one {kind} (group {group!r})"
                     for (group, kind), v in shared.items())
    warn(f"export as {model_type}: {said}; a {model_type} checkpoint has its own block in every layer, so "
         f"each of these layers gets a copy of the shared weights ({sum(len(v) - 1 for v in shared.values())}"
         f" extra); the model computes the same, but training it in transformers updates the copies apart")


HF_FILES = frozenset({"config.json", "model.safetensors"})  # what export_hf writes (and the companions)
EXPORT_MARK = {"format": "pt", "archdsl": "export"}  # model.safetensors' metadata: what tells an export of ours


def not_an_export(directory: str) -> str | None:
    """None where `directory`'s model.safetensors carries EXPORT_MARK (an earlier export, which export may replace),
    else why not: a transformers checkpoint has the same file names, and may be the one the model came from."""
    try:  # the header alone (safe_open maps the whole file, which may not fit the memory)
        meta = read_header(os.path.join(directory, "model.safetensors"))[0].get("__metadata__")
    except ArchDSLError:  # short, unreadable, not JSON: not ours
        meta = None
    if isinstance(meta, dict) and meta.get("archdsl") == EXPORT_MARK["archdsl"]:
        return None
    return ("its model.safetensors was not written by archdsl's export (a Hugging Face checkpoint's, maybe the one "
            "the model was imported from)")


def export_hf(model_or_dir, out_dir, model_type: str | None = None) -> str:
    """Write config.json + model.safetensors for transformers into out_dir, with the tokenizer and generation files
    the model carries (model.companions: those of the HF directory it was imported from, kept through saves),
    atomically: an existing out_dir is replaced only if it holds an earlier export alone (with no file this one
    does not write again, its model.safetensors marked as an export's: EXPORT_MARK); a failed write, a full disk
    say, is ArchDSLError `cannot write OUT_DIR: reason`.
    → out_dir as an absolute path. model_or_dir: an ArchModel with weights, or a saved model's directory;
    model_type: the HF family (default: the first that accepts the spec)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    from ..model import ArchModel, load
    from ..model.companions import check_companions, write_companions
    from ..model.model import check_has_weights, check_saved_dtypes, check_spec_layout

    out_dir = check_path("export", out_dir, "directory's path")
    check_control(out_dir, "export: out_dir")  # before the model is loaded
    model = (model_or_dir if isinstance(model_or_dir, ArchModel)
             else load(check_path("export", model_or_dir, "model or saved model's directory")))
    check_spec_layout(model, "export")
    check_has_weights(model, "export")
    check_companions(model.companions, "export")
    check_saved_dtypes(model, "export")
    spec = model.spec
    mt = hf_model_type(spec, model_type)
    fam = family(mt)
    config = dict(fam.hf_config(spec))
    config["model_type"] = mt
    warn_copies(spec, mt, fam)
    if spec.residual_fp32 and "residual_in_fp32" not in config:
        warn(f"export as {mt}: the spec's residual_fp32 has no field in a {mt} config: transformers keeps the "
             f"residual stream in the model's dtype, so a 16-bit export rounds it where this model does not "
             f"(the same function in float32)")
    config["dtype"] = str(model.dtype).replace("torch.", "")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    hf_state = {k: v.contiguous() for k, v in fam.to_hf(state, spec, config).items()}
    seen = {}
    for k, v in list(hf_state.items()):  # save_file refuses tensors sharing memory
        key = (v.data_ptr(), v.numel(), v.dtype)
        if key in seen:
            hf_state[k] = v.clone()
        seen[key] = k
    written = os.path.abspath(out_dir)
    try:
        with atomic_dir(out_dir, HF_FILES, frozenset(model.companions), ours=not_an_export) as tmp:
            with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
            write_companions(model.companions, tmp)
            save_file(hf_state, os.path.join(tmp, "model.safetensors"), metadata=EXPORT_MARK)
    except (OSError, SafetensorError) as e:  # a full disk, a file too large; atomic_dir removed the temporary
        raise cannot_write(out_dir, e) from None
    return written
