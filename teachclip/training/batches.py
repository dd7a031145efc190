"""What goes into a training batch: the data order (samplers) and the frames reader.

- :func:`caption_per_video_batches`: CLIP4Clip's epoch, every video once with one of its captions;
- :func:`candidate_batches`: for sparse (candidate) caches, random seed videos plus a ``hard_fraction``
  of each batch drawn from the seeds' stored candidates (``train_student.sampler: candidates``);
- :func:`neighbourhood_batches`: the same, grown from a sparse teacher cache's neighbourhoods so that
  more in-batch soft labels are known (``train_student.sampler: neighbourhood``);
- :func:`mask_captions`: the caption lists without the captions a caption-audit mask flags;
- :func:`frames_batches`: frames (or frame features) of a sequence of batches, the next one read in a
  background thread.

Every sampler is a pure function of ``(seed, epoch)`` (its own generator, no global RNG), so a resumed
run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from teachclip.core.manifest import Manifest, SplitData, split_data
from teachclip.stores.caption_mask import CaptionMaskError
from teachclip.stores.teacher_cache import GroupReader, SparseGroup, TeacherCacheError


def training_data(store: Any, manifest: Manifest, split: str = "train") -> SplitData:
    """The videos a training epoch draws from: the decoded videos of ``split`` that have a caption
    (at least 2: InfoNCE needs negatives), in the store's order, with their captions."""
    return split_data(manifest, split, store.video_ids, store.valid, require_captions=True, min_videos=2)


@dataclass(frozen=True)
class Batch:
    videos: np.ndarray  # positions in the training video list, each at most once per epoch
    captions: np.ndarray  # one caption index per video, drawn uniformly among its captions


def caption_per_video_batches(
    captions_of_video: Sequence[Sequence[int]], batch_size: int, seed: int, epoch: int
) -> list[Batch]:
    """CLIP4Clip's epoch: every video once, in a shuffled order, with one of its captions.

    A pure function of ``(seed, epoch)`` (its own generator, no global RNG), so a resumed run sees
    exactly the batches of an uninterrupted one. A last batch of a single video is dropped (InfoNCE
    needs negatives). Videos without captions must not be passed.
    """
    counts = np.array([len(c) for c in captions_of_video], dtype=np.int64)
    if (counts == 0).any():
        raise ValueError(f"video position {int(np.argmin(counts))} has no captions")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts[order])
    captions = np.array([captions_of_video[v][c] for v, c in zip(order, choice, strict=True)], dtype=np.int64)
    batches = [
        Batch(order[start : start + batch_size], captions[start : start + batch_size])
        for start in range(0, len(order), batch_size)
    ]
    return [batch for batch in batches if len(batch.videos) >= 2]


