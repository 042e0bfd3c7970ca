"""Download the published teacher checkpoints from the manifest's sources.

Sources are tried in order. A ``file`` source is one URL per checkpoint; a ``tar``
source is one archive of all teachers, downloaded once into ``root/.downloads/`` and
reused, from which the one member is extracted. Every file is written to a temporary
name beside its destination and renamed into place once complete (and, when the
manifest has a sha256, once it matches), so an interrupted download never leaves half
a checkpoint where ``locate`` would find it.

Offline, every source fails; the error then lists why, and says exactly what to
download elsewhere and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlsplit

from tqdm import tqdm

import distill
from distill.errors import DistillError
from distill.files.display import display_path
from distill.recipe.manifest import Source, TeacherManifest

_CHUNK = 1 << 16
Echo = Callable[[str], None]


class FetchError(DistillError):
    """A teacher checkpoint could not be downloaded or installed."""


class _SourceFailed(Exception):
    """One source did not deliver the file; the reason goes into the final error."""


@dataclass(frozen=True)
class _Written:
    """A complete temporary file and its sha256, not yet moved into place."""

    path: Path
    sha256: str


def _reason(error: BaseException, timeout: float) -> str:
    """A short, human account of why a download failed."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _temporary_beside(destination: Path) -> tuple[BinaryIO, Path]:
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    return os.fdopen(descriptor, "wb"), Path(name)


def _copy_hashing(source: BinaryIO, destination: Path, *, total: int | None, label: str, progress: bool) -> _Written:
    """Stream ``source`` into a temporary file beside ``destination``, hashing it; a byte bar when ``total`` is known."""
    digest = hashlib.sha256()
    received = 0
    file, temporary = _temporary_beside(destination)
    try:
        with file, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress or not total
        ) as bar:
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise _SourceFailed(f"incomplete download: received {received} of {total} bytes")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return _Written(temporary, digest.hexdigest())


