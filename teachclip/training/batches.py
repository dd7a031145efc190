"""What goes into a training batch: the data order (samplers) and the frames reader.

- :func:`caption_per_video_batches`: CLIP4Clip's epoch, every video once with one of its captions;
- :func:`candidate_batches`: for sparse (candidate) caches, random seed videos plus a ``hard_fraction``
  of each batch drawn from the seeds' stored candidates (``train_student.sampler: candidates``);
- :func:`neighbourhood_batches`: the same, grown from a sparse teacher cache's neighbourhoods so that
  more in-batch soft labels are known (``train_student.sampler: neighbourhood``);
- :func:`mask_captions`: the caption groups without the captions a caption-audit mask flags;
- :func:`prefetched` / :func:`frames_batches`: frames (or frame features) of a sequence of batches,
  the next one drawn and read in a background thread.

What a sampler holds per training video or caption is a few numpy integers (:class:`CaptionGroups`,
the shuffled order, the drawn captions); the candidates sampler reads the cache's candidate lists
one batch at a time (:class:`StoredNeighbours`).

Every sampler is a pure function of ``(seed, epoch)`` (its own generator, no global RNG), so a resumed
run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from teachclip.core.manifest import CaptionGroups, Manifest, SplitData, split_data
from teachclip.stores.caption_mask import CaptionMaskError
from teachclip.stores.teacher_cache import GroupReader, SparseGroup, TeacherCacheError


def training_data(store: Any, manifest: Manifest, split: str = "train") -> SplitData:
    """The videos a training epoch draws from: the decoded videos of ``split`` that have a caption
    (at least 2: InfoNCE needs negatives), in the store's order, with their captions."""
    return split_data(manifest, split, store.video_ids, store.valid, require_captions=True, min_videos=2)


def epoch_size(n_videos: int, batch_size: int, min_videos: int = 2) -> int:
    """How many batches every sampler here gives: each batch is full until the videos run out, and
    a last batch of fewer than ``min_videos`` is dropped (the samplers drop one of 1; a run on N
    ranks drops fewer than N). Known before the batches are drawn: the learning-rate schedule's length."""
    full, rest = divmod(n_videos, batch_size)
    return full + int(rest >= max(min_videos, 2))


@dataclass(frozen=True)
class Batch:
    videos: np.ndarray  # positions in the training video list, each at most once per epoch
    captions: np.ndarray  # one caption index per video, drawn uniformly among its captions


def caption_per_video_batches(
    captions_of_video: CaptionGroups | Sequence[Sequence[int]], batch_size: int, seed: int, epoch: int
) -> list[Batch]:
    """CLIP4Clip's epoch: every video once, in a shuffled order, with one of its captions.

    A pure function of ``(seed, epoch)`` (its own generator, no global RNG), so a resumed run sees
    exactly the batches of an uninterrupted one. A last batch of a single video is dropped (InfoNCE
    needs negatives). Videos without captions must not be passed.
    """
    groups = CaptionGroups.coerce(captions_of_video)
    counts = groups.counts
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts[order])
    captions = groups.draw(order, choice)
    batches = [
        Batch(order[start : start + batch_size], captions[start : start + batch_size])
        for start in range(0, len(order), batch_size)
    ]
    return [batch for batch in batches if len(batch.videos) >= 2]


T = TypeVar("T")
R = TypeVar("R")


def prefetched(items: Iterable[T], read: Callable[[T], R], prefetch: bool = True) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for each of ``items``; with ``prefetch`` the next item is drawn and read in
    a background thread while the caller computes on the current one (zarr decompression releases
    the GIL). ``items`` may be a generator: nothing is drawn ahead but the next one."""
    items = iter(items)
    if not prefetch:
        for item in items:
            yield item, read(item)
        return

    def draw_and_read() -> tuple[T, R] | None:
        item = next(items, _END)
        return None if item is _END else (item, read(item))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(draw_and_read)
        while (current := pending.result()) is not None:
            pending = pool.submit(draw_and_read)
            yield current


_END: Any = object()


def frames_batches(
    store, indices: Iterable[np.ndarray], prefetch: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(frames uint8 [n, T, H, W, 3], mask bool [n, T])`` for each index array, read from a
    FramesStore (the next batch in a background thread with ``prefetch``: :func:`prefetched`)."""
    for _, frames in prefetched(indices, lambda batch_indices: read_frames(store, batch_indices), prefetch):
        yield frames


