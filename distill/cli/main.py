"""``distill``: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from distill import __version__
from distill.cli import eval as eval_command
from distill.cli import fake_data, mi_bench, quickstart, recipes, report, sweep, teachers, train
from distill.cli.deferred import DeferredOptionsParser
from distill.engine.signals import EXIT_STOPPED, TrainingStopped, is_main_local_process
from distill.engine.threads import configure_cpu_threads
from distill.errors import DistillError

SUBCOMMANDS = (train, eval_command, sweep, report, teachers, recipes, quickstart, fake_data, mi_bench)
EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Knowledge distillation with contrastive objectives (CRD, ML-CPC, KD, ...).",
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=DeferredOptionsParser
    )
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def _shutdown_distributed() -> None:
    """Destroy the process group (if any) so multi-process runs exit cleanly.

    Only a process that already imported ``torch.distributed`` can have a group:
    a command that never needed torch (``distill recipes``, a recipe error) ends
    without importing it.
    """
    if "torch.distributed" in sys.modules:
        from distill.distributed import end_process_group

        end_process_group()


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error (full disk, no permission …): what failed, on which file, what to do."""
    where = f" ({error.filename})" if error.filename else ""
    text = f"{error.strerror or error}{where}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text}: the disk is full; free space, then run the same command again (a run resumes from its last checkpoint)"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{text}: choose a folder you can write to"
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        configure_cpu_threads()  # first: OpenMP reads its variables when torch loads
    except DistillError as error:
        print(f"distill: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TrainingStopped as error:
        if is_main_local_process():  # every process of a torchrun job stops with the same message
            print(f"distill {args.command}: {error}", file=sys.stderr)
        return EXIT_STOPPED
    except DistillError as error:
        if args.debug:
            traceback.print_exc()
        print(f"distill {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        if args.debug:
            traceback.print_exc()
        print(f"distill {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
