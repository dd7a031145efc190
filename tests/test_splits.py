"""`split_data`: the one definition of "the decoded videos of a split and their captions".

Training, teacher extraction and evaluation each had their own copy, and they disagreed on the order
of captions (manifest order vs sorted by id) and on videos without captions. The one function keeps
manifest order and caption-less videos; training asks to drop those (its sampler draws one caption per
video); the teacher cache sorts its rows by caption id itself (its schema's canonical order).
"""

import numpy as np
import pytest

from teachclip.core.manifest import ManifestError, load_manifest, split_data, write_manifest
from teachclip.stages.extract_teachers.worker import cache_rows
from teachclip.training.batches import training_data


class Store:
    """The two things split_data reads of a frames store."""

    def __init__(self, video_ids, failed=()):
        self.video_ids = sorted(video_ids)
        self.valid = np.array([v not in failed for v in self.video_ids])


@pytest.fixture()
def manifest(tmp_path):
    videos = [("v3", "v3.mp4", "train"), ("v1", "v1.mp4", "train"), ("v2", "v2.mp4", "train"),
              ("v4", "v4.mp4", "train"), ("t1", "t1.mp4", "test")]
    # manifest order is not id order; v4 has no caption; v2 will fail to decode
    captions = [("c9", "v3", "third video"), ("c1", "v1", "first video"), ("c5", "v3", "third again"),
                ("c2", "v2", "second video"), ("c0", "t1", "a test caption")]
    return load_manifest(write_manifest(tmp_path / "m", videos, captions))


def test_decoded_videos_in_store_order_captions_in_manifest_order(manifest):
    store = Store(["t1", "v1", "v2", "v3", "v4"], failed={"v2"})
    data = split_data(manifest, "train", store.video_ids, store.valid)
    assert data.video_ids == ["v1", "v3", "v4"]  # sorted (the store's order); v4 kept: a distractor / cache column
    assert data.store_rows.tolist() == [store.video_ids.index(v) for v in data.video_ids]
    assert data.caption_ids == ["c9", "c1", "c5"]  # manifest order; c2's video failed
    assert [data.video_ids[i] for i in data.caption_video] == data.caption_video_ids == ["v3", "v1", "v3"]
    assert data.captions_of_video.tolist() == [[1], [0, 2], []]
    assert data.excluded_video_ids == ["v2"]


def test_training_drops_videos_without_captions_and_needs_two(manifest):
    store = Store(["t1", "v1", "v2", "v3", "v4"], failed={"v2"})
    data = training_data(store, manifest)
    assert data.video_ids == ["v1", "v3"] and data.excluded_video_ids == ["v2", "v4"]
    assert data.captions_of_video.tolist() == [[1], [0, 2]]
    with pytest.raises(ManifestError, match="1 usable video"):
        training_data(Store(["t1", "v1", "v2", "v3", "v4"], failed={"v2", "v3"}), manifest)


def test_the_teacher_cache_sorts_its_rows_by_caption_id(manifest):
    store = Store(["t1", "v1", "v2", "v3", "v4"], failed={"v2"})
    store.index = lambda ids: np.array([store.video_ids.index(v) for v in ids])
    rows = cache_rows(store, manifest)
    assert rows.caption_ids == ["c1", "c5", "c9"] and rows.video_ids == ["v1", "v3", "v4"]
    assert [rows.video_ids[i] for i in rows.text_video] == rows.caption_videos == ["v1", "v3", "v3"]
    assert rows.text_video.dtype == np.int32


def test_a_store_of_another_manifest_and_empty_splits_are_refused(manifest):
    with pytest.raises(ManifestError, match="not in the frames store"):
        split_data(manifest, "train", ["v1", "v3"], [True, True])
    with pytest.raises(ManifestError, match="no videos in split 'val'"):
        split_data(manifest, "val", ["t1", "v1", "v2", "v3", "v4"], [True] * 5)
    with pytest.raises(ManifestError, match="no captions"):
        split_data(manifest, "train", ["t1", "v1", "v2", "v3", "v4"], [True, False, False, False, True])
