"""The `scpeft-hf` command line: convert, pretrain, train, integrate, predict, embed, markers, push, datasets and
demo. One module per group of commands; each adds its commands to the parser."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import ScpeftUserError
from . import hub, inference, offline, train
from .common import VERBOSE_HELP
from .train import training_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpeft-hf",
        description="Parameter-efficient fine-tuning of single-cell foundation models on the Hugging Face stack. "
        "Run `scpeft-hf COMMAND --help` for each command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hub.add_convert_command(commands)
    train.add_train_command(commands)
    train.add_integrate_command(commands)
    inference.add_predict_command(commands)
    inference.add_embed_command(commands)
    inference.add_markers_command(commands)
    hub.add_push_command(commands)
    offline.add_pretrain_command(commands)
    offline.add_datasets_command(commands)
    offline.add_demo_command(commands)

    # `-v` is accepted after the command too; SUPPRESS keeps a command's default from undoing a leading `-v`.
    for command in commands.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (`ScpeftUserError`) prints one line and returns 2; any other exception is a
    bug and propagates with its traceback. `-v` logs progress and shows tracebacks for bad input too."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.handler(args)
    except ScpeftUserError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"scpeft-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main", "training_settings"]
