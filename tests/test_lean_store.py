"""The frames and frame-features store readers hold no Python object per video: ids as an IdColumn
read straight from the chunk bytes (zarr_io.read_id_column), rows found by binary search."""

import gc
import shutil
import tracemalloc

import numpy as np
import pytest
import zarr

from teachclip.core.columns import IdColumn
from teachclip.stores import open_video_store
from teachclip.stores.features import FEATURES, STORE_KIND, FrameFeaturesStore
from teachclip.stores.frames import FORMAT_VERSION, MASK, VIDEO_IDS, FramesStore, FramesStoreError
from teachclip.stores.zarr_io import create_array, read_id_column, write_strings

FP = "0" * 64


def write_features_store(path, ids, failed=(), per_shard=256):
    """A frame-features store of ``ids`` (T=1, d=1) written cheaply: the first shard by zarr, the
    others as copies of its file; the videos ``failed`` are recorded as failures (mask False)."""
    n = len(ids)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = create_array(group, FEATURES, (n, 1, 1), (1, 1, 1), "float16", shards=(per_shard, 1, 1))
    mask = np.ones((n, 1), dtype=bool)
    failed_rows = [list(ids).index(v) for v in failed]
    mask[failed_rows] = False
    create_array(group, MASK, (n, 1), (per_shard, 1), "bool", fill_value=False)[...] = mask
    write_strings(group, VIDEO_IDS, ids)
    first = min(per_shard, n)
    data[:first] = np.ones((first, 1, 1), np.float16)
    for shard in range(1, -(-n // per_shard)):
        target = path / FEATURES / "c" / str(shard) / "0" / "0"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path / FEATURES / "c" / "0" / "0" / "0", target)
    group.attrs.update({
        "kind": STORE_KIND, "format_version": FORMAT_VERSION, "fingerprint": FP, "manifest_fingerprint": FP,
        "manifest_fingerprint_mode": "stat", "features_fingerprint": FP,
        "backbone": {"name": "test", "pretrained": None, "visual_fingerprint": FP},
        "sampling": {"frames_per_video": 1, "size": 8}, "videos": n, "videos_per_shard": per_shard,
        "failures": [{"video_id": v, "path": f"{v}.mp4", "reason": "test"} for v in sorted(failed)],
        "complete": True})
    return path


def unicode_ids(n, seed=0):
    rng = np.random.default_rng(seed)
    alphabet = list("abcXYZ019-_ ") + ["é", "ü", "日", "本", "Ä", "😀"]
    ids = {"".join(rng.choice(alphabet, size=rng.integers(1, 12))) for _ in range(n)}
    return sorted(ids)


def test_reader_ids_are_an_id_column_and_index_finds_random_subsets(tmp_path):
    ids = unicode_ids(600)
    failed = [ids[3], ids[-1]]
    store = open_video_store(write_features_store(tmp_path / "f.zarr", ids, failed=failed, per_shard=64))
    assert isinstance(store, FrameFeaturesStore) and isinstance(store.video_ids, IdColumn)
    assert store.video_ids == ids and len(store) == len(ids) and not hasattr(store, "_positions")
    assert store.valid.dtype == bool and np.flatnonzero(~store.valid).tolist() == [3, len(ids) - 1]
    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 100, len(ids)):
        rows = rng.choice(len(ids), size=size, replace=size > len(ids) // 2)
        wanted = [ids[r] for r in rows]
        np.testing.assert_array_equal(store.index(wanted), rows)
        np.testing.assert_array_equal(store.index(IdColumn.of(wanted)), rows)
        assert store.index(iter(wanted)).dtype == np.int64
    data, _ = store.read(store.index([ids[5], ids[0]]))
    assert data.shape == (2, 1, 1)


def test_index_names_the_unknown_ids(tmp_path):
    ids = [f"v{i:03d}" for i in range(10)]
    store = FrameFeaturesStore.open(write_features_store(tmp_path / "f.zarr", ids, per_shard=4))
    with pytest.raises(FramesStoreError, match=r"unknown video id\(s\) 'nope'$"):
        store.index(["v001", "nope", "v009"])
    with pytest.raises(FramesStoreError, match=r"'a', 'b', 'c', 'd', 'e' and 2 more"):
        store.index(["a", "b", "v000", "c", "d", "e", "f", "g"])
    with pytest.raises(FramesStoreError, match=r"unknown video id\(s\) 'v\\x00', 'v0'"):
        store.index(["v\x00", "v0", "v003"])  # a NUL can be in no store: unknown, not a crash
    assert store.index([]).tolist() == []


def test_ids_not_sorted_and_unique_are_refused(tmp_path):
    for ids, found in ((["a", "b", "b", "c"], r"1 repeated, e.g. \['b'\]"), (["b", "a", "c"], "not in sorted order")):
        path = write_features_store(tmp_path / f"{len(ids)}.zarr", ids, per_shard=2)
        with pytest.raises(FramesStoreError, match=f"video_ids are not sorted and unique \\({found}\\)"):
            FrameFeaturesStore.open(path)


def test_a_damaged_or_relaid_ids_array_is_refused(tmp_path):
    ids = [f"v{i:03d}" for i in range(10)]
    path = write_features_store(tmp_path / "f.zarr", ids, per_shard=4)
    chunk = path / VIDEO_IDS / "c" / "0"
    intact = chunk.read_bytes()
    chunk.write_bytes(intact[:-5] + bytes([intact[-5] ^ 1]) + intact[-4:])
    with pytest.raises(FramesStoreError, match="unreadable frame-features store .*crc32c"):
        FrameFeaturesStore.open(path)
    chunk.unlink()
    with pytest.raises(FramesStoreError, match="chunk c/0 is missing"):
        FrameFeaturesStore.open(path)
    # the same ids in two chunks: a layout write_strings never writes
    group = zarr.open_group(str(path), mode="r+")
    group.create_array(name=VIDEO_IDS, shape=(10,), chunks=(5,), dtype=str, overwrite=True)[...] = np.array(ids, dtype=object)
    with pytest.raises(FramesStoreError, match="not a one-chunk string array of 10 ids"):
        FrameFeaturesStore.open(path)
    write_strings(group, VIDEO_IDS, ids[:9])
    with pytest.raises(FramesStoreError, match=r"array shapes disagree .*video_ids \[9\]"):
        FrameFeaturesStore.open(path)


def test_read_id_column_reads_what_write_strings_wrote(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    for name, ids in (("plain", ["a", "bb", "ccc"]), ("unicode", unicode_ids(300)), ("empty", []),
                      ("column", IdColumn.of(["x", "y"]))):
        write_strings(group, name, ids)  # a writer takes an IdColumn as well as a list
        column = read_id_column(tmp_path / "g.zarr" / name, len(ids))
        assert isinstance(column, IdColumn) and column == list(ids)
        assert [str(v) for v in zarr.open_array(str(tmp_path / "g.zarr" / name))[...]] == list(ids)
    with pytest.raises(ValueError, match="plain: not a one-chunk string array of 4 ids"):
        read_id_column(tmp_path / "g.zarr" / "plain", 4)
    with pytest.raises(ValueError, match="longer than 2 characters"):
        read_id_column(tmp_path / "g.zarr" / "plain", 3, max_chars=2)


def test_opening_a_large_store_keeps_no_python_object_per_video(tmp_path):
    n = 50_000
    ids = [f"video{i:07d}" for i in range(n)]  # 12 bytes each
    path = write_features_store(tmp_path / "big.zarr", ids)
    del ids
    FrameFeaturesStore.open(path)  # imports and caches warm
    gc.collect()
    tracemalloc.start()
    try:
        store = FrameFeaturesStore.open(path)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == n and store.video_ids.array.itemsize == 12
    # the ids (12 B), mask and valid (1 B each) and a few constant-size objects; a list and a dict of
    # str were ~150 B per video
    assert held / n < 2 * 12, f"{held / n:.1f} bytes per video held after open"
    assert store.index(["video0049999", "video0000000"]).tolist() == [n - 1, 0]


def test_a_frames_store_decoded_by_the_pipeline_serves_ids_as_a_column(tiny_data):
    store = FramesStore.open(tiny_data().frames)
    assert isinstance(store.video_ids, IdColumn) and list(store.video_ids) == sorted(store.video_ids)
    np.testing.assert_array_equal(store.index(list(store.video_ids)[::-1]), np.arange(len(store))[::-1])
