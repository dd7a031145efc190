"""Inspect, verify and share teacher caches: ``teach cache info|verify|ls|push|pull|export|import``.

Remote layout (any fsspec URL: a local directory, ``memory://``, ``s3://`` with s3fs, ...)::

    URL/<fingerprint>/zarr.json, similarity/..., ...    the group directory, byte for byte
    URL/<fingerprint>/teachclip-remote.json               written last: the entry is complete

``teachclip-remote.json`` lists every file with its size and sha256 (a pull checks both, then runs
``verify`` on the result before publishing it), the name the group had when pushed, its kind and
shape. Entries are keyed by the teacher-cache fingerprint, so two users who ask for the same
teacher on the same frames find each other's cache, whatever they named it.

HDF5 interchange: one HDF5 group per teacher with the same datasets and, in the attribute
``teachclip_attributes``, the canonical JSON of the Zarr group attributes; importing rebuilds the
same Zarr group (same layout, same attributes: the same bytes). Dense groups only: a sparse group
(``teach cache sparsify``) is refused, naming it; push/pull carries sparse groups, byte for byte, and
``verify`` checks them (their top-k arrays and their sparse fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.stores import teachers as cache
from teachclip.stores.zarr_io import done_units, partial_path, read_strings, tree_bytes
from teachclip.core.fingerprint import canonical_json

REMOTE_INDEX = "teachclip-remote.json"
REMOTE_FORMAT = 1
HDF5_ATTRIBUTES = "teachclip_attributes"
MISSING = 2**64 - 1  # offset and length of an absent chunk in a shard index


class SharingError(ValueError):
    """A push, pull, export or import that cannot proceed; the message names what and why."""


# ---- verify ------------------------------------------------------------------------------------


@dataclass
class GroupCheck:
    path: Path
    chunks_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | Path) -> list[GroupCheck]:
    """Check every group of a store (or one group): completeness, identity, every chunk's presence
    and crc32c checksum. Intact only if every returned check has no problems."""
    path = Path(path)
    if cache.read_group_attributes(path) is not None:
        return [verify_group(path)]
    names = cache.group_names(path)
    if not names:
        check = GroupCheck(path)
        check.problems.append("no teacher groups here" if path.exists() else "not found")
        return [check]
    return [verify_group(path / name) for name in names]


def verify_group(path: str | Path) -> GroupCheck:
    """The checks of :func:`verify_store` for one group, dense or sparse (``teach cache sparsify``)."""
    path = Path(path)
    check = GroupCheck(path)
    try:
        attrs = cache.read_group_attributes(path)
    except cache.TeacherCacheError as exc:
        check.problems.append(str(exc))
        return check
    if attrs is None:
        check.problems.append("not a teacher cache group")
        return check
    if not attrs.get("complete"):
        check.problems.append("incomplete: the extraction that writes it has not finished")
    try:
        identity = cache.identity_from_attributes(attrs)
        layout = cache.layout_from_attributes(attrs)
    except (KeyError, TypeError) as exc:
        check.problems.append(f"attributes lack the teacher identity or layout ({exc})")
        return check
    top_k = None
    if "sparse" in attrs:
        top_k = _check_sparse_identity(attrs, identity, layout, check)
        if top_k is None:
            return check
        expected = _sparse_arrays(layout, top_k)
    else:
        if identity.fingerprint != attrs.get("fingerprint"):
            check.problems.append(
                f"fingerprint {attrs.get('fingerprint')} does not match the identity in the attributes "
                f"({identity.fingerprint}): the metadata was altered"
            )
        expected = {cache.SIMILARITY: (layout.n_texts, layout.n_videos)}
    expected |= {
        cache.TEXT_IDS: (layout.n_texts,),
        cache.VIDEO_IDS: (layout.n_videos,),
        cache.TEXT_VIDEO: (layout.n_texts,),
    }
    if identity.has_frame_relevance:
        expected[cache.RELEVANCE] = (layout.n_texts, layout.frames_per_video)
    for name, shape in expected.items():
        check.problems.extend(_check_array(path / name, shape, check))
    if not check.problems:
        check.problems.extend(_check_ids(path, layout, top_k))
    return check


def _sparse_arrays(layout: cache.CacheLayout, top_k: int) -> dict[str, tuple[int, ...]]:
    """The score arrays of a sparse group (``teachclip.stores.sparse``) and their shapes."""
    from teachclip.stores import sparse

    return {
        sparse.NEIGHBOUR_VIDEOS: (layout.n_texts, top_k),
        sparse.NEIGHBOUR_SCORES: (layout.n_texts, top_k),
        sparse.OWN_SCORE: (layout.n_texts,),
        sparse.REST_MEAN: (layout.n_texts,),
    }


def _check_sparse_identity(attrs: dict[str, Any], identity: cache.TeacherIdentity, layout: cache.CacheLayout,
                           check: GroupCheck) -> int | None:
    """A sparse group's identity: its dense source's (recomputed from the attributes) and its own
    fingerprint ``sparse_fingerprint(dense_fingerprint, top_k)``. Returns top_k, None if unusable."""
    from teachclip.stores import sparse

    meta = attrs["sparse"]
    top_k = meta.get("top_k") if isinstance(meta, dict) else None
    dense_fingerprint = meta.get("dense_fingerprint") if isinstance(meta, dict) else None
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not isinstance(dense_fingerprint, str):
        check.problems.append(f"attribute sparse {meta!r} lacks an integer top_k or a dense_fingerprint")
        return None
    if not 1 <= top_k <= layout.n_videos:
        check.problems.append(f"sparse top_k {top_k} outside 1..{layout.n_videos} (the videos in the layout)")
        return None
    if identity.fingerprint != dense_fingerprint:
        check.problems.append(
            f"sparse dense_fingerprint {dense_fingerprint} does not match the identity in the attributes "
            f"({identity.fingerprint}): the metadata was altered"
        )
    expected = sparse.sparse_fingerprint(dense_fingerprint, top_k)
    if attrs.get("fingerprint") != expected:
        check.problems.append(
            f"fingerprint {attrs.get('fingerprint')} is not the sparse fingerprint of dense_fingerprint and "
            f"top_k {top_k} ({expected}): the metadata was altered"
        )
    if meta.get("fill") != sparse.FILL_RULE:
        check.problems.append(f"sparse fill rule {meta.get('fill')!r}: this code reads {sparse.FILL_RULE!r}")
    return top_k


def _check_array(array_path: Path, shape: tuple[int, ...], check: GroupCheck) -> list[str]:
    """Presence of every chunk (and shard) on disk, then a read of every chunk (crc32c)."""
    name = array_path.name
    try:
        meta = json.loads((array_path / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{name}: missing or unreadable array metadata ({exc})"]
    if tuple(meta.get("shape", ())) != shape:
        return [f"{name}: shape {meta.get('shape')} where the layout says {list(shape)}"]
    problems = _check_chunk_presence(array_path, meta)
    if len(problems) > 5:
        problems = [*problems[:5], f"{name}: ... and {len(problems) - 5} more"]
    if problems:
        return problems
    try:
        array = zarr.open_array(array_path, mode="r")
    except Exception as exc:  # zarr raises several types for bad metadata
        return [f"{name}: cannot open ({type(exc).__name__}: {exc})"]
    for region in _regions(array.shape, array.shards or array.chunks):
        try:
            values = array[region]
        except Exception as exc:  # crc32c mismatch, truncated or undecodable chunk
            return [f"{name}: corrupt data in rows {region[0].start}:{region[0].stop} ({type(exc).__name__}: {exc})"]
        check.chunks_read += 1
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return [f"{name}: non-finite values in rows {region[0].start}:{region[0].stop} (unwritten data reads as NaN)"]
    return []


def _regions(shape: tuple[int, ...], step: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    grid = [range(0, max(size, 1), s) for size, s in zip(shape, step, strict=True)]
    for starts in np.ndindex(*[len(g) for g in grid]):
        yield tuple(slice(g[i], min(g[i] + s, size)) for g, i, s, size in zip(grid, starts, step, shape, strict=True))


def _check_chunk_presence(array_path: Path, meta: dict) -> list[str]:
    """Zarr reads an absent chunk or shard as the fill value without a word: demand each one."""
    name = array_path.name
    shape = meta["shape"]
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
    encoding = meta.get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    if encoding.get("name") != "default":
        return [f"{name}: unexpected chunk key encoding {encoding}"]
    sharding = next((c for c in meta["codecs"] if c["name"] == "sharding_indexed"), None)
    problems = []
    for index in np.ndindex(*[math.ceil(s / c) for s, c in zip(shape, outer, strict=True)]):
        key = "c" + "".join(f"{separator}{i}" for i in index)
        file = array_path / key
        if not file.is_file():
            problems.append(f"{name}: {'shard' if sharding else 'chunk'} {key} is missing")
            continue
        if sharding is not None:
            problems.extend(_check_shard(file, name, key, shape, outer, index, sharding["configuration"]))
    return problems


def _check_shard(file: Path, name: str, key: str, shape: list[int], outer: list[int], index: tuple[int, ...],
                 config: dict) -> list[str]:
    """Read a shard's index (crc32c-checked) and demand every inner chunk inside the array bounds."""
    import google_crc32c

    if config.get("index_location", "end") != "end" or [c["name"] for c in config["index_codecs"]] != [
        "bytes", "crc32c"
    ]:
        return [f"{name}: unexpected shard index layout {config}"]
    inner = config["chunk_shape"]
    per_shard = [o // i for o, i in zip(outer, inner, strict=True)]
    n_chunks = math.prod(per_shard)
    index_size = 16 * n_chunks + 4
    data = file.read_bytes()
    if len(data) < index_size:
        return [f"{name}: shard {key} is truncated ({len(data)} bytes)"]
    index_bytes, stored_crc = data[-index_size:-4], data[-4:]
    if struct.pack("<I", google_crc32c.value(index_bytes)) != stored_crc:
        return [f"{name}: shard {key} has a corrupt chunk index (crc32c mismatch)"]
    entries = np.frombuffer(index_bytes, dtype="<u8").reshape(*per_shard, 2)
    problems = []
    for inner_index in np.ndindex(*per_shard):
        start = [o * i + k * c for o, i, k, c in zip(outer, index, inner_index, inner, strict=True)]
        if any(s >= size for s, size in zip(start, shape, strict=True)):
            continue  # entirely outside the array: never written
        offset, length = (int(v) for v in entries[inner_index])
        if offset == MISSING and length == MISSING:
            problems.append(f"{name}: shard {key} lacks chunk {list(inner_index)}")
        elif offset + length > len(data) - index_size:
            problems.append(f"{name}: shard {key} chunk {list(inner_index)} points past the end of the file")
    return problems


def _check_ids(path: Path, layout: cache.CacheLayout, top_k: int | None = None) -> list[str]:
    """Ids sorted and unique, every column in range (``top_k``: a sparse group's neighbour columns too)."""
    group = zarr.open_group(path, mode="r")
    text_ids, video_ids = read_strings(group[cache.TEXT_IDS]), read_strings(group[cache.VIDEO_IDS])
    text_video = np.asarray(group[cache.TEXT_VIDEO][...])
    problems = []
    if len(set(text_ids)) != len(text_ids) or text_ids != sorted(text_ids):
        problems.append("text_ids: not sorted and unique")
    if len(set(video_ids)) != len(video_ids) or video_ids != sorted(video_ids):
        problems.append("video_ids: not sorted and unique")
    if len(text_video) and (text_video.min() < 0 or text_video.max() >= layout.n_videos):
        problems.append("text_video: column out of range")
    if top_k is not None:
        from teachclip.stores.sparse import NEIGHBOUR_VIDEOS

        neighbours = np.sort(np.asarray(group[NEIGHBOUR_VIDEOS][...]), axis=1)
        if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= layout.n_videos):
            problems.append(f"{NEIGHBOUR_VIDEOS}: column out of range")
        elif (neighbours[:, 1:] == neighbours[:, :-1]).any():
            problems.append(f"{NEIGHBOUR_VIDEOS}: a video listed twice in one row")
    return problems


