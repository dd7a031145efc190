"""Frozen image tower end to end: `teach encode-frames` (frame-features store), its use by every
stage in place of pixels and its refusals, and `teach pretrain-backbone` (the demo's CLIP stand-in)."""

import json

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    EvaluateConfig,
    PretrainBackboneConfig,
    StudentConfig,
    TeacherConfig,
    TrainStudentConfig,
    TrainTeacherConfig,
)
from teachclip.core.manifest import load_manifest
from teachclip.demo.vocabulary import META_FILE
from teachclip.models.backbone import Backbone
from teachclip.models.factory import create_teacher, load_model
from teachclip.models.io import save_model
from teachclip.models.student import Student
from teachclip.stages.encode_frames import encode_frames
from teachclip.stages.pretrain_backbone import PretrainError, labelled_frames, pretrain_backbone
from teachclip.stages.train_student import train_student
from teachclip.stores import open_video_store
from teachclip.stores.features import FrameFeaturesStore
from teachclip.stores.frames import FramesStore, FramesStoreError, StoreMismatchError
from teachclip.stores.zarr_io import done_units, partial_path
from teachclip.training.contrastive import train_contrastive
from teachclip.training.scoring import evaluate_split

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
CPU = ComputeConfig(device="cpu", scheduler="sync")
FROZEN = MICRO.model_copy(update={"freeze_visual": True})


@pytest.fixture(scope="module")
def dataset(tiny_data):
    """16 tiny demo videos, half of them test, the last test video failed to decode; 8 videos per frames
    shard (tests/conftest.py; read-only)."""
    data = tiny_data(videos=16, test_fraction=0.5, failed_test=1, videos_per_shard=8)
    return data.manifest, data.frames


@pytest.fixture(scope="module")
def features(dataset, tmp_path_factory):
    _, frames = dataset
    torch.manual_seed(0)
    return encode_frames(frames, tmp_path_factory.mktemp("features") / "features.zarr", FROZEN, CPU, progress=False)


def seeded_student(seed=0, **fields):
    """Seed 0 gives the tower of the `features` fixture (the backbone is built first)."""
    torch.manual_seed(seed)
    return Student(StudentConfig(backbone=FROZEN, **fields)).eval()


def seeded_teacher(kind="xpool"):
    torch.manual_seed(0)
    return create_teacher(TeacherConfig(kind=kind, backbone=FROZEN)).eval()


def test_features_are_the_towers_outputs(dataset, features):
    _, frames = dataset
    pixels_store, store = FramesStore.open(frames), open_video_store(features)
    assert isinstance(store, FrameFeaturesStore) and store.holds_features
    assert store.fingerprint == pixels_store.fingerprint and store.video_ids == pixels_store.video_ids
    assert store.failures == pixels_store.failures and (store.frame_mask == pixels_store.frame_mask).all()
    torch.manual_seed(0)
    backbone = Backbone(FROZEN).eval()
    assert store.backbone["visual_fingerprint"] == backbone.visual_fingerprint()
    indices = np.array([3, 0, 3, len(store) - 1])
    pixels, mask = pixels_store.read(indices)
    cached, cached_mask = store.read(indices)
    assert cached.dtype == np.float16 and cached.shape == (4, store.frames_per_video, backbone.embed_dim)
    with torch.no_grad():
        expected = backbone.encode_frames(torch.from_numpy(pixels)) * torch.from_numpy(mask)[..., None]
    assert (cached_mask == mask).all()
    np.testing.assert_allclose(cached.astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)
    assert not cached[~mask].any()  # padding and the failed video hold zeros


def test_evaluation_on_features_equals_evaluation_on_frames(dataset, features):
    manifest_dir, frames = dataset
    manifest = load_manifest(manifest_dir)
    config = EvaluateConfig(batch_videos=3)
    for model in (seeded_student(afa=True), seeded_teacher()):
        on_pixels = evaluate_split(model, FramesStore.open(frames), manifest, config, torch.device("cpu"))
        on_features = evaluate_split(model, open_video_store(features), manifest, config, torch.device("cpu"))
        np.testing.assert_allclose(on_features.similarity, on_pixels.similarity, atol=2e-3)
        assert on_features.metrics["score_ms_per_query"] >= 0


