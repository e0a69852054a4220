"""The checks a Space and the reader of space files share, with no Space of their own: values as plain Python
numbers (plain_value, finite_number), errors keyed to their place in a space file (field_key, keyed_error: the
reader turns an error's space_key into a line and column), and the shape of the probe section (check_probe).
"""
from __future__ import annotations

import math
import numbers
import re

from ..errors import ArchDSLError, did_you_mean, shown


def field_key(field_name: str) -> tuple:
    """The key path in a space file of a Space field: moe_top_k is (moe, top_k), every_offsets (every, offsets)."""
    group, _, rest = field_name.partition("_")
    return (group, rest) if group in ("moe", "every") and rest else (field_name,)


def keyed_error(message: str, key: tuple, hint: str = "") -> ArchDSLError:
    e = ArchDSLError(message, hint=hint)
    e.space_key = key
    return e


def finite_number(v) -> bool:
    """An int or a finite float (numpy's too; not a bool, nan or inf)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    return isinstance(v, numbers.Integral) or math.isfinite(v)


def plain_value(v):
    """numpy's integers as ints, its floats as floats, its bools as bools (a YAML dump takes no numpy scalar);
    anything else as it is."""
    if getattr(getattr(v, "dtype", None), "kind", None) == "b" and getattr(v, "ndim", None) == 0:
        return bool(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return v
    return int(v) if isinstance(v, numbers.Integral) else float(v)


PROBE_KEYS = ("task", "args", "d_model", "train")


def check_probe(probe) -> None:
    """The shape of a space's probe: section (or a ProbeSpec's parts), each error keyed to its place: known keys, a
    task name, mappings of named arguments and settings, a positive d_model. Checked as the space is read, whether or
    not --probe runs it, and the training settings' values by TrainConfig (`_check_train`); the task's arguments are
    make_task's to check, before anything is written."""
    if not isinstance(probe, dict):
        raise keyed_error("probe must be a mapping (task, args, d_model, train)", ("probe",))
    for k in probe:
        if k not in PROBE_KEYS:
            raise keyed_error(f"unknown probe key {k!r} (steps, lr, batch_size go under train:)",
                              ("probe", str(k), "<key>"), did_you_mean(str(k), PROBE_KEYS))
    task = probe.get("task")
    if task is not None and not isinstance(task, str):
        raise keyed_error(f"probe: task must be a task name (mqar, selective_copying, noisy_recall, fuzzy_recall), "
                          f"got {shown(task)}", ("probe", "task"))
    for key, example in (("args", "{seq_len: 256, num_kv_pairs: 16}"), ("train", "{steps: 1000, lr: 1.0e-3}")):
        value = probe.get(key)
        if value is not None and not isinstance(value, dict):
            raise keyed_error(f"probe: {key} must be a mapping such as {example}, got {shown(value)}", ("probe", key))
        for k in value or {}:
            if not isinstance(k, str):
                raise keyed_error(f"probe: {key} keys must be names, got {shown(k)}", ("probe", key, shown(k), "<key>"))
    if "seed" in (probe.get("train") or {}):
        raise keyed_error("probe: train: seed is the run's seed (--seed), not a training setting",
                          ("probe", "train", "seed", "<key>"))
    d_model = probe.get("d_model")
    if d_model is not None and (isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1):
        raise keyed_error(f"probe: d_model must be a positive integer, got {shown(d_model)}", ("probe", "d_model"))
    if d_model is not None and d_model > 10**6:
        raise keyed_error(f"probe: d_model must be at most 10^6 (the widest a spec may be), got {shown(d_model)}",
                          ("probe", "d_model"))
    if probe.get("train"):
        _check_train(probe["train"])
    if task is not None or probe.get("args"):
        _check_task(task or "mqar", probe.get("args") or {})


def _check_task(task: str, args: dict) -> None:
    """The probe's task name, then each argument alone (name, type), each error at its key. Whether the arguments go
    together is the task's to say when --probe makes it: --probe-arg may change them."""
    from .probes import task_args

    for key, one in [(("probe", "task"), {})] + [(("probe", "args", k), {k: v}) for k, v in args.items()]:
        try:
            task_args(task, one)
        except ArchDSLError as e:
            where = key + (("<key>",) if "unknown argument" in e.message else ())
            raise keyed_error(f"probe: {e.message}", where, e.hint) from None


def _check_train(train: dict) -> None:
    """The probe's training settings, each error at its key: known names, then TrainConfig's own checks (whose
    messages start `train: NAME`)."""
    from .train import SETTINGS, TrainConfig

    for k in train:
        if k not in SETTINGS:
            raise keyed_error(f"probe: unknown training setting {k!r}", ("probe", "train", k, "<key>"),
                              did_you_mean(k, SETTINGS))
    try:
        TrainConfig(**train)
    except ArchDSLError as e:
        m = re.match(r"train: (\w+)", e.message)
        key = ("probe", "train", m.group(1)) if m and m.group(1) in train else ("probe", "train")
        raise keyed_error(f"probe: {e.message}", key, e.hint) from None
