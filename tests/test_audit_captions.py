"""teach audit-captions: ranks by hand on a tiny synthetic cache, noise found on demo data with swapped
captions, and the caption mask honoured by train-student's sampler."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    DecodeConfig,
    EvaluateConfig,
    StudentConfig,
    TrainStudentConfig,
)
from teachclip.core.manifest import load_manifest, write_manifest
from teachclip.demo.vocabulary import SYNONYMS
from teachclip.stages import train_student as train_student_module
from teachclip.stores import open_for_manifest
from teachclip.stores.caption_mask import CaptionMaskError, load_caption_mask
from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.publish import mark_group_complete
from teachclip.stores.teacher_cache.schema import TeacherIdentity, plan_layout
from teachclip.tools.audit_captions import AuditError, audit_captions, standardise_rows
from teachclip.training.batches import mask_captions, training_data

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
SYNC_CPU = ComputeConfig(scheduler="sync", device="cpu")


def write_group(store, name, similarity, text_ids, video_ids, text_video, frames_fingerprint="frames-x",
                block_texts=2):
    """A complete teacher group holding ``similarity`` exactly (float16-representable values)."""
    identity = TeacherIdentity(
        kind="synthetic", config={"name": name}, checkpoint_sha256=None, score_version=1, has_frame_relevance=False,
        similarity_definition="given by the test", relevance_definition="", frames_fingerprint=frames_fingerprint,
        manifest_fingerprint="manifest-x")
    layout = plan_layout(len(text_ids), len(video_ids), 4, block_texts=block_texts, chunk_texts=block_texts,
                               block_videos=None, memory_budget_mb=64)
    create_group(store, name, identity, layout, text_ids, video_ids, np.asarray(text_video))
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(store / name, block, np.asarray(similarity[start:stop], dtype=np.float32), None)
    mark_group_complete(store / name)


def write_tiny_manifest(root, text_ids, text_video_ids):
    videos = sorted(set(text_video_ids))
    root.mkdir(parents=True, exist_ok=True)
    for video in videos:
        (root / f"{video}.mp4").write_bytes(b"")
    return write_manifest(root, [(v, f"{v}.mp4", "train") for v in videos],
                          [(c, v, f"caption {c}") for c, v in zip(text_ids, text_video_ids, strict=True)])


# ---- ranks by hand ------------------------------------------------------------------------------

TEXT_IDS = ["a0", "a1", "b0", "b1", "c0"]
VIDEO_IDS = ["A", "B", "C"]
OWN = [0, 0, 1, 1, 2]
# teacher 1 (cosines): a1 ranks its video A last (rank 2); b1 ties A and B: pessimistic rank 1
T1 = np.array([[0.5, 0.25, 0.0],
               [0.0, 0.25, 0.5],
               [0.0, 0.5, 0.25],
               [0.5, 0.5, 0.0],
               [0.0, 0.25, 0.75]])
# teacher 2 (logits, ten times the spread): agrees except on b1, where it ranks B first
T2 = np.array([[8.0, 0.0, -8.0],
               [2.0, 0.0, 8.0],
               [-4.0, 4.0, 0.0],
               [-8.0, 8.0, 0.0],
               [-8.0, 0.0, 8.0]])


@pytest.fixture
def tiny(tmp_path):
    store = tmp_path / "teachers.zarr"
    write_group(store, "t1", T1, TEXT_IDS, VIDEO_IDS, OWN)
    write_group(store, "t2", T2, TEXT_IDS, VIDEO_IDS, OWN)
    manifest = write_tiny_manifest(tmp_path / "manifest", TEXT_IDS, [VIDEO_IDS[o] for o in OWN])
    return store, manifest


def test_standardised_rows_have_zero_mean_unit_std_and_keep_the_order():
    rows = standardise_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [np.nan, 0.0, 2.0]]))
    np.testing.assert_allclose(rows[0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    np.testing.assert_array_equal(rows[1], [0.0, 0.0, 0.0])  # constant row: every video tied
    assert rows[2, 0] == -np.inf  # missing never ranks well
    np.testing.assert_allclose(rows[2, 1:], [-1.0, 1.0])  # stats over the finite entries only


def test_ranks_per_teacher_and_of_the_standardised_mean_by_hand(tiny, tmp_path):
    store, manifest = tiny
    result = audit_captions(store, manifest, tmp_path / "audit", top_k=1, block_texts=2)
    assert result.caption_ids == TEXT_IDS
    np.testing.assert_array_equal(result.ranks["t1"], [0, 2, 0, 1, 0])
    np.testing.assert_array_equal(result.ranks["t2"], [0, 1, 0, 0, 0])
    # b1: z(t1) = [.707, .707, -1.414], z(t2) = [-1.225, 1.225, 0] -> mean [-.26, .97, -.71]: B first;
    # a1: z(t1) = [-1.225, 0, 1.225], z(t2) = [-.356, -.891, 1.247] -> mean [-.79, -.45, 1.24]: A last
    np.testing.assert_array_equal(result.ranks["mean"], [0, 2, 0, 0, 0])
    np.testing.assert_array_equal(result.keep, [True, False, True, True, True])
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["flagged"] == 1 and report["captions"] == 5
    assert report["teachers"]["t1"]["flagged"] == 2 and report["teachers"]["t2"]["flagged"] == 1
    assert report["teachers"]["t1"]["R1"] == pytest.approx(60.0)
    assert report["mean"]["median_rank"] == 1.0
    assert report["videos_with_every_caption_flagged"] == []
    rows = list(csv.DictReader(open(tmp_path / "audit" / "captions.csv")))
    assert [r["caption_id"] for r in rows] == TEXT_IDS
    assert rows[1] == {"caption_id": "a1", "video_id": "A", "keep": "0", "rank_mean": "2", "rank_t1": "2",
                       "rank_t2": "1", "text": "caption a1"}
    assert load_caption_mask(tmp_path / "audit") == {"a0": True, "a1": False, "b0": True, "b1": True, "c0": True}


def test_a_video_whose_every_caption_is_flagged_is_reported_and_keeps_its_captions(tiny, tmp_path):
    store, manifest = tiny
    result = audit_captions(store / "t1", manifest, tmp_path / "audit", top_k=1)  # one group: its own ranks
    np.testing.assert_array_equal(result.ranks["mean"], result.ranks["t1"])
    assert result.report["flagged"] == 2
    # captions_of_video in training-set terms: video A = captions 0, 1; B = 2, 3; C = 4
    masked, fallback = mask_captions([[0, 1], [2, 3], [4]], TEXT_IDS, load_caption_mask(tmp_path / "audit"))
    assert masked.tolist() == [[0], [2], [4]] and fallback == []
    masked, fallback = mask_captions([[0, 1], [2, 3], [4]], TEXT_IDS, {"a0": False, "a1": False, "b1": False})
    assert masked.tolist() == [[0, 1], [2], [4]] and fallback == [0]


def test_caches_of_another_manifest_and_bad_masks_are_refused(tiny, tmp_path):
    store, _ = tiny
    other = write_tiny_manifest(tmp_path / "other", TEXT_IDS, ["A", "B", "B", "B", "C"])  # a1 moved to B
    with pytest.raises(AuditError, match="another manifest"):
        audit_captions(store, other, tmp_path / "audit")
    (tmp_path / "bad.json").write_text(json.dumps({"keep": {"a0": True}}))
    with pytest.raises(CaptionMaskError, match="not a caption mask"):
        load_caption_mask(tmp_path / "bad.json")
    with pytest.raises(CaptionMaskError, match="none of the training captions"):
        mask_captions([[0]], ["zz"], {"a0": True})


def test_cli_writes_the_report_and_the_mask(tiny, tmp_path):
    store, manifest = tiny
    result = CliRunner().invoke(app, ["audit-captions", "--teachers", str(store), "--manifest", str(manifest),
                                      "--out", str(tmp_path / "cli"), "-S", "audit.top_k=1"])
    assert result.exit_code == 0, result.output
    assert "1 of 5 captions flagged" in result.output
    assert {p.name for p in (tmp_path / "cli").iterdir()} == {"captions.csv", "report.json", "caption_mask.json"}


# ---- demo data with swapped captions --------------------------------------------------------------


def caption_attributes(text):
    """The demo vocabulary's attribute values a caption names (longest wording first, so 'up and to the
    right' is read as up-right and not also as up)."""
    wordings = sorted(((w, value) for value, words in SYNONYMS.items() for w in words), key=lambda p: -len(p[0]))
    found, text = set(), f" {text} "
    for wording, value in wordings:
        pattern = rf"(?<![\w-]){re.escape(wording)}(?![\w-])"
        if re.search(pattern, text):
            found.add(value)
            text = re.sub(pattern, " ", text)
    return found