def test_refuses_other_towers_and_trainable_towers(dataset, features):
    manifest_dir, _ = dataset
    manifest, store = load_manifest(manifest_dir), open_video_store(features)
    with pytest.raises(FramesStoreError, match="rerun `teach encode-frames`"):
        evaluate_split(seeded_student(seed=1), store, manifest, EvaluateConfig(), torch.device("cpu"))
    torch.manual_seed(0)
    trainable = Student(StudentConfig(backbone=MICRO)).eval()
    with pytest.raises(FramesStoreError, match="freeze_visual"):
        evaluate_split(trainable, store, manifest, EvaluateConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="frozen image tower"):
        trainable.backbone.encode_images(torch.zeros(2, trainable.backbone.embed_dim))
    ts2net = create_teacher(TeacherConfig(kind="ts2net", backbone=FROZEN))
    with pytest.raises(ValueError, match="needs the frames store"):
        ts2net.encode_videos({"frames": torch.zeros(1, 4, 32), "mask": torch.ones(1, 4, dtype=torch.bool),
                              "video_ids": ["v"]})


def test_training_stages_run_on_features(dataset, features, tmp_path):
    manifest_dir, _ = dataset
    manifest, store = load_manifest(manifest_dir), open_video_store(features)
    teacher = seeded_teacher().train()
    visual_before = teacher.backbone.visual_fingerprint()
    rows = train_contrastive(teacher, store, manifest, tmp_path / "teacher",
                             TrainTeacherConfig(epochs=1, batch_size=4), EvaluateConfig(), torch.device("cpu"),
                             identity={"test": 1}, progress=False)
    assert rows[-1]["test_t2v_R1"] >= 0
    assert teacher.backbone.visual_fingerprint() == visual_before  # the tower never trained
    torch.manual_seed(0)  # the student's tower must be the one that made the features
    last = train_student(features, manifest_dir, [], tmp_path / "student", TrainStudentConfig(epochs=1, batch_size=4),
                         StudentConfig(backbone=FROZEN), EvaluateConfig(), CPU, progress=False)
    assert "test_t2v_R1" in last


def test_resume_and_refusals(dataset, features, tmp_path):
    _, frames = dataset
    out = tmp_path / "features.zarr"
    torch.manual_seed(0)
    backbone_config = FROZEN
    encode_frames(frames, out, backbone_config, CPU, progress=False)
    reference = zarr.open_group(str(features), mode="r")["features"][...]
    # a crash after the first shard: the partial store keeps it and the rerun only does the rest
    partial = partial_path(out)
    out.rename(partial)
    (partial / "_progress").mkdir()
    (partial / "_progress" / "shard-00000000").touch()
    array = zarr.open_array(str(partial / "features"), mode="r+")
    array[8:] = np.zeros_like(array[8:])
    torch.manual_seed(0)
    encode_frames(frames, out, backbone_config, CPU, progress=False)
    assert not partial.exists() and not done_units(out)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["features"][...], reference)
    torch.manual_seed(5)  # another tower: the finished store is refused, naming both fingerprints
    with pytest.raises(StoreMismatchError, match="--overwrite"):
        encode_frames(frames, out, backbone_config, CPU, progress=False)
    with pytest.raises(FramesStoreError, match="a frame-features store, but a frames store is needed"):
        encode_frames(out, tmp_path / "again.zarr", backbone_config, CPU, progress=False)


