"""Session-wide test inputs: tiny demo datasets and teacher caches, built once by the real stages
(teachclip.testing) and shared read-only by every test module that asks for them.

A test that changes its inputs (overwrites a file, rewrites a manifest, deletes a chunk) copies them
into its own ``tmp_path`` first. The shared directories are checked at the end of the session: a test
that wrote into one fails the run, naming the files.
"""

import os

# Tests never reach a model hub; sentence-transformers and open_clip must work offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import inspect  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from teachclip.core.config import BackboneConfig, TeacherConfig  # noqa: E402
from teachclip.testing import TinyData, tiny_dataset, tiny_teacher_cache  # noqa: E402

# Two cores are shared by the test process and any dask workers it starts.
torch.set_num_threads(min(2, torch.get_num_threads()))

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root``: relative name -> (size, mtime in ns)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


class _ReadOnlyGuard:
    """Remembers the shared directories as built and tells, at the end, which ones a test changed."""

    def __init__(self):
        self.listings: dict[Path, dict[str, tuple[int, int]]] = {}

    def watch(self, root: Path) -> None:
        self.listings[root] = _listing(root)

    def changes(self) -> list[str]:
        found = []
        for root, before in self.listings.items():
            after = _listing(root)
            changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
            found += [f"{root / name}" for name in changed]
        return found


@pytest.fixture(scope="session")
def _shared_inputs():
    guard = _ReadOnlyGuard()
    yield guard
    changed = guard.changes()
    assert not changed, ("a test changed the shared, read-only test inputs (copy them into tmp_path first): "
                         + ", ".join(changed[:20]))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, _shared_inputs):
    """``tiny_data(**options) -> TinyData``: :func:`teachclip.testing.tiny_dataset` with those keyword
    options (videos, size, seconds, fps, test_fraction, captions_per_video, frames_per_video,
    videos_per_shard, failed_test, seed), built once per session for each distinct option set (options
    equal to the defaults name the same set) and shared: read-only."""
    defaults = {name: p.default for name, p in inspect.signature(tiny_dataset).parameters.items() if name != "root"}
    built: dict[tuple, TinyData] = {}

    def build(**options) -> TinyData:
        if unknown := sorted(set(options) - set(defaults)):
            raise TypeError(f"tiny_data: unknown options {unknown}")
        key = tuple((defaults | options).items())
        if key not in built:
            root = tmp_path_factory.mktemp("tiny-data")
            built[key] = tiny_dataset(root, **options)
            _shared_inputs.watch(root)
        return built[key]

    return build


class StudentData(NamedTuple):
    manifest: Path
    frames: Path
    caches: Path  # ``.../teachers.zarr``


@pytest.fixture(scope="session")
def student_data(tiny_data, tmp_path_factory, _shared_inputs) -> StudentData:
    """(manifest, frames, caches): the default tiny dataset (12 demo videos of 32 px: 9 train x 4
    captions, 3 test; 4 frames each) and a teacher cache ``caches`` (``<folder of its own>/teachers.zarr``)
    with an X-Pool group ``xpool`` (micro backbone, with frame relevance) and a caption-similarity group
    ``captions`` (without). The teachers are untrained (seeded): their scores are arbitrary but real
    cache contents. Shared: read-only."""
    data = tiny_data()
    root = tmp_path_factory.mktemp("student-teachers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        caches = tiny_teacher_cache(root / "teachers.zarr", data,
                                    {"xpool": TeacherConfig(kind="xpool", backbone=MICRO),
                                     "captions": TeacherConfig(kind="caption_sim")})
    _shared_inputs.watch(root)
    return StudentData(data.manifest, data.frames, caches)