def content_similarity(caption_texts, video_objects):
    """A teacher that sees the true content of every video (the generator's objects): the number of
    (shape, colour, size, direction) values a caption names that one of the video's objects has."""
    return np.array([[max(len(caption_attributes(text) & set(obj[:4])) for obj in objects)
                      for objects in video_objects] for text in caption_texts], dtype=np.float32)


@pytest.fixture(scope="module")
def noisy_demo(tiny_data, tmp_path_factory):
    """16 train videos x 4 captions; the first captions of 5 pairs of videos swapped (10 noisy captions);
    frames decoded; a content teacher's cache over the corrupted captions. The manifest is rewritten,
    so this module works on its own copy of the shared demo (tests/conftest.py) and decodes it again
    (the frames store records the manifest it was decoded from)."""
    from teachclip.stages.decode import decode

    root = tmp_path_factory.mktemp("noisy-demo")
    manifest_dir = root / "demo"
    shutil.copytree(tiny_data(videos=20, test_fraction=0.2).manifest, manifest_dir)
    manifest = load_manifest(manifest_dir)
    by_video = manifest.captions_by_video("train")
    train_videos = sorted(by_video)
    texts = {c.caption_id: c.text for c in manifest.captions}
    rng = np.random.default_rng(0)
    noisy = set()
    for a, b in rng.permutation(len(train_videos))[:10].reshape(5, 2):
        first_a, first_b = by_video[train_videos[a]][0].caption_id, by_video[train_videos[b]][0].caption_id
        texts[first_a], texts[first_b] = texts[first_b], texts[first_a]
        noisy |= {first_a, first_b}
    write_manifest(manifest_dir, [(v.video_id, str(v.path), v.split) for v in manifest.videos],
                   [(c.caption_id, c.video_id, texts[c.caption_id]) for c in manifest.captions])
    frames = root / "frames.zarr"
    decode(manifest_dir, frames, DecodeConfig(frames_per_video=4, size=32), SYNC_CPU, progress=False)

    manifest = load_manifest(manifest_dir)
    store = open_for_manifest(frames, manifest)
    data = training_data(store, manifest)
    text_ids, video_ids = sorted(data.caption_ids), sorted(data.video_ids)
    caption_video = {c.caption_id: c.video_id for c in manifest.captions}
    objects = {v["video_id"]: [(o["shape"], o["colour"], o["size"], o["direction"]) for o in v["objects"]]
               for v in json.loads((manifest_dir / "demo.json").read_text())["videos"]}
    similarity = content_similarity([texts[c] for c in text_ids], [objects[v] for v in video_ids])
    caches = root / "teachers.zarr"
    write_group(caches, "content", similarity, text_ids, video_ids,
                [video_ids.index(caption_video[c]) for c in text_ids], frames_fingerprint=store.fingerprint,
                block_texts=16)
    return manifest_dir, frames, caches, noisy


