"""teachclip.api: load a saved or exported student and embed texts, files, frames arrays and stores;
the README's Python block runs verbatim."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from teachclip import load_student
from teachclip.api import EmbedInputError
from teachclip.core.config import BackboneConfig, DecodeConfig, SearchConfig, StudentConfig
from teachclip.core.errors import TeachclipError
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.io import save_model
from teachclip.models.student import Student
from teachclip.stores.frames import FramesStore
from teachclip.tools.export import export_student
from teachclip.video import sample_frames

README = Path(__file__).resolve().parents[1] / "README.md"
MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


def saved_student(directory, seed=0, **fields):
    """A student with every weight moved off its initialisation, saved as train-student saves it."""
    torch.manual_seed(seed)
    config = StudentConfig(backbone=MICRO, temporal_layers=2, **fields)
    student = Student(config)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    save_model(directory, student, "student", config)
    return directory


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data()


@pytest.mark.parametrize("fields", [{"head": "seqTransf", "afa": True}, {"head": "meanP", "afa": False}])
def test_saved_and_exported_student_embed_alike(data, tmp_path, fields):
    model_dir = saved_student(tmp_path / "model", **fields)
    export_student(model_dir, tmp_path / "export")
    saved, exported = load_student(model_dir, device="cpu"), load_student(tmp_path / "export", device="cpu")
    assert saved.fingerprint != exported.fingerprint
    texts = [c.text for c in load_manifest(data.manifest).captions[:5]]
    store = FramesStore.open(data.frames)
    frames, mask = store.read(np.arange(len(store)))
    mask[1, 2:] = False
    reference = load_model(model_dir)
    with torch.no_grad():
        want_text = reference.encode_text(reference.tokenize(texts)).numpy()
        want_video = reference.encode_video(torch.from_numpy(frames), torch.from_numpy(mask)).numpy()
    for student in (saved, exported):
        text = student.embed_texts(texts)
        video = student.embed_frames(frames, mask)
        assert text.dtype == np.float32 and text.shape == (5, student.dim)
        np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(text, want_text, atol=1e-6)
        np.testing.assert_allclose(video, want_video, atol=1e-6)
        assert (text @ video.T).std() > 0.01
        # one video [T, H, W, 3] without a mask is the same as a batch of one with every frame valid
        assert mask[0].all()
        np.testing.assert_allclose(student.embed_frames(frames[0]), want_video[:1], atol=1e-6)


def test_files_and_store_give_the_stores_vectors(data, tmp_path):
    student = load_student(saved_student(tmp_path / "model"), device="cpu",
                           decode=DecodeConfig(frames_per_video=4, size=32))
    ids, vectors = student.embed_store(data.frames)
    store = FramesStore.open(data.frames)
    assert ids == [store.video_ids[i] for i in np.flatnonzero(store.valid)]
    files = {v.video_id: v.path for v in load_manifest(data.manifest).videos}
    from_files = student.embed_videos([files[i] for i in ids[:3]], batch_videos=2)
    # the store was decoded with the same settings, so the frames and vectors are the same
    np.testing.assert_allclose(from_files, vectors[:3], atol=1e-6)
    frames, mask = sample_frames(files[ids[0]], 4, 1.0, 32)
    np.testing.assert_allclose(student.embed_frames(frames, mask), vectors[:1], atol=1e-6)
    assert student.embed_texts([]).shape == (0, student.dim) and student.embed_videos([]).shape == (0, student.dim)


def test_bad_inputs_are_readable_errors(data, tmp_path):
    student = load_student(saved_student(tmp_path / "model"), device="cpu")
    with pytest.raises(EmbedInputError, match="expected uint8"):
        student.embed_frames(np.zeros((2, 4, 8, 8), np.float64))
    with pytest.raises(EmbedInputError, match="mask of shape"):
        student.embed_frames(np.zeros((1, 4, 8, 8, 3), np.uint8), np.ones((1, 3), bool))
    with pytest.raises(EmbedInputError, match="no valid frame"):
        student.embed_frames(np.zeros((1, 4, 8, 8, 3), np.uint8), np.zeros((1, 4), bool))
    with pytest.raises(EmbedInputError, match="file not found"):
        student.embed_videos([tmp_path / "missing.mp4"])
    with pytest.raises(TeachclipError, match="config.json"):
        load_student(tmp_path / "nothing")
    broken = tmp_path / "broken-export"
    export_student(tmp_path / "model", broken)
    (broken / "head.safetensors").write_bytes(b"junk")
    with pytest.raises(TeachclipError, match="broken-export"):
        load_student(broken)


def test_readme_python_block_runs_verbatim(data, tmp_path, capsys):
    """The README's block, executed as written inside a demo-shaped directory with a tiny export."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(block for block in blocks if "load_student" in block)
    (tmp_path / "runs").mkdir()
    export_student(saved_student(tmp_path / "model"), tmp_path / "runs" / "both-s0")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "frames.zarr").symlink_to(data.frames)
    (tmp_path / "data" / "demo").symlink_to(data.manifest)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["scores"].shape == (2, 2) and namespace["one_video"].shape == (1, namespace["texts"].shape[1])
    assert len(namespace["video_ids"]) == len(namespace["collection"]) > 0
    assert "best matches" in capsys.readouterr().out


def test_search_uses_the_api_with_an_export(data, tmp_path):
    from teachclip.tools.search import Searcher, build_index

    export_student(saved_student(tmp_path / "model"), tmp_path / "export")
    student = load_student(tmp_path / "export", device="cpu")
    index = build_index(tmp_path / "export", data.frames, tmp_path / "index.zarr", search=SearchConfig(dtype="float32"), device="cpu",
                        progress=False)
    searcher = Searcher(index, device="cpu")
    ids, vectors = student.embed_store(data.frames)
    text = student.embed_texts(["a red square moves left"])[0]
    assert searcher.query("a red square moves left", k=1)[0].video_id == ids[int(np.argmax(vectors @ text))]
    np.testing.assert_allclose(searcher.encode(["a red square moves left"])[0].numpy(), text, atol=1e-6)
