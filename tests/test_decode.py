"""The decode stage and the frames store: schema, failures, resume, refusal, determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from teachclip.core.config import ComputeConfig, DecodeConfig, DemoConfig
from teachclip.core.manifest import load_manifest, write_manifest
from teachclip.stages import decode as decode_module
from teachclip.stages.decode import TooManyFailuresError, decode, sampling_config
from teachclip.stores import frames as frames_store_module
from teachclip.stores.frames import FramesStore, FramesStoreError, StoreMismatchError, frames_fingerprint
from teachclip.stores.zarr_io import PROGRESS_DIR, partial_path
from teachclip.video import ffmpeg_binary_path, sample_frames

FFMPEG = ffmpeg_binary_path()
SYNC = ComputeConfig(scheduler="sync")
SMALL = DecodeConfig(frames_per_video=4, size=16, videos_per_shard=2, max_failure_fraction=0.5)


def make_video(path: Path, seconds: float, size: str = "64x48", rate: int = 10, seed: int = 0) -> Path:
    """A tiny H.264 test pattern; ``seed`` shifts the pattern so videos differ."""
    source = f"testsrc2=size={size}:rate={rate}"
    command = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
               "-ss", str(seed * 0.3), "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]  # fmt: skip
    subprocess.run(command, check=True)
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Five distinct tiny videos of 2-5 s."""
    d = tmp_path_factory.mktemp("clips")
    return [make_video(d / f"clip{i}.mp4", seconds=2 + i % 4, seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, clips) -> dict[str, Path]:
    """Every kind of bad input the stage must record instead of stopping on."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(clips[0].read_bytes()[: clips[0].stat().st_size // 2])
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (d / "notes.mp4").write_text("not a video\n" * 50)
    (d / "a_directory.mp4").mkdir()
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=1",
                    str(d / "audio.m4a")], check=True)  # fmt: skip
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(clips[0]), "-c", "copy",
                    str(d / "good.mkv")], check=True)  # fmt: skip
    mkv = (d / "good.mkv").read_bytes()
    (d / "unsupported.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_XYZWQ/ISO/QQQ", 1))
    names = ["empty.mp4", "truncated.mp4", "corrupt.mp4", "notes.mp4", "a_directory.mp4", "audio.m4a",
             "unsupported.mkv"]  # fmt: skip
    files = {name.split(".")[0]: d / name for name in names}
    files["missing"] = d / "missing.mp4"
    return files


def manifest_of(directory: Path, videos: dict[str, Path]) -> Path:
    """A manifest whose videos.csv lists ``videos`` (id -> path) and one caption each."""
    rows = [(video_id, str(path), "train") for video_id, path in videos.items()]
    return write_manifest(directory, rows, [(f"c-{v}", v, f"caption of {v}") for v in videos])


@pytest.fixture
def good_manifest(tmp_path, clips) -> Path:
    # ids out of order on purpose: the store sorts them
    return manifest_of(tmp_path / "manifest", {f"v{i}": clips[i] for i in (3, 0, 4, 1, 2)})


# ---- schema -----------------------------------------------------------------------------------


def test_store_schema_shapes_mask_and_fingerprints(tmp_path, good_manifest, clips):
    out = tmp_path / "frames.zarr"
    result = decode(good_manifest, out, SMALL, SYNC, progress=False)
    assert result.failures == [] and result.shards == 3 and result.shards_decoded == 3

    store = FramesStore.open(out)
    assert store.video_ids == ["v0", "v1", "v2", "v3", "v4"]
    assert (len(store), store.frames_per_video, store.size) == (5, 4, 16)
    assert store.valid.all()
    manifest_fp = load_manifest(good_manifest).fingerprint("content")
    assert store.manifest_fingerprint == manifest_fp
    assert store.fingerprint == frames_fingerprint(manifest_fp, sampling_config(SMALL)) == result.fingerprint
    assert store.sampling["decoder"]["name"] == "pyav" and store.sampling["frames_per_video"] == 4

    group = zarr.open_group(str(out), mode="r")
    frames, mask = group["frames"], group["frame_mask"]
    assert frames.shape == (5, 4, 16, 16, 3) and frames.dtype == np.uint8
    assert frames.chunks == (1, 4, 16, 16, 3) and frames.shards == (2, 4, 16, 16, 3)
    assert mask.shape == (5, 4) and mask.dtype == bool
    # clips are 2..5 s long: 2, 3, 4 and 4 (capped at T) candidates
    assert mask[...].sum(axis=1).tolist() == [2, 3, 4, 4, 2]
    assert not (out / PROGRESS_DIR).exists() and not partial_path(out).exists()

    # random batches, repeats and any order, equal to decoding the files directly
    batch, batch_mask = store.read([4, 0, 4, 2])
    for row, index in enumerate([4, 0, 4, 2]):
        expected, expected_mask = sample_frames(clips[index], 4, 1.0, 16)
        np.testing.assert_array_equal(batch[row], expected)
        np.testing.assert_array_equal(batch_mask[row], expected_mask)
    assert batch[0][~batch_mask[0]].max() == 0  # padding is zero
    run, _ = store.read([1, 2, 3])  # consecutive positions: one slice read
    for row, index in enumerate([1, 2, 3]):
        np.testing.assert_array_equal(run[row], store.read([index])[0][0])
    np.testing.assert_array_equal(store.index(["v2", "v0"]), [2, 0])
    with pytest.raises(FramesStoreError, match="nope"):
        store.index(["v1", "nope"])


def test_frames_store_open_refuses_what_is_not_a_finished_store(tmp_path, good_manifest):
    with pytest.raises(FramesStoreError, match="not found"):
        FramesStore.open(tmp_path / "absent.zarr")
    (tmp_path / "other").mkdir()
    with pytest.raises(FramesStoreError, match=str(tmp_path / "other")):
        FramesStore.open(tmp_path / "other")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").attrs.put({"kind": "something-else"})
    with pytest.raises(FramesStoreError, match="not a frames store"):
        FramesStore.open(tmp_path / "plain.zarr")
    interrupted = _interrupted_run(tmp_path / "frames.zarr", good_manifest, shards=1)
    with pytest.raises(FramesStoreError, match="partial"):
        FramesStore.open(interrupted)


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_are_recorded_and_the_rest_decodes(tmp_path, clips, bad_files):
    videos = {f"bad-{kind}": path for kind, path in bad_files.items()} | {
        "good-a": clips[0],
        "good-b": clips[1],
    }
    manifest = manifest_of(tmp_path / "manifest", videos)
    out = tmp_path / "frames.zarr"
    with pytest.raises(TooManyFailuresError) as raised:
        decode(manifest, out, SMALL, SYNC, progress=False)
    assert "8 of 10 videos failed" in str(raised.value)

    store = FramesStore.open(out)  # written anyway: good work is not lost
    reasons = {record["video_id"]: record["reason"] for record in store.failures}
    assert [r["video_id"] for r in store.failures] == sorted(reasons)
    expected = {
        "bad-missing": "file not found",
        "bad-empty": "empty file",
        "bad-truncated": "moov atom not found",
        "bad-corrupt": "Invalid data",
        "bad-notes": "Invalid data",
        "bad-a_directory": "is a directory",
        "bad-audio": "no video stream",
        "bad-unsupported": "unsupported codec",
    }
    assert set(reasons) == set(expected)
    for video_id, phrase in expected.items():
        assert phrase in reasons[video_id], (video_id, reasons[video_id])
    assert {r["path"] for r in store.failures} >= {str(bad_files["missing"])}
    good = store.index(["good-a", "good-b"])
    assert store.valid[good].all() and store.valid.sum() == 2
    frames, mask = store.read(np.flatnonzero(~store.valid))
    assert frames.max() == 0 and not mask.any()
    assert raised.value.result.summary().endswith("2 of 10 videos ok, 8 failed")
    with pytest.raises(TooManyFailuresError):  # a rerun of the finished store says so again
        decode(manifest, out, SMALL, SYNC, progress=False)


def test_cli_exit_status_follows_the_failure_limit(tmp_path, clips, bad_files):
    manifest = manifest_of(tmp_path / "manifest", {"bad": bad_files["corrupt"], "good": clips[0]})
    params = tmp_path / "params.yaml"
    params.write_text("decode:\n  max_failure_fraction: 0.6\n  videos_per_shard: 1\n")
    command = [sys.executable, "-m", "teachclip.cli", "--params", str(params), "decode", "--manifest",
               str(manifest), "-S", "decode.frames_per_video=3", "--set", "decode.size=8", "--scheduler", "sync"]  # fmt: skip
    ok = subprocess.run([*command, "--out", str(tmp_path / "a.zarr")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "1 of 2 videos ok, 1 failed" in ok.stdout
    assert FramesStore.open(tmp_path / "a.zarr").sampling["frames_per_video"] == 3  # --set beat params
    params.write_text("decode:\n  max_failure_fraction: 0.4\n")
    over = subprocess.run([*command, "--out", str(tmp_path / "b.zarr")], capture_output=True, text=True)
    assert over.returncode == 1 and "max_failure_fraction" in over.stderr
    assert FramesStore.open(tmp_path / "b.zarr").failures[0]["video_id"] == "bad"


# ---- identity, refusal, no-op -------------------------------------------------------------------


def test_finished_store_rerun_is_a_no_op(tmp_path, good_manifest, monkeypatch):
    out = tmp_path / "frames.zarr"
    decode(good_manifest, out, SMALL, SYNC, progress=False)
    before = tree_bytes(out)
    monkeypatch.setattr(decode_module, "decode_shard", _must_not_run)
    result = decode(good_manifest, out, SMALL, SYNC, progress=False)
    assert result.already_complete and result.shards_decoded == 0
    assert tree_bytes(out) == before


def test_mismatched_store_or_partial_is_refused_naming_both_fingerprints(tmp_path, good_manifest):
    out = tmp_path / "frames.zarr"
    first = decode(good_manifest, out, SMALL, SYNC, progress=False)
    other = SMALL.model_copy(update={"size": 12})
    expected = frames_fingerprint(load_manifest(good_manifest).fingerprint("content"), sampling_config(other))
    with pytest.raises(StoreMismatchError) as raised:
        decode(good_manifest, out, other, SYNC, progress=False)
    assert first.fingerprint in str(raised.value) and expected in str(raised.value)

    interrupted = _interrupted_run(tmp_path / "second.zarr", good_manifest, shards=1)
    with pytest.raises(StoreMismatchError, match=first.fingerprint):
        decode(good_manifest, tmp_path / "second.zarr", other, SYNC, progress=False)
    assert interrupted.exists()  # refused, not deleted

    rebuilt = decode(good_manifest, out, other, SYNC, overwrite=True, progress=False)
    assert rebuilt.fingerprint == expected and FramesStore.open(out).size == 12


def test_backend_is_part_of_the_fingerprint_but_not_of_the_pixels(tmp_path, good_manifest):
    pyav = decode(good_manifest, tmp_path / "pyav.zarr", SMALL, SYNC, progress=False)
    ffmpeg_config = SMALL.model_copy(update={"backend": "ffmpeg"})
    ffmpeg = decode(good_manifest, tmp_path / "ffmpeg.zarr", ffmpeg_config, SYNC, progress=False)
    assert pyav.fingerprint != ffmpeg.fingerprint
    a, b = FramesStore.open(tmp_path / "pyav.zarr"), FramesStore.open(tmp_path / "ffmpeg.zarr")
    assert b.sampling["decoder"]["ffmpeg"].startswith("ffmpeg version")
    for left, right in zip(a.read(range(5)), b.read(range(5)), strict=True):
        np.testing.assert_array_equal(left, right)


# ---- resume -------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _must_not_run(*args, **kwargs):
    raise AssertionError("decode_shard ran on a finished store")


def _interrupted_run(out: Path, manifest: Path, shards: int, config: DecodeConfig = SMALL) -> Path:
    """Run decode in process and stop it (like a kill) after ``shards`` shards were recorded."""
    real = frames_store_module.mark_done
    done = []

    def mark_then_maybe_stop(partial, unit):
        real(partial, unit)
        done.append(unit)
        if len(done) == shards:
            raise _Stop

    frames_store_module.mark_done = mark_then_maybe_stop
    try:
        with pytest.raises(_Stop):
            decode(manifest, out, config, SYNC, progress=False)
    finally:
        frames_store_module.mark_done = real
    return partial_path(out)


def test_resume_decodes_only_unfinished_shards_and_ends_byte_identical(tmp_path, good_manifest, monkeypatch):
    reference = tmp_path / "reference.zarr"
    decode(good_manifest, reference, SMALL, SYNC, progress=False)

    out = tmp_path / "frames.zarr"
    partial = _interrupted_run(out, good_manifest, shards=1)
    (done,) = os.listdir(partial / PROGRESS_DIR)
    # debris of a kill while the edge shard (videos 4..5 of 5) was being written
    debris = partial / "frames" / "c" / "2" / "0" / "0" / "0" / "0"
    debris.parent.mkdir(parents=True, exist_ok=True)
    debris.write_bytes(b"half a shard")
    ran = []
    real_shard = decode_module.decode_shard
    monkeypatch.setattr(
        decode_module, "decode_shard", lambda job, **kw: ran.append(job.index) or real_shard(job, **kw)
    )
    result = decode(good_manifest, out, SMALL, SYNC, progress=False)
    assert sorted(ran) == [i for i in range(3) if f"shard-{i:06d}" != done] and result.shards_decoded == 2
    assert tree_bytes(out) == tree_bytes(reference)


def test_killed_between_final_attributes_and_rename_finishes_on_rerun(tmp_path, good_manifest, monkeypatch):
    reference = tmp_path / "reference.zarr"
    decode(good_manifest, reference, SMALL, SYNC, progress=False)

    def killed(partial, out, kind):
        raise _Stop

    monkeypatch.setattr(frames_store_module, "finalize", killed)
    out = tmp_path / "frames.zarr"
    with pytest.raises(_Stop):
        decode(good_manifest, out, SMALL, SYNC, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(decode_module, "decode_shard", _must_not_run)
    result = decode(good_manifest, out, SMALL, SYNC, progress=False)
    assert result.shards_decoded == 0 and tree_bytes(out) == tree_bytes(reference)


def test_kill_minus_9_then_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path, clips):
    # 40 videos in 20 shards: long enough to be killed in the middle
    manifest = manifest_of(tmp_path / "manifest", {f"v{i:02d}": clips[i % len(clips)] for i in range(40)})
    params = tmp_path / "params.yaml"
    params.write_text("decode:\n  frames_per_video: 4\n  size: 32\n  videos_per_shard: 2\n")
    out = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "teachclip.cli", "--params", str(params), "decode", "--manifest",
               str(manifest), "--out", str(out), "--scheduler", "sync"]  # fmt: skip
    markers = partial_path(out) / PROGRESS_DIR
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (markers.is_dir() and any(markers.iterdir())) and process.poll() is None:
        assert time.monotonic() < deadline, "no shard finished within 2 minutes"
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed"
    finished_before_kill = len(os.listdir(markers))
    assert 1 <= finished_before_kill < 20

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"decoded {20 - finished_before_kill} of 20 shards in this run" in rerun.stdout
    reference = tmp_path / "reference.zarr"
    config = DecodeConfig(frames_per_video=4, size=32, videos_per_shard=2)
    decode(manifest, reference, config, SYNC, progress=False)
    assert tree_bytes(out) == tree_bytes(reference)


# ---- parallel -----------------------------------------------------------------------------------


def test_one_and_two_dask_workers_write_identical_bytes(tmp_path, good_manifest):
    one = decode(good_manifest, tmp_path / "one.zarr", SMALL, ComputeConfig(workers=1), progress=False)
    two = decode(good_manifest, tmp_path / "two.zarr", SMALL, ComputeConfig(workers=2), progress=False)
    assert one.fingerprint == two.fingerprint
    assert tree_bytes(tmp_path / "one.zarr") == tree_bytes(tmp_path / "two.zarr")


# ---- the demo data set --------------------------------------------------------------------------


def test_decode_of_the_demo_data(tiny_data):
    config = DecodeConfig(size=32)  # T = 12 at 1 frame/s, as the default
    # 6 demo videos of the default length decoded with ``config`` (tests/conftest.py; read-only)
    data = tiny_data(videos=6, seconds=DemoConfig().seconds, fps=DemoConfig().fps, size=config.size,
                     frames_per_video=config.frames_per_video)
    demo = data.manifest
    store = FramesStore.open(data.frames)
    manifest = load_manifest(demo)
    assert store.video_ids == sorted(v.video_id for v in manifest.videos) and len(store) == 6
    assert store.failures == [] and store.valid.all()
    frames, mask = store.read(np.arange(len(store)))
    seconds = DemoConfig().seconds
    assert frames.shape == (6, 12, 32, 32, 3)
    assert mask.sum(axis=1).tolist() == [min(seconds, 12)] * 6
    assert store.manifest_fingerprint == manifest.fingerprint("content")
    assert (
        store.fingerprint
        == data.fingerprint  # what decode reported
        == frames_fingerprint(store.manifest_fingerprint, sampling_config(config))
    )
