"""teach search: index a frames store once, answer queries by one matrix-vector product."""

import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import BackboneConfig, SearchConfig, StudentConfig
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.io import model_fingerprint, save_model
from teachclip.models.student import Student
from teachclip.stores.frames import FramesStore
from teachclip.stores.search_index import AnnIndex, SearchIndexError, read_index, write_index
from teachclip.stores.zarr_io import create_array
from teachclip.tools.search import Searcher, build_index

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


def saved_student(directory, seed):
    torch.manual_seed(seed)
    config = StudentConfig(backbone=MICRO, head="seqTransf", temporal_layers=1)
    save_model(directory, Student(config), "student", config)
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("search")
    data = tiny_data()  # the default tiny dataset of tests/conftest.py (read-only)
    manifest, frames = data.manifest, data.frames
    model = saved_student(root / "model", 0)
    for dtype in ("float16", "float32"):
        build_index(model, frames, root / f"index{dtype[-2:]}.zarr", search=SearchConfig(dtype=dtype), batch_videos=5,
                    device="cpu", progress=False)
    # the same videos with the approximate index forced on (the threshold lowered to one video)
    build_index(model, frames, root / "ann.zarr", search=SearchConfig(ann_threshold=1), batch_videos=5, device="cpu",
                progress=False)
    return root, manifest, frames, model


def student_vectors(model_dir, frames, texts):
    student = load_model(model_dir)
    store = FramesStore.open(frames)
    frames_batch, mask = store.read(np.arange(len(store)))
    with torch.no_grad():
        videos = student.encode_video(torch.from_numpy(frames_batch), torch.from_numpy(mask))
        text = student.encode_text(student.tokenize(texts))
    return store.video_ids, videos, text


def test_index_holds_one_unit_vector_per_video(setup):
    root, _, frames, model = setup
    video_ids, videos, _ = student_vectors(model, frames, ["x"])
    index32, index16 = read_index(root / "index32.zarr"), read_index(root / "index16.zarr")
    assert index32.video_ids == index16.video_ids == video_ids
    assert index32.embeddings.dtype == np.float32 and index16.embeddings.dtype == np.float16
    torch.testing.assert_close(torch.from_numpy(index32.embeddings), videos, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(index16.embeddings).float(), videos, rtol=0, atol=1e-3)
    assert index32.attrs["model_fingerprint"] == model_fingerprint(model)
    assert index32.attrs["frames_fingerprint"] == FramesStore.open(frames).fingerprint
    assert index32.attrs["n_videos"] == len(video_ids) and index32.attrs["dim"] == videos.shape[1]


@pytest.mark.parametrize("name", ["index32.zarr", "index16.zarr"])
def test_a_videos_own_vector_is_its_top_hit(setup, name):
    root = setup[0]
    searcher = Searcher(root / name, device="cpu")
    # float16 scores resolve ~1e-3 near 1: an untrained model's near-duplicate videos may tie with the own one
    tolerance = 2e-3 if name == "index16.zarr" else 0.0
    for row in range(len(searcher.index.video_ids)):
        scores, rows = searcher.top_k(searcher.embeddings[row].float(), k=len(searcher.index.video_ids))
        own = float(scores[rows.tolist().index(row)])
        assert own >= float(scores[0]) - tolerance and own == pytest.approx(1.0, abs=2e-3)
        assert tolerance or int(rows[0]) == row
        assert scores.tolist() == sorted(scores.tolist(), reverse=True)


def test_text_queries_rank_like_the_student(setup):
    root, manifest, frames, model = setup
    texts = [c.text for c in load_manifest(manifest).captions[:6]]
    video_ids, videos, text = student_vectors(model, frames, texts)
    searcher = Searcher(root / "index32.zarr", device="cpu")  # the model recorded in the index
    for query, vector in zip(texts, text, strict=True):
        hits = searcher.query(query, k=4)
        expected = torch.topk(videos @ vector, 4)
        assert [h.video_id for h in hits] == [video_ids[i] for i in expected.indices.tolist()]
        assert [h.rank for h in hits] == [1, 2, 3, 4]
        np.testing.assert_allclose([h.score for h in hits], expected.values.numpy(), atol=1e-5)
    assert len(searcher.query(texts[0], k=100)) == len(video_ids)  # k larger than the collection


def test_a_query_model_that_differs_is_refused(setup, tmp_path):
    root = setup[0]
    other = saved_student(tmp_path / "other", 1)
    with pytest.raises(SearchIndexError, match="was built by model"):
        Searcher(root / "index16.zarr", other, device="cpu")
    with pytest.raises(SearchIndexError, match="not found"):
        read_index(tmp_path / "missing.zarr")