def _download(url: str, destination: Path, *, timeout: float, progress: bool) -> _Written:
    """Download ``url`` into a temporary file beside ``destination``."""
    request = urllib.request.Request(url, headers={"User-Agent": f"distill/{distill.__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            return _copy_hashing(response, destination, total=total, label=destination.name, progress=progress)
    except _SourceFailed:
        raise
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise _SourceFailed(_reason(error, timeout)) from None


def _install(written: _Written, destination: Path, expected_sha256: str, origin: str, hint: str = "") -> Path:
    """Move a complete download into place, unless the manifest's sha256 says it is not the right file."""
    if expected_sha256 and written.sha256 != expected_sha256:
        written.path.unlink(missing_ok=True)
        raise FetchError(
            f"{origin} has sha256 {written.sha256}, but the manifest says {expected_sha256}; "
            f"not installed at {display_path(destination)}. The copy is corrupt or not the published file.{hint}"
        )
    os.replace(written.path, destination)
    return destination


def safe_member_name(name: str) -> str:
    """``name`` if it is a relative path without ``..``, else a refusal (it could write outside the target)."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or name.startswith(("/", "\\")) or ".." in pure.parts or ".." in name.split("\\"):
        raise _SourceFailed(f"refused archive member {name!r}: an absolute path or one with '..'")
    return name


def find_member(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first of ``wanted`` among an archive's member ``names``; else the one member ending in ``/<wanted>``.

    The suffix match accepts archives packed with a leading ``./`` or an extra top
    folder (``download_ckpts/cifar_teachers/...``). Unsafe names are refused either way.
    """
    present = set(names)
    for name in wanted:
        if safe_member_name(name) in present:
            return name
    for name in wanted:
        matches = [n for n in names if n.endswith("/" + name)]
        if len(matches) > 1:
            raise _SourceFailed(f"archive has several members ending in {name!r}: {', '.join(matches)}")
        if matches:
            return safe_member_name(matches[0])
    return None


def _extract(archive: Path, members: Sequence[str], destination: Path, *, progress: bool) -> tuple[_Written, str]:
    """Extract the first of ``members`` found in ``archive`` to a temporary file beside ``destination``."""
    try:
        with tarfile.open(archive) as tar:
            name = find_member(tar.getnames(), members)
            if name is None:
                raise _SourceFailed(f"archive {display_path(archive)} has no member {' or '.join(repr(m) for m in members)}")
            info = tar.getmember(name)
            extracted = tar.extractfile(info) if info.isfile() else None
            if extracted is None:
                raise _SourceFailed(f"archive member {name!r} is not a regular file; refused")
            with extracted:
                return _copy_hashing(extracted, destination, total=info.size, label=destination.name, progress=progress), name
    except (tarfile.TarError, OSError, EOFError) as error:
        raise _SourceFailed(f"cannot read archive {display_path(archive)}: {error}") from None


def archive_file_name(source: Source) -> str:
    """The cached archive's file name: the URL's last path component."""
    return PurePosixPath(urlsplit(source.url).path).name or f"{source.name}.tar"


class _Fetcher:
    """Fetches one teacher at a time; shared by ``fetch all`` so archives are downloaded once."""

    def __init__(self, manifest: TeacherManifest, *, timeout: float, progress: bool, echo: Echo) -> None:
        self.manifest = manifest
        self.timeout = timeout
        self.progress = progress
        self.echo = echo

    def cached_archive(self, source: Source) -> Path:
        """The archive of a tar source, from the cache or downloaded into it."""
        cached = self.manifest.downloads_dir() / archive_file_name(source)
        if cached.is_file():
            self.echo(f"using the archive downloaded before: {display_path(cached)}")
            return cached
        url = source.url_for("")
        self.echo(f"downloading {url} (all teachers, once) to {display_path(cached)}")
        written = _download(url, cached, timeout=self.timeout, progress=self.progress)
        os.replace(written.path, cached)
        return cached

    def from_source(self, name: str, source: Source, destination: Path) -> Path:
        entry = self.manifest.get(name)
        if source.kind == "file":
            url = source.url_for(entry.file)
            self.echo(f"{name}: downloading {url}")
            written = _download(url, destination, timeout=self.timeout, progress=self.progress)
            return _install(written, destination, entry.sha256, url)
        member = safe_member_name(source.member_for(entry.file))
        archive = self.cached_archive(source)
        written, _ = _extract(archive, [member], destination, progress=self.progress)
        hint = f" If the cached archive is damaged, delete {display_path(archive)} and fetch again."
        return _install(written, destination, entry.sha256, f"{member} of {display_path(archive)}", hint)

    def from_archive(self, name: str, archive: Path, destination: Path) -> Path:
        """Install ``name`` from a local archive: the member the manifest's tar sources name, else ``file`` itself."""
        entry = self.manifest.get(name)
        if not archive.is_file():
            raise FetchError(f"archive {archive} does not exist; give the path of the downloaded cifar_teachers.tar")
        candidates = [s.member_for(entry.file) for s in self.manifest.sources if s.kind == "tar"] + [entry.file]
        try:
            written, member = _extract(archive, list(dict.fromkeys(candidates)), destination, progress=self.progress)
        except _SourceFailed as failure:
            raise FetchError(f"teacher {name!r}: {failure}") from None
        return _install(written, destination, entry.sha256, f"{member} of {archive}")

    def fetch(self, name: str, sources: Sequence[Source], *, archive: Path | None, force: bool) -> Path:
        destination = self.manifest.published_path(name)
        if destination.is_file() and not force:
            self.echo(f"{name}: already present at {display_path(destination)}; nothing to do (--force downloads it again)")
            return destination
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FetchError(f"cannot create {display_path(destination.parent)} for teacher {name!r}: {error}") from None
        if archive is not None:
            path = self.from_archive(name, archive, destination)
        else:
            failures: list[tuple[Source, str, str]] = []
            for source in sources:
                try:
                    path = self.from_source(name, source, destination)
                    break
                except _SourceFailed as failure:
                    where = source.url_for(self.manifest.get(name).file)
                    failures.append((source, where, str(failure)))
                    self.echo(f"{name}: {source.name} failed: {failure}")
            else:
                raise FetchError(offline_message(self.manifest, name, sources, failures))
        self.echo(f"{name}: installed {display_path(path)}")
        return path


def offline_message(
    manifest: TeacherManifest, name: str, sources: Sequence[Source], failures: Sequence[tuple[Source, str, str]]
) -> str:
    """Why no source delivered ``name``, and exactly what to download by hand and where to put it."""
    entry = manifest.get(name)
    destination = display_path(manifest.published_path(name))
    lines = [f"could not download teacher {name!r} ({entry.file}) from any source:"]
    lines += [f"  - {source.name}: {url}: {reason}" for source, url, reason in failures]
    if not sources:
        lines.append("  (the manifest lists no sources)")
    lines.append("Download it by hand (e.g. on a machine with internet access) and install it:")
    for source in sources:
        if source.kind == "file":
            lines.append(f"  - download {source.url_for(entry.file)} and put it at {destination}")
        else:
            archive = archive_file_name(source)
            member = source.member_for(entry.file)
            lines.append(
                f"  - or download {source.url_for(entry.file)}, then `tar xf {archive} {member}` and move "
                f"{member} to {destination}; or let distill extract it: "
                f"`distill teachers fetch {name} --archive PATH/TO/{archive}` (`fetch all --archive` for every teacher)"
            )
    if not sources:
        lines.append(f"  - put the checkpoint file {entry.file} at {destination}")
    lines.append(f"Then check it: `distill teachers verify {name} --data-root DATA_DIR`.")
    return "\n".join(lines)


def fetch(
    manifest: TeacherManifest,
    name: str,
    *,
    sources: Sequence[Source] | None = None,
    timeout: float = 30,
    archive: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> Path:
    """Download teacher ``name``'s published checkpoint to ``root/file`` and return that path.

    Args:
        sources: the sources to try, in order (default: the manifest's).
        timeout: seconds to wait on a connection or read before giving up on a source.
        archive: a local tar already downloaded (e.g. cifar_teachers.tar): extract from
            it, without network.
        force: download again even if the file is already there.
        progress: show a byte progress bar when the size is known.
        echo: receives one line per step (what is downloaded, from where, what failed).

    Raises:
        FetchError: every source failed (the message says what to download by hand and
            where to put it), or the file's sha256 differs from the manifest's.
    """
    fetcher = _Fetcher(manifest, timeout=timeout, progress=progress, echo=echo)
    chosen = list(manifest.sources if sources is None else sources)
    return fetcher.fetch(name, chosen, archive=Path(archive) if archive is not None else None, force=force)


def fetch_all(
    manifest: TeacherManifest,
    *,
    sources: Sequence[Source] | None = None,
    timeout: float = 30,
    archive: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Path]:
    """:func:`fetch` every teacher of the manifest, in order; an archive source is downloaded once.

    Stops at the first teacher that cannot be fetched (its error says which ones were).
    """
    fetcher = _Fetcher(manifest, timeout=timeout, progress=progress, echo=echo)
    chosen = list(manifest.sources if sources is None else sources)
    local = Path(archive) if archive is not None else None
    done: dict[str, Path] = {}
    for name in manifest.names():
        try:
            done[name] = fetcher.fetch(name, chosen, archive=local, force=force)
        except FetchError as error:
            got = f" (installed so far: {', '.join(done)})" if done else ""
            raise FetchError(f"{error}\nfetch all stopped at {name!r}{got}") from None
    return done
