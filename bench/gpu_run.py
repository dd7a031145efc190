"""The GPU run: one command on a CUDA machine, within 10 minutes, writing one JSON of figures.

    python bench/gpu_run.py --out bench/results/gpu_run.json               # on the GPU machine
    python bench/gpu_run.py --device cpu --quick --out /tmp/gpu_run.json   # dry run: tiny sizes, CPU

Steps, each a child process with its own time box (``--budget-s`` for the whole run; a step that
would start with less than its minimum left is recorded as skipped), each recorded as ``ok``,
``failed`` (exit status and the last lines of its output), ``timeout`` or ``skipped``; a failure
never stops the run, and the JSON is rewritten after every step, so a run killed midway keeps what
it measured:

1. ``env``: torch, CUDA, the GPUs, CPU count.
2. ``rehearse``: ``teach rehearse --device DEVICE`` (the MSR-VTT pipeline under DVC at real model
   size, with AMP from ``params/msrvtt-b32.yaml``'s ``precision: amp``); its ``rehearsal.json`` is
   copied into the report. Recorded as failed when this checkout has no ``teach rehearse``.
3. ``data``: MSR-VTT-like clips (320x240, 30 fps, AAC audio) and their manifest, for the next steps.
4. ``decode``, ``extract-xclip``, ``extract-xpool``: the stage commands on those clips with
   ``params/msrvtt-b32.yaml`` (random-weight teachers configured as the official checkpoints load):
   videos/s and end-to-end pairs/s per teacher (start-up included).
5. ``train-ddp``: ``torchrun --nproc_per_node=GPUS -m teachclip.cli ... train-student`` on that cache
   (AMP, DDP over every GPU): seconds, videos/s.
6. ``gpu_step``: ``bench/gpu_step.py`` (one B/32 student step at batch 120; one extraction block per
   teacher: videos/s, captions/s, pairs/s, peak GPU memory).
7. ``teacher_cost``: ``bench/teacher_cost.py`` (per-pair cost of each teacher's score vs a dot product).

``extraction`` in the report gathers per teacher the rates ``bench/scale.py --gpu-measured`` uses in
place of its projections (from ``gpu_step``'s blocks). ``--quick`` shrinks every size (micro towers
where the step allows it) so that the whole run finishes in a few minutes on a CPU: it proves the
script, not the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import machine_info, workdir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARAMS = ROOT / "params" / "msrvtt-b32.yaml"
TEACHER_KINDS = ("xclip", "xpool")
# the options under which the official checkpoints load (bench/gpu_step.py OFFICIAL_OPTIONS), as --set values
TEACHER_OPTIONS = {"xclip": "{max_frames: 12, frame_features: clip, full_reweighting: true}", "xpool": "{}"}


def tail(text: str, lines: int = 8) -> list[str]:
    return [line for line in (text or "").strip().splitlines() if line.strip()][-lines:]


class Run:
    """The steps' records, the time left and the JSON written after each step."""

    def __init__(self, out: Path, budget_s: float, report: dict):
        self.out, self.deadline, self.report = out, time.monotonic() + budget_s, report
        report["steps"] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, step: dict) -> dict:
        self.report["steps"].append(step)
        print(f"gpu_run: {step['name']}: {step['status']} ({step.get('seconds', 0):.1f} s)", file=sys.stderr, flush=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n")
        tmp.replace(self.out)
        return step

    def command(self, name: str, argv: list[str], timeout_s: float, minimum_s: float = 20, cwd: Path = ROOT,
                json_output: bool = False, env: dict | None = None) -> dict:
        """Run ``argv`` in a time box of ``min(timeout_s, time left)``; its JSON stdout under ``output``."""
        box = min(timeout_s, self.left())
        if box < minimum_s:
            return self.record({"name": name, "status": "skipped", "reason": f"{self.left():.0f} s left of the budget",
                                "command": " ".join(argv)})
        start = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=box,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
            err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
            return self.record({"name": name, "status": "timeout", "seconds": round(time.perf_counter() - start, 2),
                                "timeout_s": round(box), "command": " ".join(argv), "tail": tail((out or "") + (err or ""))})
        except OSError as error:
            return self.record({"name": name, "status": "failed", "seconds": 0.0, "command": " ".join(argv),
                                "tail": [str(error)]})
        step: dict[str, Any] = {"name": name, "status": "ok" if done.returncode == 0 else "failed",
                                "seconds": round(time.perf_counter() - start, 2), "returncode": done.returncode,
                                "command": " ".join(argv)}
        if done.returncode != 0:
            step["tail"] = tail(done.stderr + done.stdout)
        elif json_output:
            try:
                step["output"] = json.loads(done.stdout)
            except json.JSONDecodeError:
                step |= {"status": "failed", "tail": ["stdout is not JSON"] + tail(done.stdout)}
        return self.record(step)

    def inline(self, name: str, fn) -> dict:
        start = time.perf_counter()
        try:
            figures = fn()
            step = {"name": name, "status": "ok", "figures": figures}
        except Exception as error:  # recorded, not fatal: the run goes on with the next step
            step = {"name": name, "status": "failed", "tail": [f"{type(error).__name__}: {error}"]}
        step["seconds"] = round(time.perf_counter() - start, 2)
        return self.record(step)


def environment(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
            "device": device}
    if torch.cuda.is_available():
        info |= {"cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
                 "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                 "gpu_memory_gb": [round(torch.cuda.get_device_properties(i).total_memory / 1e9, 1)
                                   for i in range(torch.cuda.device_count())],
                 "bf16_supported": torch.cuda.is_bf16_supported()}
    return info


