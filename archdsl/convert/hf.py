"""Hugging Face config.json → archdsl spec, for the families of the reference architectures.

    hf_config_to_spec(json.load(open("config.json")), "zamba2-2.7b")  →  {name, d_model, ..., layout, blocks}

The spec reports the parameter count of the HF model the config describes (tests/test_convert.py
checks that against transformers for every family). Missing keys take the HF config-class
defaults (transformers 5.x); settings we cannot express are refused with an ArchDSLError
naming the config field. The per-family translators are in archdsl.convert.hf_families.
"""
from __future__ import annotations

import json
import os
import sys
import unicodedata

from ..errors import TOO_DEEP, ArchDSLError, check_flag, check_path, did_you_mean, shown
from .hf_families import FAMILIES, HFConfig, refusal


def read_hf_config(path: str | os.PathLike) -> dict:
    """A config.json (or the directory holding one) as a dict."""
    path = check_path("from_hf", path, "config.json's or model directory's path")
    path = config_file(path)
    from ..yamlio import read_text

    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ArchDSLError(f"not valid JSON: {e.msg}", file=path, line=e.lineno, col=e.colno) from None
    except ValueError:  # the only other one json raises: int() of a number past Python's digit limit
        raise ArchDSLError(f"not a config.json: a number is too long (over {sys.get_int_max_str_digits()} digits)",
                           file=path) from None
    except RecursionError:
        raise ArchDSLError(f"not a config.json: {TOO_DEEP}", file=path) from None
    if not isinstance(data, dict):
        raise ArchDSLError("a Hugging Face config.json holds one JSON object", file=path)
    return data


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a spec (the spec's own checks, said before the YAML that would carry it), or None."""
    if not name.strip():
        return "it is blank"
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:  # a line break would split every table and message that names the model
        return f"it holds {bad!r}; a name is one line, without line breaks, tabs or other control characters"
    if any(unicodedata.category(c) == "Cs" for c in name):
        return "it holds bytes that are not UTF-8 (a lone surrogate)"
    return None


def check_name(name, where: str) -> None:
    """ArchDSLError naming the argument (`where`, e.g. "from_hf: name") unless `name` is None or a valid name."""
    if name is None:
        return
    if not isinstance(name, str):
        raise ArchDSLError(f"{where} must be None or a str, got {shown(name)}")
    why = name_problem(name)
    if why:
        raise ArchDSLError(f"{where} {shown(name)} cannot name a spec: {why}")


ARCHITECTURES = {"MambaForCausalLM": "mamba", "FalconMambaForCausalLM": "falcon_mamba",
                 "Mamba2ForCausalLM": "mamba2", "JambaForCausalLM": "jamba", "Zamba2ForCausalLM": "zamba2",
                 "BambaForCausalLM": "bamba", "NemotronHForCausalLM": "nemotron_h", "RwkvForCausalLM": "rwkv",
                 "Rwkv6ForCausalLM": "rwkv6", "LlamaForCausalLM": "llama"}


def model_type_of(config: dict):
    """The config's model_type, else that of the first class in its architectures that archdsl knows, else None."""
    model_type, archs = config.get("model_type"), config.get("architectures")
    if model_type is not None or archs is None:
        return model_type
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise refusal("architectures", archs, 'expected a list of model class names, like ["MambaForCausalLM"]')
    return next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)


def no_model_type(config: dict) -> ArchDSLError:
    """The error for a config with no model_type and no architectures archdsl knows; a mamba_ssm config
    (ssm_cfg, n_layer: the state-spaces/mamba* releases) is named as one."""
    archs = config.get("architectures")
    message = "no model_type" + (f", and archdsl knows none of its architectures {shown(archs)}" if archs
                                 else " (and no architectures)")
    if "ssm_cfg" in config or "n_layer" in config:
        return ArchDSLError(message + ": this looks like a mamba_ssm checkpoint (ssm_cfg / n_layer), which needs "
                            "converting to transformers format first", file="<hf config>",
                            hint="convert it with transformers' Mamba / Mamba-2 conversion script (under "
                                 "models/mamba and models/mamba2 in its source), then read that directory")
    return ArchDSLError(message, file="<hf config>", hint=f"model types archdsl reads: {', '.join(FAMILIES)}")


