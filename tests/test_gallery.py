"""teach report's gallery: the query selection rule, a self-contained page from real (tiny) models and
data, and that page opened in real headless Chromium (every image decodes, the console stays clean)."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from browser import Browser, find_browser
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import (
    BackboneConfig,
    ComputeConfig,
    EvaluateConfig,
    Params,
    ReportConfig,
    StudentConfig,
    TeacherConfig,
)
from teachclip.models.factory import create_teacher, save_teacher
from teachclip.models.io import save_model
from teachclip.models.student import Student
from teachclip.stages.evaluate import evaluate
from teachclip.stages.report import GalleryInputs, report
from teachclip.stages.report.gallery import GalleryError, select_queries
from teachclip.tools.audit_captions import audit_captions

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")
CPU = ComputeConfig(device="cpu")


def test_selection_takes_shares_orders_by_disagreement_and_lends_spare_places():
    # teacher-only: 0,1,2 (student ranks 5, 9, 9); student-only: 3 (teacher rank 4); both: 4, 5; neither: 6, 7
    teacher = np.array([0, 0, 0, 4, 0, 0, 3, 1])
    student = np.array([5, 9, 9, 0, 0, 0, 2, 7])
    ids = [f"c{i}" for i in range(8)]
    chosen = select_queries(teacher, student, ids, 6)
    # quotas for 6: 2.1, 2.1, 0.9, 0.9 -> 2, 2, 1, 1; student-only has one query: its spare place goes to
    # the first category with queries left (teacher)
    assert chosen == [("teacher", 1), ("teacher", 2), ("teacher", 0), ("student", 3), ("both", 4), ("neither", 7)]
    assert select_queries(teacher, student, ids, 0) == []
    assert len(select_queries(teacher, student, ids, 50)) == 8  # never more than there are


@pytest.fixture(scope="module")
def inputs(student_data, tmp_path_factory):
    """Saved tiny models (two seeds of an AFA student, a meanP student, an X-Pool teacher; untrained,
    seeded), their real test metrics and a real caption audit of the shared teacher cache."""
    root = tmp_path_factory.mktemp("gallery")
    torch.manual_seed(0)
    runs = root / "runs"
    for name, afa in (("afa-s0", True), ("afa-s1", True), ("meanP-s0", False)):
        config = StudentConfig(backbone=MICRO, afa=afa)
        save_model(runs / name, Student(config), "student", config)
    save_teacher(create_teacher(TeacherConfig(kind="xpool", backbone=MICRO)), runs / "teacher-xpool")
    metrics = root / "metrics"
    evaluate([(runs / name, metrics / f"{name}.json") for name in ("afa-s0", "afa-s1", "meanP-s0", "teacher-xpool")],
             student_data.frames, student_data.manifest, EvaluateConfig(), CPU)
    audit_captions(student_data.caches, student_data.manifest, root / "audit", top_k=1)
    return root, GalleryInputs(runs, student_data.frames, student_data.frames, student_data.manifest, root / "audit")


def params(**report) -> Params:
    return Params(compute=CPU, report=ReportConfig(**report))


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
    """The gallery of the AFA variant against the teacher (meanP: test_gallery_errors_name_the_input), and
    the run that must be shown: the AFA variant's better seed."""
    root, gallery = inputs
    out = tmp_path_factory.mktemp("gallery-page")
    only = out / "metrics"
    only.mkdir()
    for name in ("afa-s0", "afa-s1", "teacher-xpool"):
        shutil.copy(root / "metrics" / f"{name}.json", only)
    r1 = {name: json.loads((only / f"{name}.json").read_text())["t2v_R1"] for name in ("afa-s0", "afa-s1")}
    report(only, out, params(gallery_flagged=3), gallery)
    return out / "gallery.html", "afa-s1" if r1["afa-s1"] > r1["afa-s0"] else "afa-s0"


