"""Adapters from the official annotation files of five benchmarks to a teachclip manifest.

``prepare_dataset("msrvtt" | "msvd" | "vatex" | "activitynet" | "didemo", root, out_dir, **options)``
reads the annotation files as the datasets (and the CLIP4Clip line of code) distribute them and
writes ``videos.csv`` + ``captions.csv`` (see :mod:`teachclip.core.manifest`). Formats, split
conventions and their sources are documented in ``docs/datasets.md``.

Errors in the annotation files (a missing file or key, a split file naming a video the annotations
do not have, a video in two splits) raise :class:`ManifestError` naming the file and the problem.
Video files missing on disk are not an error here: the manifest points at the expected path, a
count is printed, and decode reports each missing file.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import pickle
import pickletools
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teachclip.core.manifest import ManifestError, load_manifest, read_csv_table, write_manifest

DATASETS = ("msrvtt", "msvd", "vatex", "activitynet", "didemo")
# Earlier extensions win when one video exists in several containers.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".3gp", ".mpg", ".mpeg", ".wmv", ".flv")
# Sub-folders of the dataset root searched for annotation files (TeachCLIP keeps them in Annotations/).
ANNOTATION_DIRS = ("", "annotations", "Annotations")
# Video folders tried in order when no videos_dir is given; the first that exists is used.
VIDEO_DIRS = {
    "msrvtt": ("videos/all", "videos", "MSRVTT_Videos", "VideoData"),
    "msvd": ("videos", "YouTubeClips", "MSVD_Videos", "VideoData"),
    "vatex": ("videos", "VATEX_Videos", "VideoData"),
    "activitynet": ("videos", "Activity_Videos", "VideoData"),
    "didemo": ("videos", "DiDeMo_Videos", "VideoData"),
}
# DiDeMo annotators saw at most the first 30 s; CLIP4Clip/TeachCLIP decode seconds 0..31 of every video.
DIDEMO_CLIP_SECONDS = (0.0, 31.0)


# ---- collected rows -------------------------------------------------------------------------------


@dataclass
class DatasetRows:
    """Videos (id -> split, in insertion order) and captions, built up by one adapter."""

    splits: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # video id -> file that put it in its split
    captions: list[tuple[str, str, str]] = field(default_factory=list)
    clips: dict[str, tuple[float, float]] = field(default_factory=dict)
    empty_captions: int = 0

    def add_video(self, video_id: str, split: str, source: Path | str) -> None:
        existing = self.splits.get(video_id)
        if existing is not None and existing != split:
            raise ManifestError(
                f"{source}: video {video_id!r} is put in split {split!r} but is already in split"
                f" {existing!r} (from {self.origins[video_id]}); a video can be in one split only"
            )
        if existing is None:
            self.splits[video_id] = split
            self.origins[video_id] = str(source)

    def add_caption(self, caption_id: str, video_id: str, text: str) -> None:
        # Whitespace is normalised so multi-line or padded sentences make clean CSV rows.
        cleaned = " ".join(text.split())
        if not cleaned:
            self.empty_captions += 1
            return
        self.captions.append((caption_id, video_id, cleaned))

    def counts(self) -> dict[str, tuple[int, int]]:
        """split -> (videos, captions)."""
        videos: dict[str, int] = {}
        for split in self.splits.values():
            videos[split] = videos.get(split, 0) + 1
        captions = dict.fromkeys(videos, 0)
        for _, video_id, _ in self.captions:
            captions[self.splits[video_id]] += 1
        return {
            split: (videos[split], captions[split]) for split in ("train", "val", "test") if split in videos
        }


# ---- reading files --------------------------------------------------------------------------------


def _annotation(root: Path, name: str) -> Path:
    found = _optional_annotation(root, name)
    if found is None:
        also = ", ".join(str(root / d) for d in ANNOTATION_DIRS if d)
        raise ManifestError(f"{root / name}: file not found (also looked in {also})")
    return found


def _optional_annotation(root: Path, name: str) -> Path | None:
    for folder in ANNOTATION_DIRS:
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    return None


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc})") from exc


def _expect(value: Any, kind: type | tuple[type, ...], path: Path, what: str) -> Any:
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ManifestError(f"{path}: {what} should be a {names}, found {type(value).__name__}")
    return value


def _key(record: Any, key: str, path: Path, where: str) -> Any:
    _expect(record, dict, path, where)
    if key not in record:
        raise ManifestError(
            f"{path}: {where} has no {key!r} key (keys: {', '.join(sorted(record)) or 'none'})"
        )
    return record[key]


def _string_list(value: Any, path: Path, what: str) -> list[str]:
    _expect(value, list, path, what)
    for item in value:
        _expect(item, str, path, f"every item of {what}")
    return value


def _read_id_list(path: Path) -> list[tuple[int, str]]:
    """(line number, id) for every non-blank line of a one-id-per-line split file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc})") from exc
    ids = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    seen: dict[str, int] = {}
    for number, video_id in ids:
        if video_id in seen:
            raise ManifestError(
                f"{path}:{number}: video {video_id!r} listed twice (first on line {seen[video_id]})"
            )
        seen[video_id] = number
    if not ids:
        raise ManifestError(f"{path}: lists no videos")
    return ids


