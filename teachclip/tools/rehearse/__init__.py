"""``teach rehearse``: the MSR-VTT pipeline end to end at real model size, before anyone has MSR-VTT.

What it does, in ``OUT``:

1. ``corpus/``: an MSR-VTT-shaped corpus (:mod:`.corpus`), the official annotation files and
   320x240 30 fps H.264+AAC videos of 10-30 s, ``rehearse.train_videos`` + ``rehearse.test_videos``.
2. ``models/``: the weight files the params file names, at their real size with random values
   (:mod:`.model_files`): the student's ``pretrained: openai`` CLIP in a Hugging Face Hub cache folder,
   X-CLIP's ``pytorch_model.bin.4`` and X-Pool's ``model_best.pth`` in their official formats.
3. ``project/``: a scratch copy of the pipeline (``pipelines/msrvtt/dvc.yaml``, unchanged but for the
   params file's name) beside a copy of the params file with its EDIT lines filled in and the
   rehearsal's sizes (``train_student.epochs``/``batch_size``, ``extract.memory_budget_mb``, the
   ``compute`` section); ``teachclip/`` is a copy of the code that runs (first on every step's
   ``PYTHONPATH``). Then ``dvc repro`` stage by stage (one ``dvc repro --single-item`` per stage, in the
   pipeline's order), ``dvc status`` (must be clean), ``teach export``, ``teach search index`` and
   ``teach search query``.
4. ``rehearsal.json``: per step the wall time, the peak RSS of its largest process and of its process
   tree (sampled), whether DVC ran it, and its log file (``logs/``); the bytes on disk of every store;
   the test metrics; the settings and the machine. It is rewritten after every step.

Every stage runs through the ``teach`` command and DVC exactly as a user's would; only the weights'
values and the videos' content are made up. A failed step stops the rehearsal with its log's last lines.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from teachclip.core.config import ComputeConfig, RehearseConfig
from teachclip.core.errors import InputError, MissingFileError
from teachclip.core.files import write_json
from teachclip.tools.rehearse.corpus import corpus_spec, write_msrvtt_like
from teachclip.tools.rehearse.model_files import write_official_teacher, write_openai_clip

OFFICIAL_FILES = {"xclip": "pytorch_model.bin.4", "xpool": "model_best.pth"}
SAMPLE_SECONDS = 0.25


class RehearsalError(InputError):
    """A rehearsal step that failed (the message names its log) or a params file it cannot rehearse."""


def rehearse(out: str | Path, config: RehearseConfig, compute: ComputeConfig, *, progress: bool = True) -> dict:
    """Run the rehearsal into ``out``; returns the report also written to ``out/rehearsal.json``."""
    import teachclip

    out = Path(out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    steps: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    report: dict[str, Any] = {
        "complete": False, "stages": steps, "path": str(out / "rehearsal.json"), "machine": _machine(),
        "settings": {"rehearse": config.model_dump(mode="json"), "compute": compute.model_dump(mode="json")},
    }

    def record(name: str, step: dict[str, Any]) -> None:  # the report so far, after every step
        steps[name] = step
        write_json(out / "rehearsal.json", {**report, "seconds": time.perf_counter() - started})

    source_params = _source(config.params, "rehearse.params")
    pipeline = _source(config.pipeline / "dvc.yaml", "rehearse.pipeline")
    params = yaml.safe_load(source_params.read_text()) or {}

    clock = time.perf_counter()
    corpus = write_msrvtt_like(out / "corpus", corpus_spec(config), workers=compute.workers, progress=progress)
    record("corpus", {"seconds": time.perf_counter() - clock, "in_process": True})

    clock = time.perf_counter()
    hub_cache = out / "models" / "hub"
    checkpoints = _write_model_files(params, out / "models", hub_cache, config.seed)
    record("model-files", {"seconds": time.perf_counter() - clock, "in_process": True})

    project = out / "project"
    stage_dir = project / config.pipeline
    _write_params(project / "params" / source_params.name, params, config, compute, corpus, checkpoints)
    stage_dir.mkdir(parents=True, exist_ok=True)
    dvc_text = pipeline.read_text().replace("params/msrvtt-b32.yaml", f"params/{source_params.name}")
    (stage_dir / "dvc.yaml").write_text(dvc_text)
    # a copy of the code that runs (the stages' deps, and what every child imports): edits made while a
    # rehearsal runs do not reach it, and a rerun after an edit reruns the stages whose code changed
    code = project / "teachclip"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(Path(teachclip.__file__).resolve().parent, code, ignore=shutil.ignore_patterns("__pycache__"))
    python_path = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    if not (stage_dir / ".dvc").exists():
        _run("dvc-init", ["dvc", "init", "--no-scm", "-q"], stage_dir, env, out)
    stages = list((yaml.safe_load(dvc_text) or {}).get("stages", {}))
    for stage in stages:
        step = _run(stage, ["dvc", "repro", "--single-item", stage], stage_dir, env, out)
        step["ran"] = "Running stage" in (out / step["log"]).read_text()  # False: up to date, skipped
        record(stage, step)
    status = _run("dvc-status", ["dvc", "status"], stage_dir, env, out)
    status_text = (out / status["log"]).read_text()
    if "up to date" not in status_text:
        raise RehearsalError(f"{out / status['log']}: dvc status is not clean after the rehearsal: {status_text.strip()}")

    resolved = params.get("paths", {})
    student, frames = stage_dir / resolved["student"], stage_dir / resolved["frames"]
    teach = ["teach", "--params", str(project / "params" / source_params.name)]
    record("export", _run("export", [*teach, "export", "--model", str(student), "--out", str(out / "export")],
                           stage_dir, env, out))
    record("search-index", _run("search-index", [*teach, "search", "index", "--model", str(student), "--frames",
                                                  str(frames), "--out", str(out / "index.zarr")], stage_dir, env, out))
    record("search-query", _run("search-query", [*teach, "search", "query", str(out / "index.zarr"), config.query,
                                                  "--json"], stage_dir, env, out))

    stores = {name: _bytes(stage_dir / resolved[name]) for name in ("manifest", "frames", "teachers", "student")
              if name in resolved}
    stores |= {"corpus_videos": _bytes(corpus / "videos"), "index": _bytes(out / "index.zarr"),
               "export": _bytes(out / "export"), "model_files": _bytes(out / "models")}
    report |= {
        "complete": True,
        "seconds": time.perf_counter() - started,
        "bytes": stores,
        "metrics": _metrics(stage_dir / f"{resolved['student']}-test.json"),
    }
    report["settings"] |= {"params": str(source_params), "pipeline": str(config.pipeline)}
    write_json(out / "rehearsal.json", report)
    return report


def _source(path: Path, field: str) -> Path:
    if not path.is_file():
        raise MissingFileError(f"{path}: not found ({field}; run teach rehearse from the repository root)")
    return path


def _write_model_files(params: dict, models: Path, hub_cache: Path, seed: int) -> dict[str, Path]:
    """The student's pretrained CLIP and an official checkpoint per teacher the pipeline extracts."""
    backbone = params.get("student", {}).get("backbone", {})
    if backbone.get("pretrained"):
        write_openai_clip(hub_cache, backbone["name"], backbone["pretrained"], seed=seed)
    checkpoints = {}
    for name in params.get("extract", {}).get("teachers", []):
        teacher = params.get("teachers", {}).get(name, {})
        kind = teacher.get("kind")
        if kind not in OFFICIAL_FILES:
            raise RehearsalError(f"extract.teachers names {name!r} ({kind}): the rehearsal writes official "
                                 f"checkpoints for {', '.join(OFFICIAL_FILES)} only")
        checkpoints[name] = write_official_teacher(
            kind, models / name / OFFICIAL_FILES[kind], teacher.get("backbone", {}).get("name", "ViT-B-32-quickgelu"),
            max_words=teacher.get("backbone", {}).get("max_words", 32), seed=seed + 1 + len(checkpoints))
    return checkpoints