def test_gallery_is_one_self_contained_page(written):
    path, best_seed = written
    page = path.read_text()
    assert not re.search(r"<script|<link|https?://|url\(", page)  # nothing fetched, nothing run
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources and all(src.startswith("data:image/jpeg;base64,") for src in sources)
    assert page.count('<section class="card">') == 3  # every test caption of the tiny split (3 < 20)
    assert page.count('<section class="card flag">') == 3  # gallery_flagged
    assert "<b>teacher-xpool</b>" in page and f"<b>{best_seed}</b>" in page  # the best variant's best seed
    assert page.count('class="bar"') == 2 * 4 * 3  # teacher + student bar under each of 4 frames, 3 queries
    assert page.count("✓ ground truth") + page.count('class="missed"') == 2 * 3  # every ranking places it


def test_cli_writes_the_gallery_and_rewrites_the_same_bytes(inputs, tmp_path):
    root, gallery = inputs
    command = ["report", "--metrics", str(root / "metrics"), "--out", str(tmp_path), "--runs", str(gallery.runs),
               "--frames", str(gallery.frames), "--manifest", str(gallery.manifest), "--audit", str(gallery.audit),
               "--device", "cpu", "-S", "report.gallery_queries=2"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    first = (tmp_path / "gallery.html").read_bytes()
    assert first.count(b'<section class="card">') == 2
    assert CliRunner().invoke(app, command).exit_code == 0
    assert (tmp_path / "gallery.html").read_bytes() == first
    result = CliRunner().invoke(app, ["report", "--metrics", str(root / "metrics"), "--out", str(tmp_path),
                                      "--runs", str(gallery.runs)])
    assert result.exit_code == 1 and "needs --frames" in result.output


def test_gallery_errors_name_the_input(inputs, tmp_path):
    root, gallery = inputs
    metrics = tmp_path / "metrics"
    shutil.copytree(root / "metrics", metrics)
    (metrics / "teacher-xpool.json").unlink()
    with pytest.raises(GalleryError, match="at least one teacher"):
        report(metrics, tmp_path / "out", params(), gallery)
    shutil.copy(root / "metrics" / "teacher-xpool.json", metrics)
    for name in ("afa-s0", "afa-s1"):
        (metrics / f"{name}.json").unlink()
    report(metrics, tmp_path / "out", params(gallery_queries=1), gallery)  # a student without AFA
    page = (tmp_path / "out" / "gallery.html").read_text()
    assert "meanP-s0 has no AFA block" in page and page.count('class="bar"') == 4  # teacher bars only
    with pytest.raises(GalleryError, match="report.json: missing"):
        report(root / "metrics", tmp_path / "out", params(),
               GalleryInputs(gallery.runs, gallery.videos, gallery.frames, gallery.manifest, tmp_path))
    with pytest.raises(GalleryError, match="no saved model"):
        report(root / "metrics", tmp_path / "out", params(),
               GalleryInputs(tmp_path, gallery.videos, gallery.frames, gallery.manifest))


@pytest.fixture(scope="module")
def browser():
    binary = find_browser()
    assert binary, "the browser test needs Chromium: apt-get install chromium (.ci/run installs it)"
    return binary


def test_the_gallery_loads_in_headless_chromium(written, browser, tmp_path):
    path, _ = written
    text = path.read_text()
    first = re.search(r'src="(data:image/jpeg;base64,[^"]*)"', text).group(1)
    # the check must see a broken picture: a truncated data URI, and an image file that is not there
    (tmp_path / "broken.html").write_text(text.replace(first, first[: len(first) // 2], 1))
    (tmp_path / "missing.html").write_text(text.replace(first, "frame.jpg", 1))
    with Browser(browser) as chromium:
        page, broken, missing = [chromium.open(p.resolve().as_uri())
                                 for p in (path, tmp_path / "broken.html", tmp_path / "missing.html")]
    assert len(page.images) > 20 and not page.broken_images and not page.errors, (page.broken_images, page.errors)
    assert page.screenshot[:4] == b"\x89PNG"
    assert len(broken.broken_images) == 1 and broken.broken_images[0]["width"] == 0
    assert len(missing.broken_images) == 1 and any("ERR_FILE_NOT_FOUND" in error for error in missing.errors)
