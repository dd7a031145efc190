"""``teach msrvtt-like`` and ``teach rehearse``: an MSR-VTT-shaped corpus that the real adapter reads,
and (slow) the MSR-VTT pipeline end to end at ViT-B/32 on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import pytest

from teachclip.core.config import ComputeConfig, RehearseConfig
from teachclip.core.manifest import load_manifest
from teachclip.datasets import prepare_dataset
from teachclip.tools.rehearse.corpus import CorpusError, CorpusSpec, write_msrvtt_like

SPEC = CorpusSpec(train_videos=3, test_videos=2, captions_per_video=3, min_seconds=1.0, max_seconds=2.0,
                  x264_preset="ultrafast", seed=7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_msrvtt_like(tmp_path_factory.mktemp("msrvtt") / "root", SPEC, workers=2, progress=False)


def test_corpus_has_the_official_layout_and_prepare_reads_it(corpus, tmp_path):
    data = json.loads((corpus / "MSRVTT_data.json").read_text())
    assert {"info", "videos", "sentences"} <= set(data)
    assert set(data["videos"][0]) == {"category", "url", "video_id", "start time", "end time", "split", "id"}
    assert [s["sen_id"] for s in data["sentences"]] == list(range(5 * 3))
    with open(corpus / "MSRVTT_JSFUSION_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    assert [(r["key"], r["vid_key"], r["video_id"]) for r in rows] == [("ret0", "msr3", "video3"), ("ret1", "msr4", "video4")]
    assert (corpus / "MSRVTT_train.9k.csv").read_text().split() == ["video_id", "video0", "video1", "video2"]

    manifest = load_manifest(prepare_dataset("msrvtt", corpus, tmp_path / "manifest"))
    assert len(manifest.videos_in("train")) == 3 and len(manifest.videos_in("test")) == 2
    assert len(manifest.captions_in("train")) == 9 and len(manifest.captions_in("test")) == 2


def test_videos_look_like_msrvtt_ones(corpus):
    with av.open(str(corpus / "videos" / "all" / "video0.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (320, 240)
        assert video.average_rate == 30 and video.codec_context.name == "h264"
        assert audio.codec_context.name == "aac" and audio.channels == 2
        assert 1.0 <= container.duration / 1e6 <= 2.2


def test_corpus_is_deterministic_and_refuses_other_settings(corpus, tmp_path):
    again = write_msrvtt_like(tmp_path / "again", SPEC, workers=1, progress=False)
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "videos/all/video4.mp4"):
        assert (again / name).read_bytes() == (corpus / name).read_bytes(), name
    with pytest.raises(CorpusError, match="corpus.json: a corpus of other settings"):
        write_msrvtt_like(again, CorpusSpec(**{**SPEC.__dict__, "seed": 8}), progress=False)


@pytest.mark.slow
def test_rehearsal_runs_the_msrvtt_pipeline_at_real_size(tmp_path):
    """Minutes on 2 CPU cores: ViT-B/32 student and teachers, 224 px, from official-format files."""
    from teachclip.tools.rehearse import rehearse

    config = RehearseConfig(train_videos=4, test_videos=2, captions_per_video=2, min_seconds=10.0,
                            max_seconds=12.0, x264_preset="ultrafast", batch_size=2, extract_memory_mb=1024)
    report = rehearse(tmp_path / "out", config, ComputeConfig(scheduler="sync", workers=1, device="cpu"),
                      progress=False)
    assert list(report["stages"]) == ["corpus", "model-files", "prepare", "decode", "extract-teachers",
                                      "train-student", "evaluate", "export", "search-index", "search-query"]
    assert all(step["seconds"] > 0 for step in report["stages"].values())
    assert report["bytes"]["frames"] > 6 * 12 * 224 * 224 * 3 // 50  # compressed 224 px frames are stored
    query = json.loads((tmp_path / "out" / report["stages"]["search-query"]["log"]).read_text().split("\n", 1)[1])
    assert len(query["results"]) == 5  # the index holds all 6 decoded videos; `teach search query` lists 5
    assert json.loads((tmp_path / "out" / "rehearsal.json").read_text())["stages"]["decode"]["peak_rss_mb"] > 0