def hf_config_to_spec(config: dict, source_name: str | None = None) -> dict:
    """A spec dict (ready for spec.dump_yaml) describing the model of an HF config.json (read as a dict). Its name:
    source_name, else the last part of the config's _name_or_path, else the model_type. Unsupported fields are
    ArchDSLError naming the field; the dict is not checked to the graph (convert_config does that)."""
    if not isinstance(config, dict):
        raise ArchDSLError(f"hf_config_to_spec: config must be a dict (a config.json read), got {shown(config)}")
    check_name(source_name, "hf_config_to_spec: source_name")
    model_type = model_type_of(config)
    if model_type is None:
        raise no_model_type(config)
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ArchDSLError(f"unsupported model_type {shown(model_type)} of config field 'model_type'",
                           file="<hf config>", hint=did_you_mean(model_type if isinstance(model_type, str)
                                                                 else shown(model_type), FAMILIES))
    if config.get("quantization_config") is not None:  # its weights are not the model's: read as they are, wrong
        raise refusal("quantization_config", config["quantization_config"],
                      "quantized checkpoints are not supported; dequantize first")
    given = config.get("_name_or_path")
    if not source_name and given and not isinstance(given, str):
        raise refusal("_name_or_path", given, "expected a string (the model's hub id or directory)")
    part = "" if source_name or not given else _last_part(given)
    if part and name_problem(part):
        raise refusal("_name_or_path", given, f"its last part names the spec, and cannot: {name_problem(part)} "
                                              f"(give a name with --name or name=)")
    name = source_name or part or model_type  # a name given is kept whole ('org/model'), as --from megatron does
    try:
        return FAMILIES[model_type](HFConfig(config), name)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError, OverflowError) as e:
        # a field of the wrong type or shape that no check above named
        raise ArchDSLError(f"malformed {model_type} config: {type(e).__name__}: {e}", file="<hf config>") from None


def _last_part(name_or_path: str) -> str:
    """What names a spec in an _name_or_path: its last part (a hub id's model, a directory's name), or '' where it
    has none ('', '/', '.', '..')."""
    part = os.path.basename(name_or_path.rstrip("/"))
    return "" if part in (".", "..") else part


def config_file(path: str | os.PathLike) -> str:
    """The config.json of a model directory, or `path` itself. An archdsl save in its place is ArchDSLError
    saying so (rather than that config.json is missing)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    if not os.path.exists(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "spec.yaml")):
        raise ArchDSLError(f"{path}: an archdsl model directory (spec.yaml), not a Hugging Face one (config.json)",
                           hint="it needs no conversion: give it to compile, run, generate, train or export as it is")
    return os.path.join(path, "config.json")


def convert_config(path: str | os.PathLike, name: str | None = None) -> tuple[str, object]:
    """(spec YAML text, Spec) of the config.json at `path` (or in that directory), the Spec checked to the graph.
    Its name: `name`, else the last part of the config's _name_or_path (a hub id's model), else (none given, or
    one without a last part: '/', '.') the directory's.
    Every refusal names the config file: an unsupported field by its name, a converted spec that will not build
    (a block's check) with its message and the converted line it stands on."""
    from ..spec import spec_from_yaml
    from ..yamlio import dump_yaml

    check_name(name, "name")
    file = config_file(check_path("convert_config", path, "config file's or directory's path"))
    try:
        config = read_hf_config(file)
        given = config.get("_name_or_path")
        if name is None and (not given or isinstance(given, str) and not _last_part(given)):  # as from_hf did:
            name = os.path.basename(os.path.dirname(os.path.abspath(file))) or None  # the model's directory names it
            why = name and name_problem(name)
            if why:  # said with the directory quoted: as the file in front of the message, its line break splits it
                raise ArchDSLError(f"the model directory {shown(os.path.dirname(os.path.abspath(file)))} names the "
                                   f"spec (its config has no _name_or_path), and its name cannot: {why}",
                                   hint="give a name (--name, or name= to from_hf)")
        data = hf_config_to_spec(config, name)
    except ArchDSLError as e:  # the converters name the field, not the file they were handed as a dict
        if e.file != "<hf config>":
            raise
        raise ArchDSLError(e.message, file=file, hint=e.hint) from None
    text = dump_yaml(data)
    try:
        spec = spec_from_yaml(text, file="<converted>")
        spec.graph
    except ArchDSLError as e:
        line = f" (the converted spec's line {e.line}: {text.splitlines()[e.line - 1].strip()})" if e.line else ""
        raise ArchDSLError(f"the model of this config is not one archdsl can build: {e.message}{line}", file=file,
                           hint=e.hint) from None
    return text, spec


def from_hf(path: str | os.PathLike, weights: bool = False, device="cpu", dtype=None, name: str | None = None):
    """The Spec of a local Hugging Face model directory (its config.json; or the config.json's own path); with
    weights=True (a directory only), (spec, model) holding the checkpoint's weights, the model on `device` in
    `dtype` (default: the checkpoint's floating dtype); device and dtype are unused without weights. name: the
    spec's name (see convert_config). See archdsl.convert.hf_io."""
    weights = check_flag("from_hf", "weights", weights)
    path = check_path("from_hf", path, "directory's path")
    check_name(name, "from_hf: name")
    if weights:
        from .hf_io import from_hf as from_hf_weights

        return from_hf_weights(path, weights=True, device=device, dtype=dtype, name=name)
    return convert_config(path, name)[1]
