"""What the commands share: reading and writing .h5ad files safely, and the option groups of several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError, MissingFileError, OutputExistsError
from ..tasks.outputs import DEFAULT_KEY
from ..tasks.training_knobs import DEVICES, PRECISIONS

INPUT_KINDS = ("auto", "counts", "log1p")
VERBOSE_HELP = "log progress details, and show the traceback of any error"


def read_h5ad(path: str):
    import anndata as ad

    if not Path(path).is_file():
        raise MissingFileError(f"--data {path} does not exist; pass the path of an .h5ad file")
    try:
        adata = ad.read_h5ad(path)
    except OSError as err:  # h5py: truncated, not HDF5, or unreadable
        raise InvalidInputError(
            f"--data {path} cannot be read as .h5ad ({str(err).splitlines()[0]}); the file is damaged or not an "
            "AnnData file: write it again with adata.write_h5ad()"
        ) from err
    if adata.n_obs == 0:
        raise InvalidInputError(f"--data {path} has 0 cells; pass a file with at least one cell")
    return adata


def check_out_file(path: str, overwrite: bool) -> None:
    """Refuse to replace an existing --out file unless --overwrite; called before any work starts."""
    target = Path(path)
    if target.is_dir():
        raise OutputExistsError(f"--out {path} is a folder; pass the path of the .h5ad file to write")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"--out {path} exists; choose another file or pass --overwrite to replace it")


def write_h5ad(adata, path: str) -> None:
    """Write through a temporary file so a failure never leaves a half-written .h5ad."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        adata.write_h5ad(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=10, help="maximum training epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="cells per training step (default 32)")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 1e-3 for adapters and probe, 1e-4 for full)",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="genes per cell incl. <cls> (default: the processor's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and sampling")
    parser.add_argument(
        "--patience", type=int, default=3, help="early-stopping patience in epochs (default 3)"
    )


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """Memory and speed knobs of the training commands, each recorded in run_info.json."""
    parser.add_argument(
        "--adapter-layers",
        default=None,
        help="encoder layers that get the encoder adapter, prefix or LoRA: 'paper' (the first half, the default), "
        "'all', or indices and ranges such as '6-11' or '0,2,4-5'. Adapters on upper layers only stop "
        "backpropagation below them. Not for token (it sits on the input), full or probe",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each layer's activations in the backward pass: less memory, slower steps",
    )
    add_device_options(parser)
    parser.add_argument(
        "--torch-compile", action="store_true", help="compile the model with torch.compile (inductor)"
    )
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        help="sum gradients over this many batches per optimizer step (effective batch = batch size x this)",
    )


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """Which matrix and gene names of the .h5ad the processor reads; `train` saves the choice with the adapter."""
    matrix = parser.add_mutually_exclusive_group()
    matrix.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="read adata.layers[NAME] instead of X (train saves the choice; predict and embed default to it)",
    )
    matrix.add_argument(
        "--use-raw",
        action="store_const",
        const=True,
        default=None,
        help="read adata.raw.X and the genes of adata.raw.var, e.g. for data whose X was scaled by sc.pp.scale "
        "(train saves the choice; predict and embed default to it)",
    )
    parser.add_argument(
        "--gene-column",
        default=None,
        metavar="COLUMN",
        help="var column holding the gene names (default: the var index, or what the adapter was trained with)",
    )


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--precision and --device, the same on every command that runs a model (see tasks/training_knobs.py)."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="numeric precision (autocast; weights stay fp32): auto = bf16 on a CUDA GPU that supports it, fp32 "
        "on the CPU; fp16 needs a CUDA GPU",
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="|".join(DEVICES),
        help="where the model runs: auto (a CUDA GPU if one is visible, else the CPU), cpu, cuda or cuda:N",
    )


def check_device_options(args: argparse.Namespace) -> None:
    """Refuse a bad --device, --precision or --key-added before any file is read or model loaded."""
    from ..tasks.outputs import check_key_added
    from ..tasks.training_knobs import resolve_precision

    resolve_precision(args.precision, args.device)
    if getattr(args, "key_added", None) is not None:
        check_key_added(args.key_added)


def add_key_added_option(parser: argparse.ArgumentParser, slots: str) -> None:
    parser.add_argument(
        "--key-added",
        default=DEFAULT_KEY,
        metavar="KEY",
        help=f"name of the results in the AnnData: {slots} and the record uns[KEY] (default {DEFAULT_KEY})",
    )


def add_species_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--species",
        default=None,
        help="species of the cells (e.g. mouse): genes are mapped to human symbols through an ortholog table and "
        "matched case-exactly (default: matched as given, with a case-insensitive fallback)",
    )


def add_base_option(parser: argparse.ArgumentParser, default: str) -> None:
    """`--base FOLDER | USER/NAME[@REVISION]`, the same in every command; `default` says what is used without it.
    The value stays a string: the tasks split off the revision (`split_revision`), as `base=` does in Python."""
    parser.add_argument(
        "--base",
        default=None,
        type=_base_reference,
        metavar="FOLDER|USER/NAME[@REVISION]",
        help=f"base model: a folder, or a Hugging Face Hub model id, optionally at a branch, tag or commit "
        f"(downloaded into the Hugging Face cache; recorded by id and commit, never as a path). Default: {default}",
    )


def _base_reference(text: str) -> str:
    from ..tasks.backbones import split_revision

    try:
        split_revision(text)  # refuses USER/NAME@ and other malformed revisions before any work starts
    except InvalidInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def add_backed_options(parser: argparse.ArgumentParser) -> None:
    """`--backed` and `--chunk-size` of `predict` and `embed` (see `tasks/large_files.py`)."""
    parser.add_argument(
        "--backed",
        action="store_true",
        help="stream --data from disk a chunk of cells at a time (for files larger than memory): --out is a copy "
        "of --data plus the new obs/obsm/uns elements. Chosen by itself when the file's arrays would take more "
        "than half of the available memory",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        help="cells read and tokenized at a time with --backed (default 2048)",
    )


def streams(args: argparse.Namespace) -> bool:
    """Whether `predict`/`embed` stream --data: --backed, or arrays over half the available memory (said so)."""
    from ..errors import ScpeftUserError
    from ..tasks.large_files import AUTO_BACKED_FRACTION, too_large_for_memory

    if args.backed:
        return True
    try:
        too_large = too_large_for_memory(args.data)
    except ScpeftUserError:  # absent or unreadable: reading it in memory says so, naming --data
        return False
    if too_large:
        print(
            f"--data {args.data} would take more than {AUTO_BACKED_FRACTION:.0%} of the available memory: streaming "
            "it (as with --backed)"
        )
        return True
    return False
