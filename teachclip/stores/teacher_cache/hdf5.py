"""HDF5 interchange of teacher caches: ``teach cache export`` and ``teach cache import``.

One HDF5 group per teacher with the same datasets and, in the attribute ``teachclip_attributes``, the
canonical JSON of the Zarr group attributes; importing rebuilds the same Zarr group (same layout,
same attributes: the same bytes). Dense groups only: a sparse group (``teach cache sparsify``) is
refused, naming it (share it with push/pull, which carries it byte for byte).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.fingerprint import canonical_json
from teachclip.stores.teacher_cache.checks import check_ids
from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.publish import discard_partial_group, mark_group_complete, publish_groups
from teachclip.stores.teacher_cache.schema import (
    MAX_CHUNK_BYTES,
    RELEVANCE,
    ROOT_ATTRIBUTES,
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    SharingError,
    TeacherCacheError,
    check_group_name,
    check_store_or_absent,
    group_names,
    identity_from_attributes,
    layout_from_attributes,
    parse_document,
    parse_group_attributes,
    read_group_attributes,
)
from teachclip.stores.teacher_cache.verify import verify_group
from teachclip.stores.zarr_io import partial_path

HDF5_ATTRIBUTES = "teachclip_attributes"
MAX_GROUPS = 1000  # groups of one HDF5 file
ALLOWED_FILTERS = {1, 2, 3}  # deflate (gzip), shuffle, fletcher32: what export writes and HDF5 builds in


def export_hdf5(path: str | Path, h5_path: str | Path) -> list[str]:
    """Write every group of a store (or one group) into one HDF5 file; returns the group names."""
    import h5py

    path, h5_path = Path(path), Path(h5_path)
    groups = [path] if read_group_attributes(path) is not None else [path / n for n in group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to export")
    for group_path in groups:
        _refuse_sparse(read_group_attributes(group_path), str(group_path))
    for group_path in groups:  # never export holes or damaged values
        check = verify_group(group_path)
        if not check.ok:
            raise SharingError(f"{group_path}: fails verify, not exported: {'; '.join(check.problems[:3])}")
    tmp = h5_path.with_name(h5_path.name + ".tmp")
    with h5py.File(tmp, "w", track_order=True) as h5:
        h5.attrs.update(ROOT_ATTRIBUTES)
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

    attrs = read_group_attributes(group_path)
    if not attrs.get("complete"):
        raise SharingError(f"{group_path}: incomplete cache; finish it before exporting")
    layout = layout_from_attributes(attrs)
    zgroup = zarr.open_group(group_path, mode="r")
    out = h5.create_group(group_path.name)
    out.attrs[HDF5_ATTRIBUTES] = canonical_json(attrs)
    for key in ("kind", "fingerprint", "frames_fingerprint", "manifest_fingerprint"):
        out.attrs[key] = attrs[key]  # also readable without parsing JSON
    strings = h5py.string_dtype("utf-8")
    for name in (TEXT_IDS, VIDEO_IDS):
        out.create_dataset(name, data=np.asarray([str(v) for v in zgroup[name][...]], dtype=object), dtype=strings,
                           track_times=False)
    out.create_dataset(TEXT_VIDEO, data=zgroup[TEXT_VIDEO][...], track_times=False)
    score_arrays = [SIMILARITY] + ([RELEVANCE] if RELEVANCE in zgroup else [])
    for name in score_arrays:
        source = zgroup[name]
        target = out.create_dataset(name, shape=source.shape, dtype=source.dtype, chunks=source.chunks,
                                    compression="gzip", fletcher32=True, track_times=False)
        for block in range(layout.n_blocks):
            start, stop = layout.block_rows(block)
            target[start:stop] = source[start:stop]


def import_hdf5(h5_path: str | Path, path: str | Path, overwrite: bool = False) -> list[str]:
    """Rebuild Zarr groups from an HDF5 export into the store ``path``; returns the group names.

    Every group of the file is checked before anything is written (:func:`_plan_group`): its name,
    a plain (hard-linked) group, attributes that validate, and exactly the expected datasets, each
    an ordinary in-file dataset (no external storage, no virtual dataset, no soft or external link)
    of the expected dtype and shape. Each group is then rebuilt in ``<path>.partial``; its ids are
    checked before its scores are written, the whole group is checked before it is marked complete,
    and a content hash recorded in the file must equal the one of the imported values. A failed
    import leaves no ``<path>.partial`` behind (unless it held earlier work)."""
    import h5py

    h5_path, out = Path(h5_path), Path(path)
    if not h5_path.is_file():
        raise SharingError(f"{h5_path}: file not found")
    check_store_or_absent(out)
    partial = partial_path(out)
    check_store_or_absent(partial)
    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as exc:
        raise SharingError(f"{h5_path}: not a readable HDF5 file ({exc})") from exc
    had_partial = partial.exists()
    imported: list[str] = []
    try:
        with h5:
            plans = _plan_file(h5, h5_path, out, overwrite)
            for name, attrs in plans:
                discard_partial_group(partial, name)
                imported.append(name)
                _import_group(h5[name], partial, name, attrs, h5_path)
        publish_groups(partial, out, imported, verified=imported)
    except BaseException:
        for name in imported:
            discard_partial_group(partial, name)
        raise
    finally:
        if not had_partial and partial.exists():
            shutil.rmtree(partial, ignore_errors=True)  # only this import's own work was there
    return imported


def _plan_file(h5: Any, h5_path: Path, out: Path, overwrite: bool) -> list[tuple[str, dict[str, Any]]]:
    """Check every group of the file before anything is written; (name, attributes) per group."""
    names = list(h5.keys()) if len(h5) <= MAX_GROUPS else None
    if names is None:
        raise SharingError(f"{h5_path}: more than {MAX_GROUPS} groups; not a teachclip export")
    if not names:
        raise SharingError(f"{h5_path}: no groups to import")
    plans = []
    for name in names:
        try:
            check_group_name(name)
        except TeacherCacheError as exc:
            raise SharingError(f"{h5_path}: group {str(name)[:80]!r}: not a teacher name ({exc})") from exc
        attrs = _plan_group(h5, name, h5_path)
        existing = read_group_attributes(out / name)
        if existing is not None and existing["fingerprint"] != attrs["fingerprint"] and not overwrite:
            raise SharingError(
                f"{out / name}: holds teacher cache {existing['fingerprint']}, {h5_path} has {attrs['fingerprint']}; "
                f"pass --overwrite"
            )
        plans.append((name, attrs))
    return plans


def _plan_group(h5: Any, name: str, h5_path: Path) -> dict[str, Any]:
    """The validated attributes of HDF5 group ``name``, after checking that it holds exactly the
    expected datasets, each stored plainly in the file with the expected dtype and shape."""
    import h5py

    where = f"{h5_path}: group {name!r}"
    link = h5.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink) or not isinstance(h5.get(name), h5py.Group):
        raise SharingError(f"{where}: not a plain group (a link or a dataset)")
    group = h5[name]
    text = group.attrs.get(HDF5_ATTRIBUTES) if HDF5_ATTRIBUTES in group.attrs else None
    if text is None:
        raise SharingError(f"{where} has no {HDF5_ATTRIBUTES} attribute (not a teachclip export)")
    if isinstance(text, bytes):
        data = text
    elif isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    else:
        raise SharingError(f"{where}: attribute {HDF5_ATTRIBUTES} is not a string")
    try:
        raw = parse_document(data, f"{where} attribute {HDF5_ATTRIBUTES}")
    except TeacherCacheError as exc:
        raise SharingError(str(exc)) from exc
    _refuse_sparse(raw, where)
    try:
        attrs = parse_group_attributes(raw, f"{where} attribute {HDF5_ATTRIBUTES}")
    except TeacherCacheError as exc:
        raise SharingError(str(exc)) from exc
    layout = attrs.layout
    expected = {
        SIMILARITY: (np.dtype("float16"), (layout.n_texts, layout.n_videos)),
        TEXT_IDS: (None, (layout.n_texts,)),
        VIDEO_IDS: (None, (layout.n_videos,)),
        TEXT_VIDEO: (np.dtype("int32"), (layout.n_texts,)),
    }
    if attrs.has_frame_relevance:
        expected[RELEVANCE] = (np.dtype("float32"), (layout.n_texts, layout.frames_per_video))
    members = list(group.keys()) if len(group) <= 2 * len(expected) else None
    if members is None or set(members) != set(expected):
        found = sorted(members)[:10] if members is not None else f"{len(group)} members"
        raise SharingError(f"{where}: holds {found}, expected exactly {sorted(expected)}")
    for dataset_name, (dtype, shape) in expected.items():
        _check_dataset(group, dataset_name, dtype, shape, f"{where}/{dataset_name}")
    return raw


def _check_dataset(group: Any, name: str, dtype: np.dtype | None, shape: tuple[int, ...], where: str) -> None:
    """An ordinary dataset of this file: a hard link, contiguous or chunked in-file storage (no
    external files, no virtual dataset), known filters only, the dtype (None: h5py's UTF-8
    variable-length strings) and shape expected."""
    import h5py

    if not isinstance(group.get(name, getlink=True), h5py.HardLink):
        raise SharingError(f"{where}: a soft or external link; only datasets stored in this file are read")
    dataset = group.get(name)
    if not isinstance(dataset, h5py.Dataset):
        raise SharingError(f"{where}: not a dataset")
    if dataset.is_virtual:
        raise SharingError(f"{where}: a virtual dataset (its data lives in other files); refused")
    if dataset.external:
        raise SharingError(f"{where}: stored in external files ({str(dataset.external[0][0])[:80]}, ...); refused")
    plist = dataset.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    if filters - ALLOWED_FILTERS:
        raise SharingError(f"{where}: HDF5 filters {sorted(filters - ALLOWED_FILTERS)} are not ones teachclip writes")
    if dtype is None:
        info = h5py.check_string_dtype(dataset.dtype)
        if info is None or info.encoding != "utf-8" or info.length is not None:
            raise SharingError(f"{where}: dtype {dataset.dtype} where UTF-8 variable-length strings belong")
    elif dataset.dtype != dtype:
        raise SharingError(f"{where}: dtype {dataset.dtype} where {dtype} belongs")
    if dataset.shape != shape:
        raise SharingError(f"{where}: shape {dataset.shape} where the layout says {shape}")
    # HDF5 reads storage that was never written as the fill value, without a word: demand all of it
    if dataset.chunks is None:
        stored, needed = dataset.id.get_storage_size(), dataset.nbytes if dtype is not None else min(1, dataset.size)
        if stored < needed:
            raise SharingError(f"{where}: {stored} bytes stored of {needed}: unwritten data would read as fill values")
        return
    if dtype is not None and int(np.prod(dataset.chunks, dtype=np.int64)) * dtype.itemsize > MAX_CHUNK_BYTES:
        raise SharingError(f"{where}: chunks {dataset.chunks} larger than {MAX_CHUNK_BYTES >> 20} MiB")
    expected = int(np.prod([-(-n // c) for n, c in zip(shape, dataset.chunks, strict=True)], dtype=np.int64))
    stored = dataset.id.get_num_chunks()
    if stored != expected:
        raise SharingError(f"{where}: {stored} of {expected} chunks stored: the missing ones would read as fill values")


def _import_group(h5group: Any, partial: Path, name: str, raw: dict[str, Any], h5_path: Path) -> None:
    where = f"{h5_path}: group {name!r}"
    attrs = parse_group_attributes(raw, where)
    identity = identity_from_attributes(raw)
    layout = layout_from_attributes(raw)
    text_ids = [_text(v, where) for v in h5group[TEXT_IDS][...]]
    video_ids = [_text(v, where) for v in h5group[VIDEO_IDS][...]]
    text_video = np.asarray(h5group[TEXT_VIDEO][...], dtype=np.int32)
    problems = check_ids(text_ids, video_ids, text_video, layout.n_videos)  # before any score is written
    if problems:
        raise SharingError(f"{where} does not import cleanly: {'; '.join(problems)}")
    create_group(partial, name, identity, layout, text_ids, video_ids, text_video, versions=attrs.versions)
    group = zarr.open_group(partial / name, mode="r+")
    claimed_hash = raw.get("content_sha256")
    incomplete = {key: value for key, value in raw.items() if key != "content_sha256"} | {"complete": False}
    group.attrs.put(json.loads(canonical_json(incomplete)))  # the exported versions etc.
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        relevance = h5group[RELEVANCE][start:stop] if identity.has_frame_relevance else None
        try:
            write_block(partial / name, block, h5group[SIMILARITY][start:stop], relevance)
        except TeacherCacheError as exc:
            raise SharingError(f"{where} does not import cleanly: {exc}") from exc
    check = verify_group(partial / name, require_complete=False)
    if not check.ok:
        raise SharingError(f"{where} does not import cleanly: {'; '.join(check.problems[:3])}")
    content_hash = mark_group_complete(partial / name)
    if claimed_hash is not None and claimed_hash != content_hash:
        raise SharingError(f"{where}: its attributes record content hash {claimed_hash}, but the imported values "
                           f"hash to {content_hash}: the data was altered")


def verify_group_data_only(path: Path) -> list[str]:
    """The checks of :func:`verify_group` other than completeness (for a group not yet published)."""
    return verify_group(path, require_complete=False).problems


def _text(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SharingError(f"{where}: an id that is not UTF-8") from exc
    return str(value)
