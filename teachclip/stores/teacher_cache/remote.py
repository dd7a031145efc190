"""Share teacher caches by fingerprint: ``teach cache ls|push|pull`` and ``extract-teachers --shared-cache``.

Remote layout (any fsspec URL: a local directory, ``memory://``, ``s3://`` with s3fs, ...)::

    URL/<fingerprint>/zarr.json, similarity/..., ...    the group directory, byte for byte
    URL/<fingerprint>/teachclip-remote.json               written last: the entry is complete

``teachclip-remote.json`` lists every file with its size and sha256 (a pull checks both, then runs
``verify`` on the result before publishing it), the name the group had when pushed, its kind and
shape, and its content hash. Entries are keyed by the teacher-cache fingerprint, so two users who
ask for the same teacher on the same frames find each other's cache, whatever they named it. Dense
and sparse groups travel alike, byte for byte.

Nothing on a remote is trusted: the index is validated (:class:`RemoteIndex`, size-limited); an
entry is accepted only under the fingerprint it is stored and asked for, which its index and its
group attributes must both state; only the files the schema expects for that group (its zarr.json
documents and the chunk keys of its arrays' grids) are copied, each a plain file (no link) of the
listed size; the copy is verified before it is published. ``ls`` and a pull of a whole remote skip
an unusable entry and report it; a failed pull leaves no ``<store>.partial`` behind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teachclip.core.fingerprint import sha256_file
from teachclip.stores.teacher_cache.checks import (
    expected_arrays,
    group_files,
    max_stored_bytes,
    read_array_grid,
)
from teachclip.stores.teacher_cache.publish import discard_partial_group, publish_groups
from teachclip.stores.teacher_cache.schema import (
    FINGERPRINT,
    GROUP_NAME,
    MAX_TEXTS,
    MAX_VIDEOS,
    SharingError,
    TeacherCacheError,
    check_group_name,
    check_store_or_absent,
    group_names,
    open_root,
    parse_document,
    parse_group_attributes,
    read_group_attributes,
    validation_message,
)
from teachclip.stores.teacher_cache.verify import verify_group
from teachclip.stores.zarr_io import partial_path

REMOTE_INDEX = "teachclip-remote.json"
REMOTE_FORMAT = 1
MAX_INDEX_BYTES = 64 << 20
MAX_ENTRY_FILES = 1_000_000
MAX_REPORTED = 3  # skipped entries named in an error message


class RemoteFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    sha256: Annotated[str, Field(pattern=FINGERPRINT)]
    size: Annotated[int, Field(ge=0, le=1 << 50)]


class RemoteIndex(BaseModel):
    """``teachclip-remote.json``: validated before anything in it is used."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    format: Literal[1]
    fingerprint: Annotated[str, Field(pattern=FINGERPRINT)]
    name: Annotated[str, Field(pattern=f"^{GROUP_NAME.pattern}$")]
    kind: Annotated[str, Field(min_length=1, max_length=128)]
    texts: Annotated[int, Field(ge=1, le=MAX_TEXTS)]
    videos: Annotated[int, Field(ge=1, le=MAX_VIDEOS)]
    files: dict[str, RemoteFile]
    content_sha256: Annotated[str, Field(pattern=FINGERPRINT)] | None = None

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, RemoteFile]) -> dict[str, RemoteFile]:
        if len(files) > MAX_ENTRY_FILES:
            raise ValueError(f"more than {MAX_ENTRY_FILES} files")
        if "zarr.json" not in files:
            raise ValueError("no zarr.json listed")
        for relative in files:
            parts = relative.split("/")
            if len(relative) > 512 or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"file name {relative[:80]!r}")
        return files


@dataclass(frozen=True)
class RemoteEntry:
    location: str  # the entry's own URL: <root URL>/<fingerprint>
    fingerprint: str
    name: str
    kind: str
    texts: int
    videos: int
    bytes: int
    files: dict[str, dict[str, Any]]
    content_sha256: str | None = None


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except Exception as exc:  # unknown protocol, missing backend, malformed URL: each backend raises its own
        raise SharingError(f"{url}: cannot open this location ({type(exc).__name__}: {exc}); "
                           f"install its fsspec backend") from exc
    return fs, root.rstrip("/")


def scan_remote(url: str) -> tuple[list[RemoteEntry], list[tuple[str, str]]]:
    """Every complete entry under ``url`` (sorted by fingerprint), and the entries that cannot be
    used as (directory name, reason): one bad entry does not hide the others."""
    fs, root = _filesystem(url)
    try:
        if not fs.exists(root):
            return [], []
        children = sorted(fs.ls(root, detail=False))
    except OSError as exc:
        raise SharingError(f"{url}: cannot list ({exc})") from exc
    entries, skipped = [], []
    for child in children:
        child_name = child.rstrip("/").rsplit("/", 1)[-1]
        try:
            entry = read_entry(f"{url.rstrip('/')}/{child_name}")
        except (TeacherCacheError, OSError) as exc:
            skipped.append((child_name, str(exc)))
            continue
        if entry is not None:
            entries.append(entry)
    return entries, skipped


