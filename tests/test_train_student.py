"""train-student on tiny demo videos, decoded and scored by the real stages (micro backbone, CPU)."""

import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from helpers import read_rows, sha256_tree, summary_of
from safetensors.torch import load_file
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    DecodeConfig,
    EvaluateConfig,
    StudentConfig,
    TeacherWeight,
    TrainStudentConfig,
)
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.losses import coarse_pearson, fine_ce, info_nce
from teachclip.models.student import Student
from teachclip.stages import train_student as train_student_module
from teachclip.stages.train_student import (
    StudentStep,
    TrainStudentError,
    batch_losses,
    gather_soft_labels,
    loss_weights,
    rank_slice,
    select_teachers,
    train_student,
)
from teachclip.stores.teacher_cache import TeacherCacheError
from teachclip.training.batches import caption_per_video_batches, frames_batches, training_data
from teachclip.training.log import read_summary

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
SYNC_CPU = ComputeConfig(scheduler="sync", device="cpu")


@pytest.fixture(scope="module")
def data(student_data):
    """The shared student data (tests/conftest.py): (manifest, frames, teachers.zarr with groups
    ``xpool`` and ``captions``). Read-only: a test that changes it works on a copy."""
    return student_data


def config(**fields):
    base = dict(epochs=2, batch_size=4, lr_backbone=1e-3, lr_new=1e-3, lr_afa=1e-3, weight_decay=0.0)
    return TrainStudentConfig(**(base | fields))


FROZEN_MICRO = MICRO.model_copy(update={"freeze_text": True, "freeze_visual": True})


def student_config(**fields):
    return StudentConfig(**({"backbone": MICRO, "temporal_layers": 1} | fields))


def run(data, out, teachers=("teachers.zarr",), resume=False, student=None, teachers_config=None, **fields):
    """Train into ``out``; ``teachers`` are cache paths relative to the folder of the data's
    ``teachers.zarr``, ``teachers_config`` is ``train_student.teachers``."""
    manifest, frames, caches = data
    specs = [caches.parent / spec for spec in teachers]
    return train_student(frames, manifest, specs, out, config(teachers=teachers_config, **fields),
                         student or student_config(),
                         EvaluateConfig(batch_videos=4), ComputeConfig(device="cpu"), resume=resume, progress=False)


# ---- one step, by hand ------------------------------------------------------------------------


def first_batch(data, train_config, specs=("teachers.zarr",), student=None):
    """(student, step outputs of the first batch of epoch 0, the batch, chosen teachers, terms)."""
    manifest_dir, frames, caches = data
    from teachclip.stores import open_for_manifest

    store = open_for_manifest(frames, load_manifest(manifest_dir))
    train = training_data(store, load_manifest(manifest_dir))
    chosen = select_teachers([caches.parent / s for s in specs], train_config.teachers, store.fingerprint, train)
    terms = loss_weights(train_config, chosen)
    torch.manual_seed(0)
    model = Student(student or student_config())
    batch = caption_per_video_batches(train.captions_of_video, train_config.batch_size, train_config.seed, 0)[0]
    frames_batch, mask = next(frames_batches(store, [train.store_rows[batch.videos]], prefetch=False))
    tokens = model.tokenize([train.texts[i] for i in batch.captions])
    outputs = StudentStep(model)(mask, tokens=tokens, frames=frames_batch)
    return model, outputs, batch, train, chosen, terms


