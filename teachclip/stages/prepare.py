"""Turn a user's own list of captioned videos into a manifest (``teach prepare``).

Input: a CSV file with a header, or a JSONL file of one object per line, with these fields
(schema also in docs/demo-data.md, "Your own data"):

==============  ========  ================================================================
field           required  meaning
==============  ========  ================================================================
``video``       one of    path of the video file: absolute, or relative to ``--videos-root``
``video_id``    the two   (default: the input file's folder). ``video_id`` alone: the file is
                          ``<videos-root>/<video_id>.<any extension>``. Without ``video_id``
                          the id is the relative path without its extension (``clips/a.mp4`` ->
                          ``clips/a``).
``caption``     yes       the caption text (JSONL: or ``captions``, a list of texts)
``split``       yes       ``train``, ``val`` or ``test``
``caption_id``  no        default ``<video_id>#<k>``, k counting the video's captions in file order
==============  ========  ================================================================

One row per caption; a video with several captions appears on several rows, always with the same
split. The manifest gets one row per video, in order of first appearance. Relative input paths are
rewritten relative to the manifest directory, absolute paths stay absolute. Files that do not exist
are listed in the result (decode records them as failures) rather than refused, so a manifest can be
written before every download has finished.

Unknown fields (duration, category ...) are ignored, except near misses of the known names
(``capton``), which are reported as typos.

Official datasets (``--dataset msrvtt`` ...) are read by :mod:`teachclip.datasets`.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from teachclip.core.errors import InputError
from teachclip.core.manifest import SPLITS, write_manifest


class PrepareError(InputError):
    """Input that cannot become a manifest; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Row:
    """One caption of one video, as read from the user's file."""

    line: int  # 1-based line in the source, for error messages
    video: str | None  # path as written
    video_id: str | None
    caption: str
    caption_id: str | None
    split: str


@dataclass(frozen=True)
class Prepared:
    manifest_dir: Path
    videos: int
    captions: int
    missing_files: list[str]  # video paths (as written to the manifest) that do not exist


# ---- readers: one per input format, each returns Rows ------------------------------------------


