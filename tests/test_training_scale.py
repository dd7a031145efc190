"""train-student at scale: what a run reads and tokenizes per step does not depend on the collection size
(bench/scale_training.py measures memory and time at 10k-1M videos; docs/benchmarks.md)."""

from __future__ import annotations

import pytest

import teachclip.stages.train_student as stage
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    EvaluateConfig,
    StudentConfig,
    TrainStudentConfig,
)
from teachclip.models.student import Student
from teachclip.stores.frames import FramesStore
from teachclip.testing import synthetic_collection

BATCH, STEPS = 8, 3


class Enough(Exception):
    pass


def reads_of_a_run(root, videos: int, freeze_text: bool, monkeypatch) -> dict[str, list[int]]:
    """Rows per features-store read and texts per tokenize call, before the first step and during
    the first STEPS steps of a real train-student run on a synthetic collection of ``videos``."""
    student = StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32", freeze_visual=True,
                                                    freeze_text=freeze_text))
    data = synthetic_collection(root, videos, student, frames=4, top_k=4, videos_per_shard=16)
    seen: dict[str, list[int]] = {"rows_before": [], "rows": [], "texts": []}
    steps = [0]
    read, tokenize, optimizer_step = FramesStore.read, Student.tokenize, stage.optimizer_step

    def counting_read(self, rows, *args, **kwargs):
        seen["rows" if steps[0] else "rows_before"].append(len(rows))
        return read(self, rows, *args, **kwargs)

    def counting_tokenize(self, texts):
        seen["texts"].append(len(texts))
        return tokenize(self, texts)

    def counting_step(*args, **kwargs):
        optimizer_step(*args, **kwargs)
        steps[0] += 1
        if steps[0] == STEPS:
            raise Enough

    config = TrainStudentConfig(batch_size=BATCH, epochs=1, teachers=None, prefetch=False)
    with monkeypatch.context() as patch, pytest.raises(Enough):  # undone before the next run wraps them again
        patch.setattr(FramesStore, "read", counting_read)
        patch.setattr(Student, "tokenize", counting_tokenize)
        patch.setattr(stage, "optimizer_step", counting_step)
        stage.train_student(data.features, data.manifest, [data.teachers], root / "run", config, student,
                            EvaluateConfig(), ComputeConfig(scheduler="sync", device="cpu"), progress=False)
    return seen


@pytest.mark.parametrize("freeze_text", [False, True])
def test_a_step_reads_its_batch_only_whatever_the_collection_size(tmp_path, monkeypatch, freeze_text):
    small = reads_of_a_run(tmp_path / "small", 40, freeze_text, monkeypatch)
    large = reads_of_a_run(tmp_path / "large", 400, freeze_text, monkeypatch)
    for seen in (small, large):
        # features are read batch by batch, never the whole store before training (frozen mode included)
        assert seen["rows_before"] == [BATCH]  # the first batch, read when the epoch starts
        assert seen["rows"] == [BATCH] * (STEPS - 1)
    if not freeze_text:  # captions are tokenized per batch, never all at once
        assert small["texts"] == large["texts"] == [BATCH] * STEPS
    else:  # the frozen text tower's vectors are computed once per caption before training, none per step
        assert sum(small["texts"]) == 40 and sum(large["texts"]) == 400


# ---- the samplers' arrays ---------------------------------------------------------------------------