def losses_and_grads(data, train_config, specs=("teachers.zarr",)):
    model, outputs, batch, train, chosen, terms = first_batch(data, train_config, specs)
    labels = gather_soft_labels(chosen, batch.captions, batch.videos, terms)
    losses = batch_losses(outputs, labels, terms, train_config, [len(batch.videos)])
    losses["loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def read_cache(caches, name, caption_ids, video_ids):
    """Soft labels straight from the Zarr arrays, by id (independent of the reader class)."""
    group = zarr.open_group(caches / name, mode="r")
    text_ids = [str(t) for t in group["text_ids"][...]]
    cache_video_ids = [str(v) for v in group["video_ids"][...]]
    rows = [text_ids.index(c) for c in caption_ids]
    cols = [cache_video_ids.index(v) for v in video_ids]
    similarity = np.asarray(group["similarity"][...], dtype=np.float32)[np.ix_(rows, cols)]
    relevance = np.asarray(group["frame_relevance"][...])[rows] if "frame_relevance" in group else None
    return similarity, relevance


def test_gathered_soft_labels_match_the_cache(data):
    _, _, caches = data
    train_config = config()
    _, _, batch, train, chosen, terms = first_batch(data, train_config)
    assert [t.group.name for t in chosen] == ["captions", "xpool"]  # None: every group, weight 1
    labels = gather_soft_labels(chosen, batch.captions, batch.videos, terms)
    caption_ids = [train.caption_ids[i] for i in batch.captions]
    video_ids = [train.video_ids[v] for v in batch.videos]
    assert len(labels.similarities) == 2 and len(labels.relevances) == 1  # captions has no frame relevance
    for (weight, similarity), teacher in zip(labels.similarities, chosen, strict=True):
        expected, _ = read_cache(caches, teacher.group.name, caption_ids, video_ids)
        assert weight == 1.0 and similarity.shape == (len(batch.videos), len(batch.videos))
        np.testing.assert_array_equal(similarity.numpy(), expected)
    _, relevance = read_cache(caches, "xpool", caption_ids, video_ids)
    np.testing.assert_array_equal(labels.relevances[0][1].numpy(), relevance)
    # matched pairs: caption i of the batch belongs to video i
    assert [train.caption_video[c] for c in batch.captions] == list(batch.videos)


def test_loss_terms_are_wired_as_configured(data):
    _, _, caches = data
    teachers = [TeacherWeight(name="xpool", weight=1.0), TeacherWeight(name="captions", weight=3.0)]
    train_config = config(teachers=teachers, weight_nce=0.5, weight_coarse=1.5, weight_fine=2.5)
    model, outputs, batch, train, chosen, terms = first_batch(data, train_config)
    assert terms == {"nce": 0.5, "coarse": 1.5, "fine": 2.5}
    labels = gather_soft_labels(chosen, batch.captions, batch.videos, terms)
    losses = batch_losses(outputs, labels, terms, train_config, [len(batch.videos)])

    caption_ids = [train.caption_ids[i] for i in batch.captions]
    video_ids = [train.video_ids[v] for v in batch.videos]
    xpool_sim, xpool_rel = read_cache(caches, "xpool", caption_ids, video_ids)
    captions_sim, _ = read_cache(caches, "captions", caption_ids, video_ids)
    with torch.no_grad():
        logits = outputs["logit_scale"] * outputs["text"] @ outputs["video"].T
        nce = info_nce(logits)
        coarse = (1.0 * coarse_pearson(logits, torch.from_numpy(xpool_sim), teacher_temperature=0.01)
                  + 3.0 * coarse_pearson(logits, torch.from_numpy(captions_sim), teacher_temperature=0.01)) / 4.0
        fine = fine_ce(outputs["frame_weights"], torch.from_numpy(xpool_rel), outputs["mask"], reduction="frame")
    losses = {term: float(value.detach()) for term, value in losses.items()}
    assert losses["nce"] == pytest.approx(float(nce), rel=1e-6)
    assert losses["coarse"] == pytest.approx(float(coarse), rel=1e-6)
    assert losses["fine"] == pytest.approx(float(fine), rel=1e-6)
    assert losses["loss"] == pytest.approx(float(0.5 * nce + 1.5 * coarse + 2.5 * fine), rel=1e-6)


def test_no_teacher_is_the_baseline_with_infonce_at_weight_one(data):
    for specs, teachers in (((), None), (("teachers.zarr",), [])):
        train_config = config(teachers=teachers)
        _, outputs, batch, _, chosen, terms = first_batch(data, train_config, specs)
        assert chosen == [] and terms == {"nce": 1.0}
        losses = batch_losses(outputs, gather_soft_labels(chosen, batch.captions, batch.videos, terms), terms,
                              train_config, [len(batch.videos)])
        assert set(losses) == {"nce", "loss"} and torch.equal(losses["loss"], losses["nce"])


@pytest.mark.parametrize("term", ["coarse", "fine"])
def test_a_zero_weight_removes_the_term(data, tmp_path, term):
    """Scramble the cache arrays the term reads: with weight 0 nothing changes, with weight 1 it does."""
    _, _, caches = data
    scrambled = tmp_path / "scrambled"
    shutil.copytree(caches, scrambled / "teachers.zarr")
    group = zarr.open_group(scrambled / "teachers.zarr" / "xpool", mode="r+")
    name = "similarity" if term == "coarse" else "frame_relevance"
    original = np.asarray(group[name][...])
    group[name][...] = np.random.default_rng(0).normal(size=original.shape).astype(original.dtype) * 5
    scrambled_data = (data[0], data[1], scrambled / "teachers.zarr")

    specs = ("teachers.zarr/xpool",)
    weights = {"weight_coarse": 1.0, "weight_fine": 1.0} | {f"weight_{term}": 0.0}
    clean_losses, clean_grads = losses_and_grads(data, config(**weights), specs)
    noisy_losses, noisy_grads = losses_and_grads(scrambled_data, config(**weights), specs)
    assert term not in clean_losses and clean_losses == noisy_losses
    assert clean_grads.keys() == noisy_grads.keys()
    assert all(torch.equal(clean_grads[k], noisy_grads[k]) for k in clean_grads)

    weights[f"weight_{term}"] = 1.0  # the same scrambling is visible when the term is on
    clean_losses, clean_grads = losses_and_grads(data, config(**weights), specs)
    noisy_losses, noisy_grads = losses_and_grads(scrambled_data, config(**weights), specs)
    assert clean_losses[term] != noisy_losses[term]
    assert any(not torch.equal(clean_grads[k], noisy_grads[k]) for k in clean_grads)


def test_fine_teaching_needs_afa(data, tmp_path):
    with pytest.raises(TrainStudentError, match="AFA"):
        run(data, tmp_path / "out", epochs=1, student=student_config(afa=False))
    # without fine teaching a meanP student learns from the coarse labels alone
    last = run(data, tmp_path / "meanp", epochs=1, weight_fine=0.0, student=student_config(afa=False))
    assert "coarse" in last and "fine" not in last


def test_rank_slices_partition_a_batch():
    for length, world in ((7, 2), (4, 4), (9, 3), (5, 1)):
        parts = [rank_slice(length, world, rank) for rank in range(world)]
        covered = np.concatenate([np.arange(length)[s] for s, _ in parts])
        assert covered.tolist() == list(range(length))
        assert parts[0][1] == [s.stop - s.start for s, _ in parts]


# ---- the stage --------------------------------------------------------------------------------


def test_training_writes_model_metrics_and_checkpoint(data, tmp_path):
    out = tmp_path / "seq"
    last = run(data, out, epochs=2, student=student_config(head="seqTransf"))
    rows = read_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("nce", "coarse", "fine", "loss", "logit_scale", "lr_backbone", "lr_new", "lr_afa",
                   "test_t2v_R1", "test_t2v_R5", "test_t2v_R10"):
        assert column in rows[0], column
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert read_summary(out) == pytest.approx(summary_of(last))
    names = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "metrics.json", "training_state.json"} <= names
    assert all(n.endswith((".json", ".safetensors", ".tsv")) for n in names), names
    # the saved student is what `teach evaluate --model` loads
    student = load_model(out)
    saved = load_file(str(out / "model.safetensors"))
    assert isinstance(student, Student) and student.config.head == "seqTransf"
    for name, value in student.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name
    extra = json.loads((out / "config.json").read_text())["extra"]["train_student"]
    assert [t["name"] for t in extra["teachers"]] == ["captions", "xpool"]
    assert extra["loss_weights"] == {"nce": 0.2, "coarse": 1.0, "fine": 2.0}