# ---- MSR-VTT --------------------------------------------------------------------------------------

MSRVTT_TRAIN_CSV = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
MSRVTT_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
# The official split by video number (MSR-VTT README), used when a video record has no "split".
MSRVTT_SPLIT_BOUNDS = ((6512, "train"), (7009, "val"), (9999, "test"))


def prepare_msrvtt(
    root: Path, out_dir: Path, *, split: str = "9k", test: str = "1k-A", videos_dir: Path | None = None
) -> Path:
    """MSR-VTT: ``split`` "9k" | "7k" (CLIP4Clip train CSVs) | "full" (official 6513/497);
    ``test`` "1k-A" (JSFusion, one query per video) | "full" (official 2990 videos, all captions)."""
    _choose(split, ("9k", "7k", "full"), "msrvtt split")
    _choose(test, ("1k-A", "full"), "msrvtt test")
    rows = _msrvtt_rows(root, split, test)
    return _finish("msrvtt", root, out_dir, rows, videos_dir)


def _msrvtt_rows(root: Path, split: str, test: str) -> DatasetRows:
    data_path = _annotation(root, "MSRVTT_data.json")
    data = _expect(_read_json(data_path), dict, data_path, "the top level")
    records = _expect(_key(data, "videos", data_path, "the top level"), list, data_path, "'videos'")
    video_ids = [_msrvtt_video_id(record, data_path, index) for index, record in enumerate(records)]
    known = set(video_ids)
    sentences = _msrvtt_sentences(data, data_path, known)
    official = _msrvtt_official_splits(records, video_ids, data_path) if "full" in (split, test) else {}

    rows = DatasetRows()
    if split == "full":
        train_ids = [v for v in video_ids if official[v] == "train"]
        val_ids = [v for v in video_ids if official[v] == "val"]
        train_source: Path | str = f"{data_path} (split field)"
    else:
        train_source = _annotation(root, MSRVTT_TRAIN_CSV[split])
        train_ids, val_ids = _msrvtt_train_csv(train_source, known), []
    for video_ids_of_split, name, source in (
        (train_ids, "train", train_source),
        (val_ids, "val", train_source),
    ):
        for video_id in video_ids_of_split:
            rows.add_video(video_id, name, source)
            for sen_id, caption in sentences.get(video_id, []):
                rows.add_caption(f"{video_id}#sen{sen_id}", video_id, caption)

    if test == "1k-A":
        _msrvtt_jsfusion_test(root, known, rows)
    else:
        for video_id in (v for v in video_ids if official[v] == "test"):
            rows.add_video(video_id, "test", f"{data_path} (split field)")
            for sen_id, caption in sentences.get(video_id, []):
                rows.add_caption(f"{video_id}#sen{sen_id}", video_id, caption)
    return rows


def _msrvtt_video_id(record: Any, path: Path, index: int) -> str:
    return _expect(_key(record, "video_id", path, f"videos[{index}]"), str, path, f"videos[{index}].video_id")


