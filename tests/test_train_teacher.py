"""train-teacher: a few epochs of tiny teachers on a tiny synthetic frames store."""

import json

import numpy as np
import pytest
import torch
from helpers import read_rows, sha256_tree, summary_of
from safetensors.torch import load_file
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    DecodeConfig,
    DemoConfig,
    EvaluateConfig,
    TeacherConfig,
    TrainTeacherConfig,
)
from teachclip.core.manifest import load_manifest, write_manifest
from teachclip.models.factory import load_teacher
from teachclip.stages.decode import decode
from teachclip.stages.demo_data import generate_demo
from teachclip.stages.train_teacher import train_teacher
from teachclip.stores.frames import StoreMismatchError
from teachclip.training import contrastive as contrastive_module
from teachclip.training.log import read_summary

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


@pytest.fixture(scope="module")
def dataset(tiny_data):
    """24 tiny demo videos (32 px, 6 s at 2 fps; a third of them test) decoded into a frames store of
    4 frames per video (tests/conftest.py; read-only)."""
    data = tiny_data(videos=24, test_fraction=0.34, videos_per_shard=8)
    return data.manifest, data.frames


def run(dataset, out, kind="xpool", epochs=3, options=None, resume=False, **train):
    manifest_dir, frames = dataset
    config = TrainTeacherConfig(epochs=epochs, batch_size=8, lr=2e-3, lr_backbone=2e-3, weight_decay=0.0, **train)
    return train_teacher(TeacherConfig(kind=kind, backbone=MICRO, options=options or {}), frames, manifest_dir, out,
                         config, EvaluateConfig(batch_videos=5, block_texts=3, block_videos=4),
                         ComputeConfig(device="cpu"), resume=resume, progress=False)


def test_xpool_loss_decreases_and_outputs_are_written(dataset, tmp_path):
    last = run(dataset, tmp_path / "xpool", epochs=5)
    rows = read_rows(tmp_path / "xpool")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2 and min(losses[-2:]) < min(losses[:2]), losses
    assert all(0 <= float(r["test_t2v_R1"]) <= 100 for r in rows)
    assert last["epoch"] == 5 and "test_t2v_R1" in last and "test_v2t_R10" in last
    assert read_summary(tmp_path / "xpool") == pytest.approx(summary_of(last))
    # every checkpoint file is safetensors or JSON
    names = {p.name for p in (tmp_path / "xpool").rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "metrics.json", "training_state.json"} <= names
    assert all(n.endswith((".json", ".safetensors", ".tsv")) for n in names), names
    # the saved teacher rebuilds from its directory alone, with the trained weights
    teacher = load_teacher(tmp_path / "xpool")
    saved = load_file(str(tmp_path / "xpool" / "model.safetensors"))
    for name, value in teacher.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name])
    assert float(teacher.logit_scale.detach()) == pytest.approx(last["logit_scale"])


@pytest.mark.parametrize("kind, options", [("xclip", {}), ("ts2net", {"topk": 2, "topk_samples": 20, "temporal_layers": 1}),
                                           ("frame_clip", {})])
def test_other_teachers_train(dataset, tmp_path, kind, options):
    last = run(dataset, tmp_path / kind, kind=kind, epochs=1, options=options)
    assert np.isfinite(last["loss"]) and "test_t2v_R1" in last
    assert (tmp_path / kind / "model.safetensors").is_file()


