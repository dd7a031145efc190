"""What the gallery shows, computed: the best teacher and student, the queries, their frames and top-k.

The best teacher is the teacher run with the highest test t2v R@1 in the metrics directory; the best
student is the student variant with the highest mean t2v R@1, represented by its seed with the
highest R@1 (ties: the first in name order). Both are scored on the evaluation split exactly as
``teach evaluate`` does (:func:`teachclip.training.scoring.evaluate_split`).

The query selection is fixed by the rank each model gives the caption's own video (0 = top-1):

=========  ===========================================  ============================  =====
category   rule                                         order within the category     share
=========  ===========================================  ============================  =====
teacher    teacher ranks it first, the student does not student's rank, worst first   35 %
student    student ranks it first, the teacher does not teacher's rank, worst first   35 %
both       both rank it first                           caption id                    15 %
neither    neither ranks it first                       sum of both ranks, worst first 15 %
=========  ===========================================  ============================  =====

Shares are of ``report.gallery_queries`` (largest remainder); a category with too few queries leaves
its places to the others, one at a time in the order above. Ties in an order fall back to the caption
id, so the selection depends on the models and data only.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachclip.core.config import Params
from teachclip.core.errors import InputError
from teachclip.core.manifest import Manifest, load_manifest

CATEGORIES = (
    ("teacher", "the teacher ranks the ground truth first, the student does not"),
    ("student", "the student ranks the ground truth first, the teacher does not"),
    ("both", "both rank the ground truth first"),
    ("neither", "neither ranks the ground truth first"),
)
SHARES = (0.35, 0.35, 0.15, 0.15)
RUN_NAME = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")  # a student run: <variant>-s<seed>
AUDIT_CAPTIONS = "captions.csv"  # written by `teach audit-captions` (docs/stores.md)
AUDIT_REPORT = "report.json"


class GalleryError(InputError):
    """Inputs the gallery cannot use; the message names the file and the reason."""


@dataclass
class Retrieved:
    video_id: str
    score: float
    ground_truth: bool


@dataclass
class Query:
    category: str
    caption_id: str
    text: str
    video_id: str  # the ground truth
    teacher_rank: int  # 1-based rank of the ground truth
    student_rank: int
    teacher_score: float  # the models' scores of the ground truth
    student_score: float
    teacher_relevance: list[float] | None  # softmax over the ground truth's valid frames; None: no frames notion
    student_weights: list[float] | None  # AFA's supervised weights; None: the student has no AFA
    teacher_top: list[Retrieved] = field(default_factory=list)
    student_top: list[Retrieved] = field(default_factory=list)


@dataclass
class Flagged:
    caption_id: str
    video_id: str
    text: str
    rank_mean: int  # 1-based rank of its own video under the teachers' mean
    ranks: dict[str, int]  # teacher -> 1-based rank
    other_captions: list[str]  # the video's other captions, for comparison


@dataclass
class Model:
    run: str  # the metrics file's stem = the run directory's name
    path: Path
    t2v_R1: float


@dataclass
class Gallery:
    teacher: Model
    student: Model
    split: str
    texts: int
    videos: int
    counts: dict[str, int]  # queries per category over the whole split
    queries: list[Query]
    flagged: list[Flagged]
    audit: dict | None  # report.json of the audit, None without an audit
    frames: dict[str, np.ndarray]  # video id -> uint8 [t, H, W, 3], its valid frames


def choose_models(metrics_dir: Path, runs_dir: Path) -> tuple[Model, Model]:
    """(best teacher, best student) by test t2v R@1 (module docstring), as model directories."""
    teachers: list[Model] = []
    variants: dict[str, list[Model]] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        r1 = float(json.loads(path.read_text())["t2v_R1"])  # collect() has checked every file
        model = Model(path.stem, runs_dir / path.stem, r1)
        if path.stem.startswith("teacher-"):
            teachers.append(model)
        else:
            match = RUN_NAME.match(path.stem)
            variants.setdefault(match["variant"] if match else path.stem, []).append(model)
    if not teachers or not variants:
        raise GalleryError(f"{metrics_dir}: the gallery needs the metrics of at least one teacher (teacher-*.json) "
                           f"and one student")
    teacher = max(teachers, key=lambda m: m.t2v_R1)  # max keeps the first of equals: name order
    best_variant = max(variants.values(), key=lambda runs: float(np.mean([m.t2v_R1 for m in runs])))
    student = max(best_variant, key=lambda m: m.t2v_R1)
    for model in (teacher, student):
        if not (model.path / "config.json").is_file():
            raise GalleryError(f"{model.path}: no saved model for the metrics file {metrics_dir / model.run}.json")
    return teacher, student


def select_queries(teacher_ranks: np.ndarray, student_ranks: np.ndarray, caption_ids: Sequence[str],
                   count: int) -> list[tuple[str, int]]:
    """(category, caption position) of the gallery's queries, by the rule of the module docstring."""
    t, s = np.asarray(teacher_ranks), np.asarray(student_ranks)
    positions = range(len(caption_ids))
    pools = {
        "teacher": sorted((i for i in positions if t[i] == 0 and s[i] > 0), key=lambda i: (-s[i], caption_ids[i])),
        "student": sorted((i for i in positions if s[i] == 0 and t[i] > 0), key=lambda i: (-t[i], caption_ids[i])),
        "both": sorted((i for i in positions if t[i] == 0 and s[i] == 0), key=lambda i: caption_ids[i]),
        "neither": sorted((i for i in positions if t[i] > 0 and s[i] > 0),
                          key=lambda i: (-(t[i] + s[i]), caption_ids[i])),
    }
    names = [name for name, _ in CATEGORIES]
    exact = [count * share for share in SHARES]
    quotas = [math.floor(x) for x in exact]
    for index in sorted(range(len(exact)), key=lambda k: (quotas[k] - exact[k], k))[: count - sum(quotas)]:
        quotas[index] += 1  # largest remainder first
    taken = {name: min(quota, len(pools[name])) for name, quota in zip(names, quotas, strict=True)}
    spare = count - sum(taken.values())
    while spare > 0 and any(taken[n] < len(pools[n]) for n in names):
        for name in names:
            if spare > 0 and taken[name] < len(pools[name]):
                taken[name] += 1
                spare -= 1
    return [(name, i) for name in names for i in pools[name][: taken[name]]]