def _msrvtt_sentences(data: dict, path: Path, known: set[str]) -> dict[str, list[tuple[Any, str]]]:
    """video id -> [(sen_id, caption)] in file order."""
    sentences = _expect(_key(data, "sentences", path, "the top level"), list, path, "'sentences'")
    by_video: dict[str, list[tuple[Any, str]]] = {}
    for index, record in enumerate(sentences):
        where = f"sentences[{index}]"
        video_id = _expect(_key(record, "video_id", path, where), str, path, f"{where}.video_id")
        caption = _expect(_key(record, "caption", path, where), str, path, f"{where}.caption")
        sen_id = _key(record, "sen_id", path, where)
        if video_id not in known:
            raise ManifestError(f"{path}: {where} refers to video {video_id!r}, which is not in 'videos'")
        by_video.setdefault(video_id, []).append((sen_id, caption))
    return by_video


def _msrvtt_official_splits(records: list, video_ids: list[str], path: Path) -> dict[str, str]:
    splits = {}
    for index, (record, video_id) in enumerate(zip(records, video_ids, strict=True)):
        name = record.get("split")
        if name is None:
            splits[video_id] = _msrvtt_split_by_number(video_id, path, index)
        elif name in MSRVTT_SPLIT_NAMES:
            splits[video_id] = MSRVTT_SPLIT_NAMES[name]
        else:
            raise ManifestError(
                f"{path}: videos[{index}] has split {name!r} (expected train, validate or test)"
            )
    return splits


def _msrvtt_split_by_number(video_id: str, path: Path, index: int) -> str:
    match = re.fullmatch(r"video(\d+)", video_id)
    number = int(match.group(1)) if match else -1
    for last, name in MSRVTT_SPLIT_BOUNDS:
        if 0 <= number <= last:
            return name
    raise ManifestError(
        f"{path}: videos[{index}] ({video_id!r}) has no 'split' key and is not one of video0..video9999"
    )


def _msrvtt_train_csv(path: Path, known: set[str]) -> list[str]:
    first_line: dict[str, int] = {}
    for line, row in read_csv_table(path, ("video_id",), strip_header=True):
        video_id = (row["video_id"] or "").strip()
        if not video_id:
            raise ManifestError(f"{path}:{line}: empty video_id")
        if video_id not in known:
            raise ManifestError(f"{path}:{line}: video {video_id!r} is not in MSRVTT_data.json")
        if video_id in first_line:
            raise ManifestError(
                f"{path}:{line}: video {video_id!r} listed twice (first on line {first_line[video_id]})"
            )
        first_line[video_id] = line
    video_ids = list(first_line)
    if not video_ids:
        raise ManifestError(f"{path}: lists no videos")
    return video_ids


def _msrvtt_jsfusion_test(root: Path, known: set[str], rows: DatasetRows) -> None:
    """1k-A: the JSFusion CSV's sentence is the query, one per test video (not the 20 JSON captions)."""
    path = _annotation(root, "MSRVTT_JSFUSION_test.csv")
    table = read_csv_table(path, ("key", "vid_key", "video_id", "sentence"), strip_header=True)
    if not table:
        raise ManifestError(f"{path}: lists no test pairs")
    for line, row in table:
        video_id, key = (row["video_id"] or "").strip(), (row["key"] or "").strip()
        if not video_id or not key:
            raise ManifestError(f"{path}:{line}: empty video_id or key")
        if video_id not in known:
            raise ManifestError(f"{path}:{line}: video {video_id!r} is not in MSRVTT_data.json")
        rows.add_video(video_id, "test", path)
        rows.add_caption(f"{video_id}#{key}", video_id, row["sentence"] or "")


# ---- MSVD -----------------------------------------------------------------------------------------

MSVD_SPLIT_FILES = (("train", "train_list.txt"), ("val", "val_list.txt"), ("test", "test_list.txt"))


