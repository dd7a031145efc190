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
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachclip.core.errors import InputError
from teachclip.core.fingerprint import fingerprint, sha256_file

SPLITS = ("train", "val", "test")
VIDEO_COLUMNS = ("video_id", "path", "split")
CAPTION_COLUMNS = ("caption_id", "video_id", "text")
MANIFEST_FINGERPRINT_VERSION = 1


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
        return Path(self.path_text)


@dataclass(frozen=True, slots=True)
class Caption:
    caption_id: str
    video_id: str
    text: str


@dataclass
class Manifest:
    root: Path
    videos: list[Video]
    captions: list[Caption]
    _by_id: dict[str, Video] = field(default_factory=dict, repr=False)  # given by load_manifest, else built

    def __post_init__(self) -> None:
        if not self._by_id:
            self._by_id = {video.video_id: video for video in self.videos}

    def video(self, video_id: str) -> Video:
        return self._by_id[video_id]

    def videos_in(self, split: str | None) -> list[Video]:
        """Videos of one split (None: all), in manifest order."""
        return [v for v in self.videos if split is None or v.split == split]

    def captions_in(self, split: str | None) -> list[Caption]:
        """Captions whose video is in ``split`` (None: all), in manifest order."""
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
        Missing files contribute a marker, so decode can still run and report them.
        """
        entries = []
        for video in sorted(self.videos, key=lambda v: v.video_id):
            entry = [video.video_id, video.split, _file_identity(video.path, mode)]
            if video.start is not None or video.end is not None:
                entry.append([video.start, video.end])  # only clipped videos change the hash format
            entries.append(entry)
        captions = sorted([c.caption_id, c.video_id, c.text] for c in self.captions)
        return fingerprint(
            "manifest", {"version": MANIFEST_FINGERPRINT_VERSION, "videos": entries, "captions": captions}
        )


@dataclass(frozen=True)
class SplitData:
    """The videos of one split that a frames store decoded, and their captions.

    ``video_ids`` are sorted (the frames store's order); ``captions`` keep manifest order (the order
    the training sampler draws from; the teacher cache sorts its rows by caption id itself).
    """

    split: str
    video_ids: list[str]
    store_rows: np.ndarray  # int64 [videos]: row of each video in the frames store
    caption_ids: list[str]
    texts: list[str]
    caption_video_ids: list[str]  # each caption's own video
    caption_video: np.ndarray  # int64 [captions]: position of each caption's video in video_ids
    captions_of_video: list[list[int]]  # caption positions of each video (the sampler's input)
    excluded_video_ids: list[str]  # failed decodes (and, with require_captions, videos without captions)


def split_data(manifest: Manifest, split: str, store_video_ids: Sequence[str], store_valid: Sequence[bool],
               *, require_captions: bool = False, min_videos: int = 1) -> SplitData:
    """The videos of ``split`` that decoded (``store_valid`` of a frames store whose rows are
    ``store_video_ids``) and the captions of those videos.

    ``require_captions``: leave out videos without a caption too (a training sampler draws one caption
    per video); otherwise they stay, as distractors of retrieval and columns of a teacher cache.
    Refuses a split with fewer than ``min_videos`` such videos, or none of their captions, and a
    store that lacks some of the split's videos (decoded from another manifest).
    """
    rows = {video_id: row for row, video_id in enumerate(store_video_ids)}
    split_ids = sorted(video.video_id for video in manifest.videos_in(split))
    if not split_ids:
        raise ManifestError(f"{manifest.root}: no videos in split {split!r}")
    absent = [video_id for video_id in split_ids if video_id not in rows]
    if absent:
        raise ManifestError(
            f"{manifest.root}: {len(absent)} {split} video(s) are not in the frames store, e.g. {absent[:3]}: "
            f"was it decoded from another manifest?")
    with_captions = {caption.video_id for caption in manifest.captions_in(split)}
    kept = [video_id for video_id in split_ids
            if store_valid[rows[video_id]] and (not require_captions or video_id in with_captions)]
    if len(kept) < max(min_videos, 1):
        raise ManifestError(f"{manifest.root}: split {split!r} has {len(kept)} usable video(s) "
                            f"(decoded{', with captions' if require_captions else ''}); {max(min_videos, 1)} needed")
    column = {video_id: position for position, video_id in enumerate(kept)}
    captions = [caption for caption in manifest.captions_in(split) if caption.video_id in column]
    if not captions:
        raise ManifestError(f"{manifest.root}: no captions of decoded videos in split {split!r}")
    caption_video = np.array([column[caption.video_id] for caption in captions], dtype=np.int64)
    captions_of_video: list[list[int]] = [[] for _ in kept]
    for position, video in enumerate(caption_video.tolist()):
        captions_of_video[video].append(position)
    return SplitData(
        split=split,
        video_ids=kept,
        store_rows=np.array([rows[video_id] for video_id in kept], dtype=np.int64),
        caption_ids=[caption.caption_id for caption in captions],
        texts=[caption.text for caption in captions],
        caption_video_ids=[caption.video_id for caption in captions],
        caption_video=caption_video,
        captions_of_video=captions_of_video,
        excluded_video_ids=[video_id for video_id in split_ids if video_id not in column],
    )


def _file_identity(path: Path, mode: str) -> list:
    if not path.is_file():
        return ["missing" if not path.exists() else "not-a-file"]
    stat = path.stat()
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


def load_manifest(directory: str | Path, splits: Iterable[str] = SPLITS) -> Manifest:
    """Load and validate a manifest directory."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ManifestError(f"{directory}: manifest directory not found")
    allowed = tuple(splits)
    videos_csv, captions_csv = root / "videos.csv", root / "captions.csv"

    videos: list[Video] = []
    seen_videos: dict[str, int] = {}
    for line, row in iter_csv_table(videos_csv, VIDEO_COLUMNS):
        video_id = (row["video_id"] or "").strip()
        path = (row["path"] or "").strip()
        split = (row["split"] or "").strip()
        if not video_id:
            raise ManifestError(f"{videos_csv}:{line}: empty video_id")
        if video_id in seen_videos:
            raise ManifestError(
                f"{videos_csv}:{line}: duplicate video_id {video_id!r} (first on line {seen_videos[video_id]})"
            )
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
        seen_videos[video_id] = line
        resolved = Path(path) if os.path.isabs(path) else root / path
        split = allowed[allowed.index(split)]  # one string object per split, not one per row
        videos.append(Video(video_id, str(resolved), split, start, end))
    if not videos:
        raise ManifestError(f"{videos_csv}: no videos")

    captions: list[Caption] = []
    seen_captions: dict[str, int] = {}
    video_by_id = {video.video_id: video for video in videos}  # also the manifest's index
    del seen_videos  # its line numbers only served the duplicate check; free it before the captions
    for line, row in iter_csv_table(captions_csv, CAPTION_COLUMNS):
        caption_id = (row["caption_id"] or "").strip()
        video_id = (row["video_id"] or "").strip()
        text = (row["text"] or "").strip()
        if not caption_id:
            raise ManifestError(f"{captions_csv}:{line}: empty caption_id")
        if caption_id in seen_captions:
            raise ManifestError(
                f"{captions_csv}:{line}: duplicate caption_id {caption_id!r} (first on line {seen_captions[caption_id]})"
            )
        if video_id not in video_by_id:
            raise ManifestError(
                f"{captions_csv}:{line}: caption {caption_id!r} refers to unknown video {video_id!r}"
            )
        if not text:
            raise ManifestError(f"{captions_csv}:{line}: empty text for caption {caption_id!r}")
        seen_captions[caption_id] = line
        # the video's own id object: a caption row's copy of the id would be one more string per caption
        captions.append(Caption(caption_id, video_by_id[video_id].video_id, text))
    return Manifest(root, videos, captions, video_by_id)


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
