"""HDF5 interchange of teacher caches: ``teach cache export`` and ``teach cache import``.

One HDF5 group per teacher with the same datasets and, in the attribute ``teachclip_attributes``, the
canonical JSON of the Zarr group attributes; importing rebuilds the same Zarr group (same layout,
same attributes: the same bytes). Dense groups only: a sparse group (``teach cache sparsify``) is
refused, naming it (share it with push/pull, which carries it byte for byte).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from teachclip.core.fingerprint import canonical_json
from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.publish import discard_partial_group, publish_groups
from teachclip.stores.teacher_cache.schema import (
    RELEVANCE,
    ROOT_ATTRIBUTES,
    SIMILARITY,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    SharingError,
    check_store_or_absent,
    group_names,
    identity_from_attributes,
    layout_from_attributes,
    read_group_attributes,
)
from teachclip.stores.teacher_cache.verify import verify_group
from teachclip.stores.zarr_io import partial_path

HDF5_ATTRIBUTES = "teachclip_attributes"


def export_hdf5(path: str | Path, h5_path: str | Path) -> list[str]:
    """Write every group of a store (or one group) into one HDF5 file; returns the group names."""
    import h5py

    path, h5_path = Path(path), Path(h5_path)
    groups = [path] if read_group_attributes(path) is not None else [path / n for n in group_names(path)]
    if not groups:
        raise SharingError(f"{path}: no teacher cache groups to export")
    for group_path in groups:
        _refuse_sparse(read_group_attributes(group_path), str(group_path))
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
    """Rebuild Zarr groups from an HDF5 export into the store ``path``; returns the group names."""
    import h5py

    h5_path, out = Path(h5_path), Path(path)
    if not h5_path.is_file():
        raise SharingError(f"{h5_path}: file not found")
    check_store_or_absent(out)
    partial = partial_path(out)
    names = []
    with h5py.File(h5_path, "r") as h5:
        for name in h5:
            if HDF5_ATTRIBUTES not in h5[name].attrs:
                raise SharingError(f"{h5_path}: group {name!r} has no {HDF5_ATTRIBUTES} attribute (not a teachclip export)")
            attrs = json.loads(h5[name].attrs[HDF5_ATTRIBUTES])
            _refuse_sparse(attrs, f"{h5_path}: group {name!r}")
            existing = read_group_attributes(out / name)
            if existing is not None and existing["fingerprint"] != attrs["fingerprint"] and not overwrite:
                raise SharingError(
                    f"{out / name}: holds teacher cache {existing['fingerprint']}, {h5_path} has {attrs['fingerprint']}; "
                    f"pass --overwrite"
                )
            discard_partial_group(partial, name)
            _import_group(h5[name], partial, name, attrs, h5_path)
            names.append(name)
    publish_groups(partial, out, names)
    return names


def _import_group(h5group: Any, partial: Path, name: str, attrs: dict[str, Any], h5_path: Path) -> None:
    identity = identity_from_attributes(attrs)
    layout = layout_from_attributes(attrs)
    text_ids = [_text(v) for v in h5group[TEXT_IDS][...]]
    video_ids = [_text(v) for v in h5group[VIDEO_IDS][...]]
    create_group(partial, name, identity, layout, text_ids, video_ids, h5group[TEXT_VIDEO][...],
                 versions=attrs.get("versions", {}))
    group = zarr.open_group(partial / name, mode="r+")
    group.attrs.put(json.loads(canonical_json(attrs | {"complete": False})))  # the exported versions etc.
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        relevance = h5group[RELEVANCE][start:stop] if identity.has_frame_relevance else None
        write_block(partial / name, block, h5group[SIMILARITY][start:stop], relevance)
    check = verify_group_data_only(partial / name)
    if check:
        raise SharingError(f"{h5_path}: group {name!r} does not import cleanly: {'; '.join(check)}")


def verify_group_data_only(path: Path) -> list[str]:
    """The checks of :func:`verify_group` other than completeness (for a group not yet published)."""
    return [p for p in verify_group(path).problems if not p.startswith("incomplete")]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