def frames_batches(
    store, indices: Sequence[np.ndarray], prefetch: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(frames uint8 [n, T, H, W, 3], mask bool [n, T])`` for each index array, read from a
    FramesStore; with ``prefetch`` the next batch is read in a background thread while the caller
    computes on the current one (zarr decompression releases the GIL)."""

    def read(batch_indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames, mask = store.read(np.asarray(batch_indices))
        return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(np.asarray(mask, dtype=bool))

    if not prefetch:
        for batch_indices in indices:
            yield read(batch_indices)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, indices[0]) if len(indices) else None
        for position in range(len(indices)):
            current = pending.result()
            if position + 1 < len(indices):
                pending = pool.submit(read, indices[position + 1])
            yield current


def training_neighbours(group: GroupReader, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """int64 [training captions, K]: each training caption's stored neighbours as *training-set video
    positions* (-1 for a neighbour outside the training set). ``rows``/``cols``: the training set's
    cache rows and columns."""
    if not isinstance(group, SparseGroup):
        raise TeacherCacheError(f"{group.path}: the neighbourhood sampler needs a sparse teacher cache "
                                f"(`teach cache sparsify`)")
    position_of_column = np.full(group.layout.n_videos, -1, dtype=np.int64)
    position_of_column[cols] = np.arange(len(cols))
    return position_of_column[group.neighbours(rows)[0]]


def candidate_batches(captions_of_video: Sequence[Sequence[int]], neighbours: np.ndarray, batch_size: int,
                      hard_fraction: float, seed: int, epoch: int) -> list[Batch]:
    """Every video once per epoch with one of its captions, in batches of *seeds* and *candidates*.

    A batch takes ``max(1, batch_size - round(hard_fraction * batch_size))`` seed videos, the next
    unused ones of a shuffled order (random, as :func:`caption_per_video_batches`), then fills the
    rest with the seeds' candidates: the unused videos that the seeds' drawn captions list in the
    cache (``neighbours[c]``: training-video positions, best teacher score first, -1 for none), taken
    round-robin over the seeds by rank (every seed's best first, then every seed's second ...), so
    the hard part is spread over the seeds instead of crowding around one. When the seeds list no
    unused video, the batch is filled with the next unused videos of the order (random fill).

    ``hard_fraction`` 0 gives random batches (whose in-batch pairs the cache mostly does not hold:
    the losses mask them); 1 gives one seed and its neighbourhood (every negative hard: what made
    the ``neighbourhood`` sampler hurt). In between, each seed caption is scored against its known
    candidates (hard negatives with exact teacher scores) *and* still meets random easy negatives
    in InfoNCE. A pure function of ``(seed, epoch)``; a last batch of a single video is dropped."""
    counts = np.array([len(c) for c in captions_of_video], dtype=np.int64)
    if (counts == 0).any():
        raise ValueError(f"video position {int(np.argmin(counts))} has no captions")
    if not 0 <= hard_fraction <= 1:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    rng = np.random.default_rng([seed, epoch, 2])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts)
    caption_of = np.array([captions_of_video[v][c] for v, c in enumerate(choice)], dtype=np.int64)
    n_seeds = max(1, batch_size - round(hard_fraction * batch_size))
    used = np.zeros(len(counts), dtype=bool)
    batches, cursor = [], 0

    def next_unused() -> int | None:
        nonlocal cursor
        while cursor < len(order) and used[order[cursor]]:
            cursor += 1
        return int(order[cursor]) if cursor < len(order) else None

    while next_unused() is not None:
        members = []
        while len(members) < n_seeds and (video := next_unused()) is not None:
            used[video] = True
            members.append(video)
        ranked = neighbours[caption_of[members]].T.ravel()  # rank-major: every seed's best, then second ...
        for video in ranked:
            if len(members) == batch_size:
                break
            if video >= 0 and not used[video]:
                used[video] = True
                members.append(int(video))
        while len(members) < batch_size and (video := next_unused()) is not None:
            used[video] = True
            members.append(video)
        if len(members) >= 2:
            videos = np.array(members, dtype=np.int64)
            batches.append(Batch(videos, caption_of[videos]))
    return batches


def neighbourhood_batches(captions_of_video: Sequence[Sequence[int]], neighbours: np.ndarray, batch_size: int,
                          seed: int, epoch: int) -> list[Batch]:
    """Every video once per epoch with one of its captions (as :func:`caption_per_video_batches`), but a
    batch is grown greedily from an anchor so that the teacher's scores of most in-batch pairs are
    stored. A pure function of ``(seed, epoch)``.

    ``neighbours[c]``: video positions of caption c's stored top-k (-1: none). Growing a batch: among
    the unused videos that a member's drawn caption lists, add the one that makes the most new pairs
    known, ``#members listing it + #members its own drawn caption lists`` (ties: the lower position).
    When no member lists an unused video, the batch continues from the next unused anchor of a
    shuffled order. A last batch of a single video is dropped (InfoNCE needs negatives)."""
    counts = np.array([len(c) for c in captions_of_video], dtype=np.int64)
    if (counts == 0).any():
        raise ValueError(f"video position {int(np.argmin(counts))} has no captions")
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts)
    caption_of = np.array([captions_of_video[v][c] for v, c in enumerate(choice)], dtype=np.int64)
    listed = [[int(v) for v in neighbours[caption_of[video]] if v >= 0] for video in range(len(counts))]
    listers: list[list[int]] = [[] for _ in range(len(counts))]  # videos whose drawn caption lists this one
    for video, targets in enumerate(listed):
        for target in targets:
            listers[target].append(video)
    used = np.zeros(len(counts), dtype=bool)
    batches, anchor = [], 0
    while True:
        while anchor < len(order) and used[order[anchor]]:
            anchor += 1
        if anchor == len(order):
            return batches
        members: list[int] = []
        gain: dict[int, int] = {}  # unused candidate -> pairs with the members that adding it makes known
        while len(members) < batch_size:
            if gain:
                video = max(gain, key=lambda v: (gain[v], -v))
            else:  # no member is related to an unused video: continue from the next anchor
                while anchor < len(order) and used[order[anchor]]:
                    anchor += 1
                if anchor == len(order):
                    break
                video = int(order[anchor])
            used[video] = True
            members.append(video)
            gain.pop(video, None)
            for other in listed[video] + listers[video]:  # it lists them, or they list it
                if not used[other]:
                    gain[other] = gain.get(other, 0) + 1
        if len(members) >= 2:
            videos = np.array(members, dtype=np.int64)
            batches.append(Batch(videos, caption_of[videos]))


def mask_captions(captions_of_video: Sequence[Sequence[int]], caption_ids: Sequence[str],
                  keep: dict[str, bool]) -> tuple[list[list[int]], list[int]]:
    """The sampler's caption lists with masked captions removed, and the positions of the videos whose
    every caption is masked (they keep all of theirs: dropping a video is another decision than
    dropping a caption). Captions absent from the mask are kept."""
    if not any(caption_id in keep for caption_id in caption_ids):
        raise CaptionMaskError("the caption mask names none of the training captions: it belongs to another dataset")
    masked, fallback = [], []
    for position, captions in enumerate(captions_of_video):
        kept = [c for c in captions if keep.get(caption_ids[c], True)]
        if not kept:
            fallback.append(position)
            kept = list(captions)
        masked.append(kept)
    return masked, fallback