def prepare_msvd(root: Path, out_dir: Path, *, videos_dir: Path | None = None) -> Path:
    """MSVD: the CLIP4Clip/collaborative-experts split lists (1200/100/670) with every caption of a
    video; captions from ``raw-captions.pkl`` (read without executing code) or ``AllVideoDescriptions.txt``."""
    captions, source = _msvd_captions(root)
    rows = DatasetRows()
    for split, name in MSVD_SPLIT_FILES:
        list_path = _annotation(root, name)
        for line, video_id in _read_id_list(list_path):
            if video_id not in captions:
                raise ManifestError(f"{list_path}:{line}: video {video_id!r} has no captions in {source}")
            rows.add_video(video_id, split, list_path)
            for index, caption in enumerate(captions[video_id]):
                rows.add_caption(f"{video_id}#{index}", video_id, caption)
    return _finish("msvd", root, out_dir, rows, videos_dir)


def _msvd_captions(root: Path) -> tuple[dict[str, list[str]], Path]:
    pickle_path = _optional_annotation(root, "raw-captions.pkl")
    if pickle_path is not None:
        return read_caption_pickle(pickle_path), pickle_path
    text_path = _optional_annotation(root, "AllVideoDescriptions.txt")
    if text_path is not None:
        return read_all_video_descriptions(text_path), text_path
    raise ManifestError(
        f"{root / 'raw-captions.pkl'}: file not found, and no AllVideoDescriptions.txt either"
        " (MSVD needs one of the two caption files)"
    )


# Opcodes that only build dicts, lists, tuples, sets, strings, numbers and memo references.
# Anything else (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT*, PERSID, ...) can
# import or call code, so a file containing one is refused before anything is unpickled.
SAFE_PICKLE_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_SET", "ADDITEMS", "FROZENSET",
        "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
        "NONE", "NEWTRUE", "NEWFALSE",
        "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    }
)  # fmt: skip


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Second line of defence: refuses every class or function a pickle asks for."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to import {module}.{name}")


def read_caption_pickle(path: Path) -> dict[str, list[str]]:
    """Read ``raw-captions.pkl`` ({video id: [caption tokens, ...]}) without running code.

    The file is first scanned with :mod:`pickletools` (which parses without executing) and refused
    if it holds any opcode outside :data:`SAFE_PICKLE_OPCODES`; it is then loaded by an unpickler
    whose ``find_class`` refuses everything. Token lists are joined with spaces, as CLIP4Clip does.
    """
    data = path.read_bytes()
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name not in SAFE_PICKLE_OPCODES:
                raise ManifestError(
                    f"{path}: refusing to load: pickle opcode {opcode.name} at byte {position} can import"
                    " or run code; a caption pickle must hold only dicts, lists and strings"
                )
        loaded = _NoGlobalsUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except ManifestError:
        raise
    except Exception as exc:  # any parse failure of an untrusted file is a bad-file error
        raise ManifestError(f"{path}: not a readable caption pickle ({exc})") from exc
    # memo references let a few bytes name the same list many times: bound what the file may expand to
    return _caption_dict(loaded, path, budget=PICKLE_EXPANSION * len(data) + (1 << 20))


PICKLE_EXPANSION = 8  # caption characters per pickle byte: a real caption pickle is below 2


def _caption_dict(loaded: Any, path: Path, budget: int) -> dict[str, list[str]]:
    _expect(loaded, dict, path, "the pickled object")
    captions: dict[str, list[str]] = {}
    for video_id, items in loaded.items():
        _expect(video_id, str, path, "every key")
        _expect(items, list, path, f"the captions of {video_id!r}")
        texts = []
        for item in items:
            budget -= 1 + (len(item) if isinstance(item, str) else
                           sum(len(t) for t in item if isinstance(t, str)) if isinstance(item, list) else 0)
            if budget < 0:
                raise ManifestError(f"{path}: the pickle expands to far more caption text than its size allows "
                                    f"(repeated references?); refusing it")
            texts.append(_caption_text(item, path, video_id))
        captions[video_id] = texts
    return captions


def _caption_text(item: Any, path: Path, video_id: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, list) and all(isinstance(token, str) for token in item):
        return " ".join(item)
    raise ManifestError(f"{path}: a caption of {video_id!r} is neither a string nor a list of word strings")


