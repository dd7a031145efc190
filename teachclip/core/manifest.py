"""The manifest: the one description of a dataset that every stage reads.

A manifest is a directory with two CSV files:

- ``videos.csv``   — ``video_id,path,split``; ``path`` relative to the manifest directory or absolute;
  optional ``start,end`` columns (seconds) restrict a video to a clip (DiDeMo uses 0-31 s); an
  empty cell means the start or the end of the file;
- ``captions.csv`` — ``caption_id,video_id,text``.

:func:`load_manifest` validates and raises :class:`ManifestError` naming the file, the line and the
reason. Rows keep file order; stages that need a canonical order sort by id themselves.

:func:`split_data` is the one definition of "the videos of a split that decoded, and their captions",
which training, teacher extraction and evaluation all use.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np

from teachclip.core.columns import MAX_ID_CHARS, IdColumn, StringColumn, StringColumnBuilder
from teachclip.core.errors import InputError
from teachclip.core.fingerprint import canonical_json, sha256_file

SPLITS = ("train", "val", "test")
VIDEO_COLUMNS = ("video_id", "path", "split")
CAPTION_COLUMNS = ("caption_id", "video_id", "text")
MANIFEST_FINGERPRINT_VERSION = 1
_CHUNK_ROWS = 16_384  # rows checked as one batch of columns: bounds the objects alive while reading


class ManifestError(InputError):
    """A manifest that cannot be used; the message names the file and the reason."""


# Slots and a path kept as text: at millions of videos and captions every byte per row counts (a
# Path object is ~230 bytes, an instance __dict__ ~100; bench/scale_training.py measures the total).
@dataclass(frozen=True, slots=True)
class Video:
    video_id: str
    path_text: str  # absolute
    split: str
    start: float | None = None  # clip bounds in seconds; None = start / end of the file
    end: float | None = None

    @property
    def path(self) -> Path:
        return Path(self.path_text)  # normalised here ("a//b", "a/./b")


@dataclass(frozen=True, slots=True)
class Caption:
    caption_id: str
    video_id: str
    text: str


@dataclass
class Manifest:
    """The manifest's videos and captions as objects, for the splits in ``kept`` (None: every split).

    ``load_manifest(..., keep=...)`` validates every row of the files but keeps objects only for some
    splits: a run that needs the 1,000 test videos of a collection of millions holds those, and reads
    any other split as columns (:func:`split_data`) or streams it (:meth:`fingerprint`)."""

    root: Path
    videos: list[Video]
    captions: list[Caption]
    _by_id: dict[str, Video] = field(default_factory=dict, repr=False)  # given by load_manifest, else built
    kept: tuple[str, ...] | None = None
    allowed: tuple[str, ...] = SPLITS
    _index: ManifestIndex | None = field(default=None, repr=False)  # check_manifest's result, given by load_manifest

    def __post_init__(self) -> None:
        if not self._by_id:
            self._by_id = {video.video_id: video for video in self.videos}

    def _require(self, split: str | None) -> None:
        if self.kept is not None and (split is None or split not in self.kept):
            raise ManifestError(f"{self.root}: split {split or 'every split'!r} was not loaded "
                                f"(load_manifest(..., keep={self.kept}))")

    def video(self, video_id: str) -> Video:
        return self._by_id[video_id]

    def videos_in(self, split: str | None) -> list[Video]:
        """Videos of one split (None: all), in manifest order."""
        self._require(split)
        return [v for v in self.videos if split is None or v.split == split]

    def captions_in(self, split: str | None) -> list[Caption]:
        """Captions whose video is in ``split`` (None: all), in manifest order."""
        self._require(split)
        if split is None:
            return list(self.captions)
        return [c for c in self.captions if self._by_id[c.video_id].split == split]

    def captions_by_video(self, split: str | None = None) -> dict[str, list[Caption]]:
        grouped: dict[str, list[Caption]] = {v.video_id: [] for v in self.videos_in(split)}
        for caption in self.captions_in(split):
            grouped[caption.video_id].append(caption)
        return grouped

    def fingerprint(self, mode: str = "content") -> str:
        """Hash of every video's (id, split, size, content hash or mtime) and every caption.

        ``mode="content"`` hashes file bytes (robust, costs a read of every file);
        ``mode="stat"`` uses size and mtime (instant, but a copy with new mtimes changes it).
        Missing files contribute a marker, so decode can still run and report them. A manifest loaded
        with ``keep`` streams its files instead of its objects: the same hash, no object per row.
        """
        if mode not in ("stat", "content"):
            raise ManifestError(f"unknown fingerprint mode {mode!r} (expected 'content' or 'stat')")
        if self.kept is None:
            videos = sorted(self.videos, key=lambda v: v.video_id)
            captions = ((c.caption_id, c.video_id, c.text) for c in sorted(self.captions, key=lambda c: c.caption_id))
            return _manifest_hash(videos, captions, mode)
        return _streamed_fingerprint(self.root, self.allowed, mode, self.index())

    def split_columns(self, split: str) -> SplitColumns:
        """The videos (sorted by id) and captions (manifest order) of ``split`` as columns; from the
        objects when the split was kept, else read from the files without an object per row."""
        if self.kept is None or split in self.kept:
            videos = IdColumn.of(sorted(v.video_id for v in self.videos if v.split == split))
            captions = [c for c in self.captions if self._by_id[c.video_id].split == split]
            return SplitColumns(videos, IdColumn.of(c.caption_id for c in captions), StringColumn.of(c.text for c in captions),
                                videos.positions(IdColumn.of(c.video_id for c in captions)))
        return _streamed_split(self.root, self.allowed, split, self.index())

    def index(self) -> ManifestIndex:
        if self._index is None:
            self._index = check_manifest(self.root, self.allowed)
        return self._index


def _manifest_hash(videos: Iterable[Video], captions: Iterable[tuple[str, str, str]], mode: str) -> str:
    """:func:`teachclip.core.fingerprint.fingerprint` of the manifest document, written piece by piece:
    ``{"captions": [[id, video, text], ...], "version": V, "videos": [[id, split, identity(, clip)], ...]}``
    with captions sorted by id and videos by id (sorted keys, no whitespace, ASCII: canonical JSON)."""
    digest = hashlib.sha256(b"manifest\0")
    digest.update(b'{"captions":[')
    for i, caption in enumerate(captions):
        digest.update((b"," if i else b"") + canonical_json(list(caption)).encode())
    digest.update(b'],"version":' + canonical_json(MANIFEST_FINGERPRINT_VERSION).encode() + b',"videos":[')
    for i, video in enumerate(videos):
        entry = [video.video_id, video.split, _file_identity(video.path_text, mode)]
        if video.start is not None or video.end is not None:
            entry.append([video.start, video.end])  # only clipped videos change the hash format
        digest.update((b"," if i else b"") + canonical_json(entry).encode())
    digest.update(b"]}")
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitColumns:
    """One split of a manifest as columns: its video ids (sorted), its captions in manifest order and
    the position of each caption's video among ``video_ids``."""

    video_ids: IdColumn
    caption_ids: IdColumn
    texts: StringColumn
    caption_video: np.ndarray  # int64 [captions]