def read_csv_rows(source: Path) -> list[Row]:
    """Rows of a CSV file with a header (columns: see the module docstring)."""
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:  # tolerate a spreadsheet's BOM
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            _check_fields(source, header)
            rows = []
            for record in reader:
                line = reader.line_num
                if None in record:
                    raise PrepareError(f"{source}:{line}: more values than header columns")
                rows.append(_row(source, line, {k: v for k, v in record.items() if v is not None}))
            return rows
    except UnicodeDecodeError as exc:
        raise PrepareError(f"{source}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise PrepareError(f"{source}: malformed CSV: {exc}") from exc


def read_jsonl_rows(source: Path) -> list[Row]:
    """Rows of a JSON-lines file: one object per line, blank lines ignored. An object may carry
    ``captions`` (a list of texts) instead of ``caption``; it then gives one row per text."""
    rows = []
    try:
        lines = source.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise PrepareError(f"{source}: not UTF-8 text ({exc})") from exc
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PrepareError(f"{source}:{line}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise PrepareError(f"{source}:{line}: expected a JSON object, got {type(record).__name__}")
        _check_fields(source, list(record), line)
        if "captions" in record:
            texts = record.pop("captions")
            if "caption" in record or "caption_id" in record:
                raise PrepareError(
                    f"{source}:{line}: give either 'captions' or 'caption'/'caption_id', not both"
                )
            if not isinstance(texts, list) or not texts:
                raise PrepareError(f"{source}:{line}: 'captions' must be a non-empty list of strings")
            rows.extend(_row(source, line, record | {"caption": caption}) for caption in texts)
        else:
            rows.append(_row(source, line, record))
    return rows


READERS: dict[str, Callable[[Path], list[Row]]] = {"csv": read_csv_rows, "jsonl": read_jsonl_rows}
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
KNOWN_FIELDS = ("video", "video_id", "caption", "captions", "split", "caption_id")


def _check_fields(source: Path, fields: Sequence[str], line: int | None = None) -> None:
    where = f"{source}:{line}" if line is not None else str(source)
    # Other fields (duration, category ...) are ignored, but a near miss of a known name is a typo.
    for name in fields:
        close = difflib.get_close_matches(name.lower(), KNOWN_FIELDS, n=1, cutoff=0.75)
        if name not in KNOWN_FIELDS and close:
            raise PrepareError(f"{where}: unknown field {name!r}; did you mean {close[0]!r}?")
    missing = []
    if "video" not in fields and "video_id" not in fields:
        missing.append("video (or video_id)")
    if "caption" not in fields and "captions" not in fields:
        missing.append("caption")
    if "split" not in fields:
        missing.append("split")
    if missing:
        raise PrepareError(f"{where}: missing field(s) {', '.join(missing)}")


def _row(source: Path, line: int, record: dict) -> Row:
    values = {}
    for name in ("video", "video_id", "caption", "caption_id", "split"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise PrepareError(
                f"{source}:{line}: field {name!r} must be a string, got {type(value).__name__}"
            )
        values[name] = (value or "").strip() or None
    if values["video"] is None and values["video_id"] is None:
        raise PrepareError(f"{source}:{line}: empty video (give a path or a video_id)")
    if values["caption"] is None:
        raise PrepareError(f"{source}:{line}: empty caption")
    if values["split"] not in SPLITS:
        raise PrepareError(
            f"{source}:{line}: unknown split {values['split']!r} (allowed: {', '.join(SPLITS)})"
        )
    return Row(line=line, **values)


# ---- rows -> manifest ---------------------------------------------------------------------------


def rows_to_manifest(rows: Sequence[Row], source: Path, out_dir: Path, videos_root: Path) -> Prepared:
    """Check the rows as a whole (one split per video, unique ids) and write the manifest."""
    if not rows:
        raise PrepareError(f"{source}: no rows")
    out_root = os.path.abspath(out_dir)
    files_by_stem = _FileIndex(videos_root)
    videos: dict[str, tuple[str, str, int, str]] = {}  # id -> (manifest path, split, line, file key)
    owner_of_file: dict[str, tuple[str, int]] = {}  # resolved file -> (video id, line)
    captions: list[tuple[str, str, str]] = []
    caption_lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    missing: list[str] = []

    for row in rows:
        where = f"{source}:{row.line}"
        if row.video is not None:
            written = Path(row.video)
            absolute = written if written.is_absolute() else videos_root / written
            video_id = row.video_id or _id_from_path(written, videos_root)
        else:
            video_id = row.video_id
            absolute = files_by_stem.find(video_id, where)
            written = absolute
        # abspath, not resolve: a symlinked dataset keeps its link paths
        file_key = os.path.abspath(absolute)
        manifest_path = str(written) if written.is_absolute() else os.path.relpath(file_key, out_root)

        if video_id in videos:
            first_path, first_split, first_line, first_key = videos[video_id]
            if first_split != row.split:
                raise PrepareError(
                    f"{where}: video {video_id!r} has split {row.split!r} here but {first_split!r} on line {first_line}"
                )
            if first_key != file_key:
                raise PrepareError(
                    f"{where}: video id {video_id!r} names another file than on line {first_line}"
                )
        else:
            if file_key in owner_of_file:
                other_id, other_line = owner_of_file[file_key]
                raise PrepareError(
                    f"{where}: file {row.video or absolute} is already video {other_id!r} (line {other_line})"
                )
            owner_of_file[file_key] = (video_id, row.line)
            videos[video_id] = (manifest_path, row.split, row.line, file_key)
            if not absolute.is_file():
                missing.append(manifest_path)

        caption_id = row.caption_id or f"{video_id}#{counts.get(video_id, 0)}"
        counts[video_id] = counts.get(video_id, 0) + 1
        if caption_id in caption_lines:
            raise PrepareError(
                f"{where}: duplicate caption_id {caption_id!r} (first on line {caption_lines[caption_id]})"
            )
        caption_lines[caption_id] = row.line
        captions.append((caption_id, video_id, row.caption))

    write_manifest(
        out_dir,
        [(video_id, Path(path).as_posix(), split) for video_id, (path, split, _, _) in videos.items()],
        captions,
    )
    return Prepared(out_dir, len(videos), len(captions), missing)


def _id_from_path(path: Path, videos_root: Path) -> str:
    """The path relative to the videos root without its extension, with forward slashes."""
    if path.is_absolute():
        try:
            path = path.relative_to(os.path.abspath(videos_root))
        except ValueError:
            path = Path(path.name)
    return path.with_suffix("").as_posix()


class _FileIndex:
    """Files directly inside the videos root by stem, listed once and only when needed."""

    def __init__(self, root: Path):
        self.root = root
        self.by_stem: dict[str, list[str]] | None = None

    def find(self, video_id: str, where: str) -> Path:
        if self.by_stem is None:
            if not self.root.is_dir():
                raise PrepareError(f"{where}: videos root {self.root} is not a directory")
            self.by_stem = {}
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if entry.is_file():
                    self.by_stem.setdefault(Path(entry.name).stem, []).append(entry.name)
        names = self.by_stem.get(video_id, [])
        if not names:
            raise PrepareError(f"{where}: no file named {video_id}.* in {self.root}")
        if len(names) > 1:
            raise PrepareError(
                f"{where}: several files match video_id {video_id!r} in {self.root}: {', '.join(names)}; "
                "give the path in a 'video' column"
            )
        return self.root / names[0]


# ---- entry points -------------------------------------------------------------------------------


def prepare_csv(
    source: Path, out_dir: Path, *, format: str | None = None, videos_root: Path | None = None
) -> Prepared:
    """Import a CSV or JSONL list of captioned videos (``format``: "csv", "jsonl", or None to go by
    the file name) into a manifest in ``out_dir``."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise PrepareError(f"{source}: input file not found")
    if format is None:
        format = SUFFIX_FORMATS.get(source.suffix.lower())
        if format is None:
            raise PrepareError(f"{source}: cannot tell the format from the name; pass --format csv or jsonl")
    if format not in READERS:
        raise PrepareError(f"unknown format {format!r} (known: {', '.join(READERS)})")
    root = Path(videos_root) if videos_root is not None else source.parent
    return rows_to_manifest(READERS[format](source), source, out_dir, root)