def read_all_video_descriptions(path: Path) -> dict[str, list[str]]:
    """``AllVideoDescriptions.txt`` (UT Austin MSVD page): ``<video id> <English caption>`` per line;
    lines starting with ``#`` are comments."""
    captions: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        video_id, _, caption = line.strip().partition(" ")
        captions.setdefault(video_id, []).append(caption)
    if not captions:
        raise ManifestError(f"{path}: holds no captions")
    return captions


# ---- VATEX ----------------------------------------------------------------------------------------

VATEX_FILES = (("train", "vatex_training_v1.0.json"), ("validation", "vatex_validation_v1.0.json"))


def prepare_vatex(
    root: Path, out_dir: Path, *, split_dir: Path | None = None, videos_dir: Path | None = None
) -> Path:
    """VATEX, English captions only. With split lists (``train_list.txt``, ``test_list.txt``, optional
    ``val_list.txt``, as TS2-Net/X-Pool use: 25,991 / 1,500 / 1,500) in ``split_dir`` or the root,
    those decide; otherwise the official files do: training -> train, validation (3,000) -> test."""
    captions, origins = _vatex_captions(root)
    folder = Path(split_dir) if split_dir is not None else root
    lists = _vatex_split_lists(folder, required=split_dir is not None)
    rows = DatasetRows()
    if lists:
        for split, list_path in lists:
            for line, video_id in _read_id_list(list_path):
                if video_id not in captions:
                    raise ManifestError(
                        f"{list_path}:{line}: video {video_id!r} is in neither VATEX JSON file"
                    )
                _add_vatex_video(rows, video_id, split, list_path, captions[video_id])
    else:
        for video_id, source in origins.items():
            split = "train" if source.name == VATEX_FILES[0][1] else "test"
            _add_vatex_video(rows, video_id, split, source, captions[video_id])
    return _finish("vatex", root, out_dir, rows, videos_dir)


def _vatex_captions(root: Path) -> tuple[dict[str, list[str]], dict[str, Path]]:
    captions: dict[str, list[str]] = {}
    origins: dict[str, Path] = {}
    for _, name in VATEX_FILES:
        path = _annotation(root, name)
        records = _expect(_read_json(path), list, path, "the top level")
        for index, record in enumerate(records):
            where = f"item {index}"
            video_id = _expect(_key(record, "videoID", path, where), str, path, f"{where}.videoID")
            if video_id in origins:
                raise ManifestError(
                    f"{path}: {where} repeats video {video_id!r} (already in {origins[video_id]})"
                )
            captions[video_id] = _string_list(_key(record, "enCap", path, where), path, f"{where}.enCap")
            origins[video_id] = path
    return captions, origins


def _vatex_split_lists(folder: Path, required: bool) -> list[tuple[str, Path]]:
    present = {split: folder / f"{split}_list.txt" for split in ("train", "val", "test")}
    present = {split: path for split, path in present.items() if path.is_file()}
    if not present and not required:
        return []
    for split in ("train", "test"):
        if split not in present:
            raise ManifestError(
                f"{folder / f'{split}_list.txt'}: file not found (VATEX split lists need train and test)"
            )
    return list(present.items())


def _add_vatex_video(rows: DatasetRows, video_id: str, split: str, source: Path, captions: list[str]) -> None:
    rows.add_video(video_id, split, source)
    for index, caption in enumerate(captions):
        rows.add_caption(f"{video_id}#{index}", video_id, caption)


# ---- ActivityNet Captions -------------------------------------------------------------------------


def prepare_activitynet(
    root: Path, out_dir: Path, *, test: str = "val_1", videos_dir: Path | None = None
) -> Path:
    """ActivityNet Captions as paragraph retrieval: a video's sentences joined into one query;
    train on ``train.json``, test on ``val_1.json`` (the standard) or ``val_2.json``."""
    _choose(test, ("val_1", "val_2"), "activitynet test")
    rows = DatasetRows()
    for split, name in (("train", "train.json"), ("test", f"{test}.json")):
        path = _annotation(root, name)
        records = _expect(_read_json(path), dict, path, "the top level")
        for video_id, record in records.items():
            sentences = _string_list(_key(record, "sentences", path, video_id), path, f"{video_id}.sentences")
            _check_timestamps(record, sentences, path, video_id)
            rows.add_video(video_id, split, path)
            rows.add_caption(f"{video_id}#paragraph", video_id, " ".join(s.strip() for s in sentences))
    return _finish("activitynet", root, out_dir, rows, videos_dir)