@dataclass(frozen=True, eq=False)
class CaptionGroups:
    """Each training video's captions as two arrays instead of a list per video (millions of videos):
    video ``v``'s caption positions are ``members[starts[v]:starts[v + 1]]``, in manifest order."""

    starts: np.ndarray  # int64 [videos + 1]
    members: np.ndarray  # int64 [captions], grouped by video

    @classmethod
    def of(cls, caption_video: np.ndarray, n_videos: int, keep: np.ndarray | None = None) -> CaptionGroups:
        """From each caption's video position (``SplitData.caption_video``); ``keep``: bool per caption."""
        captions = np.arange(len(caption_video), dtype=np.int64)
        if keep is not None:
            captions = captions[keep]
        members = captions[np.argsort(caption_video[captions], kind="stable")]
        starts = np.searchsorted(caption_video[members], np.arange(n_videos + 1)).astype(np.int64)
        return cls(starts, members)

    @classmethod
    def coerce(cls, groups: CaptionGroups | Sequence[Sequence[int]]) -> CaptionGroups:
        """``groups`` itself, or the groups of a list of caption lists (one per video)."""
        if isinstance(groups, CaptionGroups):
            return groups
        counts = np.array([len(c) for c in groups], dtype=np.int64)
        members = np.fromiter((c for captions in groups for c in captions), dtype=np.int64, count=int(counts.sum()))
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), members)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def tolist(self) -> list[list[int]]:
        return [self[v].tolist() for v in range(len(self))]

    def __getitem__(self, video: int) -> np.ndarray:
        return self.members[self.starts[video] : self.starts[video + 1]]

    @property
    def counts(self) -> np.ndarray:
        counts = np.diff(self.starts)
        if (counts == 0).any():
            raise ValueError(f"video position {int(np.argmin(counts))} has no captions")
        return counts

    def draw(self, videos: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """The ``choice``-th caption of each of ``videos``."""
        return self.members[self.starts[videos] + choice]


@dataclass(frozen=True)
class SplitData:
    """The videos of one split that a frames store decoded, and their captions, as columns (no object
    per row: :mod:`teachclip.core.columns`).

    ``video_ids`` are sorted (the frames store's order); captions keep manifest order (the order
    the training sampler draws from; the teacher cache sorts its rows by caption id itself).
    """

    split: str
    video_ids: IdColumn
    store_rows: np.ndarray  # int64 [videos]: row of each video in the frames store
    caption_ids: IdColumn
    texts: StringColumn
    caption_video: np.ndarray  # int64 [captions]: position of each caption's video in video_ids
    excluded_video_ids: list[str]  # failed decodes (and, with require_captions, videos without captions)

    @property
    def caption_video_ids(self) -> IdColumn:
        """Each caption's own video id."""
        return IdColumn(self.video_ids.array[self.caption_video])

    @property
    def captions_of_video(self) -> CaptionGroups:
        """Each video's captions (what a training sampler draws from)."""
        return CaptionGroups.of(self.caption_video, len(self.video_ids))


def split_data(manifest: Manifest, split: str, store_video_ids: Sequence[str], store_valid: Sequence[bool],
               *, require_captions: bool = False, min_videos: int = 1) -> SplitData:
    """The videos of ``split`` that decoded (``store_valid`` of a frames store whose rows are
    ``store_video_ids``, sorted) and the captions of those videos.

    ``require_captions``: leave out videos without a caption too (a training sampler draws one caption
    per video); otherwise they stay, as distractors of retrieval and columns of a teacher cache.
    Refuses a split with fewer than ``min_videos`` such videos, or none of their captions, and a
    store that lacks some of the split's videos (decoded from another manifest).
    """
    columns = manifest.split_columns(split)
    if not len(columns.video_ids):
        raise ManifestError(f"{manifest.root}: no videos in split {split!r}")
    store_ids = IdColumn.of(store_video_ids)
    if not store_ids.is_sorted_unique():
        raise ManifestError(f"{manifest.root}: the frames store's video ids are not sorted and unique")
    rows = store_ids.positions(columns.video_ids)
    if (rows < 0).any():
        absent = list(columns.video_ids[rows < 0][:3])
        raise ManifestError(
            f"{manifest.root}: {int((rows < 0).sum())} {split} video(s) are not in the frames store, e.g. {absent}: "
            f"was it decoded from another manifest?")
    usable = np.asarray(store_valid, dtype=bool)[rows]
    if require_captions:
        usable &= np.bincount(columns.caption_video, minlength=len(rows)) > 0
    if usable.sum() < max(min_videos, 1):
        raise ManifestError(f"{manifest.root}: split {split!r} has {int(usable.sum())} usable video(s) "
                            f"(decoded{', with captions' if require_captions else ''}); {max(min_videos, 1)} needed")
    position = np.cumsum(usable) - 1  # new position of each kept video
    caption_kept = usable[columns.caption_video]
    if not caption_kept.any():
        raise ManifestError(f"{manifest.root}: no captions of decoded videos in split {split!r}")
    kept_captions = np.flatnonzero(caption_kept)
    return SplitData(
        split=split,
        video_ids=columns.video_ids[usable],
        store_rows=rows[usable],
        caption_ids=columns.caption_ids[kept_captions],
        texts=columns.texts.select(kept_captions),
        caption_video=position[columns.caption_video[kept_captions]].astype(np.int64),
        excluded_video_ids=list(columns.video_ids[~usable]),
    )


def _file_identity(path: str | Path, mode: str) -> list:
    """[size, mtime or sha256] of a video file, or a marker for a missing one. Takes the path as text
    (a ``Path`` per video would intern every path component in a table that never shrinks)."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    if stat is None or not S_ISREG(stat.st_mode):
        return ["missing" if stat is None else "not-a-file"]
    if mode == "stat":
        return [stat.st_size, stat.st_mtime_ns]
    if mode == "content":
        return [stat.st_size, sha256_file(path)]
    raise ManifestError(f"unknown fingerprint mode {mode!r} (expected 'content' or 'stat')")


def read_csv_table(
    path: Path, columns: tuple[str, ...], strip_header: bool = False
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a UTF-8 CSV (a byte-order mark is fine) that must have
    ``columns``; errors name the file. ``strip_header``: tolerate spaces around column names, as
    some official annotation files have."""
    return list(iter_csv_table(path, columns, strip_header))


def iter_csv_table(
    path: Path, columns: tuple[str, ...], strip_header: bool = False
) -> Iterator[tuple[int, dict[str, str]]]:
    """:func:`read_csv_table` one row at a time (a manifest of millions of rows is never held as
    row dicts); the checks and errors are the same, a bad row's error comes when it is reached."""
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if strip_header:
                header = reader.fieldnames = [name.strip() for name in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise ManifestError(
                    f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(header) or 'empty'};"
                    f" expected {','.join(columns)})"
                )
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ManifestError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
            for row in reader:
                # line numbers are 1-based and count the header, as an editor shows them
                if None in row:  # csv.DictReader files extra values under None: a cell would lose text
                    raise ManifestError(
                        f"{path}:{reader.line_num}: {len(row[None])} more value(s) than header columns (an unquoted "
                        f"comma in a text? quote the field)")
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ManifestError(f"{path}: malformed CSV: {exc}") from exc


def _seconds(cell: str | None, path: Path, line: int, column: str) -> float | None:
    cell = (cell or "").strip()
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise ManifestError(f"{path}:{line}: {column} {cell!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise ManifestError(f"{path}:{line}: {column} {cell!r} is not a finite number of seconds")
    if value < 0:
        raise ManifestError(f"{path}:{line}: {column} {value} is negative")
    return value


def _video_rows(root: Path, allowed: tuple[str, ...]) -> Iterator[tuple[int, Video]]:
    """Every row of ``videos.csv`` as (line, Video), each row checked on its own. The path is joined as
    text (``pathlib`` would intern every path component in a table that never shrinks)."""
    videos_csv = root / "videos.csv"
    for line, row in iter_csv_table(videos_csv, VIDEO_COLUMNS):
        video_id = (row["video_id"] or "").strip()
        path = (row["path"] or "").strip()
        split = (row["split"] or "").strip()
        if not video_id:
            raise ManifestError(f"{videos_csv}:{line}: empty video_id")
        if "\x00" in video_id or len(video_id) > MAX_ID_CHARS:
            raise ManifestError(f"{videos_csv}:{line}: video_id {video_id[:60]!r} contains a NUL character or is "
                                f"longer than {MAX_ID_CHARS} characters")
        if not path:
            raise ManifestError(f"{videos_csv}:{line}: empty path for video {video_id!r}")
        if split not in allowed:
            raise ManifestError(
                f"{videos_csv}:{line}: unknown split {split!r} for video {video_id!r} (allowed: {', '.join(allowed)})"
            )
        start = _seconds(row.get("start"), videos_csv, line, "start")
        end = _seconds(row.get("end"), videos_csv, line, "end")
        if start is not None and end is not None and end <= start:
            raise ManifestError(f"{videos_csv}:{line}: clip end {end} is not after start {start}")
        resolved = path if os.path.isabs(path) else os.path.join(root, path)
        split = allowed[allowed.index(split)]  # one string object per split, not one per row
        yield line, Video(video_id, resolved, split, start, end)


def _caption_rows(root: Path) -> Iterator[tuple[int, str, str, str]]:
    """Every row of ``captions.csv`` as (line, caption_id, video_id, text), each row checked on its own."""
    captions_csv = root / "captions.csv"
    for line, row in iter_csv_table(captions_csv, CAPTION_COLUMNS):
        caption_id = (row["caption_id"] or "").strip()
        video_id = (row["video_id"] or "").strip()
        text = (row["text"] or "").strip()
        if not caption_id:
            raise ManifestError(f"{captions_csv}:{line}: empty caption_id")
        if "\x00" in caption_id or len(caption_id) > MAX_ID_CHARS:
            raise ManifestError(f"{captions_csv}:{line}: caption_id {caption_id[:60]!r} contains a NUL character or "
                                f"is longer than {MAX_ID_CHARS} characters")
        if not text:
            raise ManifestError(f"{captions_csv}:{line}: empty text for caption {caption_id!r}")
        yield line, caption_id, video_id, text


def _chunks(rows: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _duplicate_error(path: Path, rows: Iterable[tuple[int, str]], repeated: IdColumn, what: str) -> ManifestError:
    """The error for the first repeated id in file order (a second pass over the file, errors only)."""
    wanted, first = set(repeated), {}
    for line, value in rows:
        if value in wanted:
            if value in first:
                return ManifestError(f"{path}:{line}: duplicate {what} {value!r} (first on line {first[value]})")
            first[value] = line
    return ManifestError(f"{path}: duplicate {what}(s) {list(repeated[:3])} (the file changed while it was read?)")


@dataclass(frozen=True)
class ManifestIndex:
    """What the checks of a whole manifest leave: every video id (sorted) and its split; whether
    each file lists its rows sorted by id (then :meth:`Manifest.fingerprint` streams it as it is)."""

    video_ids: IdColumn
    video_split: np.ndarray  # uint8 [videos]: index into the allowed splits
    videos_sorted: bool
    captions_sorted: bool

    def split_of(self, video_ids: IdColumn, path: Path, lines: Sequence[int], caption_ids: Sequence[str]) -> np.ndarray:
        """(positions in ``self.video_ids``) of each caption's video; ManifestError for an unknown one."""
        found = self.video_ids.positions(video_ids)
        if (found < 0).any():
            bad = int(np.argmax(found < 0))
            raise ManifestError(f"{path}:{lines[bad]}: caption {caption_ids[bad]!r} refers to unknown video "
                                f"{video_ids[bad]!r}")
        return found


def check_manifest(root: Path, allowed: tuple[str, ...] = SPLITS) -> ManifestIndex:
    """Check every row of a manifest directory and the relations between rows (unique ids, every
    caption's video listed), holding columns of ids only (:mod:`teachclip.core.columns`), never an
    object per row. ManifestError names the file, the line and the reason."""
    videos_csv, captions_csv = root / "videos.csv", root / "captions.csv"
    id_parts, split_parts = [], []
    for chunk in _chunks(_video_rows(root, allowed)):
        id_parts.append(IdColumn.of(video.video_id for _, video in chunk).array)
        split_parts.append(np.array([allowed.index(video.split) for _, video in chunk], dtype=np.uint8))
    if not id_parts:
        raise ManifestError(f"{videos_csv}: no videos")
    file_ids = IdColumn(np.concatenate(id_parts))
    del id_parts
    videos_sorted = file_ids.is_sorted_unique()  # sorted and unique: no duplicate to look for
    if not videos_sorted and len(repeated := file_ids.repeated()):
        raise _duplicate_error(videos_csv, ((line, video.video_id) for line, video in _video_rows(root, allowed)),
                               repeated, "video_id")
    order = np.argsort(file_ids.array, kind="stable")
    index = ManifestIndex(IdColumn(file_ids.array[order]), np.concatenate(split_parts)[order], videos_sorted, False)
    del file_ids, split_parts, order
    caption_parts = []
    for chunk in _chunks(_caption_rows(root)):
        ids = IdColumn.of(row[1] for row in chunk)
        index.split_of(IdColumn.of(row[2] for row in chunk), captions_csv, [row[0] for row in chunk], ids)
        caption_parts.append(ids.array)
    caption_ids = IdColumn(np.concatenate(caption_parts)) if caption_parts else IdColumn.of([])
    del caption_parts
    captions_sorted = caption_ids.is_sorted_unique()
    if not captions_sorted and len(repeated := caption_ids.repeated()):
        raise _duplicate_error(captions_csv, ((row[0], row[1]) for row in _caption_rows(root)), repeated, "caption_id")
    return replace(index, captions_sorted=captions_sorted)


def load_manifest(directory: str | Path, splits: Iterable[str] = SPLITS, *, keep: Iterable[str] | None = None) -> Manifest:
    """Load and validate a manifest directory. ``keep``: hold objects only for these splits (every
    row is still checked); :meth:`Manifest.split_columns` and :meth:`Manifest.fingerprint` read the
    others from the files."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ManifestError(f"{directory}: manifest directory not found")
    allowed = tuple(splits)
    kept = None if keep is None else tuple(split for split in allowed if split in set(keep))
    index = check_manifest(root, allowed)
    videos = [video for _, video in _video_rows(root, allowed) if kept is None or video.split in kept]
    video_by_id = {video.video_id: video for video in videos}  # also the manifest's index
    captions: list[Caption] = []
    for line, caption_id, video_id, text in _caption_rows(root):
        video = video_by_id.get(video_id)
        if video is None and kept is None:  # the file changed since it was checked
            raise ManifestError(f"{root / 'captions.csv'}:{line}: caption {caption_id!r} refers to unknown video "
                                f"{video_id!r}")
        if video is not None:  # the video's own id object: a caption's copy would be one more string per caption
            captions.append(Caption(caption_id, video.video_id, text))
    return Manifest(root, videos, captions, video_by_id, kept, allowed, index)


def _streamed_split(root: Path, allowed: tuple[str, ...], split: str, index: ManifestIndex) -> SplitColumns:
    """:meth:`Manifest.split_columns` read from the files: ids and positions as columns, the texts in a
    temporary file (:class:`~teachclip.core.columns.SpilledBytes`)."""
    code = allowed.index(split)
    in_split = index.video_split == code
    video_ids = IdColumn(index.video_ids.array[in_split])
    position_in_split = np.cumsum(in_split) - 1  # of each manifest video in video_ids (both sorted by id)
    id_parts, video_parts = [], []
    texts = StringColumnBuilder(spill=True)  # on disk: read back per batch (train-student tokenizes per step)
    for chunk in _chunks(_caption_rows(root)):
        found = index.split_of(IdColumn.of(row[2] for row in chunk), root / "captions.csv", [row[0] for row in chunk],
                               [row[1] for row in chunk])
        mine = np.flatnonzero(index.video_split[found] == code)
        if len(mine):
            id_parts.append(IdColumn.of(chunk[i][1] for i in mine).array)
            texts.extend(chunk[i][3] for i in mine)
            video_parts.append(position_in_split[found[mine]])
    if not id_parts:
        return SplitColumns(video_ids, IdColumn.of([]), StringColumn.of([]), np.zeros(0, dtype=np.int64))
    return SplitColumns(video_ids, IdColumn(np.concatenate(id_parts)), texts.finish(), np.concatenate(video_parts))


def _streamed_fingerprint(root: Path, allowed: tuple[str, ...], mode: str, index: ManifestIndex) -> str:
    """:meth:`Manifest.fingerprint` read from the files: in file order when a file is sorted by id
    (nothing held), else through columns sorted by id (:func:`_sorted_rows`: ids, offsets and a
    temporary file of the rows' text, never an object per row)."""
    videos = (video for _, video in _video_rows(root, allowed))
    captions = ((row[1], row[2], row[3]) for row in _caption_rows(root))
    if not index.videos_sorted:
        videos = (Video(video_id, path, allowed[int(split)], *(None if math.isnan(b) else float(b) for b in bounds))
                  for video_id, path, split, *bounds in _sorted_rows(
                      (v.video_id, v.path_text, allowed.index(v.split), _nan(v.start), _nan(v.end)) for v in videos))
    if not index.captions_sorted:
        captions = ((caption_id, video_id, text) for caption_id, video_id, text in _sorted_rows(captions))
    return _manifest_hash(videos, captions, mode)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _sorted_rows(rows: Iterable[tuple]) -> Iterator[tuple]:
    """``rows`` (an id, then texts or numbers) again, sorted by their id: the ids as an IdColumn, the
    texts spilled to temporary files (StringColumn), the numbers as arrays; one row rebuilt at a time."""
    ids, columns = [], None
    for chunk in _chunks(rows):
        ids.append(IdColumn.of(row[0] for row in chunk).array)
        if columns is None:
            columns = [StringColumnBuilder(spill=True) if isinstance(value, str) else [] for value in chunk[0][1:]]
        for position, column in enumerate(columns, start=1):
            if isinstance(column, StringColumnBuilder):
                column.extend(row[position] for row in chunk)
            else:
                column.append(np.array([row[position] for row in chunk], dtype=np.float64))
    if columns is None:
        return
    order = np.argsort(np.concatenate(ids), kind="stable")
    ordered_ids = IdColumn(np.concatenate(ids)[order])
    del ids
    values = [column.finish() if isinstance(column, StringColumnBuilder) else np.concatenate(column) for column in columns]
    for rank, row in enumerate(order):
        yield (ordered_ids[rank], *(value[int(row)] for value in values))


def write_manifest(
    directory: str | Path,
    videos: Iterable[tuple[str, str, str]],
    captions: Iterable[tuple[str, str, str]],
) -> Path:
    """Write ``videos.csv`` and ``captions.csv``; rows are (video_id, path, split) and
    (caption_id, video_id, text). Validates the result by loading it back."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, columns, rows in (
        ("videos.csv", VIDEO_COLUMNS, videos),
        ("captions.csv", CAPTION_COLUMNS, captions),
    ):
        with open(root / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(rows)
    load_manifest(root)
    return root
