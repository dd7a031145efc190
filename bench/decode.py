"""Benchmark: throughput of the decode stage against a plain full decode by the ffmpeg binary.

    python bench/decode.py [--clips 40] [--demo-videos 48] [--repeats 3] [--workdir DIR]

Prints one JSON document on stdout. For each data set (demo videos; 320x240 30 fps 15 s clips like
MSR-VTT's, x264 defaults, i.e. a keyframe every 250 frames; the same clips with a keyframe every
second), it measures in one run, interleaved ``--repeats`` times (the machine is shared and noisy,
so only ratios measured side by side mean anything):

- ``full_decode``: ``ffmpeg -i FILE -f null -`` over every file, one after another (the baseline;
  ffmpeg picks its own thread count); ``full_decode_1thread`` adds ``-threads 1`` for reference;
- the decode stage (``teachclip.stages.decode.decode``, end to end: manifest fingerprint, decoding,
  resizing, compressed Zarr writes, finalisation) for each backend (pyav, ffmpeg, torchcodec on the
  CPU; ``--backends`` to choose) with 1 and 2 dask workers, and
  in-process (``sync``). The dask cluster (the stage's own LocalCluster set-up) is started once per
  worker count and passed as a scheduler address, so its process start-up (seconds, paid once per
  stage run) is not counted; ``cluster_start_s`` reports it.

Figures are videos/s from the median and from the best (least disturbed) of the repeats, whose
order rotates between repeats; ``ratio`` = stage videos/s / full_decode videos/s.
Goal (issue 2): >= 0.9 with 1 worker, >= 1.8 with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from common import Clock, add_workdir_option, emit, interleave, workdir

from teachclip.core.config import ComputeConfig, DecodeConfig, DemoConfig
from teachclip.core.manifest import write_manifest
from teachclip.core.parallel import dask_client
from teachclip.stages.decode import decode
from teachclip.video import BACKENDS, decoder_identity, ffmpeg_binary_path, ffmpeg_version

WORKER_COUNTS = (1, 2)


def make_clips(directory: Path, clips: int, keyint: int | None, binary: str) -> Path:
    """MSR-VTT-like clips: 320x240, 30 fps, 15 s, H.264 at about MSR-VTT's bitrate (noise added
    to the test pattern); ``keyint`` None keeps x264's default GOP of 250 frames."""
    videos = directory / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        path = videos / f"clip{i:04d}.mp4"
        gop = ["-g", str(keyint)] if keyint else []
        command = [binary, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                   "-i", "testsrc2=size=320x240:rate=30", "-t", "15",
                   "-vf", f"noise=alls=6:allf=t:all_seed={i + 1}",
                   "-c:v", "libx264", "-pix_fmt", "yuv420p", *gop, str(path)]  # fmt: skip
        subprocess.run(command, check=True)
        rows.append((f"clip{i:04d}", f"videos/{path.name}", "train"))
    return write_manifest(directory, rows, [(f"c{v}", v, "a clip") for v, _, _ in rows])


def make_demo(directory: Path, videos: int) -> Path:
    from teachclip.stages.demo_data import generate_demo

    return generate_demo(directory, DemoConfig(videos=videos), progress=False)


def manifest_files(manifest: Path) -> list[Path]:
    from teachclip.core.manifest import load_manifest

    return [video.path for video in load_manifest(manifest).videos]


# the work runs in ffmpeg processes and dask workers: elapsed time, not this process's CPU time
CLOCK = Clock(cpu="wall")


def time_full_decode(files: list[Path], binary: str, threads: int | None) -> float:
    extra = ["-threads", str(threads)] if threads else []

    def run() -> None:
        for path in files:
            command = [binary, "-hide_banner", "-loglevel", "error", *extra, "-i", str(path), "-f", "null", "-"]
            subprocess.run(command, check=True)

    return CLOCK.time(run)