def _check_timestamps(record: dict, sentences: list[str], path: Path, video_id: str) -> None:
    timestamps = record.get("timestamps")
    if timestamps is None:
        return
    if len(_expect(timestamps, list, path, f"{video_id}.timestamps")) != len(sentences):
        raise ManifestError(
            f"{path}: {video_id} has {len(timestamps)} timestamps but {len(sentences)} sentences"
        )


# ---- DiDeMo ---------------------------------------------------------------------------------------

DIDEMO_FILES = (("train", "train_data.json"), ("val", "val_data.json"), ("test", "test_data.json"))


def prepare_didemo(root: Path, out_dir: Path, *, videos_dir: Path | None = None) -> Path:
    """DiDeMo as paragraph retrieval: a video's descriptions concatenated in file order; every video
    clipped to seconds 0-31 (``start``/``end`` columns). Optional ``<split>_list.txt`` files
    (collaborative-experts: 8392/1065/1004) restrict each split to the videos they list."""
    rows = DatasetRows()
    for split, name in DIDEMO_FILES:
        path = _annotation(root, name)
        descriptions = _didemo_descriptions(path)
        for video_id in _didemo_selection(root, split, descriptions, path):
            rows.add_video(video_id, split, path)
            rows.add_caption(f"{video_id}#paragraph", video_id, " ".join(descriptions[video_id]))
            rows.clips[video_id] = DIDEMO_CLIP_SECONDS
    return _finish("didemo", root, out_dir, rows, videos_dir)


def _didemo_descriptions(path: Path) -> dict[str, list[str]]:
    records = _expect(_read_json(path), list, path, "the top level")
    descriptions: dict[str, list[str]] = {}
    for index, record in enumerate(records):
        where = f"item {index}"
        video_id = _expect(_key(record, "video", path, where), str, path, f"{where}.video")
        text = _expect(_key(record, "description", path, where), str, path, f"{where}.description")
        descriptions.setdefault(video_id, []).append(text.strip())
    return descriptions


def _didemo_selection(
    root: Path, split: str, descriptions: dict[str, list[str]], json_path: Path
) -> list[str]:
    list_path = _optional_annotation(root, f"{split}_list.txt")
    if list_path is None:
        return list(descriptions)
    # The lists name videos with or without their file extension; match either way.
    by_stem = {_strip_video_extension(video_id): video_id for video_id in descriptions}
    selected = []
    for line, listed in _read_id_list(list_path):
        video_id = listed if listed in descriptions else by_stem.get(_strip_video_extension(listed))
        if video_id is None:
            raise ManifestError(f"{list_path}:{line}: video {listed!r} is not in {json_path.name}")
        selected.append(video_id)
    return selected


# ---- finishing: video paths, writing, summary ---------------------------------------------------


def _finish(dataset: str, root: Path, out_dir: Path, rows: DatasetRows, videos_dir: Path | None) -> Path:
    if not rows.splits:
        raise ManifestError(f"{root}: the annotation files name no videos")
    folder = _videos_folder(dataset, root, videos_dir)
    index = _index_videos(folder)
    paths = {video_id: _video_path(dataset, video_id, folder, index) for video_id in rows.splits}
    missing = sum(1 for path in paths.values() if not path.is_file())
    _write(out_dir, rows, paths)
    print(_summary(dataset, rows, missing, folder))
    return out_dir


def _videos_folder(dataset: str, root: Path, videos_dir: Path | None) -> Path:
    if videos_dir is not None:
        return Path(videos_dir).absolute()
    for name in VIDEO_DIRS[dataset]:
        if (root / name).is_dir():
            return (root / name).absolute()
    return (root / "videos").absolute()