def test_text_padding_is_cut_without_changing_the_result():
    torch.manual_seed(0)
    backbone = Backbone(MICRO).eval()
    tokens = backbone.tokenize(["a red disc", "a small blue star moving up and to the left on a grey backdrop"])
    with torch.no_grad():
        full = backbone.encode_text_tokens(tokens)[0]
        trimmed = backbone.encode_text(tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_missing_local_checkpoint_is_named():
    with pytest.raises(FileNotFoundError, match="runs/nothing/clip.safetensors"):
        Backbone(MICRO.model_copy(update={"pretrained": "runs/nothing/clip.safetensors"}))


def test_labelled_frames_follow_the_timeline(dataset):
    manifest_dir, frames = dataset
    store = FramesStore.open(frames)
    meta = json.loads((manifest_dir / META_FILE).read_text())
    pairs = labelled_frames(manifest_dir, store, {"train"})
    # 6 s sampled at 1 fps then linspaced to 4 frames: seconds 0, 2, 3, 5
    expected = sum(video["timeline"][second].startswith("object:")
                   for video in meta["videos"] if video["split"] == "train" for second in (0, 2, 3, 5))
    assert len(pairs.objects) == expected and pairs.pixels.shape == (expected, 32, 32, 3)
    assert pairs.pixels.dtype == torch.uint8


def test_pretrain_backbone_writes_a_loadable_tower(dataset, tmp_path):
    manifest_dir, frames = dataset
    config = PretrainBackboneConfig(backbone=MICRO, epochs=2, batch_size=8, eval_pairs=10)
    last = pretrain_backbone(manifest_dir, frames, tmp_path / "backbone", config, CPU, progress=False)
    assert last["epoch"] == 2 and 0 <= last["heldout_R1"] <= 100
    document = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert document["kind"] == "backbone" and document["config"]["name"] == "teachclip-micro"
    assert document["extra"]["train_frames"] > 8
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "backbone" / "model.safetensors"))
    for source in (tmp_path / "backbone" / "model.safetensors", tmp_path / "backbone"):  # the file or its directory
        loaded = Backbone(MICRO.model_copy(update={"pretrained": str(source)}))
        for name, tensor in loaded.clip.state_dict().items():
            torch.testing.assert_close(tensor, saved[f"clip.{name}"])
    assert isinstance(load_model(tmp_path / "backbone"), Backbone)  # a saved model of kind "backbone"
    # resume after the last epoch: nothing left to train, the same result
    again = pretrain_backbone(manifest_dir, frames, tmp_path / "backbone", config, CPU, resume=True, progress=False)
    assert again == last


def test_pretrain_refuses_data_without_ground_truth(dataset, tmp_path):
    manifest_dir, frames = dataset
    copy = tmp_path / "plain"
    copy.mkdir()
    for name in ("videos.csv", "captions.csv"):
        (copy / name).write_text((manifest_dir / name).read_text())
    (copy / "videos").symlink_to(manifest_dir / "videos")
    with pytest.raises(PretrainError, match="demo.json: not found"):
        pretrain_backbone(copy, frames, tmp_path / "out", PretrainBackboneConfig(backbone=MICRO), CPU, progress=False)


def test_cli_encode_frames_and_multi_model_evaluate(dataset, tmp_path):
    manifest_dir, frames = dataset
    params = tmp_path / "params.yaml"
    params.write_text("compute: {device: cpu}\nstudent:\n  backbone: {name: teachclip-micro, precision: fp32, "
                      "freeze_visual: true}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["--params", str(params), "encode-frames", "--frames", str(frames),
                                 "--out", str(tmp_path / "features.zarr")])
    assert result.exit_code == 0, result.output
    assert isinstance(open_video_store(tmp_path / "features.zarr"), FrameFeaturesStore)
    for name in ("one", "two"):  # several models, one process, one metrics file each (pixels: any tower)
        save_model(tmp_path / name, seeded_student(), "student", StudentConfig(backbone=FROZEN))
    result = runner.invoke(app, ["--params", str(params), "evaluate", "--frames", str(frames), "--manifest",
                                 str(manifest_dir), "--model", str(tmp_path / "one"), "--model", str(tmp_path / "two"),
                                 "--out", str(tmp_path / "metrics")])
    assert result.exit_code == 0, result.output
    for name in ("one", "two"):
        assert json.loads((tmp_path / "metrics" / f"{name}.json").read_text())["texts"] > 0
    result = runner.invoke(app, ["--params", str(params), "encode-frames", "--frames", str(tmp_path / "nothing.zarr"),
                                 "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 1 and "nothing.zarr" in result.output


def test_cli_train_student_several_seeds_in_one_process(dataset, tmp_path):
    manifest_dir, frames = dataset
    params = tmp_path / "params.yaml"
    params.write_text("compute: {device: cpu}\nstudent:\n  backbone: {name: teachclip-micro, precision: fp32}\n"
                      "train_student: {epochs: 1, batch_size: 4, teachers: []}\n")
    runner = CliRunner()
    command = ["--params", str(params), "train-student", "--frames", str(frames), "--manifest", str(manifest_dir),
               "--seed", "3", "--seed", "4"]
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "{seed}" in result.output  # would overwrite one run with the next
    result = runner.invoke(app, [*command, "--out", str(tmp_path / "run-s{seed}")])
    assert result.exit_code == 0, result.output
    for seed in (3, 4):
        saved = json.loads((tmp_path / f"run-s{seed}" / "config.json").read_text())
        assert saved["extra"]["train_student"]["config"]["seed"] == seed
