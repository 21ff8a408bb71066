"""Share trained adapters and converted bases on the Hugging Face Hub: `push_adapter` uploads exactly what loading
and describing an adapter needs, in one commit (`push_base` a base written by `scpeft-hf convert`);
`resolve_adapter` turns a Hub id back into a local folder of those files.

The pushed `adapter_config.json` names the base as `run_info.json` records it (see `base_reference`): the
embedded demo backbone by name, a Hub base by its id with its commit as `revision`, so the adapter loads on any
machine; a local base by its path on the training machine, which `push_adapter` warns about, because there the
adapter loads only where that path exists or with `--base`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    HfApi,
    ModelCard,
    constants,
    get_token,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from ..data.geneformer_processor import GENE_NAME_ID_NAME, MEDIAN_DICTIONARY_NAME, TOKEN_DICTIONARY_NAME
from ..data.orthologs import GENE_MAP_NAME
from ..data.processor import PROCESSOR_CONFIG_NAME, VOCAB_NAME
from ..errors import HubAccessError, HubConnectionError, InvalidInputError, MissingFileError
from ..output_folders import METRICS, RUN_INFO
from .backbones import DEMO_BACKBONE_NAME, is_hub_repo_id, load_processor
from .card import hub_model_id, render_adapter_card
from .integration_report import render_integration_card
from .methods import PEFT_METHODS

CARD = "README.md"
logger = logging.getLogger(__name__)
# A shared adapter: the peft adapter, the processor (its config holds the label names), the run record and the
# card. The processor's own files depend on the backbone: scGPT's vocabulary or Geneformer's dictionaries.
REQUIRED_FILES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, PROCESSOR_CONFIG_NAME, RUN_INFO, METRICS)
PROCESSOR_FILES = (
    VOCAB_NAME,
    TOKEN_DICTIONARY_NAME,
    MEDIAN_DICTIONARY_NAME,
    GENE_NAME_ID_NAME,
    GENE_MAP_NAME,
)
SHARED_FILES = (*REQUIRED_FILES, *PROCESSOR_FILES, CARD)
# A shared base: what `scpeft-hf convert` writes (`.scpeft-hf.json`, its folder marker, stays local).
BASE_FILES = ("config.json", "model.safetensors", VOCAB_NAME, CARD)


@dataclass
class PushResult:
    """What `push_adapter` did: the commit on the Hub and the files it holds, with their sizes in bytes."""

    commit: CommitInfo
    files: dict[str, int]

    @property
    def repo_url(self) -> str:
        return str(self.commit.repo_url)


def push_adapter(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload the adapter in `folder` (written by `train_annotation`) to the Hub model repo `repo_id`, in one commit.

    The commit holds `adapter_config.json`, `adapter_model.safetensors`, the processor files (label names and
    vocabulary or gene dictionaries), `run_info.json`, `metrics.json` and a `README.md` card rendered for
    `repo_id` (so it says how to load the adapter from the Hub); never the base model or other files of the
    folder. Everything is checked first, then the Hub validates the card, and only then is the repo created
    (if new; `private` applies to new repos only) and the commit made, so a failure leaves nothing half-uploaded.
    """
    folder = Path(folder)
    names = shareable_files(folder)
    check_repo_id(repo_id)
    run_info = json.loads((folder / RUN_INFO).read_text())
    if run_info.get("task") == "integration":  # an `integrate` folder: no label names, its own card
        metrics = json.loads((folder / METRICS).read_text())
        card = render_integration_card(run_info, metrics, adapter_ref=repo_id)
    else:
        card = render_adapter_card(folder, adapter_ref=repo_id)
    token = require_token(token)
    contents = {name: (folder / name).read_bytes() for name in names}
    base_model, revision = run_info["base_model"], run_info.get("base_model_revision")
    contents[CONFIG_NAME] = _portable_adapter_config(contents[CONFIG_NAME], base_model, revision)
    contents[CARD] = card.encode()
    message = commit_message or f"Upload {run_info['method']} adapter with scpeft-hf"
    commit = _commit_in_one_go(repo_id, contents, private, token, message)
    # said after the commit, so that a failed push prints its one-line error alone
    if base_model != DEMO_BACKBONE_NAME and hub_model_id(base_model) is None:
        logger.warning(
            "%s was trained on the local base model %s: the pushed adapter names that path and loads only where "
            "it exists, or with --base and a copy of the same weights; train on a Hub base to share it fully",
            folder,
            base_model,
        )
    return PushResult(commit=commit, files={name: len(content) for name, content in contents.items()})


