"""The `scpeft-hf` command line."""

from __future__ import annotations

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
    from .models.scgpt.convert_scgpt import convert_scgpt_checkpoint

    report = convert_scgpt_checkpoint(args.src_dir, args.out_dir, overwrite=args.overwrite)
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpeft-hf",
        description="Parameter-efficient fine-tuning of single-cell foundation models on the Hugging Face stack.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to a Hugging Face folder",
        description="Convert an official checkpoint folder into a Hugging Face folder (config.json, "
        "model.safetensors, vocab.json) that AutoModel.from_pretrained and every scpeft-hf command load.",
    )
    convert.add_argument("model", choices=["scgpt"], help="which model family the checkpoint belongs to")
    convert.add_argument("src_dir", help="official checkpoint folder: best_model.pt, args.json, vocab.json")
    convert.add_argument("out_dir", help="folder to write; left untouched if conversion fails")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"scpeft-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
