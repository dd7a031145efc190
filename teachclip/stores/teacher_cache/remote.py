"""Share teacher caches by fingerprint: ``teach cache ls|push|pull`` and ``extract-teachers --shared-cache``.

Remote layout (any fsspec URL: a local directory, ``memory://``, ``s3://`` with s3fs, ...)::

    URL/<fingerprint>/zarr.json, similarity/..., ...    the group directory, byte for byte
    URL/<fingerprint>/teachclip-remote.json               written last: the entry is complete

``teachclip-remote.json`` lists every file with its size and sha256 (a pull checks both, then runs
``verify`` on the result before publishing it), the name the group had when pushed, its kind and
shape. Entries are keyed by the teacher-cache fingerprint, so two users who ask for the same
teacher on the same frames find each other's cache, whatever they named it. Dense and sparse groups
travel alike, byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teachclip.core.fingerprint import sha256_file
from teachclip.stores.teacher_cache.publish import discard_partial_group, publish_groups
from teachclip.stores.teacher_cache.schema import (
    SharingError,
    check_group_name,
    check_store_or_absent,
    group_names,
    layout_from_attributes,
    open_root,
    read_group_attributes,
)
from teachclip.stores.teacher_cache.verify import verify_group
from teachclip.stores.zarr_io import partial_path

REMOTE_INDEX = "teachclip-remote.json"
REMOTE_FORMAT = 1


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


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise SharingError(f"{url}: cannot open this location ({exc}); install its fsspec backend") from exc
    return fs, root.rstrip("/")


def _local_files(group: Path) -> list[str]:
    return sorted(p.relative_to(group).as_posix() for p in group.rglob("*") if p.is_file())


def list_remote(url: str) -> list[RemoteEntry]:
    """Every complete cache entry under ``url`` (sorted by fingerprint)."""
    fs, root = _filesystem(url)
    if not fs.exists(root):
        return []
    entries = []
    for child in sorted(fs.ls(root, detail=False)):
        entry = read_entry(f"{url.rstrip('/')}/{child.rstrip('/').rsplit('/', 1)[-1]}")
        if entry is not None:
            entries.append(entry)
    return entries


def read_entry(location: str) -> RemoteEntry | None:
    """The entry at ``location`` (``<root URL>/<fingerprint>``), None if there is no complete one."""
    fs, entry_path = _filesystem(location)
    index_path = f"{entry_path}/{REMOTE_INDEX}"
    if not fs.exists(index_path):
        return None  # not an entry, or an upload that has not finished
    try:
        index = json.loads(fs.cat_file(index_path))
        return RemoteEntry(location=location.rstrip("/"), fingerprint=index["fingerprint"], name=index["name"],
                           kind=index["kind"], texts=index["texts"], videos=index["videos"],
                           bytes=sum(f["size"] for f in index["files"].values()), files=index["files"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SharingError(f"{location}: unreadable {REMOTE_INDEX} ({exc})") from exc


def find_remote(url: str, fingerprint: str) -> RemoteEntry | None:
    return read_entry(f"{url.rstrip('/')}/{fingerprint}")


def push(path: str | Path, url: str) -> list[tuple[str, str, str]]:
    """Upload every complete group of ``path`` (a store or one group) to ``url/<fingerprint>/``.

    Returns (name, fingerprint, "pushed" | "present") per group. An entry already complete at
    ``url`` is left alone: its fingerprint says it holds the same scores.
    """
    path = Path(path)
    groups = [path] if read_group_attributes(path) is not None else [path / n for n in group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to push")
    fs, root = _filesystem(url)
    results = []
    for group in groups:
        attrs = read_group_attributes(group)
        if not attrs.get("complete"):
            raise SharingError(f"{group}: incomplete cache; finish `teach extract-teachers` before pushing")
        fingerprint = attrs["fingerprint"]
        if find_remote(url, fingerprint) is not None:
            results.append((group.name, fingerprint, "present"))
            continue
        files = {}
        for relative in _local_files(group):
            local = group / relative
            remote = f"{root}/{fingerprint}/{relative}"
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local), remote)
            files[relative] = {"sha256": sha256_file(local), "size": local.stat().st_size}
        layout = layout_from_attributes(attrs)
        index = {"files": files, "fingerprint": fingerprint, "format": REMOTE_FORMAT, "kind": attrs["kind"],
                 "name": group.name, "texts": layout.n_texts, "videos": layout.n_videos}
        fs.pipe_file(f"{root}/{fingerprint}/{REMOTE_INDEX}", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
        results.append((group.name, fingerprint, "pushed"))
    return results


def download_entry(entry: RemoteEntry, destination: Path) -> None:
    """Copy an entry's files into ``destination`` (a group directory), checking size and sha256,
    then verify the group; a failed download leaves nothing behind."""
    import shutil

    fs, entry_path = _filesystem(entry.location)
    try:
        for relative, expected in sorted(entry.files.items()):
            if relative.startswith("/") or ".." in Path(relative).parts:
                raise SharingError(f"{entry.location}: refusing file name {relative!r}")
            local = destination / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{entry_path}/{relative}", str(local))
            if local.stat().st_size != expected["size"] or sha256_file(local) != expected["sha256"]:
                raise SharingError(f"{entry.location}/{relative}: size or sha256 differs from {REMOTE_INDEX}")
        attrs = read_group_attributes(destination)
        if attrs is None or attrs["fingerprint"] != entry.fingerprint:
            raise SharingError(f"{entry.location}: the group inside has another fingerprint")
        check = verify_group(destination)
        if not check.ok:
            raise SharingError(f"{entry.location}: fails verify: {'; '.join(check.problems)}")
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def fetch_into(url: str, fingerprint: str, partial: Path, name: str) -> bool:
    """Download the entry ``url/<fingerprint>`` as group ``name`` of the partial store ``partial``
    (ready for :func:`teachclip.stores.teacher_cache.publish.publish_groups`); False when the remote lacks it."""
    entry = find_remote(url, fingerprint)
    if entry is None:
        return False
    discard_partial_group(partial, name)
    open_root(partial)
    download_entry(entry, partial / name)
    return True


def pull(url: str, path: str | Path, fingerprints: list[str] | None = None, name: str | None = None,
         overwrite: bool = False) -> list[tuple[str, str, str]]:
    """Download entries into the store ``path`` (each under its pushed name, or ``name``).

    ``url`` is a remote root (every entry, or those in ``fingerprints``) or one entry ``url/<fp>``.
    Returns (name, fingerprint, "pulled" | "present") per entry. A group of that name with another
    fingerprint is refused unless ``overwrite``.
    """
    out = Path(path)
    check_store_or_absent(out)
    single = read_entry(url)
    entries = [single] if single is not None else list_remote(url)
    if fingerprints:
        wanted = set(fingerprints)
        entries = [e for e in entries if e.fingerprint in wanted or any(e.fingerprint.startswith(w) for w in wanted)]
    if not entries:
        raise SharingError(f"{url}: no matching teacher cache entries")
    if name is not None and len(entries) > 1:
        raise SharingError(f"--name applies to one entry; {url} has {len(entries)}")
    partial = partial_path(out)
    results, fetched = [], []
    for entry in entries:
        group_name = check_group_name(name or entry.name)
        existing = read_group_attributes(out / group_name)
        if existing is not None and existing.get("complete") and existing["fingerprint"] == entry.fingerprint:
            results.append((group_name, entry.fingerprint, "present"))
            continue
        if existing is not None and not overwrite:
            raise SharingError(
                f"{out / group_name}: holds teacher cache {existing['fingerprint']}, the remote entry is "
                f"{entry.fingerprint}; pass --overwrite or --name"
            )
        discard_partial_group(partial, group_name)
        open_root(partial)
        download_entry(entry, partial / group_name)
        fetched.append(group_name)
        results.append((group_name, entry.fingerprint, "pulled"))
    if fetched:
        publish_groups(partial, out, fetched)
    return results


