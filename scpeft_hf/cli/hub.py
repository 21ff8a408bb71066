"""`convert` and `push`: official checkpoints in, adapters out to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def _convert(args: argparse.Namespace) -> int:
    from ..models.scgpt.convert_scgpt import convert_scgpt_checkpoint

    if args.push_to_hub:  # a bad repo id or a missing token fails before the conversion, not after it
        from ..tasks.hub import check_repo_id, require_token

        check_repo_id(args.push_to_hub)
        require_token(args.token)
    report = convert_scgpt_checkpoint(
        args.src_dir,
        args.out_dir,
        overwrite=args.overwrite,
        repo_id=args.push_to_hub,
        source=args.source,
        license=args.license,
    )
    print(report.summary())
    if args.push_to_hub:
        from ..tasks.hub import push_base

        result = push_base(args.out_dir, args.push_to_hub, private=args.private, token=args.token)
        print(f"Pushed {args.out_dir} to {result.repo_url} (commit {result.commit.oid}):")
        for name, size in result.files.items():
            print(f"  {name:<32} {size:>12,} bytes")
        print(f"Train on it with: scpeft-hf train --base {args.push_to_hub} --data cells.h5ad ...")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..tasks.hub import push_adapter

    result = push_adapter(args.adapter, args.repo_id, private=args.private, token=args.token)
    print(f"Pushed {args.adapter} to {result.repo_url} (commit {result.commit.oid[:8]}):")
    for name, size in result.files.items():
        print(f"  {name:<32} {size:>12,} bytes")
    print(f"Load it with: scpeft-hf predict --adapter {args.repo_id} --data cells.h5ad --out annotated.h5ad")
    return 0


def add_convert_command(commands) -> None:
    convert = commands.add_parser(
        "convert",
        help="convert an official checkpoint to a Hugging Face folder",
        description="Convert an official checkpoint folder into a Hugging Face folder (config.json, "
        "model.safetensors, vocab.json and a model card with the parity figure against the official scGPT code) "
        "that AutoModel.from_pretrained and every scpeft-hf command load; --push-to-hub publishes it.",
    )
    convert.add_argument("model", choices=["scgpt"], help="which model family the checkpoint belongs to")
    convert.add_argument("src_dir", help="official checkpoint folder: best_model.pt, args.json, vocab.json")
    convert.add_argument("out_dir", help="folder to write; left untouched if conversion fails")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR if it is a folder scpeft-hf wrote"
    )
    convert.add_argument(
        "--push-to-hub",
        default=None,
        metavar="USER/NAME",
        help="then upload OUT_DIR with its model card to this Hub model repo in one commit (created if missing)",
    )
    convert.add_argument(
        "--license", default="mit", help="licence of the source checkpoint, for the card (scGPT's: mit)"
    )
    convert.add_argument(
        "--source",
        default=None,
        help="where the checkpoint comes from, for the card (default: its folder, file name and SHA-256)",
    )
    convert.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    convert.add_argument(
        "--token", default=None, help="with --push-to-hub: Hub token (default: HF_TOKEN or `hf auth login`)"
    )
    convert.set_defaults(handler=_convert)


def add_push_command(commands) -> None:
    push = commands.add_parser(
        "push",
        help="share a trained adapter on the Hugging Face Hub",
        description="Upload an adapter folder written by `scpeft-hf train` to a Hub model repo in one commit: the "
        "adapter, its processor files (with the label names), run_info.json, metrics.json and a model card that "
        "says how to load it from the Hub. The base model is never uploaded; `full` and `probe` folders (whole "
        "models) are refused. Set HF_ENDPOINT to push to a Hub mirror.",
    )
    push.add_argument("--adapter", required=True, help="folder written by `scpeft-hf train`")
    push.add_argument(
        "--repo-id", required=True, help="Hub model repo USER/NAME or ORG/NAME (created if missing)"
    )
    push.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    push.add_argument(
        "--token",
        default=None,
        help="Hub token with write access (default: HF_TOKEN or the `hf auth login` token)",
    )
    push.set_defaults(handler=_push)