def teach_has(command: str) -> bool:
    """Whether this checkout's ``teach`` has ``command`` (``teach COMMAND --help`` succeeds)."""
    done = subprocess.run([sys.executable, "-m", "teachclip.cli", command, "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.returncode == 0


def make_data(root: Path, clips: int, test: int, seconds: int) -> dict:
    """MSR-VTT-like clips and a manifest (train + test), made with the imageio-ffmpeg binary in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from teachclip.core.manifest import write_manifest
    from teachclip.video import ffmpeg_binary_path

    binary = ffmpeg_binary_path()
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)

    def make(i: int) -> None:
        path = videos / f"video{i}.mp4"
        if path.exists():
            return
        subprocess.run([binary, "-hide_banner", "-loglevel", "error", "-y", "-threads", "1",
                        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=30:duration={seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency={220 + i}:duration={seconds}",
                        "-vf", f"noise=alls=6:allf=t:all_seed={i + 1}", "-c:v", "libx264", "-preset", "veryfast",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path.with_suffix(".tmp.mp4"))],
                       check=True)  # fmt: skip
        path.with_suffix(".tmp.mp4").replace(path)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(make, range(clips)))
    rows = [(f"video{i}", f"videos/video{i}.mp4", "test" if i >= clips - test else "train") for i in range(clips)]
    captions = [(f"video{i}#{j}", f"video{i}", f"a test pattern number {i} seen in caption {j}")
                for i in range(clips) for j in range(20)]
    write_manifest(root / "manifest", [(v, f"../{p}", s) for v, p, s in rows], captions)
    return {"clips": clips, "train_videos": clips - test, "test_videos": test, "captions_per_video": 20,
            "clip": f"320x240 30 fps {seconds} s H.264 + AAC"}


def teacher_directories(root: Path, quick: bool) -> dict[str, str]:
    """Random-weight teachers saved as trained-teacher directories (``extract-teachers`` refuses a teacher
    with no weights at all), each configured as its official checkpoint loads, at B/32 (micro: --quick)."""
    import torch

    from teachclip.core.config import TeacherConfig
    from teachclip.models.factory import create_teacher
    from teachclip.models.io import save_model

    options = {"xclip": {"max_frames": 12, "frame_features": "clip", "full_reweighting": True}, "xpool": {}}
    backbone = ({"name": "teachclip-micro", "pretrained": None, "max_words": 16, "precision": "fp32"} if quick
                else {"name": "ViT-B-32-quickgelu", "pretrained": None, "max_words": 32, "precision": "amp"})
    directories = {}
    for kind in TEACHER_KINDS:
        config = TeacherConfig(kind=kind, backbone=backbone, options=options[kind])
        torch.manual_seed(0)
        directory = root / f"teacher-{kind}"
        save_model(directory, create_teacher(config), kind, config)
        directories[kind] = str(directory)
    return directories


def settings(args: argparse.Namespace, cpus: int) -> list[str]:
    """``--set`` values that make params/msrvtt-b32.yaml run here: random weights (no EDIT paths), the
    official checkpoints' options, and (``--quick``) micro towers on small frames."""
    values = ["student.backbone.pretrained=null", f"compute.device={args.device}",
              f"compute.workers={cpus if not args.quick else 1}",
              f"compute.scheduler={'sync' if args.quick else 'local'}"]
    for kind in TEACHER_KINDS:  # the EDIT paths: extract-teachers gets KIND=DIRECTORY instead
        values += [f"teachers.{kind}.checkpoint=null", f"teachers.{kind}.options={TEACHER_OPTIONS[kind]}"]
    if args.quick:
        for prefix in ["student"] + [f"teachers.{kind}" for kind in TEACHER_KINDS]:
            values += [f"{prefix}.backbone.name=teachclip-micro", f"{prefix}.backbone.max_words=16",
                       f"{prefix}.backbone.precision=fp32"]
        values += ["decode.size=32", "extract.memory_budget_mb=256"]
    return [item for value in values for item in ("--set", value)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (with --quick: a dry run)")
    parser.add_argument("--gpus", type=int, default=None, help="torchrun processes (default: every visible GPU; CPU: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script in minutes on a CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="the whole run's time box (default 570 s; --quick 2400 s: a busy CPU is slow)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_run.json")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=None, help="clips for the stage steps (default 128; --quick 6)")
    parser.add_argument("--skip", default="", help="comma-separated step names to leave out")
    args = parser.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --quick for a dry run)")
    gpus = args.gpus or (torch.cuda.device_count() if cuda else 1)
    cpus = min(16, os.cpu_count() or 1)
    clips = args.clips or (6 if args.quick else 128)
    test = 2 if args.quick else 8
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"bench": "gpu_run", "device": args.device, "quick": args.quick, "gpus": gpus,
                              "device_name": torch.cuda.get_device_name(0) if cuda else machine_info()["cpu_model"],
                              "params": str(PARAMS.relative_to(ROOT)), "machine": machine_info()}
    run = Run(args.out, args.budget_s or (2400 if args.quick else 570), report)
    stretch = 4 if args.quick else 1  # per-step time boxes: a dry run on a shared CPU gets more
    teach = [sys.executable, "-m", "teachclip.cli", "--params", str(PARAMS)]
    sets = settings(args, cpus)

    with workdir(args.workdir, "gpu-run") as root:
        if "env" not in skip:
            run.inline("env", lambda: environment(args.device))

        if "gpu_step" not in skip:
            small = ["--small"] if args.quick else []
            step = run.command("gpu_step", [sys.executable, str(HERE / "gpu_step.py"), "--device", args.device, *small,
                                            "--teachers", ",".join(TEACHER_KINDS)],
                               timeout_s=180 * stretch, cwd=HERE, json_output=True)
            blocks = (step.get("output") or {}).get("extraction_block") or {}
            report["extraction"] = {kind: {"videos_per_s": b["videos_per_second"], "texts_per_s": b["texts_per_second"],
                                           "score_pairs_per_s": b["pairs_per_second"],
                                           "score_peak_memory_mb": b["score_peak_memory_mb"],
                                           "quick": args.quick}
                                    for kind, b in blocks.items()}
            train = (step.get("output") or {}).get("train_step")
            if train:
                report["train_step"] = train
            run.record({"name": "gpu_step-figures", "status": "ok" if blocks else "failed", "seconds": 0.0})
        if "teacher_cost" not in skip:
            # B/32 even when quick (teacher_cost builds 32-word teachers); only the counts shrink
            sizes = ["--texts", "8", "--videos", "8", "--repeats", "1", "--meanp-block", "64"] if args.quick else []
            run.command("teacher_cost", [sys.executable, str(HERE / "teacher_cost.py"), "--device", args.device, *sizes],
                        timeout_s=90 * stretch, cwd=HERE, json_output=True)

        if "rehearse" not in skip:
            if not teach_has("rehearse"):
                run.record({"name": "rehearse", "status": "failed", "seconds": 0.0,
                            "tail": ["`teach rehearse` is not in this checkout (it comes with issue 16's rehearsal branch)"]})
            else:
                sizes = ["-S", "rehearse.train_videos=4", "-S", "rehearse.test_videos=2", "-S", "rehearse.batch_size=2",
                         "-S", "rehearse.min_seconds=10", "-S", "rehearse.max_seconds=10"] if args.quick else []
                step = run.command("rehearse", [*teach[:3], "rehearse", "--out", str(root / "rehearsal"),
                                                "--device", args.device, "--workers", str(cpus), *sizes],
                                   timeout_s=270 * stretch)
                rehearsal = root / "rehearsal" / "rehearsal.json"
                if rehearsal.exists():
                    step["rehearsal"] = json.loads(rehearsal.read_text())
                    run.record({"name": "rehearse-figures", "status": "ok", "seconds": 0.0})

        data = root / "data"
        made = run.inline("data", lambda: make_data(data, clips, test, 10))
        frames, manifest, cache = root / "frames.zarr", data / "manifest", root / "teachers.zarr"
        if made["status"] == "ok":
            figures = made["figures"]
            step = run.command("decode", [*teach, "decode", "--manifest", str(manifest), "--out", str(frames), *sets],
                               timeout_s=90 * stretch)
            if step["status"] == "ok":
                step["figures"] = {"videos_per_s": round(clips / step["seconds"], 2)}
            pairs = figures["train_videos"] * figures["train_videos"] * figures["captions_per_video"]
            extracted = []
            weights = run.inline("teacher-files", lambda: teacher_directories(root, args.quick))
            for kind in TEACHER_KINDS if weights["status"] == "ok" else ():
                step = run.command(f"extract-{kind}", [*teach, "extract-teachers", "--frames", str(frames),
                                                       "--manifest", str(manifest), "--out", str(cache),
                                                       "--teacher", f"{kind}={weights['figures'][kind]}",
                                                       "--no-progress", *sets], timeout_s=120 * stretch)
                if step["status"] == "ok":
                    extracted.append(kind)
                    step["figures"] = {"pairs": pairs, "pairs_per_s_end_to_end": round(pairs / step["seconds"], 1)}
            if "train-ddp" not in skip:
                torchrun = shutil.which("torchrun") or "torchrun"
                step = run.command("train-ddp", [torchrun, f"--nproc_per_node={gpus}", "-m", "teachclip.cli",
                                                 "--params", str(PARAMS), "train-student", "--frames", str(frames),
                                                 "--manifest", str(manifest),
                                                 *[arg for kind in extracted for arg in ("--teachers", f"{cache}/{kind}")],
                                                 "--out", str(root / "student"), "--epochs", "2",
                                                 "--batch-size", str(4 if args.quick else 120), *sets,
                                                 "--set", "train_student.teachers=" + json.dumps(
                                                     [{"name": kind} for kind in extracted])],
                                   timeout_s=150 * stretch)
                if step["status"] == "ok":
                    step["figures"] = {"videos_per_s_end_to_end": round(2 * figures["train_videos"] / step["seconds"], 2),
                                       "gpus": gpus}

    report["failed_steps"] = [s["name"] for s in report["steps"] if s["status"] != "ok"]
    run.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"out": str(run.out), "failed_steps": report["failed_steps"]}))
    return report


if __name__ == "__main__":
    main()