@pytest.mark.parametrize("videos,batch,world", [(23, 5, 1), (21, 5, 1), (20, 5, 1), (22, 4, 3), (9, 4, 2), (2, 8, 1)])
def test_epoch_size_is_the_number_of_batches_every_sampler_gives(videos, batch, world):
    import numpy as np

    from teachclip.training.batches import (
        candidate_batches,
        caption_per_video_batches,
        epoch_size,
        neighbourhood_batches,
    )

    groups = [[2 * v, 2 * v + 1] if v % 2 else [2 * v] for v in range(videos)]
    neighbours = np.array([[(c // 2 + k) % videos for k in (1, 2, 5)] for c in range(2 * videos)])
    for batches in (caption_per_video_batches(groups, batch, 0, 0), list(candidate_batches(groups, neighbours, batch,
                    0.5, 0, 0)), neighbourhood_batches(groups, neighbours, batch, 0, 0)):
        assert len([b for b in batches if len(b.videos) >= world]) == epoch_size(videos, batch, world)


def test_caption_groups_and_the_mask_match_the_lists():
    import numpy as np

    from teachclip.core.manifest import CaptionGroups
    from teachclip.training.batches import caption_per_video_batches, mask_captions

    rng = np.random.default_rng(0)
    caption_video = rng.integers(0, 50, size=400)
    caption_video[:50] = np.arange(50)  # every video has a caption
    lists = [[c for c in range(400) if caption_video[c] == v] for v in range(50)]
    groups = CaptionGroups.of(caption_video, 50)
    assert groups.tolist() == lists
    for a, b in zip(caption_per_video_batches(groups, 8, 1, 2), caption_per_video_batches(lists, 8, 1, 2), strict=True):
        assert a.videos.tolist() == b.videos.tolist() and a.captions.tolist() == b.captions.tolist()
    ids = [f"c{c}" for c in range(400)]
    keep = {f"c{c}": bool(rng.random() < 0.3) for c in range(0, 400, 2)}
    masked, fallback = mask_captions(groups, ids, keep)
    expected = [[c for c in captions if keep.get(ids[c], True)] or captions for captions in lists]
    assert masked.tolist() == expected
    assert fallback == [v for v, captions in enumerate(lists) if not any(keep.get(ids[c], True) for c in captions)]


def test_prefetched_draws_one_item_ahead_only():
    from teachclip.training.batches import prefetched

    drawn = []

    def items():
        for i in range(6):
            drawn.append(i)
            yield i

    for prefetch in (False, True):
        drawn.clear()
        seen = []
        for item, value in prefetched(items(), lambda i: i * 10, prefetch):
            seen.append((item, value))
            assert len(drawn) <= item + 1 + prefetch  # never more than the next one ahead
        assert seen == [(i, i * 10) for i in range(6)]


def held_at_first_step(root, videos: int, monkeypatch) -> int:
    """Bytes that Python and numpy hold (tracemalloc) when a train-student run on a synthetic
    collection of ``videos`` starts its first step, with the teacher cache read per batch."""
    import tracemalloc

    student = StudentConfig(backbone=BackboneConfig(name="teachclip-micro", precision="fp32", freeze_visual=True))
    data = synthetic_collection(root, videos, student, frames=4, top_k=8, videos_per_shard=64)
    held = []

    def first_step(*args, **kwargs):
        held.append(tracemalloc.get_traced_memory()[0])
        raise Enough

    config = TrainStudentConfig(batch_size=BATCH, epochs=1, teachers=None, prefetch=False, cache_in_memory=False)
    tracemalloc.start()
    try:
        with monkeypatch.context() as patch, pytest.raises(Enough):
            patch.setattr(stage, "optimizer_step", first_step)
            stage.train_student(data.features, data.manifest, [data.teachers], root / "run", config, student,
                                EvaluateConfig(), ComputeConfig(scheduler="sync", device="cpu"), progress=False)
    finally:
        tracemalloc.stop()
    return held[0]


def test_what_a_run_holds_per_caption_is_a_few_numpy_columns(tmp_path, monkeypatch):
    """The per-collection memory of a run: the growth from 4,000 to 20,000 captions divided by the
    captions added. Python objects per caption (a str id ~60 B, a dict entry ~100, a Video/Caption
    ~200) would show as hundreds of bytes; the columns are ids (~10 B each in the manifest index, the
    split, the store and the cache) and int64 index arrays (sampler, joins): about 150 B."""
    small = held_at_first_step(tmp_path / "small", 4_000, monkeypatch)
    large = held_at_first_step(tmp_path / "large", 20_000, monkeypatch)
    per_caption = (large - small) / 16_000
    assert per_caption < 250, f"{per_caption:.0f} bytes held per caption"  # measured: 185