def test_cli_index_and_query(setup, tmp_path):
    root, _, frames, model = setup
    index = tmp_path / "cli-index.zarr"
    result = CliRunner().invoke(app, ["search", "index", "--model", str(model), "--frames", str(frames),
                                      "--out", str(index), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["search", "query", str(index), "a red square moves left", "-k", "3", "--json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output[result.output.index("{"):])
    assert document["search"] == "exact"  # 24 videos: far below search.ann_threshold
    expected = Searcher(index, device="cpu").query("a red square moves left", k=3)
    assert document["results"] == [{"rank": h.rank, "video_id": h.video_id, "score": h.score} for h in expected]
    result = CliRunner().invoke(app, ["search", "query", str(index), "a red square", "--device", "cpu"])
    assert result.exit_code == 0 and expected[0].video_id in result.output
    other = saved_student(tmp_path / "other", 2)
    result = CliRunner().invoke(app, ["search", "query", str(index), "x", "--model", str(other), "--device", "cpu"])
    assert result.exit_code == 1 and "was built by model" in result.output


# ---- the approximate (IVF-SQ8) index ---------------------------------------------------------------


def clustered(n, dim, clusters, seed):
    """Unit vectors around ``clusters`` random centres (embeddings of a collection form such clumps)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_small_collections_are_exact_large_ones_get_an_approximate_index(setup):
    root = setup[0]
    assert read_index(root / "index16.zarr").attrs["ann"] is None
    exact = Searcher(root / "index16.zarr", device="cpu")
    assert not exact.approximate and exact.embeddings is not None
    index = read_index(root / "ann.zarr", approximate=True)
    assert index.attrs["ann"] == "ivf-sq8" and index.embeddings is None and index.ann.n_videos == len(index.video_ids)
    approximate = Searcher(root / "ann.zarr", device="cpu")
    assert approximate.approximate and approximate.embeddings is None
    assert not Searcher(root / "ann.zarr", device="cpu", exact=True).approximate  # --exact ignores it


def test_approximate_results_agree_with_exact_search(setup):
    root, manifest, _, _ = setup
    texts = [c.text for c in load_manifest(manifest).captions[:6]]
    exact = Searcher(root / "index16.zarr", device="cpu")
    # probing every list the approximate index ranks like the exact one (scores: 8-bit codes, ~1e-2)
    approximate = Searcher(root / "ann.zarr", device="cpu", ann_probe=1000)
    for text in texts:
        want, got = exact.query(text, k=5), approximate.query(text, k=5)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=2e-2)
        assert len({h.video_id for h in got} & {h.video_id for h in want}) >= 4


def test_recall_on_a_clustered_collection_and_a_deterministic_build():
    vectors = clustered(6000, 48, 60, seed=0)
    queries = clustered(200, 48, 60, seed=1)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    ann = AnnIndex.build(vectors, seed=3)
    assert ann.settings["lists"] == round(np.sqrt(6000))
    scores, rows = ann.search(queries, 10, probe=8)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)])
    assert recall >= 0.9, recall
    exact_scores = np.take_along_axis(queries @ vectors.T, rows, axis=1)
    np.testing.assert_allclose(scores, exact_scores, atol=2e-2)
    again = AnnIndex.build(vectors, seed=3)
    assert np.array_equal(again.centroids(), ann.centroids())
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(again.lists(), ann.lists(), strict=True))
    with pytest.raises(SearchIndexError, match="ann_lists=7000"):
        AnnIndex.build(vectors, lists=7000)


def test_a_stored_index_round_trips_exactly(tmp_path):
    vectors = clustered(3000, 32, 30, seed=0)
    ann = AnnIndex.build(vectors, seed=0)
    path = write_index(tmp_path / "i.zarr", vectors, [f"v{i}" for i in range(3000)], "float16",
                       model_fingerprint="m", model_path="/m", frames_fingerprint="f", ann=ann)
    loaded = read_index(path, approximate=True).ann
    queries = clustered(50, 32, 30, seed=1)
    for probe in (1, 4, 1000):
        (s1, r1), (s2, r2) = ann.search(queries, 10, probe), loaded.search(queries, 10, probe)
        assert np.array_equal(r1, r2) and np.array_equal(s1, s2)


def damage(path, entry, change):
    """Apply ``change`` to one array (or, for ``"attrs"``, the ann group's attributes) of an index copy."""
    group = zarr.open_group(path / "ann", mode="r+")
    if entry == "attrs":
        group.attrs.update(change)
    else:
        array = group[entry]
        values = array[...]
        change(values)
        array[...] = values


@pytest.mark.parametrize("entry, change, message", [
    ("attrs", {"seed": 1}, "stale or foreign approximate index"),
    ("attrs", {"lists": 10**9}, "malformed attributes"),
    ("attrs", {"by_residual": "yes"}, "malformed attributes"),
    ("rows", lambda rows: rows.__setitem__(0, rows[1]), "not a permutation"),
    ("rows", lambda rows: rows.__setitem__(0, -5), "not a permutation"),
    ("list_offsets", lambda offsets: offsets.__setitem__(-1, offsets[-1] + 1), "non-decreasing sequence"),
    ("list_offsets", lambda offsets: offsets.__setitem__(1, 10**6), "non-decreasing sequence"),
    ("centroids", lambda centroids: centroids.__setitem__((0, 0), np.nan), "non-finite centroids"),
    ("scalar_range", lambda ranges: ranges.__setitem__(0, -1.0), "negative range"),
])
def test_a_damaged_or_hostile_approximate_index_is_refused(setup, tmp_path, entry, change, message):
    broken = shutil.copytree(setup[0] / "ann.zarr", tmp_path / "broken.zarr")
    damage(broken, entry, change)
    with pytest.raises(SearchIndexError, match=message) as error:
        Searcher(broken, device="cpu")
    assert str(broken) in str(error.value)
    Searcher(broken, device="cpu", exact=True)  # the exact vectors are untouched and still usable


def test_missing_or_reshaped_approximate_arrays_are_refused(setup, tmp_path):
    source = setup[0] / "ann.zarr"
    missing = shutil.copytree(source, tmp_path / "missing.zarr")
    shutil.rmtree(missing / "ann")
    with pytest.raises(SearchIndexError, match=r"missing.zarr/ann: missing"):
        read_index(missing, approximate=True)
    holes = shutil.copytree(source, tmp_path / "holes.zarr")
    next(p for p in (holes / "ann" / "codes" / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(SearchIndexError, match=r"holes.zarr/ann/codes: chunks are missing"):
        read_index(holes, approximate=True)
    reshaped = shutil.copytree(source, tmp_path / "reshaped.zarr")
    group = zarr.open_group(reshaped / "ann", mode="r+")
    codes = group["codes"][...]
    create_array(group, "codes", shape=(codes.shape[0], codes.shape[1] - 1), chunks=codes.shape, dtype="uint8")
    with pytest.raises(SearchIndexError, match=r"reshaped.zarr/ann/codes: .* expected"):
        read_index(reshaped, approximate=True)


def test_an_approximate_index_from_another_model_or_video_set_is_refused(setup, tmp_path):
    root, _, frames, _ = setup
    other = saved_student(tmp_path / "other", 5)
    build_index(other, frames, tmp_path / "other.zarr", search=SearchConfig(ann_threshold=1), device="cpu",
                progress=False)
    foreign = shutil.copytree(root / "ann.zarr", tmp_path / "foreign.zarr")
    shutil.rmtree(foreign / "ann")
    shutil.copytree(tmp_path / "other.zarr" / "ann", foreign / "ann")  # same shapes, another model's index
    with pytest.raises(SearchIndexError, match=r"foreign.zarr/ann: stale or foreign"):
        Searcher(foreign, device="cpu")
    relabelled = shutil.copytree(root / "ann.zarr", tmp_path / "relabelled.zarr")
    group = zarr.open_group(relabelled, mode="r+")
    group.attrs.update({"frames_fingerprint": "0" * 64})  # the vectors now claim another video set
    with pytest.raises(SearchIndexError, match="stale or foreign"):
        Searcher(relabelled, device="cpu")


def test_cli_builds_and_queries_an_approximate_index(setup, tmp_path):
    _, _, frames, model = setup
    index = tmp_path / "cli-ann.zarr"
    result = CliRunner().invoke(app, ["search", "index", "--model", str(model), "--frames", str(frames), "--out",
                                      str(index), "--device", "cpu", "-S", "search.ann_threshold=10"])
    assert result.exit_code == 0 and "approximate ivf-sq8 index" in result.output, result.output
    outputs = {}
    for extra in ([], ["--exact"]):
        result = CliRunner().invoke(app, ["search", "query", str(index), "a red square moves left", "-k", "3",
                                          "--json", "--device", "cpu", "-S", "search.ann_probe=1000", *extra])
        assert result.exit_code == 0, result.output
        outputs[bool(extra)] = json.loads(result.output[result.output.index("{"):])
    assert outputs[False]["search"] == "approximate" and outputs[True]["search"] == "exact"
    assert len(outputs[False]["results"]) == 3
    np.testing.assert_allclose([r["score"] for r in outputs[False]["results"]],
                               [r["score"] for r in outputs[True]["results"]], atol=2e-2)
    damage(index, "rows", lambda rows: rows.__setitem__(0, rows[1]))
    result = CliRunner().invoke(app, ["search", "query", str(index), "x", "--device", "cpu"])
    assert result.exit_code == 1 and "not a permutation" in result.output and "Traceback" not in result.output
