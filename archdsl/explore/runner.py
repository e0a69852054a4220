"""An exploration on disk: enumerate and cost, write every candidate's spec, probe the best
K, keep results.json / results.csv current after each candidate, plot at the end.

    res = run(space, constraints, ("params", "cache"), "out/", top=8,
              probe=ProbeSpec(task="mqar", train={"steps": 200}))

Without `resume`, OUTDIR must be new or empty (an exploration written over another would leave the
other's spec files and plots beside its own). `resume=True` reads OUTDIR/results.json, refuses if it
was made with other settings (the probe's as they resolve: every task argument and training setting,
defaults filled in, and the type of the device the probes ran on), and probes only what is missing;
with the same seed the final results equal an uninterrupted run's (wall times aside). results.json
says `running` until every spec file and plot is written, then
`complete`; Ctrl-C at any point after it is first written marks it `interrupted` (what is done kept), says how to
continue (--resume OUTDIR), and re-raises; any other error marks it `failed`.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import sys
from dataclasses import asdict, dataclass, field

from ..analysis import dtype_name
from ..errors import ArchDSLError, check_path, shown
from ..atomic import check_control, write_atomic
from ..progress import progress_bar
from ..units import MAX_SEED
from .report import table_text, write_plots, write_results
from .search import ANALYTIC, Constraint, check_args, explore, rank
from .space import Space
from .space_check import check_probe

MAX_FLOAT = sys.float_info.max  # an integer past it overflows float()


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    """Which task, at which width, trained how (keywords only): task a make_task name, task_args its arguments,
    train TrainConfig settings but seed (run's seed). d_model None: each candidate's own width. Checked by run."""

    task: str = "mqar"
    task_args: dict = field(default_factory=dict)
    d_model: int | None = None
    train: dict = field(default_factory=dict)  # TrainConfig fields

    def to_dict(self) -> dict:
        return asdict(self)


def _config(space, constraints, objectives, probe: dict | None, top, seed, context, batch, dtype) -> dict:
    """results.json's `config`: the run's settings, which --resume compares. probe: _settings' (resolved)."""
    return {"space": space.to_dict(), "constraints": [asdict(c) for c in constraints], "objectives": list(objectives),
            "probe": probe, "top": top, "seed": seed, "context": context, "batch": batch, "dtype": dtype}


def _norm(x):
    return json.loads(json.dumps(x, default=list))


def run(space: Space, constraints: list[Constraint], objectives, outdir: str, probe: ProbeSpec | None = None,
        top: int | None = None, seed: int = 0, context: int = 4096, batch: int = 1, dtype: str = "bfloat16",
        resume: bool = False, progress: bool | str = True, log=print):
    """Explore, write the spec files, probe the `top` best by the analytic ranking (all when None),
    re-rank with accuracy, write results and plots. Returns the Exploration. The arguments are explore's, checked
    before anything is written. outdir: new or empty, unless resume: continue OUTDIR/results.json (same settings
    only; the errors name the command line's -o and --resume, which are outdir and resume=True). progress: True a tqdm
    bar on stderr, "lines" a plain line there every 30 s of enumeration and after each probe (for logs), False
    none. log: takes the table and the summary lines (print)."""
    constraints, objectives, context, batch = check_args(space, constraints, objectives, context, batch, dtype)
    dtype = dtype_name(dtype)  # bf16 is bfloat16: results.json and --resume say it one way
    outdir = check_path("outdir", outdir, "directory")
    check_control(outdir, "outdir")
    if probe is not None and not isinstance(probe, ProbeSpec):
        raise ArchDSLError(f"probe must be a ProbeSpec or None, got {shown(probe)}")
    top, seed = _integer("top", top, 1, True), _integer("seed", seed, 0)
    if probe is not None and "accuracy" not in objectives:
        objectives = objectives + ("accuracy",)
    measured = [o for o in objectives if o not in ANALYTIC + ("depth", "attn_fraction")]
    if probe is None and measured:
        raise ArchDSLError(f"objective {', '.join(measured)} needs a probe "
                           "(--probe mqar --steps N)")
    trainer = _trainer(probe, seed) if probe is not None else None  # bad settings before anything is written
    settings = _settings(probe, *trainer) if probe is not None else None
    config = _config(space, constraints, objectives, settings, top, seed, context, batch, dtype)
    if resume:
        done = _resumed(outdir, config)
    else:
        _check_new(outdir)
        done = {}
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ArchDSLError(f"{outdir}: exists and is not a directory")

    bar = _bar(progress, "enumerate", None)
    try:
        res = explore(space, constraints, objectives, context=context, batch=batch, dtype=dtype, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    cands = res.candidates
    chosen = cands[:top] if (probe is not None and top) else (cands if probe is not None else [])
    for c in chosen:  # a probe width that a candidate cannot take, before anything is written
        try:
            _ = _probe_spec(c, probe).graph
        except ArchDSLError as e:
            raise ArchDSLError(f"probe d_model {probe.d_model} (--probe-d-model) does not suit candidate {c.id} "
                               f"({c.layout}): {e.message}", hint=e.hint) from None
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise ArchDSLError(f"cannot create the output directory {outdir}: {e.strerror or e}") from None
    for c in chosen:
        if c.id in done and done[c.id]["layout"] == c.layout:
            c.probe = done[c.id]["probe"]
    summary = {"enumerated": res.enumerated, "survivors": len(cands), "removed": res.removed,
               "violated": res.violated, "probed": sum(c.probe is not None for c in cands)}
    stage = "writing the spec files"
    try:  # results.json first: a run stopped from here on can be resumed; `complete` last, once all is written
        write_results(outdir, config, cands, "running", summary)
        for c in cands:
            path = os.path.join(outdir, "specs", f"{c.id}.yaml")
            text = c.spec.to_yaml()
            if not (os.path.exists(path) and open(path, encoding="utf-8").read() == text):
                write_atomic(path, text)
        if any(c.probe is None for c in chosen):
            stage = "probing"
            _probe_all(chosen, cands, probe, trainer, config, outdir, summary, progress)
        if probe is not None:
            cands = rank(cands, objectives, eligible=lambda c: c.probe is not None)
        stage = "writing the plots"
        plots = write_plots(outdir, cands, objectives, batch, dtype, probe.task if probe else None)
        write_results(outdir, config, cands, "complete", summary)
    except KeyboardInterrupt:
        _mark(outdir, config, cands, "interrupted", summary)
        done_now = f" ({summary['probed']} of {len(chosen)} probed)" if chosen else ""
        log(f"interrupted while {stage}{done_now}; what is done is in {outdir}; continue with --resume {outdir} "
            "(the same space and flags)")
        raise
    except BaseException:  # results.json must not say "running" once nothing runs
        _mark(outdir, config, cands, "failed", summary)
        raise
    res.candidates, res.front = cands, [c for c in cands if c.on_front]
    res.objectives = objectives
    log(table_text(cands, top or 20, context, probe is not None))
    log(f"\n{res.enumerated} enumerated, {len(cands)} within budget, {len(res.front)} on the Pareto front of "
        f"{', '.join(objectives)}" + (f"; {summary['probed']} probed on {probe.task}" if probe else ""))
    for label, n in res.removed.items():
        log(f"  removed by {label}: {n}")
    log(f"wrote {os.path.join(outdir, 'results.json')}, results.csv, specs/, "
        + ", ".join(os.path.basename(p) for p in plots))
    return res


def _integer(name: str, value, least: int, none: bool = False) -> int | None:
    """top or seed: an int (numpy's too) in least..2^63-1, or None where `none`."""
    if value is None and none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not least <= value <= MAX_SEED:
        raise ArchDSLError(f"{name} must be an integer in {least}..2^63-1{' or None' if none else ''}, "
                           f"got {shown(value)}")
    return int(value)


def _trainer(probe: ProbeSpec, seed: int):
    """(task, TrainConfig, device) of the probe, checked: its parts' shape, the task's arguments, the training
    settings, the device (`auto` resolved)."""
    from .probes import make_task
    from .train import TrainConfig, pick_device

    check_probe({"task": probe.task, "args": probe.task_args, "d_model": probe.d_model, "train": probe.train})
    task = make_task(probe.task, **(probe.task_args or {}))
    train = probe.train or {}  # (its names and values checked by check_probe)
    cfg = TrainConfig(**{**train, "seed": seed})
    if not isinstance(train.get("dtype", ""), str):  # by name, as the space file gives it
        raise ArchDSLError(f"probe: train: dtype must be a dtype name (float32, float64 or bfloat16), got "
                           f"{shown(train['dtype'])}")
    return task, cfg, pick_device(cfg.device)


def _settings(probe: ProbeSpec, task, cfg, device) -> dict:
    """The probe's settings as they resolve, as results.json keeps them and --resume compares them: the task by its
    name (an alias resolved) with every argument (defaults filled in), the probe width, every training setting
    (TrainConfig's, defaults filled in; the seed aside, which is the run's) with the device as the type it resolved
    to (cpu, cuda): `auto` is cpu on a laptop and cuda on a GPU box, two settings whose results do not mix."""
    train = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
    train["device"] = device.type
    task_args = {k: v for k, v in task.to_dict().items() if k != "task"}
    return {"task": task.name, "task_args": task_args, "d_model": probe.d_model, "train": train}


def _probe_spec(c, probe: ProbeSpec):
    """The spec a candidate is probed at: its own, or at the probe's width."""
    from ..spec import with_sizes

    return c.spec if probe.d_model is None else with_sizes(c.spec, d_model=probe.d_model)


def _probe_all(chosen, cands, probe, trainer, config, outdir, summary, progress):
    """Probe the chosen candidates not yet probed, rewriting results.json after each (run marks it when stopped)."""
    from .train import train_probe

    task, cfg, _ = trainer
    todo = [c for c in chosen if c.probe is None]
    bar = _bar(progress, f"probe {task.name}", len(chosen))
    if bar is not None:
        bar.update(len(chosen) - len(todo))
    try:
        for c in todo:
            spec = _probe_spec(c, probe)
            if bar is not None:
                bar.set_postfix_str(c.id)
            c.probe = train_probe(spec, task, cfg).to_dict()
            summary["probed"] = sum(x.probe is not None for x in cands)
            write_results(outdir, config, cands, "running", summary)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _mark(outdir, config, cands, status: str, summary: dict) -> None:
    """results.json says how the run ended (interrupted, failed), with what is done; a write that fails here leaves
    the error that stopped the run to be reported, not this one."""
    summary["probed"] = sum(c.probe is not None for c in cands)
    try:
        write_results(outdir, config, cands, status, summary)
    except (Exception, KeyboardInterrupt):
        pass


def _check_new(outdir: str) -> None:
    """ArchDSLError where OUTDIR (without resume) already holds files: the exploration would be written among them,
    an earlier one's spec files and plots kept beside its own. An earlier exploration is offered --resume."""
    try:
        held = os.path.isdir(outdir) and bool(os.listdir(outdir))
    except OSError as e:
        raise ArchDSLError(f"-o {outdir}: cannot read the directory: {e.strerror or e}") from None
    if not held:
        return
    if os.path.isfile(os.path.join(outdir, "results.json")):
        raise ArchDSLError(f"-o {outdir}: the directory holds an earlier exploration (results.json)",
                           hint=f"pass --resume {outdir} to continue it, or pick another -o")
    raise ArchDSLError(f"-o {outdir}: the directory already holds files, and no exploration (no results.json)",
                       hint="pick another -o, new or empty")


def _resumed(outdir: str, config: dict) -> dict:
    path = os.path.join(outdir, "results.json")
    if not os.path.isfile(path):
        raise ArchDSLError(f"--resume: {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ArchDSLError(f"--resume: cannot read {path}: {e}") from None
    cands = doc.get("candidates", []) if isinstance(doc, dict) else None
    bad = (next((i for i, c in enumerate(cands) if not _resumable(c)), None) if isinstance(cands, list) else None)
    if not (isinstance(doc, dict) and isinstance(doc.get("config"), dict) and isinstance(cands, list)) \
            or bad is not None:
        raise ArchDSLError(f"--resume: {path} is not an exploration's results (a mapping with config and a list of "
                           f"candidates, each with an id, a layout and a probe result or null: an accuracy in [0, 1], "
                           f"a final_loss finite or null, a finite wall_time)"
                           + (f"; candidate {bad} is not" if bad is not None else ""))
    old = dict(doc["config"])
    try:  # a run that wrote the dtype as given (bf16)
        old["dtype"] = dtype_name(old.get("dtype"))
    except ArchDSLError:
        pass  # not a dtype: told as a difference
    diff = _differences(_norm(old), _norm(config))
    if diff:
        told = [f"{key} {_told(new)} (the run's: {_told(old)})" if max(len(_told(new)), len(_told(old))) <= 40
                else f"{key} differs" for key, old, new in diff[:MAX_TOLD]]
        more = f", and {len(diff) - MAX_TOLD} more" if len(diff) > MAX_TOLD else ""
        raise ArchDSLError(f"--resume: {outdir} was made with other settings: {', '.join(told)}{more}",
                           hint="give the same space, constraints, objectives, probe (its task arguments, training "
                                "settings and device type), --top and --seed")
    return {c["id"]: c for c in cands if c.get("probe")}


MAX_TOLD = 6  # the differing settings a refused --resume names (then how many more), with their values where short
_UNSET = object()


def _differences(old, new, key: str = "") -> list[tuple[str, object, object]]:
    """(key, the run's value, this run's) of each setting that differs between two configs, keys dotted down through
    mappings (probe.train.lr, space.depth), in this run's order; _UNSET where one of them lacks the key."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [(key, old, new)]
    out = []
    for k in list(new) + [k for k in old if k not in new]:
        name = f"{key}.{k}" if key else str(k)
        a, b = old.get(k, _UNSET), new.get(k, _UNSET)
        out += _differences(a, b, name) if a is not _UNSET and b is not _UNSET else [(name, a, b)]
    return out


def _told(value) -> str:
    return "unset" if value is _UNSET else shown(value)


def _resumable(c) -> bool:
    """A candidate of results.json as the runner writes it: an id, a layout, and a probe result or null. A probe
    result holds what ranks and tables read: an accuracy in [0, 1], a final loss that is a finite number or null (a
    diverged probe, written as null), a wall time of finite seconds >= 0; never a value that only breaks later."""
    if not (isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("layout"), str)):
        return False
    probe = c.get("probe")
    if probe is None or probe == {}:  # {}: no result either, as `done` reads it
        return True
    return (isinstance(probe, dict) and _number(probe.get("accuracy"), 0, 1)
            and (probe.get("final_loss") is None or _number(probe["final_loss"]))
            and _number(probe.get("wall_time"), 0))


def _number(v, least: float = -math.inf, most: float = math.inf) -> bool:
    """A finite number (not a bool) in [least, most]; compared as it is, so that no huge integer is made a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (isinstance(v, int) or math.isfinite(v)) and least <= v <= most and -MAX_FLOAT <= v <= MAX_FLOAT


def _bar(enabled: bool | str, desc: str, total):
    """None, a tqdm bar (True) or plain lines ("lines"): one every 30 s while enumerating, one a probed candidate."""
    if not enabled:
        return None
    return progress_bar(desc, total, "cand", every=30.0 if total is None else 0.0, lines=enabled == "lines",
                        leave=False, dynamic_ncols=True)