def list_remote(url: str) -> list[RemoteEntry]:
    """Every complete, readable cache entry under ``url`` (sorted by fingerprint); see :func:`scan_remote`."""
    return scan_remote(url)[0]


def read_entry(location: str) -> RemoteEntry | None:
    """The entry at ``location`` (``<root URL>/<fingerprint>``), None if there is no complete one.
    SharingError naming the index and the reason when it cannot be used: not a plain file, too big,
    not UTF-8 JSON, wrong types or missing keys, or another fingerprint than the one it is stored
    (and asked for) under."""
    fs, entry_path = _filesystem(location)
    index_path = f"{entry_path}/{REMOTE_INDEX}"
    where = f"{location.rstrip('/')}/{REMOTE_INDEX}"
    try:
        if not fs.exists(index_path):
            return None  # not an entry, or an upload that has not finished
        info = fs.info(index_path)
        if info.get("islink") or info.get("type") != "file":
            raise SharingError(f"{where}: not a plain file")
        if (info.get("size") or 0) > MAX_INDEX_BYTES:
            raise SharingError(f"{where}: larger than {MAX_INDEX_BYTES} bytes")
        data = fs.cat_file(index_path, start=0, end=MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise SharingError(f"{where}: unreadable ({exc})") from exc
    try:
        index = RemoteIndex.model_validate(parse_document(data, where, MAX_INDEX_BYTES))
    except TeacherCacheError as exc:
        raise SharingError(str(exc)) from exc
    except ValidationError as exc:
        raise SharingError(f"{where}: malformed index: {validation_message(exc)}") from exc
    stored_under = entry_path.rsplit("/", 1)[-1]
    if index.fingerprint != stored_under:
        raise SharingError(f"{where}: the index names fingerprint {index.fingerprint}, but the entry is stored and "
                           f"asked for as {stored_under}: refusing a substituted entry")
    return RemoteEntry(location=location.rstrip("/"), fingerprint=index.fingerprint, name=index.name,
                       kind=index.kind, texts=index.texts, videos=index.videos,
                       bytes=sum(f.size for f in index.files.values()),
                       files={k: v.model_dump() for k, v in index.files.items()},
                       content_sha256=index.content_sha256)


def find_remote(url: str, fingerprint: str) -> RemoteEntry | None:
    """The entry ``url/<fingerprint>`` (its index and fingerprint checked), None if absent."""
    if not isinstance(fingerprint, str) or len(fingerprint) != 64 or not all(c in "0123456789abcdef" for c in fingerprint):
        raise SharingError(f"{str(fingerprint)[:80]!r}: not a teacher cache fingerprint (64 hex digits)")
    entry = read_entry(f"{url.rstrip('/')}/{fingerprint}")
    if entry is not None and entry.fingerprint != fingerprint:  # read_entry refuses it already; stated again
        raise SharingError(f"{entry.location}: holds {entry.fingerprint}, not the requested {fingerprint}")
    return entry


def push(path: str | Path, url: str) -> list[tuple[str, str, str]]:
    """Upload every complete group of ``path`` (a store or one group) to ``url/<fingerprint>/``.

    Returns (name, fingerprint, "pushed" | "present") per group. An entry already complete at
    ``url`` is left alone: its fingerprint says it holds the same scores. A group is verified
    before it is pushed, and only the files of its schema are uploaded.
    """
    path = Path(path)
    groups = [path] if read_group_attributes(path) is not None else [path / n for n in group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to push")
    fs, root = _filesystem(url)
    results = []
    for group in groups:
        raw = read_group_attributes(group)
        attrs = parse_group_attributes(raw, group / "zarr.json")
        if not attrs.complete:
            raise SharingError(f"{group}: incomplete cache; finish `teach extract-teachers` before pushing")
        fingerprint = attrs.fingerprint
        if find_remote(url, fingerprint) is not None:
            results.append((group.name, fingerprint, "present"))
            continue
        check = verify_group(group)
        if not check.ok:
            raise SharingError(f"{group}: fails verify, not pushed: {'; '.join(check.problems[:3])}")
        grids = {name: read_array_grid(group / name, spec) for name, spec in expected_arrays(attrs).items()}
        files = {}
        for relative in group_files(grids):
            local = group / relative
            remote = f"{root}/{fingerprint}/{relative}"
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local), remote)
            files[relative] = {"sha256": sha256_file(local), "size": local.stat().st_size}
        index = {"files": files, "fingerprint": fingerprint, "format": REMOTE_FORMAT, "kind": attrs.kind,
                 "name": group.name, "texts": attrs.layout.n_texts, "videos": attrs.layout.n_videos}
        if attrs.content_sha256 is not None:
            index["content_sha256"] = attrs.content_sha256
        fs.pipe_file(f"{root}/{fingerprint}/{REMOTE_INDEX}", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
        results.append((group.name, fingerprint, "pushed"))
    return results


class _Copier:
    """Copies the files of one entry, each only if it is a plain file (no link, nor under one) of
    the size the index lists; then checks size and sha256 of the copy."""

    def __init__(self, entry: RemoteEntry, destination: Path):
        self.entry, self.destination = entry, destination
        self.fs, self.entry_path = _filesystem(entry.location)
        self.checked_dirs: set[str] = set()

    def copy(self, relative: str) -> Path:
        expected = self.entry.files[relative]
        where = f"{self.entry.location}/{relative}"
        try:
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in self.checked_dirs:
                    info = self.fs.info(f"{self.entry_path}/{directory}")
                    if info.get("islink") or info.get("type") != "directory":
                        raise SharingError(f"{self.entry.location}/{directory}: not a plain directory (a link?)")
                    self.checked_dirs.add(directory)
            info = self.fs.info(f"{self.entry_path}/{relative}")
            if info.get("islink") or info.get("type") != "file":
                raise SharingError(f"{where}: not a plain file (a link or a directory)")
            if info.get("size") != expected["size"]:
                raise SharingError(f"{where}: {info.get('size')} bytes where {REMOTE_INDEX} lists {expected['size']}")
            local = self.destination / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{self.entry_path}/{relative}", str(local))
        except OSError as exc:
            raise SharingError(f"{where}: cannot copy ({exc})") from exc
        if local.is_symlink() or local.stat().st_size != expected["size"] or sha256_file(local) != expected["sha256"]:
            raise SharingError(f"{where}: size or sha256 differs from {REMOTE_INDEX}")
        return local


def download_entry(entry: RemoteEntry, destination: Path) -> None:
    """Copy an entry into ``destination`` (a group directory): its zarr.json first (attributes
    validated, fingerprint = the entry's), then its arrays' metadata (against the layout), then only
    the chunk keys of those arrays' grids, each checked for size and sha256; then verify the group.
    Any other file listed is refused. A failed download leaves nothing behind."""
    copier = _Copier(entry, destination)
    try:
        destination.mkdir(parents=True, exist_ok=False)
        copier.copy("zarr.json")
        raw = read_group_attributes(destination)
        if raw is None:
            raise SharingError(f"{entry.location}/zarr.json: not a teacher cache group")
        attrs = parse_group_attributes(raw, f"{entry.location}/zarr.json")
        if attrs.fingerprint != entry.fingerprint:
            raise SharingError(f"{entry.location}: the group inside has another fingerprint ({attrs.fingerprint}) "
                               f"than the requested {entry.fingerprint}: refusing a substituted entry")
        if entry.content_sha256 is not None and attrs.content_sha256 != entry.content_sha256:
            raise SharingError(f"{entry.location}: the group's content hash {attrs.content_sha256} is not the "
                               f"{entry.content_sha256} of {REMOTE_INDEX}")
        if not attrs.complete:
            raise SharingError(f"{entry.location}: an incomplete group")
        specs = expected_arrays(attrs)
        for relative in entry.files:
            array, _, rest = relative.partition("/")
            if relative != "zarr.json" and (array not in specs or not rest):
                raise SharingError(f"{entry.location}/{relative[:120]}: not a file of this group's schema; refused")
        grids = {}
        for array, spec in sorted(specs.items()):
            if f"{array}/zarr.json" not in entry.files:
                raise SharingError(f"{entry.location}: {REMOTE_INDEX} lacks {array}/zarr.json")
            copier.copy(f"{array}/zarr.json")
            grids[array] = read_array_grid(destination / array, spec)
        chunks = []
        for relative in entry.files:
            array, _, key = relative.partition("/")
            if relative == "zarr.json" or key == "zarr.json":
                continue
            if grids[array].parse_key(key) is None:
                raise SharingError(f"{entry.location}/{relative[:120]}: not a chunk of {array}; refused")
            if entry.files[relative]["size"] > max_stored_bytes(grids[array]):
                raise SharingError(f"{entry.location}/{relative}: {entry.files[relative]['size']} bytes, more than a "
                                   f"chunk of {array} can take")
            chunks.append(relative)
        for relative in sorted(chunks):
            copier.copy(relative)
        check = verify_group(destination)
        if not check.ok:
            raise SharingError(f"{entry.location}: fails verify: {'; '.join(check.problems[:3])}")
    except TeacherCacheError as exc:
        shutil.rmtree(destination, ignore_errors=True)
        if isinstance(exc, SharingError):
            raise
        raise SharingError(f"{entry.location}: {exc}") from exc
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def fetch_into(url: str, fingerprint: str, partial: Path, name: str) -> bool:
    """Download the entry ``url/<fingerprint>`` as group ``name`` of the partial store ``partial``
    (ready for :func:`teachclip.stores.teacher_cache.publish.publish_groups`); False when the remote
    lacks it. The entry is accepted only if its index and its group state that very fingerprint."""
    check_group_name(name)
    entry = find_remote(url, fingerprint)
    if entry is None:
        return False
    had_partial = partial.exists()
    discard_partial_group(partial, name)
    open_root(partial)
    try:
        download_entry(entry, partial / name)
    except BaseException:
        if not had_partial:
            shutil.rmtree(partial, ignore_errors=True)  # it held nothing but this fetch
        raise
    return True


def pull(url: str, path: str | Path, fingerprints: list[str] | None = None, name: str | None = None,
         overwrite: bool = False) -> list[tuple[str, str, str]]:
    """Download entries into the store ``path`` (each under its pushed name, or ``name``).

    ``url`` is a remote root (every entry, or those in ``fingerprints``) or one entry ``url/<fp>``.
    Returns (name, fingerprint, status) per entry, status "pulled", "present" or "skipped: <reason>":
    from a remote root, an entry that cannot be used (unreadable index, another fingerprint inside,
    a file that fails its checks or verify) is skipped and reported, the others are pulled; if none
    can be, SharingError lists why. One entry asked for by its URL fails with its reason. A group of
    that name with another fingerprint is refused (before anything is downloaded) unless
    ``overwrite``. A failed pull leaves no ``<path>.partial`` behind (unless it held earlier work).
    """
    out = Path(path)
    check_store_or_absent(out)
    partial = partial_path(out)
    check_store_or_absent(partial)
    if name is not None:
        check_group_name(name)
    single = read_entry(url)
    skipped: list[tuple[str, str]] = []
    if single is not None:
        entries = [single]
    else:
        entries, skipped = scan_remote(url)
    if fingerprints:
        wanted = set(fingerprints)
        entries = [e for e in entries if any(e.fingerprint.startswith(w) for w in wanted)]
        skipped = [(d, reason) for d, reason in skipped if any(d.startswith(w) for w in wanted)]
    if not entries and not skipped:
        raise SharingError(f"{url}: no matching teacher cache entries")
    if name is not None and len(entries) > 1:
        raise SharingError(f"--name applies to one entry; {url} has {len(entries)}")
    results: list[tuple[str, str, str]] = []
    plan: list[tuple[RemoteEntry, str]] = []
    for entry in entries:  # every local conflict is settled before anything is downloaded
        group_name = check_group_name(name or entry.name)
        if group_name in (g for _, g in plan):
            skipped.append((entry.fingerprint, f"another entry of {url} is also named {group_name!r}; pull it "
                                               f"alone with --fingerprint and --name"))
            continue
        try:
            existing = read_group_attributes(out / group_name)
        except TeacherCacheError:
            if not overwrite:
                raise
            existing = {"fingerprint": "(unreadable)"}
        if existing is not None and existing.get("complete") and existing["fingerprint"] == entry.fingerprint:
            results.append((group_name, entry.fingerprint, "present"))
            continue
        if existing is not None and not overwrite:
            raise SharingError(
                f"{out / group_name}: holds teacher cache {existing['fingerprint']}, the remote entry is "
                f"{entry.fingerprint}; pass --overwrite or --name"
            )
        plan.append((entry, group_name))
    had_partial = partial.exists()
    fetched: list[str] = []
    try:
        for entry, group_name in plan:
            discard_partial_group(partial, group_name)
            open_root(partial)
            try:
                download_entry(entry, partial / group_name)
            except SharingError as exc:
                if single is not None:
                    raise
                skipped.append((entry.fingerprint, str(exc)))
                continue
            fetched.append(group_name)
            results.append((group_name, entry.fingerprint, "pulled"))
        if not results and skipped:
            reasons = "; ".join(f"{d}: {r}" for d, r in skipped[:MAX_REPORTED])
            more = f" (and {len(skipped) - MAX_REPORTED} more)" if len(skipped) > MAX_REPORTED else ""
            raise SharingError(f"{url}: nothing pulled: {reasons}{more}")
        if fetched:
            publish_groups(partial, out, fetched, verified=fetched)
    except BaseException:
        for group_name in fetched:
            discard_partial_group(partial, group_name)
        raise
    finally:
        if not had_partial and partial.exists():
            shutil.rmtree(partial, ignore_errors=True)  # only this pull's own work was there
    return results + [(d, d, f"skipped: {reason}") for d, reason in skipped]
