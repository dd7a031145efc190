"""``teach audit-captions``: TeachText's caption-noise audit from a teacher cache.

For every training caption ``i`` and its own video ``v(i)``, the audit reads the teachers' cached
similarity rows ``T_k[i, :]`` (every train video) and computes

- per teacher ``k``: ``rank_k(i) = #{j != v(i) : T_k[i, j] >= T_k[i, v(i)]}`` (0-based, pessimistic
  ties: the rule of :mod:`teachclip.models.metrics`; a NaN score counts as -inf);
- for the teachers together: the same rank in the *mean of the row-standardised* matrices
  ``M[i, :] = mean_k (T_k[i, :] - mu_k(i)) / sigma_k(i)``, with ``mu_k(i)``, ``sigma_k(i)`` the mean
  and standard deviation of row ``i`` of teacher ``k`` over all videos.

Why standardise rows before averaging: teachers store scores on their own scales (cosines near 0.2
for CLIP, up to 1 for sentence similarities, logits for others), so a raw mean would let the teacher
with the widest spread decide alone. A per-row z-score keeps each teacher's ranking of the videos
unchanged (with one teacher the mean ranks equal the teacher's ranks) and gives every teacher the same
say. TeachText averages raw matrices only because its teachers share one scale.

A caption is *flagged* when its own video ranks outside the top ``top_k`` of the mean:
``rank_mean(i) >= top_k`` (TeachText's masks use K = 100 or 80). The cache is read ``block_texts`` rows
at a time, so memory stays ``O(block_texts x videos x teachers)`` whatever the collection size.

Outputs (``--out`` directory)::

    captions.csv       caption_id, video_id, keep, rank_mean, rank_<teacher>..., text (cache row order)
    report.json        per-teacher and mean rank statistics, flagged counts, the videos whose every
                       caption is flagged
    caption_mask.json  {"format": "teachclip-caption-mask", "top_k": K, "keep": {caption_id: bool}}

``train_student.caption_mask`` (the mask file, :mod:`teachclip.stores.caption_mask`) makes
``train-student`` draw only kept captions; a video whose every caption is flagged keeps all of them
(dropping it would remove a video from training, a different decision than dropping a caption) and is
listed by the run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from teachclip.core.errors import InputError
from teachclip.core.manifest import load_manifest
from teachclip.models.metrics import ranks_of_ground_truth, summarize_ranks
from teachclip.stores.caption_mask import write_caption_mask
from teachclip.stores.teacher_cache import TeacherCacheError, open_teacher_caches

CAPTIONS_CSV = "captions.csv"
REPORT_JSON = "report.json"
COMBINATION = "mean over teachers of row-standardised similarities (per caption, over all train videos)"


class AuditError(InputError):
    """Caches or a manifest the audit cannot use; the message says which and why."""


@dataclass
class AuditResult:
    caption_ids: list[str]
    video_ids: list[str]  # each caption's own video
    ranks: dict[str, np.ndarray]  # teacher name -> int64 [captions]; "mean" for the combination
    top_k: int
    report: dict[str, Any]

    @property
    def keep(self) -> np.ndarray:
        return self.ranks["mean"] < self.top_k


def standardise_rows(scores: np.ndarray) -> np.ndarray:
    """``(s - mean_row) / std_row`` in float64; NaN -> -inf first (missing never ranks well), and a
    constant row (std 0) becomes all zeros (every video tied)."""
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(np.float64))
    finite = np.isfinite(scores)
    counts = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / counts
    std = np.sqrt((np.where(finite, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / counts)
    safe_std = np.where(std > 0, std, 1.0)
    return np.where(finite, (values - mean) / safe_std, -np.inf)


def audit_ranks(spec: str | Path, block_texts: int = 1024) -> tuple[list, list[str], np.ndarray, dict[str, np.ndarray]]:
    """(groups, caption ids, own-video column per caption, ranks per teacher and ``"mean"``).

    Rows and columns follow the first group (sorted by name); the other groups are mapped onto them
    by id, so groups written by separate runs over the same train set combine."""
    groups = open_teacher_caches(spec, in_memory=False)  # read in row blocks, never the whole matrix
    incomplete = [g.name for g in groups if not g.complete]
    if incomplete:
        raise AuditError(f"{spec}: incomplete teacher group(s) {', '.join(incomplete)}; finish extract-teachers first")
    reference = groups[0]
    caption_ids, video_ids = reference.text_ids, reference.video_ids
    own = reference.text_video
    maps = []
    for group in groups:
        try:
            maps.append((group.text_index(caption_ids), group.video_index(video_ids)))
        except TeacherCacheError as exc:
            raise AuditError(f"teacher {group.name!r} was computed on another train set than "
                             f"{reference.name!r}: {exc}") from exc
    names = [group.name for group in groups]
    if "mean" in names:
        raise AuditError("a teacher group named 'mean' clashes with the combined ranking's column")
    ranks = {name: np.empty(len(caption_ids), dtype=np.int64) for name in [*names, "mean"]}
    for start in range(0, len(caption_ids), block_texts):
        stop = min(start + block_texts, len(caption_ids))
        combined = np.zeros((stop - start, len(video_ids)))
        for group, (rows, cols) in zip(groups, maps, strict=True):
            standard = standardise_rows(group.similarity_block(rows[start:stop], cols))
            # a per-row z-score keeps the row's order: ranking it is ranking the teacher's raw scores
            ranks[group.name][start:stop] = ranks_of_ground_truth(standard, own[start:stop])
            combined += standard / len(groups)
        ranks["mean"][start:stop] = ranks_of_ground_truth(combined, own[start:stop])
    return groups, caption_ids, own, ranks


def audit_captions(teachers: str | Path, manifest_dir: str | Path, out: str | Path, top_k: int = 100,
                   block_texts: int = 1024) -> AuditResult:
    """Rank every cached training caption's own video under each teacher and their mean, flag the
    captions outside the top ``top_k`` and write the report and the mask (module docstring)."""
    if top_k < 1:
        raise AuditError(f"top_k must be at least 1, got {top_k}")
    groups, caption_ids, own, ranks = audit_ranks(teachers, block_texts)
    video_ids = groups[0].video_ids
    caption_video = [video_ids[column] for column in own]
    manifest = load_manifest(manifest_dir)
    by_id = {caption.caption_id: caption for caption in manifest.captions}
    wrong = [cid for cid, vid in zip(caption_ids, caption_video, strict=True)
             if cid not in by_id or by_id[cid].video_id != vid]
    if wrong:
        raise AuditError(f"{manifest_dir}: {len(wrong)} cached caption(s) missing from the manifest or attached to "
                         f"another video there, e.g. {wrong[:3]}: the cache was computed from another manifest")

    keep = ranks["mean"] < top_k
    by_video: dict[str, list[bool]] = {}
    for video, kept in zip(caption_video, keep, strict=True):
        by_video.setdefault(video, []).append(bool(kept))
    all_flagged = sorted(video for video, kept in by_video.items() if not any(kept))

    def stats(name: str) -> dict[str, Any]:
        summary = summarize_ranks(ranks[name], "rank")
        return {"R1": summary["rank_R1"], "R5": summary["rank_R5"], "R10": summary["rank_R10"],
                "median_rank": summary["rank_MdR"], "mean_rank": summary["rank_MnR"],
                f"within_top_{top_k}": float(100.0 * np.mean(ranks[name] < top_k)),
                "flagged": int(np.sum(ranks[name] >= top_k))}

    report = {
        "top_k": top_k,
        "rank_rule": "0-based rank of the caption's own video among all train videos; ties count against it; "
                     "R@K = % of captions ranked < K; median/mean rank are 1-based",
        "combination": COMBINATION,
        "captions": len(caption_ids),
        "videos": len(video_ids),
        "flagged": int(np.sum(~keep)),
        "flagged_fraction": float(np.mean(~keep)),
        "videos_with_every_caption_flagged": all_flagged,
        "teachers": {g.name: {"kind": g.kind, "fingerprint": g.fingerprint, **stats(g.name)} for g in groups},
        "mean": stats("mean"),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [g.name for g in groups]
    with open(out / CAPTIONS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["caption_id", "video_id", "keep", "rank_mean", *[f"rank_{n}" for n in names], "text"])
        for row, caption_id in enumerate(caption_ids):
            writer.writerow([caption_id, caption_video[row], int(keep[row]), int(ranks["mean"][row]),
                             *[int(ranks[n][row]) for n in names], by_id[caption_id].text])
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    write_caption_mask(out, dict(zip(caption_ids, keep.tolist(), strict=True)), top_k,
                       {g.name: g.fingerprint for g in groups})
    return AuditResult(list(caption_ids), caption_video, ranks, top_k, report)