def test_the_audit_finds_swapped_captions(noisy_demo, tmp_path):
    manifest, _, caches, noisy = noisy_demo
    result = audit_captions(caches, manifest, tmp_path / "audit", top_k=1, block_texts=10)
    flagged = {c for c, kept in zip(result.caption_ids, result.keep, strict=True) if not kept}
    precision = len(flagged & noisy) / max(len(flagged), 1)
    recall = len(flagged & noisy) / len(noisy)
    assert len(result.caption_ids) == 64 and len(noisy) == 10
    assert precision >= 0.8 and recall >= 0.8, (sorted(flagged), sorted(noisy))
    # the swapped captions rank their own video far down, the clean ones mostly first
    own_rank = dict(zip(result.caption_ids, result.ranks["mean"], strict=True))
    assert np.median([own_rank[c] for c in noisy]) >= 3
    assert np.mean([own_rank[c] == 0 for c in own_rank if c not in noisy]) >= 0.9


def test_train_student_never_draws_a_masked_caption(noisy_demo, tmp_path, monkeypatch):
    manifest, frames, caches, noisy = noisy_demo
    audit_captions(caches, manifest, tmp_path / "audit", top_k=1)
    mask = load_caption_mask(tmp_path / "audit")
    seen = []
    original = train_student_module.caption_per_video_batches

    def recording(captions_of_video, *args):
        batches = original(captions_of_video, *args)
        seen.extend(int(c) for batch in batches for c in batch.captions)
        return batches

    monkeypatch.setattr(train_student_module, "caption_per_video_batches", recording)
    config = TrainStudentConfig(teachers=[], epochs=3, batch_size=8, caption_mask=str(tmp_path / "audit"),
                                eval_every=3)
    student = StudentConfig(backbone=MICRO.model_copy(update={"freeze_text": True, "freeze_visual": True}), temporal_layers=1)
    train_student_module.train_student(frames, manifest, [caches], tmp_path / "student", config, student,
                                       EvaluateConfig(batch_videos=8), ComputeConfig(device="cpu"), progress=False)
    store = open_for_manifest(frames, load_manifest(manifest))
    data = training_data(store, load_manifest(manifest))
    drawn = {data.caption_ids[c] for c in seen}
    masked = {c for c, kept in mask.items() if not kept}
    assert masked and not drawn & masked
    # every video is still trained on (none had all of its captions flagged here)
    assert {data.caption_video[c] for c in seen} == set(range(len(data.video_ids)))
