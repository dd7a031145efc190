"""A real dask cluster, not a LocalCluster: a ``dask scheduler`` and ``dask worker`` processes started
from the command line, as on a multi-node cluster (docs/internet-scale.md), each worker in a
directory of its own. ``teach decode`` and ``teach extract-teachers`` run through ``--scheduler
tcp://...`` with relative paths, lose a worker in the middle of the run, and still write stores
byte-identical to an in-process run of the same settings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import sha256_tree
from typer.testing import CliRunner

import teachclip
from teachclip.cli import app
from teachclip.core.config import BackboneConfig, ComputeConfig, DecodeConfig, ExtractConfig, TeacherConfig
from teachclip.stages.decode import decode
from teachclip.stages.extract_teachers import extract_teachers, resolve_teachers
from teachclip.stores.zarr_io import PROGRESS_DIR, partial_path

SYNC = ComputeConfig(scheduler="sync", device="cpu")
DECODE = ["-S", "decode.frames_per_video=4", "-S", "decode.size=32", "-S", "decode.videos_per_shard=1"]
EXTRACT = ["-S", "extract.block_texts=2", "-S", "extract.chunk_texts=2", "-S", "extract.encode_batch=2"]


class Cluster:
    """A scheduler and worker processes on localhost, each in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.scheduler_file = root / "scheduler.json"
        # workers import the teachclip under test, whatever directory they run in
        code = str(Path(teachclip.__file__).resolve().parents[1])
        self.env = os.environ | {"PYTHONPATH": os.pathsep.join([code, os.environ.get("PYTHONPATH", "")]),
                                 "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.processes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, *args: str) -> None:
        directory = self.root / name
        directory.mkdir(parents=True)
        log = open(directory / "log.txt", "w")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=directory, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_scheduler(self) -> str:
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(self.scheduler_file))
        deadline = time.monotonic() + 60
        while not self.scheduler_file.exists():
            assert self.processes["scheduler"].poll() is None, self.log("scheduler")
            assert time.monotonic() < deadline, "the scheduler did not start in 60 s"
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give the writer its close
        return json.loads(self.scheduler_file.read_text())["address"]

    def start_worker(self, name: str) -> None:
        self._start(name, "worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                    "--nworkers", "1", "--no-dashboard", "--name", name)

    def wait_for_workers(self, address: str, count: int) -> None:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(count, timeout=120)

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its nanny: a node lost, nothing cleaned up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def log(self, name: str) -> str:
        return (self.root / name / "log.txt").read_text()[-3000:]

    def close(self) -> None:
        for name in reversed(list(self.processes)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.processes[name].pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def cluster_of(root: Path, workers: list[str]) -> Iterator[tuple[Cluster, str]]:
    cluster = Cluster(root)
    try:
        address = cluster.start_scheduler()
        for name in workers:
            cluster.start_worker(name)
        cluster.wait_for_workers(address, len(workers))
        yield cluster, address
    finally:
        cluster.close()


@contextlib.contextmanager
def kill_when_done(cluster: Cluster, worker: str, partial: Path, prefix: str, total: int) -> Iterator[list[int]]:
    """Kill ``worker`` as soon as the first unit whose marker starts with ``prefix`` is recorded in
    ``partial``; yields a list that receives how many such units were done at that moment."""
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            progress = partial / PROGRESS_DIR
            done = [p for p in progress.iterdir() if p.name.startswith(prefix)] if progress.is_dir() else []
            if done:
                cluster.kill(worker)
                seen.append(len(done))
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
    assert seen and seen[0] < total, f"{worker} was not killed in the middle of the run ({seen} of {total} done)"


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


@pytest.mark.slow  # a scheduler, three workers importing torch, two CLI runs: ~150 s on 2 busy cores
def test_decode_and_extraction_on_a_scheduler_lose_a_worker_and_match_a_local_run(tiny_data, tmp_path, monkeypatch):
    data = tiny_data()
    from teachclip.models.factory import create_teacher, save_teacher

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        teacher = save_teacher(create_teacher(TeacherConfig(kind="xpool", backbone=BackboneConfig(
            name="teachclip-micro", precision="fp32"))), tmp_path / "xpool")
    # the in-process reference, with the same settings
    local_frames = decode(data.manifest, tmp_path / "local" / "frames.zarr",
                          DecodeConfig(frames_per_video=4, size=32, videos_per_shard=1), SYNC, progress=False).path
    reference = extract_teachers(local_frames, data.manifest, tmp_path / "local" / "teachers.zarr",
                     resolve_teachers([f"xpool={teacher}"], {}),
                     ExtractConfig(block_texts=2, chunk_texts=2, encode_batch=2), SYNC, progress=False)

    # the driver runs elsewhere than the workers and names everything relative to its own directory
    driver = tmp_path / "driver"
    driver.mkdir()
    monkeypatch.chdir(driver)
    manifest = os.path.relpath(data.manifest, driver)
    with cluster_of(tmp_path / "cluster", ["a", "b"]) as (cluster, address):
        with kill_when_done(cluster, "a", driver / "frames.zarr.partial", "shard-", 12):
            output = invoke(["decode", "--manifest", manifest, "--out", "frames.zarr", "--scheduler", address, *DECODE])
        assert "decoded 12 of 12 shards" in output
        assert sha256_tree(driver / "frames.zarr") == sha256_tree(local_frames)

        cluster.start_worker("c")  # a replacement joins; the teacher plugin is set up on it too
        cluster.wait_for_workers(address, 2)
        blocks = reference.teachers[0].blocks_total
        with kill_when_done(cluster, "b", driver / "teachers.zarr.partial", "xpool.block.", blocks):
            output = invoke(["extract-teachers", "--frames", "frames.zarr", "--manifest", manifest, "--teacher",
                             f"xpool={os.path.relpath(teacher, driver)}", "--out", "teachers.zarr", "--scheduler",
                             address, "--no-progress", "--device", "cpu", *EXTRACT])
        assert f"{blocks}/{blocks} blocks computed" in output, output
        assert sha256_tree(driver / "teachers.zarr") == sha256_tree(tmp_path / "local" / "teachers.zarr")
        assert not partial_path(driver / "teachers.zarr").exists()
        strays = [p for name in "abc" for p in (tmp_path / "cluster" / name).iterdir() if p.name != "log.txt"]
        assert not strays, f"a worker wrote into its own directory: {strays}"