def push_base(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload a base model folder written by `scpeft-hf convert` (config.json, model.safetensors, vocab.json and
    its model card README.md) to the Hub model repo `repo_id`, in one commit, checked first as `push_adapter` is.
    Adapters trained with `--base repo_id` then record its id and the commit made here."""
    folder = Path(folder)
    check_repo_id(repo_id)
    missing = [name for name in BASE_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingFileError(
            f"{folder} lacks {', '.join(missing)}: not a base model folder written by `scpeft-hf convert`"
        )
    token = require_token(token)
    names = [name for name in (*BASE_FILES, PROCESSOR_CONFIG_NAME) if (folder / name).is_file()]
    contents = {name: (folder / name).read_bytes() for name in names}
    commit = _commit_in_one_go(
        repo_id, contents, private, token, commit_message or "Upload a converted scGPT base with scpeft-hf"
    )
    return PushResult(commit=commit, files={name: len(content) for name, content in contents.items()})


def require_token(token: str | None) -> str:
    token = token or get_token()
    if token is None:
        raise HubAccessError(
            "No Hugging Face token: pass --token (token=...), set HF_TOKEN, or log in with `hf auth login`"
        )
    return token


def _commit_in_one_go(
    repo_id: str, contents: dict[str, bytes], private: bool, token: str, message: str
) -> CommitInfo:
    """The Hub validates the card (`README.md` in `contents`) first; only then is the repo created (if new) and
    every file committed at once, so a failure leaves nothing half-uploaded."""
    api = HfApi(token=token)
    with _hub_errors(api.endpoint, f"push to {repo_id}"):
        try:
            ModelCard(contents[CARD].decode()).validate(repo_type="model")
        except ValueError as err:
            raise InvalidInputError(
                f"The Hub at {api.endpoint} rejected the model card's metadata: {err}"
            ) from err
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(
            repo_id,
            operations=[CommitOperationAdd(name, content) for name, content in contents.items()],
            commit_message=message,
        )


def shareable_files(folder: Path) -> list[str]:
    """The files of an adapter folder that `push_adapter` uploads (README.md apart, which it renders anew).

    Raises when `folder` is not a complete adapter folder: a file is missing, the processor does not load or has
    no label names, or the folder holds a whole model (`full`, `probe`) rather than an adapter.
    """
    if not folder.is_dir():
        raise MissingFileError(f"{folder} is not a folder; pass a folder written by `scpeft-hf train`")
    if not (folder / RUN_INFO).is_file():
        raise MissingFileError(f"{folder} has no {RUN_INFO}: not a folder written by `scpeft-hf train`")
    run_info = json.loads((folder / RUN_INFO).read_text())
    method = run_info["method"]
    if method not in PEFT_METHODS:
        raise InvalidInputError(
            f"{folder} holds a `{method}` model: the whole network, backbone included, not an adapter. "
            f"`push` shares adapters only ({', '.join(PEFT_METHODS)}), which load on top of the unchanged base "
            "model; train one of those to share it"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingFileError(
            f"{folder} lacks {', '.join(missing)}: not a complete adapter folder; train it again with "
            "`scpeft-hf train`"
        )
    if run_info.get("task") != "integration" and not load_processor(folder).label_names:
        raise InvalidInputError(
            f"{folder / PROCESSOR_CONFIG_NAME} has no label_names; train the adapter again"
        )
    return [*REQUIRED_FILES, *(name for name in PROCESSOR_FILES if (folder / name).is_file())]


def check_repo_id(repo_id: str) -> None:
    namespace, _, name = repo_id.partition("/")
    if not namespace or not name:
        raise InvalidInputError(
            f"Repo id {repo_id!r} has no namespace: use USER/NAME or ORG/NAME, e.g. your-username/{name or namespace}"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidInputError(f"Repo id {repo_id!r} is not a valid Hub repo id: {err}") from err


def _portable_adapter_config(config: bytes, base_model: str, revision: str | None = None) -> bytes:
    """The adapter config with its base named as in run_info.json (a Hub id with its `revision`, the demo name,
    or a local path), not as the training run happened to open it (a cache snapshot, a relative path)."""
    settings = json.loads(config)
    settings["base_model_name_or_path"] = base_model
    settings["revision"] = revision
    return (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode()


@contextmanager
def _hub_errors(endpoint: str, action: str) -> Iterator[None]:
    """Turn network and HTTP failures into errors that name the endpoint and the fix."""
    try:
        yield
    except (httpx2.TransportError, OfflineModeIsEnabled) as err:
        raise HubConnectionError(
            f"Cannot reach the Hugging Face Hub at {endpoint} to {action} ({type(err).__name__}: {_first_line(err)}). "
            "Check the network connection, and HF_ENDPOINT if you use a mirror; no files were committed"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code
        reason = _first_line(err)
        if status in (401, 403):
            raise HubAccessError(
                f"The Hub at {endpoint} refused to {action} ({reason}): check that the token (--token or HF_TOKEN) "
                "is valid and may write to that namespace; no files were committed"
            ) from err
        raise HubConnectionError(
            f"The Hub at {endpoint} failed to {action}: {reason}; no files were committed"
        ) from err


def resolve_adapter(adapter: str | Path) -> Path:
    """A local adapter folder: `adapter` itself if it exists or cannot be a Hub id, else the Hub repo `adapter`
    downloaded (only the shared files) into the Hugging Face cache."""
    if isinstance(adapter, Path) or Path(adapter).exists() or not is_hub_repo_id(adapter):
        return Path(adapter)
    return download_adapter(adapter)


def download_adapter(repo_id: str) -> Path:
    """The files `push_adapter` shares, downloaded from the Hub model repo `repo_id` (or found in the cache)."""
    endpoint = constants.ENDPOINT
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(SHARED_FILES)))
    except RepositoryNotFoundError as err:
        raise MissingFileError(
            f"{repo_id} is not a local folder, and the Hub at {endpoint} has no model repo {repo_id} that this "
            "token may read (set HF_TOKEN for a private repo)"
        ) from err
    except LocalEntryNotFoundError as err:
        cause = err.__cause__ or err
        raise HubConnectionError(
            f"{repo_id} is not a local folder, and it can neither be downloaded from the Hub at {endpoint} "
            f"({type(cause).__name__}: {_first_line(cause)}) nor found in the local cache. Check the network "
            "connection and HF_ENDPOINT, or pass a local folder"
        ) from err
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingFileError(
            f"Hub repo {repo_id} lacks {', '.join(missing)}: not an adapter shared with `scpeft-hf push`"
        )
    return folder


def _first_line(err: BaseException) -> str:
    return next(iter(str(err).splitlines()), "")