def _index_videos(folder: Path) -> dict[str, Path]:
    """File name and file name without its extension -> path, for every video file below ``folder``."""
    found = []
    for directory, _, names in os.walk(folder, followlinks=True):
        found += [Path(directory) / n for n in names if Path(n).suffix.lower() in VIDEO_EXTENSIONS]
    found.sort(key=lambda p: (VIDEO_EXTENSIONS.index(p.suffix.lower()), str(p)))
    index: dict[str, Path] = {}
    for path in found:
        index.setdefault(path.name, path)
        index.setdefault(path.name[: -len(path.suffix)], path)
    return index


def _video_path(dataset: str, video_id: str, folder: Path, index: dict[str, Path]) -> Path:
    candidates = [video_id, _strip_video_extension(video_id)]
    if dataset == "activitynet" and video_id.startswith("v_"):
        candidates.append(video_id[2:])  # CLIP4Clip's copies drop the official "v_" prefix
    for name in candidates:
        if name in index:
            return index[name]
    has_extension = Path(video_id).suffix.lower() in VIDEO_EXTENSIONS
    return folder / (video_id if has_extension else f"{video_id}.mp4")


def _strip_video_extension(name: str) -> str:
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in VIDEO_EXTENSIONS else name


def _write(out_dir: Path, rows: DatasetRows, paths: dict[str, Path]) -> None:
    """Build the manifest in ``<out>.partial`` and move its files into place, so a failed run never
    leaves a half-written manifest behind."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    videos = [(video_id, str(paths[video_id]), split) for video_id, split in rows.splits.items()]
    write_manifest(partial, videos, rows.captions)
    if rows.clips:
        _add_clip_columns(partial / "videos.csv", rows.clips)
        load_manifest(partial)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("videos.csv", "captions.csv"):
        os.replace(partial / name, out_dir / name)
    shutil.rmtree(partial, ignore_errors=True)


def _add_clip_columns(videos_csv: Path, clips: dict[str, tuple[float, float]]) -> None:
    """Append optional ``start,end`` (seconds) columns; an empty cell means the whole video.
    load_manifest reads them (they are part of the manifest fingerprint) and decode samples inside them."""
    with open(videos_csv, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    with open(videos_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*table[0], "start", "end"])
        for row in table[1:]:
            start, end = clips.get(row[0], ("", ""))
            writer.writerow([*row, _seconds(start), _seconds(end)])


def _seconds(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _summary(dataset: str, rows: DatasetRows, missing: int, folder: Path) -> str:
    parts = [
        f"{split} {videos} videos / {captions} captions"
        for split, (videos, captions) in rows.counts().items()
    ]
    text = f"{dataset}: " + ", ".join(parts)
    if rows.empty_captions:
        text += f"; {rows.empty_captions} empty captions skipped"
    if missing:
        text += f"; {missing} of {len(rows.splits)} video files not found under {folder} (decode will report them)"
    return text


# ---- dispatcher -----------------------------------------------------------------------------------

ADAPTERS: dict[str, Callable[..., Path]] = {
    "msrvtt": prepare_msrvtt,
    "msvd": prepare_msvd,
    "vatex": prepare_vatex,
    "activitynet": prepare_activitynet,
    "didemo": prepare_didemo,
}


def prepare_dataset(dataset: str, root: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """Write a manifest for ``dataset`` from its official files under ``root``; returns ``out_dir``.

    Options whose value is None are ignored (the adapter's default applies), so a CLI can pass every
    flag it has. Options: msrvtt ``split``, ``test``; vatex ``split_dir``; activitynet ``test``;
    all ``videos_dir``.
    """
    if dataset not in ADAPTERS:
        raise ManifestError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: dataset root directory not found")
    given = {name: value for name, value in options.items() if value is not None}
    _check_options(dataset, ADAPTERS[dataset], given)
    return ADAPTERS[dataset](root, Path(out_dir), **given)


def _check_options(dataset: str, adapter: Callable[..., Path], options: dict[str, Any]) -> None:
    accepted = [p.name for p in inspect.signature(adapter).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ManifestError(
            f"{dataset} does not take option(s) {', '.join(unknown)} (options: {', '.join(accepted)})"
        )


def _choose(value: str, allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ManifestError(f"unknown {what} {value!r} (choose from {', '.join(allowed)})")