def test_frozen_backbone_trains_only_the_head(data, tmp_path):
    out = tmp_path / "frozen"
    run(data, out, epochs=1, student=student_config(head="seqTransf", backbone=FROZEN_MICRO))
    torch.manual_seed(0)
    initial = Student(student_config(head="seqTransf", backbone=FROZEN_MICRO)).state_dict()
    trained = load_file(str(out / "model.safetensors"))
    backbone = [k for k in trained if k.startswith("backbone.")]
    head = [k for k in trained if k.startswith(("temporal.", "afa."))]
    assert backbone and head
    assert all(torch.equal(trained[k], initial[k]) for k in backbone)
    assert any(not torch.equal(trained[k], initial[k]) for k in head)


def test_resume_after_interruption_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    run(data, tmp_path / "straight", epochs=2)

    original = train_student_module.caption_per_video_batches

    def killed_in_epoch_two(captions_of_video, batch_size, seed, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(captions_of_video, batch_size, seed, epoch)

    monkeypatch.setattr(train_student_module, "caption_per_video_batches", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path / "resumed", epochs=2)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    assert len(read_rows(tmp_path / "resumed")) == 1
    monkeypatch.setattr(train_student_module, "caption_per_video_batches", original)
    torch.manual_seed(1234)  # a new process starts from other RNG states: the checkpoint restores them
    run(data, tmp_path / "resumed", epochs=2, resume=True)

    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert sha256_tree(tmp_path / "straight" / "dvclive") == sha256_tree(tmp_path / "resumed" / "dvclive")


def test_resume_refuses_a_different_run(data, tmp_path):
    run(data, tmp_path / "a", epochs=1)
    with pytest.raises(ValueError, match="different run.*weight_fine"):
        run(data, tmp_path / "a", epochs=1, resume=True, weight_fine=0.5)


def test_refuses_a_cache_of_other_frames(data, tmp_path):
    from teachclip.stages.decode import decode

    manifest, frames, caches = data
    other = tmp_path / "frames-24.zarr"
    decode(manifest, other, DecodeConfig(frames_per_video=4, size=24), SYNC_CPU, progress=False)
    from teachclip.stores.frames import FramesStore

    given, cached = FramesStore.open(other).fingerprint, FramesStore.open(frames).fingerprint
    assert given != cached
    with pytest.raises(TeacherCacheError) as error:
        train_student(other, manifest, [caches], tmp_path / "out", config(epochs=1), student_config(),
                      EvaluateConfig(), ComputeConfig(device="cpu"), progress=False)
    assert given in str(error.value) and cached in str(error.value)


def test_refuses_an_incomplete_cache_and_unknown_teachers(data, tmp_path):
    _, _, caches = data
    copy = tmp_path / "teachers.zarr"
    shutil.copytree(caches, copy)
    meta = copy / "xpool" / "zarr.json"
    document = json.loads(meta.read_text())
    document["attributes"]["complete"] = False
    meta.write_text(json.dumps(document))
    broken = (data[0], data[1], copy)
    with pytest.raises(TrainStudentError, match="incomplete") as error:
        run(broken, tmp_path / "out", teachers=("teachers.zarr/xpool",), epochs=1)
    assert document["attributes"]["fingerprint"] in str(error.value)
    with pytest.raises(TrainStudentError, match="nope.*not in the given caches"):
        run(data, tmp_path / "out", epochs=1, teachers_config=[TeacherWeight(name="nope")])


def test_cli_train_student(data, tmp_path):
    manifest, frames, caches = data
    params = tmp_path / "params.yaml"
    params.write_text(
        "student:\n"
        "  backbone: {name: teachclip-micro, precision: fp32}\n"
        "  temporal_layers: 1\n"
        "train_student:\n"
        "  teachers: [{name: xpool, weight: 1.0}]\n"
        "  batch_size: 4\n"
        "compute: {device: cpu}\n"
    )
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["--params", str(params), "train-student", "--frames", str(frames),
                                      "--manifest", str(manifest), "--teachers", str(caches), "--out", str(out),
                                      "--epochs", "1", "-S", "train_student.weight_coarse=0", "-S", "student.head=seqTransf",
                                      "-S", "student.afa=false", "-S", "train_student.weight_fine=0"])
    assert result.exit_code == 0, result.output
    assert "trained the student for 1 epoch" in result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "student" and saved["config"]["head"] == "seqTransf" and not saved["config"]["afa"]
    assert saved["extra"]["train_student"]["loss_weights"] == {"nce": 0.2}
    assert saved["extra"]["train_student"]["teachers"][0]["name"] == "xpool"