# ---- info ----------------------------------------------------------------------------------------


def cache_info(path: str | Path) -> dict[str, Any]:
    """What a store holds (JSON-able): per group identity, fingerprints, shape, size, completeness;
    plus the progress of groups still being extracted in ``<path>.partial``."""
    path = Path(path)
    groups = [path] if cache.read_group_attributes(path) is not None else [path / n for n in cache.group_names(path)]
    info: dict[str, Any] = {"path": str(path), "bytes": tree_bytes(path) if path.exists() else 0,
                            "groups": [_group_info(g) for g in groups]}
    partial = partial_path(path)
    if partial.is_dir():
        done = done_units(partial)
        info["in_progress"] = []
        for name in cache.group_names(partial):
            attrs = cache.read_group_attributes(partial / name)
            layout = cache.layout_from_attributes(attrs)
            info["in_progress"].append({"name": name, "kind": attrs["kind"], "fingerprint": attrs["fingerprint"],
                                        "blocks_done": len(cache.done_of(done, name, "block")),
                                        "blocks_total": layout.n_blocks})
    return info


def _group_info(path: Path) -> dict[str, Any]:
    attrs = cache.read_group_attributes(path)
    layout = cache.layout_from_attributes(attrs)
    info = {
        "name": path.name,
        "kind": attrs["kind"],
        "fingerprint": attrs["fingerprint"],
        "frames_fingerprint": attrs["frames_fingerprint"],
        "manifest_fingerprint": attrs["manifest_fingerprint"],
        "checkpoint_sha256": attrs["checkpoint_sha256"],
        "score_version": attrs["score_version"],
        "complete": attrs["complete"],
        "has_frame_relevance": attrs["has_frame_relevance"],
        "texts": layout.n_texts,
        "videos": layout.n_videos,
        "frames_per_video": layout.frames_per_video,
        "blocks": layout.n_blocks,
        "bytes": tree_bytes(path),
        "versions": attrs["versions"],
    }
    sparse = attrs.get("sparse")
    if sparse is None:
        similarity_bytes = tree_bytes(path / cache.SIMILARITY)
        info["similarity_bytes_per_entry"] = similarity_bytes / max(1, layout.n_texts * layout.n_videos)
        return info
    # a sparse group: K scores per caption, not a [texts, videos] matrix; its size is per caption
    top_k = sparse["top_k"]
    score_bytes = sum(tree_bytes(path / name) for name in _sparse_arrays(layout, top_k))
    return info | {"top_k": top_k, "dense_fingerprint": sparse["dense_fingerprint"], "sparse_bytes": score_bytes,
                   "sparse_bytes_per_caption": score_bytes / max(1, layout.n_texts)}


