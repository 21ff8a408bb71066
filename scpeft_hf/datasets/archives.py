"""Registry packages that ship real single-cell data: fetch an archive once with `pip download --no-deps`, check
its sha256, and read one file out of it. After the first fetch nothing is downloaded again."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubConnectionError, InvalidInputError

DATA_HOME_VARIABLE = "SCPEFT_DATA_HOME"
PYPI_SIMPLE = os.environ.get("SCPEFT_PYPI_SIMPLE", "https://pypi.org/simple")


@dataclass(frozen=True)
class Archive:
    """One exact release of a registry package (wheel or sdist) and the sha256 of its file."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")


def data_home() -> Path:
    """`$SCPEFT_DATA_HOME`, else `<Hugging Face cache>/scpeft-hf/datasets`."""
    if os.environ.get(DATA_HOME_VARIABLE):
        return Path(os.environ[DATA_HOME_VARIABLE]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "scpeft-hf" / "datasets"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_path(archive: Archive) -> Path:
    return data_home() / "archives" / archive.filename


def is_cached(archive: Archive) -> bool:
    return archive_path(archive).is_file()


def fetch_archive(archive: Archive) -> Path:
    """The archive's path in the cache, downloading it from the package registry the first time."""
    target = archive_path(archive)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download.") as scratch:
            downloaded = Path(scratch) / archive.filename
            if not (_pip_download(archive, Path(scratch)) or _registry_download(archive, downloaded)):
                raise HubConnectionError(
                    f"could not download {archive.requirement} from the package registry and the cache has no "
                    f"{archive.filename}; on a machine with network run `pip download --no-deps "
                    f"{archive.requirement} -d DIR` and copy DIR/{archive.filename} to {target.parent}/ "
                    f"(or set {DATA_HOME_VARIABLE} to a folder holding it)"
                )
            _check_sha256(downloaded, archive)
            downloaded.replace(target)
    _check_sha256(target, archive)
    return target


def _pip_download(archive: Archive, folder: Path) -> bool:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    # An sdist is only downloaded: --no-build-isolation keeps pip from building anything for metadata.
    command += (
        ["--no-binary", ":all:", "--no-build-isolation"] if archive.is_sdist else ["--only-binary", ":all:"]
    )
    result = subprocess.run(
        [*command, "-d", str(folder), archive.requirement], capture_output=True, text=True
    )
    return result.returncode == 0 and (folder / archive.filename).is_file()


def _registry_download(archive: Archive, target: Path) -> bool:
    """The same file through the registry's simple index (PEP 691 JSON, what pip reads), for releases whose metadata current pip refuses (desc 2.1.1 declares
    `matplotlib (>=2.2pydot)`). The sha256 check that follows makes it the identical file."""
    import json
    import urllib.request

    try:
        request = urllib.request.Request(
            f"{PYPI_SIMPLE}/{archive.package.lower()}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            files = json.load(reply)["files"]
        url = next(entry["url"] for entry in files if entry["filename"] == archive.filename)
        with urllib.request.urlopen(url, timeout=300) as reply, open(target, "wb") as out:
            shutil.copyfileobj(reply, out)
    except (OSError, ValueError, KeyError, StopIteration):
        return False
    return target.is_file()


def extract_member(archive: Archive, member: str) -> Path:
    """`member` of the archive, extracted once next to the cached archive."""
    target = data_home() / "files" / f"{archive.package}-{archive.version}" / Path(member).name
    if target.is_file():
        return target
    source = fetch_archive(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as out:
        if archive.is_sdist:
            with tarfile.open(source, "r:gz") as bundle:
                out.write(bundle.extractfile(bundle.getmember(member)).read())
        else:
            with zipfile.ZipFile(source) as bundle:
                out.write(bundle.read(member))
    partial.replace(target)
    return target


def _check_sha256(path: Path, archive: Archive) -> None:
    actual = sha256_of(path)
    if actual != archive.sha256:
        raise InvalidInputError(
            f"{path} has sha256 {actual}, not the {archive.sha256} recorded for {archive.requirement}; "
            f"delete it and fetch again"
        )