def read_audit(audit_dir: Path, limit: int, manifest: Manifest) -> tuple[dict, list[Flagged]]:
    """The audit's summary and its ``limit`` flagged captions ranked worst (ties: caption id)."""
    report_path, captions_path = audit_dir / AUDIT_REPORT, audit_dir / AUDIT_CAPTIONS
    try:
        summary = json.loads(report_path.read_text())
        with open(captions_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as exc:
        raise GalleryError(f"{exc.filename}: missing; run `teach audit-captions --out {audit_dir}` first") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise GalleryError(f"{audit_dir}: unreadable caption audit ({type(exc).__name__}: {exc})") from exc
    try:
        teachers = [name.removeprefix("rank_") for name in rows[0] if name.startswith("rank_") and name != "rank_mean"] \
            if rows else []
        flagged = sorted((row for row in rows if row["keep"] == "0"),
                         key=lambda row: (-int(row["rank_mean"]), row["caption_id"]))[:limit]
        by_video = manifest.captions_by_video()
        return summary, [
            Flagged(row["caption_id"], row["video_id"], row["text"], int(row["rank_mean"]) + 1,
                    {name: int(row[f"rank_{name}"]) + 1 for name in teachers},
                    [c.text for c in by_video.get(row["video_id"], []) if c.caption_id != row["caption_id"]])
            for row in flagged
        ]
    except (KeyError, ValueError, TypeError) as exc:
        raise GalleryError(f"{captions_path}: not a caption audit table ({type(exc).__name__}: {exc})") from exc


def build_gallery(metrics_dir: str | Path, runs_dir: str | Path, videos: str | Path, frames: str | Path,
                  manifest_dir: str | Path, params: Params, audit_dir: str | Path | None = None) -> Gallery:
    """Score the split with the best teacher and student and gather everything the page draws.

    ``videos``: the store the models score (frames or frame features, as for ``teach evaluate``);
    ``frames``: the frames store the thumbnails come from (may be the same path)."""
    import torch

    from teachclip.core.device import pick_device
    from teachclip.models.factory import load_model
    from teachclip.models.losses import fine_targets
    from teachclip.models.metrics import ranks_of_ground_truth
    from teachclip.stores import open_for_manifest, open_video_store
    from teachclip.stores.frames import require_manifest
    from teachclip.training.scoring import evaluate_split

    config = params.report
    teacher_model, student_model = choose_models(Path(metrics_dir), Path(runs_dir))
    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(videos, manifest)
    pixels = open_video_store(frames, "frames")  # thumbnails need pixels, whatever the models score
    require_manifest(pixels, manifest)
    device = pick_device(params.compute.device)
    teacher = load_model(teacher_model.path, device).eval()
    student = load_model(student_model.path, device).eval()
    if hasattr(teacher, "bind_manifest"):
        teacher.bind_manifest(manifest)
    teacher_eval = evaluate_split(teacher, store, manifest, params.evaluate, device)
    student_eval = evaluate_split(student, store, manifest, params.evaluate, device)
    gt = teacher_eval.text_video_index
    teacher_ranks = ranks_of_ground_truth(teacher_eval.similarity, gt)
    student_ranks = ranks_of_ground_truth(student_eval.similarity, gt)
    caption_ids = teacher_eval.text_ids
    chosen = select_queries(teacher_ranks, student_ranks, caption_ids, config.gallery_queries)
    counts = {
        "teacher": int(np.sum((teacher_ranks == 0) & (student_ranks > 0))),
        "student": int(np.sum((student_ranks == 0) & (teacher_ranks > 0))),
        "both": int(np.sum((teacher_ranks == 0) & (student_ranks == 0))),
        "neither": int(np.sum((teacher_ranks > 0) & (student_ranks > 0))),
    }
    texts = {caption.caption_id: caption.text for caption in manifest.captions}
    video_ids = teacher_eval.video_ids

    def top(similarity: np.ndarray, row: int) -> list[Retrieved]:
        # stable sort of the negated scores: equal scores keep video order (the metric's ties count
        # against the ground truth; the page shows the order the scores give)
        order = np.argsort(-similarity[row], kind="stable")[: config.top_k]
        return [Retrieved(video_ids[c], float(similarity[row, c]), bool(c == gt[row])) for c in order]

    queries = []
    rows = [row for _, row in chosen]
    relevance, weights = frame_signals(teacher, student, store, [caption_ids[r] for r in rows],
                                       [texts[caption_ids[r]] for r in rows], [video_ids[gt[r]] for r in rows],
                                       params.train_student.fine_temperature, device, torch, fine_targets)
    for (category, row), teacher_rel, student_w in zip(chosen, relevance, weights, strict=True):
        queries.append(Query(
            category, caption_ids[row], texts[caption_ids[row]], video_ids[gt[row]],
            int(teacher_ranks[row]) + 1, int(student_ranks[row]) + 1,
            float(teacher_eval.similarity[row, gt[row]]), float(student_eval.similarity[row, gt[row]]),
            teacher_rel, student_w, top(teacher_eval.similarity, row), top(student_eval.similarity, row)))

    audit, flagged = (None, [])
    if audit_dir is not None:
        audit, flagged = read_audit(Path(audit_dir), config.gallery_flagged, manifest)
    shown = {q.video_id for q in queries} | {r.video_id for q in queries for r in q.teacher_top + q.student_top}
    shown |= {f.video_id for f in flagged}
    return Gallery(teacher_model, student_model, params.evaluate.split, len(caption_ids), len(video_ids), counts,
                   queries, flagged, audit, read_frames(pixels, sorted(shown)))


def frame_signals(teacher, student, store, caption_ids, texts, video_ids, tau, device, torch, fine_targets):
    """Per query: the teacher's frame relevance for the caption and the student's AFA weights, both over
    the ground truth's valid frames (softmaxes, as the fine teaching loss compares them)."""
    if not caption_ids:
        return [], []
    data, mask = store.read(store.index(video_ids))
    data, mask = torch.from_numpy(data).to(device), torch.from_numpy(mask).to(device)
    teacher_values: list[list[float] | None] = [None] * len(caption_ids)
    student_values: list[list[float] | None] = [None] * len(caption_ids)
    with torch.no_grad():
        if getattr(teacher, "has_frame_relevance", False):
            batch = teacher.text_batch(list(texts), list(caption_ids), list(video_ids))
            batch["tokens"] = batch["tokens"].to(device)
            text_features = teacher.encode_texts(batch)
            video_features = teacher.encode_videos({"frames": data, "mask": mask, "video_ids": list(video_ids)})
            targets = fine_targets(teacher.relevance(text_features, video_features).float(), mask, tau)
            teacher_values = [targets[i][mask[i]].cpu().tolist() for i in range(len(caption_ids))]
        if getattr(student, "afa", None) is not None:
            features = data if store.holds_features else student.frame_features(data)
            afa = student.frame_weights_from_features(features, mask).float()
            student_values = [afa[i][mask[i]].cpu().tolist() for i in range(len(caption_ids))]
    return teacher_values, student_values


def read_frames(store, video_ids: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    """The valid frames of each video (read ``batch`` videos at a time)."""
    out = {}
    for start in range(0, len(video_ids), batch):
        chunk = video_ids[start : start + batch]
        frames, mask = store.read(store.index(chunk))
        for video_id, video_frames, video_mask in zip(chunk, frames, mask, strict=True):
            out[video_id] = video_frames[video_mask]
    return out
