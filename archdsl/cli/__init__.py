"""The archdsl command line. Every subcommand has --help; bad input exits 2 with the
error's place and picture, never a traceback.

    archdsl check SPEC                 archdsl show SPEC [--seq-len N] [--json]
    archdsl fmt SPEC                   archdsl graph SPEC -o layout.svg
    archdsl memory SPEC... --seq-lens 1k,8k,64k [-o plot.png]
    archdsl convert --from megatron PATTERN | --from hf config.json [-o spec.yaml] | --from hf DIR -o OUT --weights
    archdsl export DIR --to hf -o OUT
"""
from __future__ import annotations

import argparse
import errno
import io
import os
import re
import signal
import sys
import warnings

from ..errors import TOO_DEEP, ArchDSLError, ArchDSLWarning, out_of_memory
# each module registers its commands; --help lists them in this order
from . import spec_commands  # noqa: F401, I001
from . import dump_command  # noqa: F401, I001
from . import model_commands  # noqa: F401, I001
from . import generate_command  # noqa: F401, I001
from . import train_commands  # noqa: F401, I001
from .common import ARGS, COMMANDS, NEGATIVE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archdsl", description=__doc__.split("\n\n")[0])
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"archdsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, help, doc) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=doc)
        # a value starting -<digit> is a value (`--seq-lens -1k`: the count's own error, not argparse's 'expected
        # one argument'), as Python 3.13's argparse reads it; no option of ours starts so (a command may widen it)
        p._negative_number_matcher = re.compile(NEGATIVE)
        ARGS.get(name, lambda p: None)(p)
        p.set_defaults(fn=fn)
    return parser


def _drop_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of what could not be written
    raises nothing more."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (captured in tests)
        pass


# what each command can make smaller when the memory runs out (the options it has); the others get no hint
OOM_HINTS = {"run": "a smaller --batch or --prompt-len + --gen, or a smaller model (--set d_model=...)",
             "bench": "a smaller --batch or --seq-len, or a smaller model (--set d_model=...)",
             "compile": "a smaller model (--set d_model=..., --set vocab_size=...) or --dtype bfloat16",
             "convert": "--dtype bfloat16 (half the bytes of float32)",
             "export": "",
             "explore": "a smaller --batch-size, --probe-d-model or --probe-arg seq_len=...",
             "train": "a smaller --batch or sequence (--seq-len, or seq= in --data), --grad-ckpt, or --bf16",
             "export-checkpoint": "--dtype bfloat16 (half the bytes of float32)",
             "graph": "fewer layers, or a .dot file (text: no image to hold)"}


# the commands that run the kernels (explore's probes, train), whose ARCHDSL_KERNELS is checked before they start
KERNEL_COMMANDS = ("compile", "run", "bench", "generate", "explore", "train")


def _check_kernels_env(args) -> None:
    """ArchDSLError for an ARCHDSL_KERNELS no op can run with, before a command of KERNEL_COMMANDS reads anything:
    a value that names no backend, or triton for its --device off CUDA without TRITON_INTERPRET (a --device torch
    cannot read, or auto, is the command's own to say or pick; the ops refuse the rest, caught in _run)."""
    if args.command not in KERNEL_COMMANDS or not os.environ.get("ARCHDSL_KERNELS", "").strip():
        return
    import torch

    from ..model import check_kernels_env

    device = getattr(args, "device", None)
    try:
        kind = torch.device(device).type if isinstance(device, str) and device != "auto" else None
    except (RuntimeError, TypeError, ValueError):
        kind = None
    check_kernels_env(None, kind)  # the environment's error, not the command's


def _kernels_env_error(e: ValueError) -> bool:
    """Whether e is the kernels' refusal of ARCHDSL_KERNELS (loaded only where an op ran)."""
    dispatch = sys.modules.get("archdsl.kernels._dispatch")
    return dispatch is not None and isinstance(e, dispatch.KernelsEnvError)


class _ClosedStdout(io.TextIOBase):
    """sys.stdout of a process started with it closed (`>&-`), where Python leaves None: a write fails as
    one to a bad descriptor does, and is said as an error, not an AttributeError's traceback."""

    def write(self, text):
        raise OSError(errno.EBADF, "standard output is closed")


def _saying(shown):
    """warnings.showwarning for the CLI: an ArchDSLWarning as `warning: ...`, others as `shown` shows them."""
    def say(message, category, *where):
        if issubclass(category, ArchDSLWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *where)
    return say


class _Terminated(KeyboardInterrupt):
    """SIGTERM (kill's default signal) raised as Ctrl-C's KeyboardInterrupt is: the stack unwinds, so that an
    atomic write cut short removes its temporary file or directory instead of leaving it half-written."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    shown = warnings.showwarning
    warnings.showwarning = _saying(shown)
    term = signal.getsignal(signal.SIGTERM)
    try:
        return _run(parser, argv)
    finally:
        warnings.showwarning = shown
        if signal.getsignal(signal.SIGTERM) is _terminate:
            signal.signal(signal.SIGTERM, term)


def _run(parser, argv) -> int:
    args = None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return 2
        # train leaves SIGTERM to torchrun's ways (its checkpoints clean up after a kill on their own)
        if args.command != "train" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            try:
                signal.signal(signal.SIGTERM, _terminate)
            except ValueError:  # not the main thread: signals are the main thread's alone
                pass
        _check_kernels_env(args)
        if getattr(args, "output", None) == "-":  # '-' reads as standard output on a command line
            raise ArchDSLError("-o -: archdsl writes no standard output through -o (a command that prints does so "
                               "without it); give ./- for a file of that name")
        args.fn(args)
        sys.stdout.flush()  # a failed write to stdout shows here, not as a traceback at exit
        return 0
    except ArchDSLError as e:  # an argument's non-UTF-8 byte (a lone surrogate) shown as its escape, on any stream
        print(f"error: {e}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
        return 2
    except ArchDSLWarning as e:  # raised where Python's warning filter makes warnings errors (-W error)
        print(f"error: {e}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
        return 2
    except RecursionError:  # input nested past the stack where no reader names its file (each that can does)
        print(f"error: input {TOO_DEEP}", file=sys.stderr)
        return 2
    except ValueError as e:  # ARCHDSL_KERNELS refused by an op (a device _check_kernels_env could not know)
        if not _kernels_env_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        hint = OOM_HINTS.get(getattr(args, "command", None), "")
        print(f"error: out of memory: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
              + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        return 2
    except BrokenPipeError:
        _drop_stdout()
        return 0
    except OSError as e:  # the system refused (stdout on a full disk or /dev/full, say): said, not a traceback
        _drop_stdout()
        where = f" ({e.filename})" if e.filename else " (writing the output)" if e.errno == errno.ENOSPC else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, _Terminated) else "interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, _Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
