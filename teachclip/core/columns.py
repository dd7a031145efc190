"""Columns of ids and texts without one Python object per row: what a run holds per caption or video
at millions of rows.

A Python ``str`` costs ~50 bytes of header on top of its text, a list slot 8 and a dict entry ~100,
and the same id lived as a separate string in the manifest, the frames store and each teacher cache
(1.5 KB per caption in all, ``bench/scale_training.py``). Here:

- :class:`IdColumn`: ids as one fixed-width UTF-8 byte array (``numpy`` ``S<w>``, ``w`` the longest
  id's bytes). Sorted ids are joined by binary search (:meth:`IdColumn.positions`) instead of an
  id -> row dict; UTF-8 byte order is code point order, so ``sorted()`` of the strings and this
  array agree. An id may not contain a NUL character (numpy strips trailing NULs).
- :class:`StringColumn`: texts (captions, paths) as one UTF-8 blob and an ``int64`` offset per row.

Both are read-only sequences of ``str``: code written for lists keeps working (``len``, indexing,
iteration, slicing, equality with a list).
"""

from __future__ import annotations

import os
import struct
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

MAX_ID_CHARS = 1024  # characters of one caption or video id, wherever ids are read (manifest, stores, caches)
_CHUNK = 65_536  # rows converted to an array at a time while building: bounds the Python objects alive


def _encoded(value: str) -> bytes:
    if "\x00" in value:
        raise ValueError(f"id {value[:40]!r} contains a NUL character")
    return value.encode("utf-8")


def _storable(value: str) -> bool:
    """Whether an IdColumn can hold ``value`` (UTF-8 encodable, no NUL character)."""
    try:
        _encoded(value)
    except ValueError:  # UnicodeEncodeError is one too
        return False
    return True