def time_stage(manifest: Path, out: Path, backend: str, compute: ComputeConfig) -> float:
    config = DecodeConfig(backend=backend, max_failure_fraction=0.0)
    seconds = CLOCK.time(lambda: decode(manifest, out, config, compute, overwrite=True, progress=False))
    shutil.rmtree(out)
    return seconds


def bench_dataset(
    manifest: Path, scratch: Path, binary: str, repeats: int, schedulers: dict[int, str], backends: list[str]
) -> dict:
    files = manifest_files(manifest)
    out = scratch / "frames.zarr"
    measurements = {
        "full_decode": lambda: time_full_decode(files, binary, None),
        "full_decode_1thread": lambda: time_full_decode(files, binary, 1),
    }
    for backend in backends:
        sync = ComputeConfig(scheduler="sync")
        measurements[f"{backend}/sync"] = lambda b=backend, c=sync: time_stage(manifest, out, b, c)
        for workers, address in schedulers.items():
            compute = ComputeConfig(scheduler=address, workers=workers)
            measurements[f"{backend}/workers{workers}"] = lambda b=backend, c=compute: time_stage(
                manifest, out, b, c
            )

    for backend in backends:  # warm-up: worker imports, page cache
        for address in schedulers.values():
            time_stage(manifest, out, backend, ComputeConfig(scheduler=address))
    runs = interleave(measurements, repeats)  # the order rotates so drifting load hits every variant alike

    def table(estimate) -> dict:
        rates = {name: len(files) / estimate(seconds) for name, seconds in runs.items()}
        return {
            "videos_per_s": {name: round(rate, 2) for name, rate in rates.items()},
            "ratio_to_full_decode": {
                name: round(rate / rates["full_decode"], 3) for name, rate in rates.items()
            },
        }

    return {
        "videos": len(files),
        "bytes_per_video": int(sum(p.stat().st_size for p in files) / len(files)),
        "median": table(statistics.median),
        "best": table(min),  # least disturbed run of each variant
        "seconds_each_repeat": {name: [round(s, 3) for s in seconds] for name, seconds in runs.items()},
    }


def run(root: Path, args: argparse.Namespace) -> dict:
    binary = ffmpeg_binary_path()
    datasets = {}
    if args.demo_videos:
        datasets["demo"] = lambda d: make_demo(d, args.demo_videos)
    datasets["msrvtt_like_gop250"] = lambda d: make_clips(d, args.clips, None, binary)
    datasets["msrvtt_like_gop30"] = lambda d: make_clips(d, args.clips, 30, binary)

    manifests = {}
    for name, make in datasets.items():
        directory = root / name
        manifests[name] = directory if (directory / "videos.csv").exists() else make(directory)

    schedulers, cluster_start = {}, {}
    with contextlib.ExitStack() as clusters:  # the stage's own LocalCluster set-up, started once
        for workers in WORKER_COUNTS:
            start = CLOCK.now()
            client = clusters.enter_context(dask_client(ComputeConfig(workers=workers)))
            schedulers[workers], cluster_start[workers] = (
                client.scheduler.address,
                CLOCK.now() - start,
            )
        results = {
            name: bench_dataset(manifest, root, binary, args.repeats, schedulers, args.backends)
            for name, manifest in manifests.items()
        }
    return {
        "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "ffmpeg": ffmpeg_version(binary),
        "decoders": {backend: decoder_identity(backend) for backend in args.backends},
        "decode_defaults": DecodeConfig().model_dump(mode="json"),
        "cluster_start_s": {f"workers{k}": round(v, 2) for k, v in cluster_start.items()},
        "datasets": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=40, help="MSR-VTT-like clips per data set")
    parser.add_argument("--demo-videos", type=int, default=48, help="demo videos (0: skip the demo set)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    add_workdir_option(parser)
    args = parser.parse_args()
    with workdir(args.workdir, "decode") as root:
        emit(run(root, args))


if __name__ == "__main__":
    main()