def read_frames(store, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    frames, mask = store.read(np.asarray(indices))
    return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(np.asarray(mask, dtype=bool))


class StoredNeighbours:
    """Each training caption's stored candidates as *training-set video positions* (-1 for a
    neighbour outside the training set), read from the sparse group when a sampler asks:
    ``neighbours[captions]`` is int64 [len(captions), K]. Holds 4 bytes per cache column."""

    def __init__(self, group: GroupReader, rows: np.ndarray, cols: np.ndarray):
        if not isinstance(group, SparseGroup):
            raise TeacherCacheError(f"{group.path}: the candidates and neighbourhood samplers need a sparse teacher "
                                    f"cache (`teach cache sparsify` or `extract.candidates`)")
        self.group, self.rows = group, rows
        self.position_of_column = np.full(group.layout.n_videos, -1, dtype=np.int32)
        self.position_of_column[cols] = np.arange(len(cols))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, captions: Any) -> np.ndarray:
        return self.position_of_column[self.group.neighbours(self.rows[captions])[0]].astype(np.int64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[np.arange(len(self))], dtype=dtype)


def training_neighbours(group: GroupReader, rows: np.ndarray, cols: np.ndarray) -> StoredNeighbours:
    """Each training caption's stored neighbours (:class:`StoredNeighbours`). ``rows``/``cols``: the
    training set's cache rows and columns."""
    return StoredNeighbours(group, rows, cols)


def candidate_batches(captions_of_video: CaptionGroups | Sequence[Sequence[int]], neighbours: Any, batch_size: int,
                      hard_fraction: float, seed: int, epoch: int) -> Iterator[Batch]:
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
    in InfoNCE. A pure function of ``(seed, epoch)``; a last batch of a single video is dropped.

    A generator: ``neighbours`` (an array, or :class:`StoredNeighbours` reading the cache) is asked
    for one batch's seeds at a time, so an epoch of millions of captions never holds their
    candidates; :func:`epoch_size` gives the number of batches beforehand."""
    groups = CaptionGroups.coerce(captions_of_video)
    groups.counts  # noqa: B018 (raises for a video without captions, before the first batch is asked for)
    if not 0 <= hard_fraction <= 1:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    return _candidate_batches(groups, neighbours, batch_size, hard_fraction, seed, epoch)


def _candidate_batches(groups: CaptionGroups, neighbours: Any, batch_size: int, hard_fraction: float, seed: int,
                       epoch: int) -> Iterator[Batch]:
    counts = groups.counts
    rng = np.random.default_rng([seed, epoch, 2])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts)
    caption_of = groups.draw(np.arange(len(counts)), choice)
    n_seeds = max(1, batch_size - round(hard_fraction * batch_size))
    used = np.zeros(len(counts), dtype=bool)
    cursor = 0

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
            yield Batch(videos, caption_of[videos])


def neighbourhood_batches(captions_of_video: CaptionGroups | Sequence[Sequence[int]], neighbours: Any, batch_size: int,
                          seed: int, epoch: int) -> list[Batch]:
    """Every video once per epoch with one of its captions (as :func:`caption_per_video_batches`), but a
    batch is grown greedily from an anchor so that the teacher's scores of most in-batch pairs are
    stored. A pure function of ``(seed, epoch)``.

    ``neighbours[c]``: video positions of caption c's stored top-k (-1: none). Growing a batch: among
    the unused videos that a member's drawn caption lists, add the one that makes the most new pairs
    known, ``#members listing it + #members its own drawn caption lists`` (ties: the lower position).
    When no member lists an unused video, the batch continues from the next unused anchor of a
    shuffled order. A last batch of a single video is dropped (InfoNCE needs negatives).

    Unlike the other samplers it plans the whole epoch over every video's neighbour lists (Python
    lists: not for collections of millions; ``candidates`` is the sampler for those)."""
    groups = CaptionGroups.coerce(captions_of_video)
    counts = groups.counts
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(len(counts))
    choice = rng.integers(0, counts)
    caption_of = groups.draw(np.arange(len(counts)), choice)
    drawn_neighbours = np.asarray(neighbours[caption_of])
    listed = [[int(v) for v in drawn_neighbours[video] if v >= 0] for video in range(len(counts))]
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


def mask_captions(captions_of_video: CaptionGroups | Sequence[Sequence[int]], caption_ids: Sequence[str],
                  keep: dict[str, bool]) -> tuple[CaptionGroups, list[int]]:
    """The sampler's caption groups with masked captions removed, and the positions of the videos whose
    every caption is masked (they keep all of theirs: dropping a video is another decision than
    dropping a caption). Captions absent from the mask are kept."""
    groups = CaptionGroups.coerce(captions_of_video)
    kept = np.fromiter((keep.get(caption_id, True) for caption_id in caption_ids), dtype=bool, count=len(caption_ids))
    if not any(caption_id in keep for caption_id in caption_ids):
        raise CaptionMaskError("the caption mask names none of the training captions: it belongs to another dataset")
    video_of = np.repeat(np.arange(len(groups)), np.diff(groups.starts))
    kept_per_video = np.bincount(video_of, weights=kept[groups.members], minlength=len(groups))
    fallback = np.flatnonzero(kept_per_video == 0)
    kept[groups.members[np.isin(video_of, fallback)]] = True  # such a video keeps every caption
    members = groups.members[kept[groups.members]]
    counts = np.bincount(video_of[kept[groups.members]], minlength=len(groups))
    return CaptionGroups(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), members), fallback.tolist()
