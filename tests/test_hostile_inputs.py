"""Inputs that arrive from outside are hostile until checked (stores other than the teacher cache,
model files, manifests, pickles, flags): refused with one line naming the file and the reason, nothing
deleted, nothing read as plausible numbers. The teacher cache's own cases: tests/test_cache_hostile.py."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    DecodeConfig,
    EvaluateConfig,
    SearchConfig,
    StudentConfig,
)
from teachclip.core.manifest import ManifestError, load_manifest
from teachclip.datasets import read_caption_pickle
from teachclip.models.factory import load_model
from teachclip.models.io import CheckpointError, save_model
from teachclip.models.student import Student
from teachclip.stages.decode import decode
from teachclip.stores.frames import FramesStore, FramesStoreError
from teachclip.stores.search_index import SearchIndexError, read_index
from teachclip.stores.zarr_io import StoreReplaceError
from teachclip.tools.export import export_student
from teachclip.tools.search import build_index
from teachclip.training.optim import NonFiniteLossError, build_optimizer, optimizer_step, warmup_cosine
from teachclip.training.scoring import evaluate_split

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
SYNC = ComputeConfig(scheduler="sync", device="cpu")


def copied_frames(tiny_data, tmp_path):
    data = tiny_data()
    shutil.copytree(data.frames, tmp_path / "frames.zarr")
    return data.manifest, tmp_path / "frames.zarr"


def saved_student(directory):
    torch.manual_seed(0)
    config = StudentConfig(backbone=MICRO, head="meanP", afa=True)
    save_model(directory, Student(config), "student", config)
    return directory


# ---- flags that delete: only what they own ---------------------------------------------------------------


def test_decode_overwrite_never_deletes_a_folder_that_is_not_a_frames_store(tiny_data, tmp_path):
    manifest = tiny_data().manifest
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(StoreReplaceError, match="not a teachclip-frames store"):
        decode(manifest, precious, DecodeConfig(frames_per_video=2, size=32), SYNC, overwrite=True, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"
    result = CliRunner().invoke(app, ["decode", "--manifest", str(manifest), "--out", str(precious), "--overwrite",
                                      "--scheduler", "sync"])
    assert result.exit_code == 1 and "refusing to delete" in result.output and (precious / "notes.txt").exists()
    # an earlier frames store (and its partial store) is what --overwrite replaces
    out = tmp_path / "frames.zarr"
    decode(manifest, out, DecodeConfig(frames_per_video=2, size=32), SYNC, progress=False)
    decode(manifest, out, DecodeConfig(frames_per_video=3, size=32), SYNC, overwrite=True, progress=False)
    assert FramesStore.open(out).frames_per_video == 3


def test_export_and_index_replace_only_their_own_outputs(tiny_data, tmp_path):
    model = saved_student(tmp_path / "student")
    for folder in ("for-export", "for-index"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="refusing to delete or replace"):
        export_student(model, tmp_path / "for-export")
    with pytest.raises(StoreReplaceError, match="refusing to delete or replace"):
        build_index(model, tiny_data().frames, tmp_path / "for-index", device="cpu", progress=False)
    assert all((tmp_path / f / "thesis.tex").exists() for f in ("for-export", "for-index"))
    export_student(model, tmp_path / "export")
    export_student(model, tmp_path / "export")  # an earlier export is replaced
    build_index(model, tiny_data().frames, tmp_path / "index.zarr", device="cpu", progress=False)
    build_index(model, tiny_data().frames, tmp_path / "index.zarr", device="cpu", progress=False)


# ---- holes and impossible values in stores -------------------------------------------------------------


def test_a_deleted_frames_shard_or_mask_chunk_is_refused_not_read_as_black(tiny_data, tmp_path):
    _, frames = copied_frames(tiny_data, tmp_path)
    FramesStore.open(frames)  # intact
    shard = next((frames / "frames" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    shard.unlink()
    with pytest.raises(FramesStoreError, match="frames of .* decoded video.* missing from disk"):
        FramesStore.open(frames)

    _, frames = copied_frames(tiny_data, tmp_path / "b")
    next(p for p in (frames / "frame_mask" / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(FramesStoreError, match="frame_mask chunks .* missing"):
        FramesStore.open(frames)


def test_a_mask_that_contradicts_the_failures_is_refused(tiny_data, tmp_path):
    _, frames = copied_frames(tiny_data, tmp_path)
    mask = zarr.open_array(frames / "frame_mask", mode="r+")
    values = mask[...]
    values[0] = False  # a decoded video without any frame
    mask[...] = values
    with pytest.raises(FramesStoreError, match="does not fit the recorded failures"):
        FramesStore.open(frames)


@pytest.mark.parametrize("change", [
    {"sampling": {"frames_per_video": 10**9, "size": 32}},
    {"sampling": "twelve"},
    {"failures": [{"path": "x"}]},
    {"videos_per_shard": -1},
    {"fingerprint": "not a digest"},
])
def test_malformed_frames_attributes_are_one_clear_error(tiny_data, tmp_path, change):
    _, frames = copied_frames(tiny_data, tmp_path)
    group = zarr.open_group(frames, mode="r+")
    group.attrs.update(change)
    with pytest.raises(FramesStoreError, match="malformed frames store attributes"):
        FramesStore.open(frames)


def test_search_index_holes_and_impossible_shapes_are_refused(tiny_data, tmp_path):
    model = saved_student(tmp_path / "student")
    index = build_index(model, tiny_data().frames, tmp_path / "index.zarr", search=SearchConfig(dtype="float32"), device="cpu",
                        progress=False)
    read_index(index)  # intact
    broken = shutil.copytree(index, tmp_path / "holes.zarr")
    next(p for p in (broken / "embeddings" / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(SearchIndexError, match="missing from disk"):
        read_index(broken)
    nan = shutil.copytree(index, tmp_path / "nan.zarr")
    array = zarr.open_array(nan / "embeddings", mode="r+")
    array[0, 0] = np.nan
    with pytest.raises(SearchIndexError, match="non-finite"):
        read_index(nan)
    for change in ({"n_videos": 10**12}, {"dim": "512"}, {"n_videos": 3}):
        odd = shutil.copytree(index, tmp_path / f"odd-{len(list(tmp_path.iterdir()))}.zarr")
        zarr.open_group(odd, mode="r+").attrs.update(change)
        with pytest.raises(SearchIndexError):
            read_index(odd)
    result = CliRunner().invoke(app, ["search", "query", str(broken), "a red square", "--device", "cpu"])
    assert result.exit_code == 1 and result.output.startswith("error:") and "Traceback" not in result.output


# ---- non-finite numbers never become a model or a metric ------------------------------------------------


def test_a_non_finite_loss_stops_training_naming_the_step_and_the_term():
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    optimizer = build_optimizer({"all": list(model.named_parameters())}, {"all": 0.1}, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, 10, 0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = model(torch.ones(1, 2)).sum()
    losses = {"nce": loss, "coarse": loss * float("nan"), "loss": loss * float("nan")}
    with pytest.raises(NonFiniteLossError, match=r"training step 7: non-finite loss \(coarse = nan, loss = nan\)"):
        optimizer_step(losses, 7, model.parameters(), optimizer, scheduler, scaler, 1.0)
    assert torch.equal(model.weight, before)


def test_a_model_with_non_finite_weights_is_never_saved_nor_evaluated(tiny_data, tmp_path):
    config = StudentConfig(backbone=MICRO, head="meanP", afa=False)
    student = Student(config)
    with torch.no_grad():
        student.log_logit_scale.fill_(float("nan"))
        student.backbone.clip.text_projection.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        save_model(tmp_path / "bad", student, "student", config)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
    data = tiny_data()
    store = FramesStore.open(data.frames)
    with pytest.raises(ValueError, match="NaN or infinite; refusing to report metrics"):
        evaluate_split(student, store, load_manifest(data.manifest), EvaluateConfig(), torch.device("cpu"))


# ---- model files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"format_version": "1"}, "format_version '1' is not a positive integer"),
    ({"config": [1, 2]}, "'config' must be a dict"),
    ({"kind": 7}, "'kind' must be a str"),
])
def test_malformed_model_configs_are_one_clear_error(tmp_path, change, message):
    model = saved_student(tmp_path / "student")
    document = json.loads((model / "config.json").read_text()) | change
    (model / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=message):
        load_model(model)


def test_model_sizes_are_bounded_before_anything_is_built(tmp_path):
    model = saved_student(tmp_path / "student")
    document = json.loads((model / "config.json").read_text())
    document["config"] |= {"head": "seqTransf", "max_frames": 10**9}
    (model / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="max_frames"):
        load_model(model)
    (model / "config.json").write_bytes(b" " * (5 << 20))
    with pytest.raises(CheckpointError, match="at most"):
        load_model(model)


# ---- manifests and annotation files ---------------------------------------------------------------------


def write_manifest_files(root, videos, captions):
    root.mkdir(parents=True, exist_ok=True)
    (root / "videos.csv").write_text(videos)
    (root / "captions.csv").write_text(captions)
    return root


def test_a_caption_split_by_an_unquoted_comma_is_refused_with_its_line(tmp_path):
    root = write_manifest_files(tmp_path / "m", "video_id,path,split\nv1,v1.mp4,train\n",
                                "caption_id,video_id,text\nc1,v1,a cat\nc2,v1,a dog, running fast\n")
    with pytest.raises(ManifestError, match=r"captions.csv:3: 1 more value\(s\) than header columns"):
        load_manifest(root)


def test_duplicate_columns_and_non_finite_clip_bounds_are_refused(tmp_path):
    root = write_manifest_files(tmp_path / "a", "video_id,path,split,split\nv1,v1.mp4,train,test\n",
                                "caption_id,video_id,text\nc1,v1,a cat\n")
    with pytest.raises(ManifestError, match="split appear more than once"):
        load_manifest(root)
    for cell in ("nan", "inf", "-inf"):
        root = write_manifest_files(tmp_path / cell, f"video_id,path,split,start,end\nv1,v1.mp4,train,0,{cell}\n",
                                    "caption_id,video_id,text\nc1,v1,a cat\n")
        with pytest.raises(ManifestError, match="not a finite number of seconds"):
            load_manifest(root)


def test_a_memo_bomb_caption_pickle_is_refused_before_it_expands(tmp_path):
    words = ["w" * 1000] * 100  # one list, referenced over and over through the pickle memo
    bomb = {f"video{i}": [words] * 50 for i in range(100)}  # ~500 MB of caption text once joined
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps(bomb, protocol=2))
    assert path.stat().st_size < 64_000
    with pytest.raises(ManifestError, match="expands to far more caption text"):
        read_caption_pickle(path)
    fine = tmp_path / "fine.pkl"
    fine.write_bytes(pickle.dumps({"v1": [["a", "cat"], ["a", "dog"]]}, protocol=2))
    assert read_caption_pickle(fine) == {"v1": ["a cat", "a dog"]}