class IdColumn(Sequence[str]):
    """Ids as a fixed-width byte array (module docstring)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        array = np.asarray(array)
        if array.dtype.kind != "S" or array.ndim != 1:
            raise TypeError(f"an IdColumn holds a 1-D bytes array, got {array.dtype} {array.shape}")
        self.array = array

    @classmethod
    def of(cls, ids: Iterable[str] | IdColumn) -> IdColumn:
        """The column of ``ids`` (strings), built ``_CHUNK`` rows at a time."""
        if isinstance(ids, IdColumn):
            return ids
        parts, chunk = [], []
        for value in ids:
            chunk.append(_encoded(value))
            if len(chunk) == _CHUNK:
                parts.append(np.array(chunk, dtype=np.bytes_))
                chunk = []
        if chunk or not parts:
            parts.append(np.array(chunk, dtype=np.bytes_) if chunk else np.zeros(0, dtype="S1"))
        return cls(np.concatenate(parts) if len(parts) > 1 else parts[0])

    @classmethod
    def from_vlen_utf8(cls, raw: bytes | memoryview, count: int, max_chars: int) -> IdColumn:
        """Parse numcodecs' ``VLenUTF8`` encoding (``uint32`` count, then per item ``uint32`` length and
        bytes) of exactly ``count`` ids of at most ``max_chars`` characters, never holding more than one
        id as a ``str``. ValueError names what is wrong."""
        view = memoryview(raw)
        if len(view) < 4 or struct.unpack_from("<I", view, 0)[0] != count:
            raise ValueError(f"holds {struct.unpack_from('<I', view, 0)[0] if len(view) >= 4 else 'no'} ids "
                             f"where {count} are expected")
        starts, lengths = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
        offset, unpack = 4, struct.Struct("<I").unpack_from
        for i in range(count):
            if offset + 4 > len(view):
                raise ValueError(f"truncated at id {i}")
            (length,) = unpack(view, offset)
            offset += 4
            if offset + length > len(view):
                raise ValueError(f"truncated at id {i}")
            try:
                text = str(view[offset : offset + length], "utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"id {i} is not UTF-8 ({exc.reason})") from None
            if len(text) > max_chars:
                raise ValueError(f"id {i} is longer than {max_chars} characters")
            if "\x00" in text:
                raise ValueError(f"id {i} contains a NUL character")
            starts[i], lengths[i] = offset, length
            offset += length
        if offset != len(view):
            raise ValueError(f"{len(view) - offset} byte(s) after the last id")
        width = max(int(lengths.max()) if count else 1, 1)
        out = np.zeros((count, width), dtype=np.uint8)
        data = np.frombuffer(view, dtype=np.uint8)
        # a gather of at most ~64 K bytes (x 8 for its index) at a time: the peak stays well under the
        # ids' own size (a 4 M-byte gather took 32 MB of index, more than 20,000 ids' whole column)
        step = max(1, (1 << 16) // width)
        for first in range(0, count, step):
            rows = slice(first, min(first + step, count))
            index = starts[rows, None] + np.arange(width)
            np.minimum(index, len(data) - 1, out=index)
            inside = np.arange(width) < lengths[rows, None]
            out[rows] = np.where(inside, data[index], 0)
        return cls(out.view(f"S{width}").ravel())

    # ---- the sequence -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.array[index].decode("utf-8")
        return IdColumn(self.array[index])

    def __iter__(self) -> Iterator[str]:
        for value in self.array:
            yield value.decode("utf-8")

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str) or "\x00" in value:
            return False
        return bool((self.array == value.encode("utf-8")).any())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdColumn):
            return len(self) == len(other) and bool((self.array == other.array).all())
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in list(self[:3]))
        return f"IdColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    # ---- order and joins --------------------------------------------------------------------------

    def is_sorted_unique(self) -> bool:
        """Strictly increasing (sorted, no repeats): what :meth:`positions` needs."""
        return len(self) < 2 or bool((self.array[1:] > self.array[:-1]).all())

    def repeated(self) -> IdColumn:
        """The ids that occur more than once (each once, sorted)."""
        ordered = np.sort(self.array)
        return IdColumn(np.unique(ordered[1:][ordered[1:] == ordered[:-1]]))

    def positions(self, wanted: Iterable[str] | IdColumn) -> np.ndarray:
        """int64: the position of each of ``wanted`` in this column, -1 where absent (an id no column
        can hold, with a NUL character or not encodable, is absent). This column must be sorted and
        unique (:meth:`is_sorted_unique`); a binary search per id, no dict."""
        if not isinstance(wanted, IdColumn):
            wanted = list(wanted)
            storable = np.fromiter((_storable(value) for value in wanted), dtype=bool, count=len(wanted))
            if not storable.all():
                found = np.full(len(wanted), -1, dtype=np.int64)
                found[storable] = self.positions([v for v, ok in zip(wanted, storable, strict=True) if ok])
                return found
        wanted = IdColumn.of(wanted).array
        if not len(self):
            return np.full(len(wanted), -1, dtype=np.int64)
        found = np.searchsorted(self.array, wanted).astype(np.int64)
        inside = found < len(self.array)
        hit = np.zeros(len(wanted), dtype=bool)
        hit[inside] = self.array[found[inside]] == wanted[inside]
        return np.where(hit, found, -1)


class SpilledBytes:
    """Bytes in an unlinked temporary file, read back with ``os.pread``: a column of millions of
    caption texts that costs the process no memory (a memory map would count every page it touched).
    Deleted by the operating system when closed or when the process ends."""

    def __init__(self, directory: str | None = None):
        self.file = tempfile.TemporaryFile(prefix="teachclip-column-", dir=directory)
        self.size = 0

    def append(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def finish(self) -> SpilledBytes:
        self.file.flush()
        return self

    def read(self, start: int, stop: int) -> bytes:
        return os.pread(self.file.fileno(), stop - start, start)

    def __len__(self) -> int:
        return self.size


class StringColumnBuilder:
    """Appends texts to a :class:`StringColumn`: in memory, or ``spill``-ed to a temporary file."""

    def __init__(self, spill: bool = False):
        self.data: bytearray | SpilledBytes = SpilledBytes() if spill else bytearray()
        self.ends = array("q")  # 8 bytes per row, no object
        self.size = 0

    def extend(self, texts: Iterable[str]) -> StringColumnBuilder:
        for text in texts:
            encoded = text.encode("utf-8")
            if isinstance(self.data, SpilledBytes):
                self.data.append(encoded)
            else:
                self.data += encoded
            self.size += len(encoded)
            self.ends.append(self.size)
        return self

    def finish(self) -> StringColumn:
        ends = np.frombuffer(self.ends, dtype=np.int64) if len(self.ends) else np.zeros(0, dtype=np.int64)
        if isinstance(self.data, SpilledBytes):
            return StringColumn(self.data.finish(), ends)
        return StringColumn(np.frombuffer(bytes(self.data), dtype=np.uint8), ends)


class StringColumn(Sequence[str]):
    """Texts as one UTF-8 blob and their end offsets (module docstring); the blob is a ``uint8``
    array, or :class:`SpilledBytes` on disk (``StringColumnBuilder(spill=True)``)."""

    __slots__ = ("data", "ends")

    def __init__(self, data: np.ndarray | SpilledBytes, ends: np.ndarray):
        self.data, self.ends = data, ends  # bytes, int64 [rows]: row i is data[ends[i-1]:ends[i]]

    @classmethod
    def of(cls, texts: Iterable[str], spill: bool = False) -> StringColumn:
        return StringColumnBuilder(spill).extend(texts).finish()

    @property
    def spilled(self) -> bool:
        return isinstance(self.data, SpilledBytes)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            index = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(index)
            start, stop = int(self.ends[index - 1]) if index else 0, int(self.ends[index])
            if isinstance(self.data, SpilledBytes):
                return self.data.read(start, stop).decode("utf-8")
            return self.data[start:stop].tobytes().decode("utf-8")
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return [self[int(i)] for i in np.asarray(index).ravel()]

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringColumn, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def select(self, rows: np.ndarray) -> StringColumn:
        """The column of ``rows`` (in that order), built without a ``str`` per row kept; all rows in
        order give the column itself (no copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == len(self) and np.array_equal(rows, np.arange(len(self))):
            return self
        if isinstance(self.data, SpilledBytes):
            return StringColumn.of((self[int(i)] for i in rows), spill=True)
        starts = np.concatenate([[0], self.ends[:-1]])[rows] if len(self) else np.zeros(0, dtype=np.int64)
        lengths = self.ends[rows] - starts
        ends = np.cumsum(lengths)
        data = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
        for first in range(0, len(rows), _CHUNK):  # bounded gather index
            block = slice(first, min(first + _CHUNK, len(rows)))
            index = np.repeat(starts[block] - (ends[block] - lengths[block]), lengths[block])
            out_start = int(ends[first] - lengths[first]) if first < len(rows) else 0
            out_stop = int(ends[block.stop - 1]) if block.stop > first else out_start
            data[out_start:out_stop] = self.data[index + np.arange(out_start, out_stop)]
        return StringColumn(data, ends.astype(np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (a spilled blob is on disk)."""
        return int(self.ends.nbytes + (0 if isinstance(self.data, SpilledBytes) else self.data.nbytes))
