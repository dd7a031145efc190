"""bench/scale.py (the cost model) and bench/gpu_run.py (the GPU run's step runner)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MEASURED = BENCH / "results" / "real_size-cpu.json"


def scale(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "scale.py"), *arguments], capture_output=True, text=True,
                          cwd=ROOT)


def test_docs_scale_is_what_the_committed_measurements_generate():
    done = scale("--check")
    assert done.returncode == 0, done.stderr


def test_a_changed_measurement_makes_the_doc_stale_and_regenerating_fixes_it(tmp_path):
    measured = json.loads(MEASURED.read_text())
    measured["decode"]["videos_per_s"] *= 2  # decoding twice as fast
    changed = tmp_path / "measured.json"
    changed.write_text(json.dumps(measured))
    doc = tmp_path / "scale.md"
    shutil.copy(ROOT / "docs" / "scale.md", doc)
    assert scale("--measured", str(changed), "--doc", str(doc), "--check").returncode == 1
    assert scale("--measured", str(changed), "--doc", str(doc)).returncode == 0
    assert scale("--measured", str(changed), "--doc", str(doc), "--check").returncode == 0
    assert doc.read_text() != (ROOT / "docs" / "scale.md").read_text()


def projections(*arguments: str) -> list[dict]:
    done = scale("--json", *arguments)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_projections_scale_with_the_data_and_the_gpus():
    rows = {(row["dataset"], row["gpus"]): row for row in projections("--measured", str(MEASURED))}
    msrvtt, webvid = rows["MSR-VTT 9k", 1], rows["WebVid-2.5M", 1]
    assert msrvtt["pairs"] == 180_000 * 9_000
    # extraction is captions x videos: WebVid's pairs are ~3,900x MSR-VTT's, its scoring time at least that much more
    ratio = webvid["stages"]["extract xclip"]["hours"] / msrvtt["stages"]["extract xclip"]["hours"]
    assert ratio > 1000
    assert webvid["bound"] == max(webvid["stages"], key=lambda name: webvid["stages"][name]["hours"])
    # 8 GPUs divide the GPU stages; decode runs on CPU cores (16 beside one GPU, 128 in an 8-GPU node)
    eight = rows["WebVid-2.5M", 8]
    assert eight["stages"]["extract xclip"]["hours"] == pytest.approx(webvid["stages"]["extract xclip"]["hours"] / 8)
    assert eight["stages"]["decode"]["hours"] == pytest.approx(webvid["stages"]["decode"]["hours"] * 16 / 128)
    # above the readers' 4 GiB in-memory limit a student step reads its soft labels from disk
    assert msrvtt["stages"]["train student"]["soft_labels"] == "in RAM"
    assert webvid["stages"]["train student"]["soft_labels"] > 1e9
    # dense cache: WebVid's is terabytes per teacher, MSR-VTT's a few GB
    assert webvid["disk_bytes"]["teacher cache (per teacher)"] > 5e12
    assert msrvtt["disk_bytes"]["teacher cache (per teacher)"] < 1e10


def test_gpu_measurements_replace_the_projected_extraction(tmp_path):
    gpu = {"device_name": "test GPU", "device": "cuda", "gpus": 1, "steps": [],
           "extraction": {kind: {"videos_per_s": 1000.0, "texts_per_s": 10000.0, "score_pairs_per_s": 1e9}
                          for kind in ("xclip", "xpool")}}
    path = tmp_path / "gpu_run.json"
    path.write_text(json.dumps(gpu))
    rows = projections("--measured", str(MEASURED), "--gpu-measured", str(path))
    msrvtt = next(r for r in rows if r["dataset"] == "MSR-VTT 9k" and r["gpus"] == 1)
    assert msrvtt["stages"]["extract xclip"]["source"] == "measured GPU rates"
    expected_s = 9000 / 1000 + 180_000 / 10_000 + 180_000 * 9000 / 1e9
    assert msrvtt["stages"]["extract xclip"]["hours"] == pytest.approx(expected_s / 3600)


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = scale("--measured", str(bad), "--check")
    assert done.returncode != 0
    assert "cannot read the measured JSON" in done.stderr and "Traceback" not in done.stderr


def test_gpu_run_records_failures_and_timeouts_without_stopping(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_run import Run
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "run.json"
    run = Run(out, budget_s=60, report={"bench": "test"})
    failed = run.command("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], timeout_s=20,
                         minimum_s=1)
    assert failed["status"] == "failed" and failed["returncode"] == 3 and "boom" in failed["tail"]
    slow = run.command("slow", [sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1, minimum_s=0.5)
    assert slow["status"] == "timeout"
    good = run.command("json", [sys.executable, "-c", "print('{\"a\": 1}')"], timeout_s=20, minimum_s=1,
                       json_output=True)
    assert good["status"] == "ok" and good["output"] == {"a": 1}
    skipped = run.command("late", [sys.executable, "-c", "pass"], timeout_s=20, minimum_s=1000)
    assert skipped["status"] == "skipped"
    written = json.loads(out.read_text())  # rewritten after every step
    assert [s["name"] for s in written["steps"]] == ["fails", "slow", "json", "late"]


@pytest.mark.slow
def test_gpu_run_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_run.json"
    done = subprocess.run([sys.executable, str(BENCH / "gpu_run.py"), "--device", "cpu", "--quick", "--out", str(out),
                           "--skip", "rehearse"], capture_output=True, text=True, cwd=BENCH, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failed_steps"] == [], report["steps"]
    assert set(report["extraction"]) == {"xclip", "xpool"}


def test_a_dry_run_of_gpu_run_is_not_taken_for_gpu_measurements(tmp_path):
    path = tmp_path / "gpu_run.json"
    path.write_text(json.dumps({"device": "cpu", "quick": True, "steps": [], "extraction": {}}))
    done = scale("--gpu-measured", str(path), "--json")
    assert done.returncode != 0 and "dry run" in done.stderr