def format_info(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}: {len(info['groups'])} teacher group(s), {info['bytes'] / 1e6:.2f} MB"]
    for g in info["groups"]:
        if "top_k" in g:
            size = f"sparse top-{g['top_k']}: {g['sparse_bytes_per_caption']:.1f} B/caption"
        else:
            size = f"{g['similarity_bytes_per_entry']:.3f} B/similarity"
        lines.append(
            f"  {g['name']}: {g['kind']}, {g['texts']} texts x {g['videos']} videos x {g['frames_per_video']} frames, "
            f"{'complete' if g['complete'] else 'INCOMPLETE'}, {g['bytes'] / 1e6:.2f} MB ({size})"
        )
        lines.append(f"    fingerprint {g['fingerprint']}")
        if "top_k" in g:
            lines.append(f"    dense       {g['dense_fingerprint']}")
        lines.append(f"    frames      {g['frames_fingerprint']}")
        lines.append(f"    manifest    {g['manifest_fingerprint']}")
        lines.append(f"    checkpoint  {g['checkpoint_sha256'] or '(none: pretrained/zero-shot weights)'}")
    for g in info.get("in_progress", []):
        lines.append(f"  {g['name']} (in progress): {g['kind']}, {g['blocks_done']}/{g['blocks_total']} blocks, "
                     f"fingerprint {g['fingerprint']}")
    return "\n".join(lines)


