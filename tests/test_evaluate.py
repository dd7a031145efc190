"""teach evaluate: a student directory and a teacher directory on a tiny frames store with failed videos."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import BackboneConfig, ComputeConfig, EvaluateConfig, StudentConfig, TeacherConfig
from teachclip.core.manifest import load_manifest, write_manifest
from teachclip.models.factory import create_teacher, save_teacher
from teachclip.models.io import save_model
from teachclip.models.metrics import retrieval_metrics
from teachclip.models.student import Student
from teachclip.stages.evaluate import evaluate
from teachclip.stores.frames import FramesStore, StoreMismatchError

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
CONFIG = EvaluateConfig(batch_videos=3, batch_texts=4, block_texts=3, block_videos=2)
CPU = ComputeConfig(device="cpu")


@pytest.fixture(scope="module")
def dataset(tiny_data):
    """12 tiny demo videos, 9 of them test, the last 2 test videos failed to decode (tests/conftest.py;
    read-only)."""
    data = tiny_data(videos=12, test_fraction=0.75, failed_test=2, videos_per_shard=8)
    return data.manifest, data.frames


def valid_test_split(manifest_dir, frames):
    """What evaluate must score: valid test videos (sorted) and the captions of those videos."""
    manifest, store = load_manifest(manifest_dir), FramesStore.open(frames)
    video_ids = sorted(v.video_id for v in manifest.videos_in("test"))
    video_ids = [v for v, ok in zip(video_ids, store.valid[store.index(video_ids)], strict=True) if ok]
    captions = [c for c in manifest.captions_in("test") if c.video_id in video_ids]
    batch_frames, mask = store.read(store.index(video_ids))
    gt = np.array([video_ids.index(c.video_id) for c in captions])
    excluded = sorted(v.video_id for v in manifest.videos_in("test") if v.video_id not in video_ids)
    counts = {"texts": len(captions), "videos": len(video_ids), "excluded_videos": len(excluded),
              "excluded_captions": len(manifest.captions_in("test")) - len(captions)}
    return video_ids, captions, torch.from_numpy(batch_frames), torch.from_numpy(mask), gt, excluded, counts


def test_student_directory(dataset, tmp_path):
    manifest_dir, frames = dataset
    torch.manual_seed(0)
    config = StudentConfig(backbone=MICRO, head="seqTransf", afa=True, temporal_layers=1)
    student = Student(config).eval()
    save_model(tmp_path / "student", student, "student", config)

    (metrics,) = evaluate([(tmp_path / "student", tmp_path / "m.json")], frames, manifest_dir, CONFIG, CPU,
                          dump_similarity=tmp_path / "sim.npz")
    video_ids, captions, batch_frames, mask, gt, excluded, counts = valid_test_split(manifest_dir, frames)
    assert counts["excluded_videos"] == 2 and counts["excluded_captions"] == 2 and counts["videos"] == 7
    with torch.no_grad():
        expected = student.encode_text(student.tokenize([c.text for c in captions])) @ \
            student.encode_video(batch_frames, mask).T
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    dump = np.load(tmp_path / "sim.npz")  # allow_pickle=False: ids are unicode arrays, not objects
    assert dump["similarity"].dtype == np.float32 and dump["similarity"].shape == (len(captions), 7)
    # batched encoding equals the one-shot definition up to float noise; the metrics are those of the
    # evaluated matrix (an untrained model has near-ties, so noise may flip ranks: compare exactly there)
    np.testing.assert_allclose(dump["similarity"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert metrics.pop("score_ms_per_query") >= 0  # measured: only its presence and sign are checkable
    assert metrics == retrieval_metrics(dump["similarity"], gt) | counts
    assert dump["video_ids"].tolist() == video_ids
    assert dump["text_ids"].tolist() == [c.caption_id for c in captions]
    assert dump["text_video_index"].tolist() == gt.tolist()
    assert dump["excluded_video_ids"].tolist() == excluded
    assert dump["video_ids"].dtype.kind == "U"


def test_teacher_directory_scored_by_its_own_similarity(dataset, tmp_path):
    manifest_dir, frames = dataset
    torch.manual_seed(0)
    teacher = create_teacher(TeacherConfig(kind="xpool", backbone=MICRO)).eval()
    save_teacher(teacher, tmp_path / "xpool")
    (metrics,) = evaluate([(tmp_path / "xpool", tmp_path / "m.json")], frames, manifest_dir, CONFIG, CPU,
                          dump_similarity=tmp_path / "sim.npz")
    video_ids, captions, batch_frames, mask, gt, excluded, counts = valid_test_split(manifest_dir, frames)
    with torch.no_grad():  # unblocked, per-pair definition
        expected = teacher.similarity(
            teacher.text_batch([c.text for c in captions], [c.caption_id for c in captions],
                               [c.video_id for c in captions]),
            {"frames": batch_frames, "mask": mask, "video_ids": video_ids})
    dumped = np.load(tmp_path / "sim.npz")["similarity"]
    np.testing.assert_allclose(dumped, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert metrics.pop("score_ms_per_query") >= 0
    assert metrics == retrieval_metrics(dumped, gt) | counts


def test_refuses_frames_of_another_manifest(dataset, tmp_path):
    manifest_dir, frames = dataset
    manifest = load_manifest(manifest_dir)
    other = write_manifest(tmp_path / "other", [(v.video_id, str(v.path), v.split) for v in manifest.videos[:-1]],
                           [(c.caption_id, c.video_id, c.text) for c in manifest.captions
                            if c.video_id != manifest.videos[-1].video_id])
    config = StudentConfig(backbone=MICRO, afa=False)
    save_model(tmp_path / "student", Student(config), "student", config)
    with pytest.raises(StoreMismatchError, match=manifest.fingerprint("content")):
        evaluate([(tmp_path / "student", tmp_path / "m.json")], frames, other, CONFIG, CPU)


def test_cli_evaluate(dataset, tmp_path):
    manifest_dir, frames = dataset
    config = StudentConfig(backbone=MICRO, afa=False)
    save_model(tmp_path / "student", Student(config), "student", config)
    params = tmp_path / "params.yaml"
    params.write_text("compute: {device: cpu}\nevaluate: {batch_videos: 4}\n")
    result = CliRunner().invoke(app, ["--params", str(params), "evaluate", "--model", str(tmp_path / "student"),
                                      "--frames", str(frames), "--manifest", str(manifest_dir), "--split", "train",
                                      "--out", str(tmp_path / "out" / "metrics.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    train = load_manifest(manifest_dir)
    assert metrics["texts"] == len(train.captions_in("train")) and metrics["videos"] == len(train.videos_in("train"))
    assert metrics["excluded_videos"] == 0
    assert "t2v_R1=" in result.output
    result = CliRunner().invoke(app, ["--params", str(params), "evaluate", "--model", str(tmp_path / "nowhere"),
                                      "--frames", str(frames), "--manifest", str(manifest_dir),
                                      "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "error:" in result.output


def test_frames_store_records_its_manifest_fingerprint_mode(dataset, tmp_path, monkeypatch):
    """Readers recompute only the mode decode used: "stat" never hashes the video files."""
    from teachclip.core.config import DecodeConfig
    from teachclip.core.manifest import Manifest
    from teachclip.stages.decode import decode
    from teachclip.stores import open_for_manifest

    manifest_dir, _ = dataset
    frames = tmp_path / "stat.zarr"
    decode(manifest_dir, frames, DecodeConfig(frames_per_video=4, size=32, fingerprint_mode="stat",
                                              max_failure_fraction=1.0), ComputeConfig(scheduler="sync"), progress=False)
    assert FramesStore.open(frames).manifest_fingerprint_mode == "stat"
    modes = []
    original = Manifest.fingerprint

    def spy(self, mode="content"):
        modes.append(mode)
        return original(self, mode)

    monkeypatch.setattr(Manifest, "fingerprint", spy)
    open_for_manifest(frames, load_manifest(manifest_dir))
    assert modes == ["stat"]


def test_a_runs_directory_expands_to_its_students_and_teachers_only(tmp_path):
    """`teach evaluate --model runs` (dvc.yaml) scores every student and teacher inside; a pretrained
    backbone, a `teach export` folder, a training checkpoint folder and stray files are not retrieval
    models and are left out, but a damaged model config is reported rather than silently skipped."""
    from teachclip.core.errors import InputError
    from teachclip.models.io import CheckpointError
    from teachclip.stages.evaluate import evaluable_models

    runs = tmp_path / "runs"
    config = StudentConfig(backbone=MICRO, afa=False)
    save_model(runs / "student", Student(config), "student", config)
    save_teacher(create_teacher(TeacherConfig(kind="xpool", backbone=MICRO)), runs / "a_xpool")
    save_model(runs / "backbone", Student(config).backbone, "backbone", MICRO)
    (runs / "export").mkdir()
    (runs / "export" / "config.json").write_text(json.dumps({"format": "teachclip-export", "format_version": 1}))
    (runs / "checkpoint").mkdir()
    (runs / "notes.txt").write_text("not a model")
    assert evaluable_models([runs]) == [runs / "a_xpool", runs / "student"]
    # a single model directory is taken as it is, in the order given
    assert evaluable_models([runs / "student", runs / "a_xpool"]) == [runs / "student", runs / "a_xpool"]

    (runs / "broken").mkdir()
    (runs / "broken" / "config.json").write_text('{"kind": "student", "config": [], "format_version": 1}')
    with pytest.raises(CheckpointError, match="broken"):
        evaluable_models([runs])
    (runs / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        evaluable_models([runs])

    empty = tmp_path / "empty"
    (empty / "backbone").mkdir(parents=True)
    with pytest.raises(InputError, match="neither a saved model nor a directory"):
        evaluable_models([empty])
