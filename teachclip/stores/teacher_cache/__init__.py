"""The teacher cache (``teachers.zarr``): one home for its schema, writers, readers and checks.

- :mod:`.schema`: names, identity (fingerprint), layout, attributes;
- :mod:`.dense` / :mod:`.sparse`: writers and readers of dense groups and of sparse (top-k) groups;
- :mod:`.publish`: the partial/publish protocol that makes extraction resumable;
- :mod:`.verify`: ``teach cache verify`` and ``info``;
- :mod:`.remote`: push/pull/ls by fingerprint; :mod:`.hdf5`: HDF5 export/import.

:func:`open_teacher_caches` is the one way to read a cache: it returns a dense or a sparse reader per
group, with the same API (``similarity_block``, ``frame_relevance``, ids and their lookups).
"""

from __future__ import annotations

from pathlib import Path

from teachclip.stores.teacher_cache.dense import DenseGroup, GroupReader
from teachclip.stores.teacher_cache.schema import (
    TeacherCacheError,
    group_names,
    read_group_attributes,
)
from teachclip.stores.teacher_cache.sparse import SparseGroup, is_sparse

__all__ = ["DenseGroup", "GroupReader", "SparseGroup", "TeacherCacheError", "open_group", "open_teacher_caches"]


def open_group(path: str | Path, in_memory: bool | None = None) -> GroupReader:
    """The reader of one group: :class:`SparseGroup` for a sparse group, else :class:`DenseGroup`
    (``in_memory``: see each)."""
    attrs = read_group_attributes(path)
    if attrs is not None and is_sparse(attrs):
        return SparseGroup(path, in_memory)
    return DenseGroup(path, in_memory)


def open_teacher_caches(spec: str | Path, in_memory: bool | None = None) -> list[GroupReader]:
    """Open ``teachers.zarr`` (every group, sorted by name) or ``teachers.zarr/<name>`` (one group)."""
    path = Path(spec)
    if not path.exists():
        raise TeacherCacheError(f"{path}: teacher cache not found")
    if read_group_attributes(path) is not None:
        return [open_group(path, in_memory)]
    names = group_names(path)
    if not names:
        raise TeacherCacheError(f"{path}: no teacher groups (expected teachers.zarr or teachers.zarr/<name>)")
    return [open_group(path / name, in_memory) for name in names]
