"""teach search: index a frames store once, answer queries by one matrix-vector product."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import BackboneConfig, StudentConfig
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.io import model_fingerprint, save_model
from teachclip.models.student import Student
from teachclip.stores.frames import FramesStore
from teachclip.stores.search_index import SearchIndexError, read_index
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
    build_index(model, frames, root / "index16.zarr", dtype="float16", batch_videos=5, device="cpu", progress=False)
    build_index(model, frames, root / "index32.zarr", dtype="float32", batch_videos=5, device="cpu", progress=False)
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
    expected = Searcher(index, device="cpu").query("a red square moves left", k=3)
    assert document["results"] == [{"rank": h.rank, "video_id": h.video_id, "score": h.score} for h in expected]
    result = CliRunner().invoke(app, ["search", "query", str(index), "a red square", "--device", "cpu"])
    assert result.exit_code == 0 and expected[0].video_id in result.output
    other = saved_student(tmp_path / "other", 2)
    result = CliRunner().invoke(app, ["search", "query", str(index), "x", "--model", str(other), "--device", "cpu"])
    assert result.exit_code == 1 and "was built by model" in result.output
