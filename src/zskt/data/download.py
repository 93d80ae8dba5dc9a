"""Downloading the canonical data files (SPEC §10): streamed, checked against the published md5, and moved
under their final name only when complete, so an interrupted or bad download never looks like a data set."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from zskt.data.readers import find_file
from zskt.data.records import SPLITS, DatasetInfo, data_root
from zskt.data.registry import get_info
from zskt.errors import ZsktError

log = logging.getLogger(__name__)

# The servers, files and md5s are in each data set's record (registry.DATASETS: base_url, remote).

TIMEOUT_S = 60  # per blocking socket operation, not for the whole file
_CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str, *, progress: bool = True) -> Path:
    """Download `url` to `dest` unless a file with the right md5 is already there; returns `dest`."""
    dest = Path(dest)
    if dest.is_file() and md5sum(dest) == md5:
        log.info("%s is already present with the right md5; not downloading it again", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not zskt.io's atomic writers: they take the whole content in memory, and SVHN's train file is 182 MB.
    # Same idea: a temporary file in the same folder (so os.replace is an atomic rename), removed on any
    # failure.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        received, expected = 0, None
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    log.info("downloading %s to %s", url, dest)
                    expected = response.length  # Content-Length, or None when the server does not say
                    # Bytes, rate and ETA on a terminal; nothing on CI logs, where a bar is noise.
                    bar = tqdm(
                        total=expected,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress or not sys.stderr.isatty(),
                    )
                    with bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                            received += len(chunk)
                    # http.client hands back a short body without complaint when the server hangs up early.
                    if expected is not None and received != expected:
                        raise http.client.IncompleteRead(b"", expected - received)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                if isinstance(error, urllib.error.HTTPError):
                    reason = f"HTTP {error.code} {error.reason}"
                elif isinstance(error, urllib.error.URLError):
                    reason = str(error.reason)
                elif isinstance(error, http.client.IncompleteRead):
                    reason = f"connection closed after {received} of {expected} bytes"
                else:
                    reason = str(error)
                raise ZsktError(
                    f"downloading {url} failed ({type(error).__name__}: {reason}); check the network and try "
                    f"again, or put the file at {dest} yourself"
                ) from error
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != md5:
            raise ZsktError(
                f"download of {url} has md5 {got}, expected {md5}; it was discarded: try again, or put a "
                f"good copy at {dest} yourself"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _extract(info: DatasetInfo, archive: Path, root: Path, roles: tuple[str, ...]) -> None:
    # Unpack into a temporary folder beside the target, check it has every file, then rename into place: a
    # failed or interrupted extraction leaves no half-filled cifar-10-batches-py for the readers to trip on.
    scratch = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extract", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(
                    scratch, filter="data"
                )  # the "data" filter refuses absolute paths and links out
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise ZsktError(
                f"{info.title} archive {archive} cannot be unpacked ({type(error).__name__}: {error}); "
                f"delete it and download again (`zskt download {info.name}`)"
            ) from error
        wanted = [info.candidates(role)[0] for role in roles]
        lacking = [relative for relative in wanted if not (scratch / relative).is_file()]
        if lacking:
            raise ZsktError(
                f"{info.title} archive {archive} lacks {', '.join(lacking)}; delete it and download again "
                f"(`zskt download {info.name}`)"
            )
        for folder in sorted({Path(relative).parts[0] for relative in wanted}):
            target = root / folder
            if not target.exists():
                os.replace(scratch / folder, target)
                continue
            # A partial copy is already there (say the user deleted one damaged batch): refill it file by
            # file.
            for source in sorted((scratch / folder).rglob("*")):
                if source.is_file():
                    destination = target / source.relative_to(scratch / folder)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def download_dataset(
    name: str, root: str | Path | None = None, *, progress: bool = True, splits: tuple[str, ...] = SPLITS
) -> Path:
    """Fetch whichever of the files of a data set's `splits` are missing under the data root; returns the
    root."""
    info = get_info(name)
    root = data_root(root)
    if not info.downloadable:
        log.info("%s has no files to download", info.title)
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ZsktError(
            f"cannot create the data root {root} ({error}); point --data-dir or ZSKT_DATA at a writable "
            "folder"
        ) from error
    if not os.access(root, os.W_OK):
        raise ZsktError(
            f"the data root {root} is not writable; point --data-dir or ZSKT_DATA at a writable folder"
        )
    needed = set(info.roles(splits))
    for remote in info.remote:
        if all(find_file(info, role, root) is not None for role in remote.roles if role in needed):
            continue
        saved = fetch(info.base_url + remote.filename, root / remote.dest, remote.md5, progress=progress)
        if remote.extract:
            _extract(info, saved, root, remote.roles)
    return root
