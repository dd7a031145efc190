"""Teacher-cache readers that hold no Python object per caption or video: ids as IdColumns, sparse
groups read row by row from zarr (checked block by block at open), values identical to memory mode."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr

from teachclip.core.columns import IdColumn
from teachclip.stores.teacher_cache import SparseGroup, TeacherCacheError, open_group, sparse
from teachclip.stores.teacher_cache.schema import (
    NEIGHBOUR_SCORES,
    NEIGHBOUR_VIDEOS,
    OWN_SCORE,
    RELEVANCE,
    REST_MEAN,
    TEXT_IDS,
    TEXT_VIDEO,
    VIDEO_IDS,
    TeacherIdentity,
    group_attributes,
    open_root,
    plan_layout,
)
from teachclip.stores.teacher_cache.sparse import FILL_RULE, sparse_fingerprint
from teachclip.stores.zarr_io import create_array, write_strings


def write_sparse_group(store: Path, n_texts: int, n_videos: int, *, top_k: int = 32, frames: int = 4,
                       chunk: int = 1024, seed: int = 0, name: str = "teacher") -> dict[str, np.ndarray]:
    """A complete sparse group of random values in the format the real writers use (``chunk`` rows per
    chunk of every score array); returns what was written, as stored."""
    rng = np.random.default_rng(seed)
    text_video = rng.integers(0, n_videos, size=n_texts).astype(np.int32)
    # distinct columns per row, never the row's own video: an arithmetic progression modulo n_videos
    stride = rng.integers(1, max(2, (n_videos - 1) // top_k + 1), size=n_texts)
    values = {
        NEIGHBOUR_VIDEOS: ((text_video[:, None] + 1 + np.arange(top_k) * stride[:, None]) % n_videos).astype(np.int32),
        NEIGHBOUR_SCORES: -np.sort(-rng.random((n_texts, top_k), dtype=np.float32), axis=1).astype(np.float16),
        OWN_SCORE: rng.random(n_texts, dtype=np.float32).astype(np.float16),
        REST_MEAN: (rng.random(n_texts, dtype=np.float32) * 0.1).astype(np.float16),
        RELEVANCE: rng.standard_normal((n_texts, frames), dtype=np.float32),
        TEXT_VIDEO: text_video,
    }
    identity = TeacherIdentity(kind="xpool", config={"synthetic": True}, checkpoint_sha256=None, score_version=1,
                               has_frame_relevance=True, similarity_definition="random numbers",
                               relevance_definition="random numbers", frames_fingerprint="frames-x",
                               manifest_fingerprint="manifest-x")
    layout = plan_layout(n_texts, n_videos, frames, 1024, 1024, 16_384, 1024)
    attrs = group_attributes(identity, layout, complete=True, versions={}) | {
        "fingerprint": sparse_fingerprint(identity.fingerprint, top_k),
        "sparse": {"top_k": top_k, "dense_fingerprint": identity.fingerprint, "fill": FILL_RULE}}
    group = open_root(store).create_group(name, attributes=attrs)
    chunk = min(chunk, n_texts)
    for array, fill in ((NEIGHBOUR_VIDEOS, -1), (NEIGHBOUR_SCORES, float("nan")), (OWN_SCORE, float("nan")),
                        (REST_MEAN, float("nan")), (RELEVANCE, float("nan"))):
        value = values[array]
        create_array(group, array, value.shape, (chunk, *value.shape[1:]), value.dtype.name, fill_value=fill)[...] = value
    write_strings(group, TEXT_IDS, [f"c{i:07d}" for i in range(n_texts)])
    write_strings(group, VIDEO_IDS, [f"v{i:07d}" for i in range(n_videos)])
    create_array(group, TEXT_VIDEO, (n_texts,), (n_texts,), "int32", fill_value=-1)[...] = text_video
    return values


def expected_block(values: dict[str, np.ndarray], rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """similarity_block and known_mask from the written values, entry by entry."""
    block, known = np.empty((len(rows), len(cols)), dtype=np.float32), np.zeros((len(rows), len(cols)), dtype=bool)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            hits = np.nonzero(values[NEIGHBOUR_VIDEOS][row] == col)[0]
            if col == values[TEXT_VIDEO][row]:
                block[i, j], known[i, j] = values[OWN_SCORE][row], True
            elif len(hits):
                block[i, j], known[i, j] = values[NEIGHBOUR_SCORES][row, hits[0]], True
            else:
                block[i, j] = values[REST_MEAN][row]
    return block, known


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    store = tmp_path_factory.mktemp("lean") / "teachers.zarr"
    return store / "teacher", write_sparse_group(store, 3000, 700, top_k=8, chunk=256)


def test_a_lazy_sparse_group_holds_zarr_arrays_not_values(small, monkeypatch):
    path, _ = small
    assert SparseGroup(path).in_memory  # 3,000 captions: under the limit, loaded by default
    monkeypatch.setattr(sparse, "SPARSE_IN_MEMORY_LIMIT_BYTES", SparseGroup(path).nbytes - 1)
    group = open_group(path)
    assert isinstance(group, SparseGroup) and not group.in_memory
    assert open_group(path, in_memory=True).in_memory
    assert all(isinstance(array, zarr.Array) for array in group._arrays.values())
    assert isinstance(group._relevance, zarr.Array)
    assert isinstance(group.text_ids, IdColumn) and isinstance(group.video_ids, IdColumn)
    assert group.text_video.dtype == np.int32
    assert not hasattr(group, "_text_rows") and not hasattr(group, "_video_cols")
    loaded = SparseGroup(path, in_memory=True)
    assert loaded.in_memory and all(isinstance(a, np.ndarray) for a in loaded._arrays.values())


def test_opening_a_large_sparse_group_allocates_no_full_array(tmp_path):
    n, k, frames = 20_000, 32, 4
    write_sparse_group(tmp_path / "teachers.zarr", n, n, top_k=k, frames=frames)
    whole = n * (k * 4 + k * 2 + 2 + 2 + frames * 4)  # the score arrays as stored: 4.3 MB
    tracemalloc.start()
    try:
        group = SparseGroup(tmp_path / "teachers.zarr" / "teacher", in_memory=False)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ids_and_text_video = group.text_ids.nbytes + group.video_ids.nbytes + group.text_video.nbytes
    assert held - ids_and_text_video < 300_000, held  # zarr's metadata, no per-caption array
    # the open-time check reads blocks of ~256 KB (OPEN_BLOCK_BYTES); reading whole arrays peaked above
    # their 4.3 MB. What peaks here is reading the ids (~1.7 MB for both columns).
    assert peak - ids_and_text_video < 2_000_000 < whole, peak


@pytest.mark.parametrize("in_memory", [False, True])
def test_reads_return_exactly_what_was_written(small, in_memory):
    path, values = small
    group = SparseGroup(path, in_memory=in_memory)
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.integers(0, 3000, size=40), [7, 7, 2999, 0]])  # repeats, both ends
    cols = np.concatenate([values[TEXT_VIDEO][rows[:5]], values[NEIGHBOUR_VIDEOS][rows[5:15], 0],
                           rng.integers(0, 700, size=20)])
    block, known = expected_block(values, rows, cols)
    similarity = group.similarity_block(rows, cols)
    assert similarity.dtype == np.float32 and np.array_equal(similarity, block)
    mask = group.known_mask(rows, cols)
    assert mask.dtype == bool and np.array_equal(mask, known) and known.any() and not known.all()
    neighbours, scores = group.neighbours(rows)
    assert neighbours.dtype == np.int64 and np.array_equal(neighbours, values[NEIGHBOUR_VIDEOS][rows])
    assert scores.dtype == np.float32 and np.array_equal(scores, values[NEIGHBOUR_SCORES][rows].astype(np.float32))
    relevance = group.frame_relevance(rows)
    assert relevance.dtype == np.float32 and np.array_equal(relevance, values[RELEVANCE][rows])
    empty = np.zeros(0, dtype=np.int64)
    assert group.similarity_block(empty, cols).shape == (0, len(cols))
    assert group.neighbours(empty)[0].shape == (0, 8)


def test_lazy_and_in_memory_reads_are_bit_identical(small):
    path, _ = small
    lazy, loaded = SparseGroup(path, in_memory=False), SparseGroup(path, in_memory=True)
    rows, cols = np.arange(0, 3000, 7), np.arange(700)
    for read in ("similarity_block", "known_mask"):
        assert np.array_equal(getattr(lazy, read)(rows, cols), getattr(loaded, read)(rows, cols))
    for left, right in zip(lazy.neighbours(rows), loaded.neighbours(rows), strict=True):
        assert np.array_equal(left, right)
    assert np.array_equal(lazy.frame_relevance(rows), loaded.frame_relevance(rows))


@pytest.mark.parametrize("array, row", [(NEIGHBOUR_SCORES, 2_345), (OWN_SCORE, 2_999), (REST_MEAN, 1_500),
                                        (RELEVANCE, 2_100)])
def test_a_nan_deep_in_a_sparse_array_is_found_at_open(tmp_path, array, row):
    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    target = zarr.open_array(store / "teacher" / array, mode="r+")  # rewritten through zarr: crc32c is right
    target[(row, 0) if target.ndim == 2 else row] = np.nan
    for in_memory in (False, True):
        with pytest.raises(TeacherCacheError, match=rf"{array}: non-finite value in row {row}\b"):
            SparseGroup(store / "teacher", in_memory=in_memory)


@pytest.mark.parametrize("change, message", [
    (lambda v: v.__setitem__((2_500, 3), 700), r"neighbour_videos: column out of range 0\.\.699 in row 2500"),
    (lambda v: v.__setitem__((2_600, slice(0, 2)), [5, 5]), r"neighbour_videos: a video listed twice in row 2600"),
])
def test_bad_neighbour_columns_deep_in_the_array_are_found_at_open(tmp_path, change, message):
    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    change(zarr.open_array(store / "teacher" / NEIGHBOUR_VIDEOS, mode="r+"))
    for in_memory in (False, True):
        with pytest.raises(TeacherCacheError, match=message):
            SparseGroup(store / "teacher", in_memory=in_memory)


@pytest.mark.parametrize("array", [NEIGHBOUR_VIDEOS, NEIGHBOUR_SCORES, REST_MEAN, RELEVANCE])
def test_a_corrupt_chunk_deep_in_a_sparse_array_is_found_at_open_naming_the_array(tmp_path, array):
    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    chunk = store / "teacher" / array / "c" / "10"  # rows 2560:2816
    chunk = chunk / "0" if chunk.is_dir() else chunk  # a 2-D array's key has a column part
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, so only decoding the chunk (its crc32c) can tell
    chunk.write_bytes(bytes(data))
    for in_memory in (False, True):
        with pytest.raises(TeacherCacheError, match=rf"{array}: corrupt chunk"):
            SparseGroup(store / "teacher", in_memory=in_memory)


def test_a_chunk_damaged_after_open_is_caught_by_the_read(tmp_path):
    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    group = SparseGroup(store / "teacher", in_memory=False)
    (store / "teacher" / NEIGHBOUR_SCORES / "c" / "5" / "0").unlink()
    group.similarity_block([0, 1], [0, 1])  # rows elsewhere still read
    with pytest.raises(TeacherCacheError, match=r"neighbour_scores: chunk c/5/0 is missing"):
        group.similarity_block([0, 1300], [0, 1])
    chunk = store / "teacher" / NEIGHBOUR_VIDEOS / "c" / "6" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(TeacherCacheError, match=r"neighbour_videos: chunk c/6/0 fails its crc32c checksum"):
        group.neighbours([1600])


def test_rows_read_from_the_chunk_files_equal_zarrs_reads(tmp_path):
    """zarr_io.RowReader (the lazy group's fast path) against zarr's own decoding, every array, random
    rows across chunks and the partial last chunk; any other layout gets no RowReader."""
    import zarr

    from teachclip.stores.zarr_io import RowReader

    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    rows = np.unique(np.random.default_rng(0).integers(0, 3000, size=200))
    rows = np.union1d(rows, [0, 255, 256, 2999])
    for name in (NEIGHBOUR_VIDEOS, NEIGHBOUR_SCORES, "own_score", "rest_mean", "frame_relevance"):
        array = zarr.open_array(store / "teacher" / name, mode="r")
        reader = RowReader.open(store / "teacher" / name)
        assert reader is not None, name
        np.testing.assert_array_equal(reader.read(rows), array.oindex[rows])
    assert RowReader.open(store / "teacher" / "text_ids") is None  # strings: zarr decodes them
    assert RowReader.open(store / "teacher" / "nothing") is None


def test_text_and_video_index_name_the_missing_ids(small):
    path, _ = small
    group = SparseGroup(path)
    assert group.text_index(["c0000005", "c0000000", "c0002999"]).tolist() == [5, 0, 2999]
    assert group.text_index(IdColumn.of(["c0000001"])).dtype == np.int64
    assert group.video_index(["v0000699", "v0000001"]).tolist() == [699, 1]
    with pytest.raises(TeacherCacheError, match=r"4 caption id\(s\) not in the cache, e\.g\. "
                                                r"\['nope', 'c9999999', 'v0000001'\]"):
        group.text_index(["c0000001", "nope", "c9999999", "v0000001", "zzz"])
    with pytest.raises(TeacherCacheError, match=r"1 video id\(s\) not in the cache, e\.g\. \['a\\x00b'\]"):
        group.video_index(["v0000001", "a\x00b"])  # no column can hold it: missing, not a crash
    assert group.text_index([]).shape == (0,)


def test_a_lazy_group_read_from_two_threads_gives_each_its_rows(tmp_path):
    """train-student's candidates sampler asks for neighbours in the prefetch thread while the step
    reads soft labels: the per-call memo must not hand one thread the other's rows."""
    from concurrent.futures import ThreadPoolExecutor

    store = tmp_path / "teachers.zarr"
    write_sparse_group(store, 3000, 700, top_k=8, chunk=256)
    lazy, loaded = SparseGroup(store / "teacher", in_memory=False), SparseGroup(store / "teacher", in_memory=True)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 3000, size=int(rng.integers(20, 70))) for _ in range(200)]

    def sampler():
        return [lazy.neighbours(rows)[0] for rows in batches]

    def step():
        return [(lazy.similarity_block(rows, rows % 700), lazy.frame_relevance(rows)) for rows in batches[::-1]]

    with ThreadPoolExecutor(2) as pool:
        neighbours, labels = pool.submit(sampler), pool.submit(step)
        neighbours, labels = neighbours.result(), labels.result()
    for rows, got in zip(batches, neighbours, strict=True):
        np.testing.assert_array_equal(got, loaded.neighbours(rows)[0])
    for rows, (block, relevance) in zip(batches[::-1], labels, strict=True):
        np.testing.assert_array_equal(block, loaded.similarity_block(rows, rows % 700))
        np.testing.assert_array_equal(relevance, loaded.frame_relevance(rows))