# ---- remote: push, pull, ls ----------------------------------------------------------------------


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


def _sha256(path: Path) -> str:
    from teachclip.core.fingerprint import sha256_file

    return sha256_file(path)


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
    groups = [path] if cache.read_group_attributes(path) is not None else [path / n for n in cache.group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to push")
    fs, root = _filesystem(url)
    results = []
    for group in groups:
        attrs = cache.read_group_attributes(group)
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
            files[relative] = {"sha256": _sha256(local), "size": local.stat().st_size}
        layout = cache.layout_from_attributes(attrs)
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
            if local.stat().st_size != expected["size"] or _sha256(local) != expected["sha256"]:
                raise SharingError(f"{entry.location}/{relative}: size or sha256 differs from {REMOTE_INDEX}")
        attrs = cache.read_group_attributes(destination)
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
    (ready for :func:`teachclip.stores.teachers.publish_groups`); False when the remote lacks it."""
    entry = find_remote(url, fingerprint)
    if entry is None:
        return False
    cache.discard_partial_group(partial, name)
    cache.open_root(partial)
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
    cache.check_store_or_absent(out)
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
        group_name = cache.check_group_name(name or entry.name)
        existing = cache.read_group_attributes(out / group_name)
        if existing is not None and existing.get("complete") and existing["fingerprint"] == entry.fingerprint:
            results.append((group_name, entry.fingerprint, "present"))
            continue
        if existing is not None and not overwrite:
            raise SharingError(
                f"{out / group_name}: holds teacher cache {existing['fingerprint']}, the remote entry is "
                f"{entry.fingerprint}; pass --overwrite or --name"
            )
        cache.discard_partial_group(partial, group_name)
        cache.open_root(partial)
        download_entry(entry, partial / group_name)
        fetched.append(group_name)
        results.append((group_name, entry.fingerprint, "pulled"))
    if fetched:
        cache.publish_groups(partial, out, fetched)
    return results


# ---- HDF5 interchange ----------------------------------------------------------------------------


def export_hdf5(path: str | Path, h5_path: str | Path) -> list[str]:
    """Write every group of a store (or one group) into one HDF5 file; returns the group names."""
    import h5py

    path, h5_path = Path(path), Path(h5_path)
    groups = [path] if cache.read_group_attributes(path) is not None else [path / n for n in cache.group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to export")
    for group_path in groups:
        _refuse_sparse(cache.read_group_attributes(group_path), str(group_path))
    tmp = h5_path.with_name(h5_path.name + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as h5:
        h5.attrs.update(cache.ROOT_ATTRIBUTES)
        for group_path in groups:
            _export_group(h5, group_path)
    tmp.replace(h5_path)
    return [g.name for g in groups]


def _refuse_sparse(attrs: dict[str, Any], where: str) -> None:
    """HDF5 interchange carries dense groups only; sparse groups travel by push/pull (byte for byte)."""
    if "sparse" in attrs:
        top_k = attrs["sparse"].get("top_k") if isinstance(attrs["sparse"], dict) else "?"
        raise SharingError(
            f"{where}: a sparse teacher cache group (top-{top_k}); HDF5 export/import "
            f"handles dense groups only: share sparse groups with `teach cache push` / `teach cache pull` "
            f"(or export the dense group and run `teach cache sparsify` after importing it)"
        )


def _export_group(h5: Any, group_path: Path) -> None:
    import h5py

    attrs = cache.read_group_attributes(group_path)
    if not attrs.get("complete"):
        raise SharingError(f"{group_path}: incomplete cache; finish it before exporting")
    layout = cache.layout_from_attributes(attrs)
    zgroup = zarr.open_group(group_path, mode="r")
    out = h5.create_group(group_path.name)
    out.attrs[HDF5_ATTRIBUTES] = canonical_json(attrs)
    for key in ("kind", "fingerprint", "frames_fingerprint", "manifest_fingerprint"):
        out.attrs[key] = attrs[key]  # also readable without parsing JSON
    strings = h5py.string_dtype("utf-8")
    for name in (cache.TEXT_IDS, cache.VIDEO_IDS):
        out.create_dataset(name, data=np.asarray([str(v) for v in zgroup[name][...]], dtype=object), dtype=strings,
                           track_times=False)
    out.create_dataset(cache.TEXT_VIDEO, data=zgroup[cache.TEXT_VIDEO][...], track_times=False)
    score_arrays = [cache.SIMILARITY] + ([cache.RELEVANCE] if cache.RELEVANCE in zgroup else [])
    for name in score_arrays:
        source = zgroup[name]
        target = out.create_dataset(name, shape=source.shape, dtype=source.dtype, chunks=source.chunks,
                                    compression="gzip", fletcher32=True, track_times=False)
        for block in range(layout.n_blocks):
            start, stop = layout.block_rows(block)
            target[start:stop] = source[start:stop]


def import_hdf5(h5_path: str | Path, path: str | Path, overwrite: bool = False) -> list[str]:
    """Rebuild Zarr groups from an HDF5 export into the store ``path``; returns the group names."""
    import h5py

    h5_path, out = Path(h5_path), Path(path)
    if not h5_path.is_file():
        raise SharingError(f"{h5_path}: file not found")
    cache.check_store_or_absent(out)
    partial = partial_path(out)
    names = []
    with h5py.File(h5_path, "r") as h5:
        for name in h5:
            if HDF5_ATTRIBUTES not in h5[name].attrs:
                raise SharingError(f"{h5_path}: group {name!r} has no {HDF5_ATTRIBUTES} attribute (not a teachclip export)")
            attrs = json.loads(h5[name].attrs[HDF5_ATTRIBUTES])
            _refuse_sparse(attrs, f"{h5_path}: group {name!r}")
            existing = cache.read_group_attributes(out / name)
            if existing is not None and existing["fingerprint"] != attrs["fingerprint"] and not overwrite:
                raise SharingError(
                    f"{out / name}: holds teacher cache {existing['fingerprint']}, {h5_path} has {attrs['fingerprint']}; "
                    f"pass --overwrite"
                )
            cache.discard_partial_group(partial, name)
            _import_group(h5[name], partial, name, attrs, h5_path)
            names.append(name)
    cache.publish_groups(partial, out, names)
    return names


def _import_group(h5group: Any, partial: Path, name: str, attrs: dict[str, Any], h5_path: Path) -> None:
    identity = cache.identity_from_attributes(attrs)
    layout = cache.layout_from_attributes(attrs)
    text_ids = [_text(v) for v in h5group[cache.TEXT_IDS][...]]
    video_ids = [_text(v) for v in h5group[cache.VIDEO_IDS][...]]
    cache.create_group(partial, name, identity, layout, text_ids, video_ids, h5group[cache.TEXT_VIDEO][...])
    group = zarr.open_group(partial / name, mode="r+")
    group.attrs.put(json.loads(canonical_json(attrs | {"complete": False})))  # the exported versions etc.
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        relevance = h5group[cache.RELEVANCE][start:stop] if identity.has_frame_relevance else None
        cache.write_block(partial / name, block, h5group[cache.SIMILARITY][start:stop], relevance)
    check = verify_group_data_only(partial / name)
    if check:
        raise SharingError(f"{h5_path}: group {name!r} does not import cleanly: {'; '.join(check)}")


def verify_group_data_only(path: Path) -> list[str]:
    """The checks of :func:`verify_group` other than completeness (for a group not yet published)."""
    return [p for p in verify_group(path).problems if not p.startswith("incomplete")]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sha256_tree(path: str | Path) -> str:
    """One hash of every file's relative name and bytes below ``path`` (to compare two stores)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