def _write_params(path: Path, params: dict, config: RehearseConfig, compute: ComputeConfig, corpus: Path,
                  checkpoints: dict[str, Path]) -> None:
    """The rehearsed params file with its EDIT lines filled in and the rehearsal's sizes."""
    params = yaml.safe_load(yaml.safe_dump(params))  # a deep copy
    params.setdefault("paths", {})["root"] = str(corpus)
    for name, checkpoint in checkpoints.items():
        params["teachers"][name]["checkpoint"] = str(checkpoint)
    params["compute"] = {**params.get("compute", {}), **compute.model_dump(mode="json")}
    params.setdefault("train_student", {}).update(epochs=config.epochs, batch_size=config.batch_size)
    params.setdefault("extract", {})["memory_budget_mb"] = config.extract_memory_mb
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# written by `teach rehearse` from {config.params}: EDIT lines filled in, sizes of the rehearsal\n")
    path.write_text(header + yaml.safe_dump(params, sort_keys=False))


def _run(name: str, command: list[str], cwd: Path, env: dict, out: Path) -> dict[str, Any]:
    """Run one step as a child process: its wall time and memory, sampled every ``SAMPLE_SECONDS`` over
    its process tree (DVC, ``teach``, dask workers): the largest single process's peak RSS (VmHWM, which
    starts afresh at exec; ``getrusage`` would report the forking parent's size as a floor) and the
    largest sum of RSS over the processes alive at one sample."""
    import psutil

    log = out / "logs" / f"{name}.log"
    start = time.perf_counter()
    peak_process = peak_tree = 0
    with open(log, "w") as handle:
        handle.write(f"$ (cd {cwd} && {' '.join(command)})\n")
        handle.flush()
        try:
            child = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise RehearsalError(f"{name}: {command[0]} not found on PATH ({exc})") from exc
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            sizes = [_memory(process) for process in tree]
            peak_process = max([peak_process, *(high for high, _ in sizes)])
            peak_tree = max(peak_tree, sum(rss for _, rss in sizes))
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RehearsalError(f"{log}: step {name} failed (exit {child.returncode}): " + " | ".join(tail))
    return {"seconds": seconds, "peak_rss_mb": peak_process / 2**20, "peak_tree_rss_mb": peak_tree / 2**20,
            "log": str(log.relative_to(out))}


def _memory(process: Any) -> tuple[int, int]:
    """(peak RSS so far, RSS now) in bytes; (0, 0) for a process that has gone."""
    import psutil

    try:
        rss = process.memory_info().rss
    except psutil.Error:
        return 0, 0
    try:
        with open(f"/proc/{process.pid}/status") as status:  # Linux: VmHWM, the peak since exec
            high = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), rss)
    except (OSError, ValueError):  # elsewhere: the sampled RSS
        high = rss
    return max(high, rss), rss


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def _metrics(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def _machine() -> dict:
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "dvc": shutil.which("dvc"), "teach": shutil.which("teach")}