def test_resume_after_interruption_matches_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    run(dataset, tmp_path / "straight", epochs=2)

    original = contrastive_module.caption_per_video_batches

    def killed_in_epoch_two(captions_of_video, batch_size, seed, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(captions_of_video, batch_size, seed, epoch)

    monkeypatch.setattr(contrastive_module, "caption_per_video_batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(dataset, tmp_path / "resumed", epochs=2)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert len(read_rows(tmp_path / "resumed")) == 1
    monkeypatch.setattr(contrastive_module, "caption_per_video_batches", original)
    torch.manual_seed(1234)  # a new process would start from other RNG states: the checkpoint restores them
    np.random.seed(99)
    run(dataset, tmp_path / "resumed", epochs=2, resume=True)

    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert sha256_tree(tmp_path / "straight" / "dvclive") == sha256_tree(tmp_path / "resumed" / "dvclive")


def test_resume_refuses_a_different_run(dataset, tmp_path):
    run(dataset, tmp_path / "a", epochs=1)
    with pytest.raises(ValueError, match="different run.*seed"):
        run(dataset, tmp_path / "a", epochs=1, resume=True, seed=7)


def test_refuses_frames_of_another_manifest(dataset, tmp_path):
    manifest_dir, frames = dataset
    manifest = load_manifest(manifest_dir)
    videos = [(v.video_id, str(v.path), v.split) for v in manifest.videos]
    captions = [(c.caption_id, c.video_id, c.text) for c in manifest.captions] + [("extra", manifest.videos[0].video_id, "one more")]
    other = write_manifest(tmp_path / "other", videos, captions)
    with pytest.raises(StoreMismatchError) as error:
        run((other, frames), tmp_path / "out", epochs=1)
    message = str(error.value)
    assert manifest.fingerprint("content") in message and load_manifest(other).fingerprint("content") in message


def test_cli_train_teacher_with_a_params_entry(dataset, tmp_path):
    manifest_dir, frames = dataset
    params = tmp_path / "params.yaml"
    params.write_text(
        "teachers:\n"
        "  pool:\n"
        "    kind: xpool\n"
        "    backbone: {name: teachclip-micro, precision: fp32}\n"
        "train_teacher: {epochs: 5, batch_size: 8}\n"
        "compute: {device: cpu}\n"
    )
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["--params", str(params), "train-teacher", "--teacher", "pool", "--frames",
                                      str(frames), "--manifest", str(manifest_dir), "--out", str(out),
                                      "--epochs", "1", "-S", "train_teacher.lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "trained xpool teacher for 1 epoch" in result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "xpool" and saved["config"]["backbone"]["name"] == "teachclip-micro"
    assert saved["extra"]["train_teacher"]["config"]["lr"] == 1e-3
    result = CliRunner().invoke(app, ["--params", str(params), "train-teacher", "--teacher", "nope", "--frames",
                                      str(frames), "--manifest", str(manifest_dir), "--out", str(out)])
    assert result.exit_code == 1 and "unknown teacher 'nope'" in result.output


@pytest.mark.slow
def test_teachers_beat_meanp_on_demo_data(tmp_path):
    """The gap teaching transfers: X-Pool and X-CLIP teachers vs a meanP student, same data, same recipe.

    The demo pipeline's recipe at a smaller size (~2 min on 2 cores): a tiny CLIP pretrained on
    labelled frames of 400 *other* demo videos, its frozen image tower run once (encode-frames), then
    every model trained by the same loop (train_contrastive) on those features; 300 test videos.
    Numbers are printed (pytest -s) for the record. The full-size figures are in the README.
    """
    import time

    from teachclip.core.config import PretrainBackboneConfig, StudentConfig
    from teachclip.models.student import Student
    from teachclip.stages.encode_frames import encode_frames
    from teachclip.stages.pretrain_backbone import pretrain_backbone
    from teachclip.stores import open_for_manifest
    from teachclip.training.contrastive import train_contrastive
    from teachclip.training.optim import seed_everything

    cpu, sync = ComputeConfig(device="cpu"), ComputeConfig(scheduler="sync", device="cpu")
    started = time.perf_counter()
    data = {}
    for name, videos, seed, test_fraction in (("pretrain", 400, 1000, 0.1), ("demo", 600, 0, 0.5)):
        manifest_dir = generate_demo(tmp_path / name, DemoConfig(videos=videos, seed=seed, test_fraction=test_fraction),
                                     progress=False)
        decode(manifest_dir, tmp_path / f"{name}.zarr", DecodeConfig(frames_per_video=12, size=64), sync, progress=False)
        data[name] = manifest_dir
    backbone = BackboneConfig(name="teachclip-demo", precision="fp32")
    pretrain_backbone(data["pretrain"], tmp_path / "pretrain.zarr", tmp_path / "backbone",
                      PretrainBackboneConfig(backbone=backbone, epochs=4), cpu, progress=False)
    frozen = backbone.model_copy(update={"pretrained": str(tmp_path / "backbone" / "model.safetensors"),
                                         "freeze_visual": True})
    features = encode_frames(tmp_path / "demo.zarr", tmp_path / "features.zarr", frozen, cpu, progress=False)
    setup_seconds = time.perf_counter() - started

    config = TrainTeacherConfig(epochs=8, batch_size=64, lr=1e-3, lr_backbone=1e-4, seed=0, eval_every=8)
    evaluate_config, results, seconds = EvaluateConfig(), {}, {"setup": round(setup_seconds)}
    for kind in ("xpool", "xclip"):
        started = time.perf_counter()
        results[kind] = train_teacher(TeacherConfig(kind=kind, backbone=frozen), features, data["demo"],
                                      tmp_path / kind, config, evaluate_config, cpu, progress=False)
        seconds[kind] = round(time.perf_counter() - started)
    started = time.perf_counter()
    manifest = load_manifest(data["demo"])
    seed_everything(config.seed)
    student = Student(StudentConfig(backbone=frozen, head="meanP", afa=False))
    baseline = train_contrastive(student, open_for_manifest(features, manifest), manifest, tmp_path / "meanp",
                                 config.model_copy(update={"lr_backbone": 1e-5}), evaluate_config,
                                 torch.device("cpu"), identity={"model": "meanP"}, progress=False)[-1]
    seconds["meanP"] = round(time.perf_counter() - started)

    keys = ("test_t2v_R1", "test_t2v_R5", "test_t2v_R10", "test_t2v_MdR", "loss")
    print(json.dumps({**{kind: {k: row[k] for k in keys} for kind, row in results.items()},
                      "meanP": {k: baseline[k] for k in keys}, "seconds": seconds}))
    for row in results.values():
        assert row["test_t2v_R1"] > baseline["test_t2v_R1"]
        assert row["test_t2v_R5"] > baseline["test_t2v_R5"] + 5
