"""What the benchmarks share: clocks, interleaved repeats, the JSON report, command-line options, the
work directory and the tiny real data sets (``teachclip.testing``) they measure on.

Every script in this folder runs as ``python bench/NAME.py`` (this folder is then first on
``sys.path``, so ``from common import ...`` works) and prints one JSON document on stdout through
:func:`emit`, which adds the machine it ran on under ``"machine"``.

torch is imported lazily: a benchmark that does not need it (``sparse.py``, ``decode.py``) stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# ---- clocks --------------------------------------------------------------------------------------


class Clock:
    """Seconds, measured correctly for the device the work runs on.

    - CUDA: the wall clock, read after ``torch.cuda.synchronize`` (kernels run asynchronously: without
      it a timer measures the launches, not the work).
    - CPU, ``cpu="process"`` (default): the process's CPU time (``time.process_time``), which other
      processes on a busy, shared machine do not inflate; it sums the process's threads, so run
      with ``--threads 1`` for a per-core figure. Work done in child processes is not counted.
    - CPU, ``cpu="wall"``: the wall clock (``time.perf_counter``), for work in other processes
      (ffmpeg, dask workers) or when elapsed time is the point.
    """

    def __init__(self, device: Any = None, cpu: str = "process"):
        if cpu not in ("process", "wall"):
            raise ValueError(f"cpu clock must be 'process' or 'wall', not {cpu!r}")
        self.device = device
        self.cuda = device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda"
        self._clock = time.perf_counter if self.cuda or cpu == "wall" else time.process_time
        if self.cuda:
            self.description = "wall clock (synchronised)"
        else:
            self.description = "process CPU time" if cpu == "process" else "wall clock"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """The clock's reading once every queued kernel has finished."""
        self.sync()
        return self._clock()

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds of one call of ``fn``."""
        start = self.now()
        fn()
        return self.now() - start

    def repeat(self, fn: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
        """Seconds of each of ``repeats`` calls, after ``warmup`` untimed ones."""
        for _ in range(warmup):
            fn()
        return [self.time(fn) for _ in range(repeats)]

    def mean(self, fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, Any]:
        """Mean seconds per call over ``repeats`` calls timed as one stretch (one synchronisation at
        each end: for short calls), after ``warmup`` untimed calls; and the last call's result."""
        result = None
        for _ in range(warmup):
            result = fn()
        start = self.now()
        for _ in range(repeats):
            result = fn()
        return (self.now() - start) / max(1, repeats), result


def interleave(measurements: Mapping[str, Callable[[], float]], repeats: int, warmup: int = 0,
               rotate: bool = True) -> dict[str, list[float]]:
    """Run every measurement (a callable returning its own seconds) ``repeats`` times, round by round,
    so drifting load on a shared machine hits all of them alike; ``warmup`` untimed rounds first. With
    ``rotate`` the order shifts by one each round, so no variant always runs right after the same one."""
    names = list(measurements)
    for _ in range(warmup):
        for name in names:
            measurements[name]()
    runs: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names) if rotate and names else 0
        for name in names[shift:] + names[:shift]:
            runs[name].append(measurements[name]())
    return runs


# ---- the report ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _torch_version() -> str | None:
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return importlib.metadata.version("torch")  # without importing it
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: Any = None) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return _cpu_model()


def machine_info(device: Any = None) -> dict[str, Any]:
    """Where a figure was measured: CPU count and model, load, torch and Python versions, the device."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _torch_version(),
        "device": str(device) if device is not None else "cpu",
        "device_name": device_name(device),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def emit(result: Mapping[str, Any], device: Any = None, indent: int = 2) -> dict[str, Any]:
    """Print ``result`` as one JSON document on stdout, with ``"machine"``: :func:`machine_info`."""
    document = dict(result)
    document.setdefault("machine", machine_info(device))
    print(json.dumps(document, indent=indent))
    sys.stdout.flush()
    return document


# ---- command line --------------------------------------------------------------------------------


def add_device_option(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    parser.add_argument("--device", default=default, help=f"cpu, cuda, cuda:1 or auto (CUDA if available; "
                                                          f"default {default})")


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = 1) -> None:
    parser.add_argument("--threads", type=int, default=default,
                        help="torch CPU threads (the CPU clock sums them: 1 gives a per-core figure)"
                        + ("" if default else "; default: torch's own"))


def add_workdir_option(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--workdir", type=Path, default=None, required=required,
                        help="build the data here and keep it (a re-run reuses it)"
                        + ("" if required else "; default: a temporary directory, removed at the end"))


def add_common_options(parser: argparse.ArgumentParser, device: str = "cpu", threads: int | None = 1) -> None:
    """``--device``, ``--threads`` and ``--workdir``."""
    add_device_option(parser, device)
    add_threads_option(parser, threads)
    add_workdir_option(parser)


def torch_setup(args: argparse.Namespace) -> Any:
    """Apply ``--threads`` (when given) and return the torch device ``--device`` names."""
    import torch

    from teachclip.core.device import pick_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return pick_device(getattr(args, "device", "cpu"))


@contextlib.contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if needed, kept afterwards) or, without one, a temporary directory that is
    removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- data ----------------------------------------------------------------------------------------

DATA_RECORD = "bench-data.json"


def demo_data(root: Path, teachers: Mapping[str, Any] | None = None, seed_teachers: int = 0,
              **options: Any):
    """Demo videos decoded by the real stages (:func:`teachclip.testing.tiny_dataset` with
    ``options``: ``root/demo``, ``root/frames.zarr``) and, with ``teachers`` (name -> TeacherConfig,
    untrained weights seeded by ``seed_teachers``), a teacher cache ``root/teachers.zarr`` extracted
    from them. Returns (TinyData, the cache or None).

    What an earlier run left in ``root`` is reused when it was built from the same options (recorded
    in ``root/bench-data.json``, written last); otherwise it is rebuilt.
    """
    import torch

    from teachclip.stores.frames import FramesStore
    from teachclip.testing import TinyData, tiny_dataset, tiny_teacher_cache

    caches = root / "teachers.zarr"
    record = {"options": options, "seed_teachers": seed_teachers,
              "teachers": {name: config.model_dump(mode="json") for name, config in (teachers or {}).items()}}
    marker = root / DATA_RECORD
    if marker.exists() and json.loads(marker.read_text()) == record:
        frames = root / "frames.zarr"
        data = TinyData(root / "demo", frames, FramesStore.open(frames).fingerprint)
        return data, caches if teachers else None
    marker.unlink(missing_ok=True)
    for stale in (root / "frames.zarr", caches):  # built from other options: decode would refuse them
        shutil.rmtree(stale, ignore_errors=True)
    data = tiny_dataset(root, **options)
    if teachers:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_teachers)
            tiny_teacher_cache(caches, data, teachers)
    marker.write_text(json.dumps(record, indent=1) + "\n")
    return data, caches if teachers else None
