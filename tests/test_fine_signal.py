"""bench/fine_signal.py: the fine-teaching signal on demo data (README's reading of the demo result)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from teachclip.core.config import BackboneConfig, StudentConfig
from teachclip.models.io import save_model
from teachclip.models.student import Student
from teachclip.video import uniform_picks

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "fine_signal.py"
MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


def test_fine_signal_measures_shares_against_the_demo_ground_truth(student_data, tmp_path):
    torch.manual_seed(0)
    for name, afa in (("afa", True), ("meanP", False)):
        config = StudentConfig(backbone=MICRO, afa=afa)
        save_model(tmp_path / name, Student(config), "student", config)
    run = subprocess.run([sys.executable, str(SCRIPT), "--manifest", str(student_data.manifest),
                          "--teachers", str(student_data.caches), "--features", str(student_data.frames),
                          "--students", str(tmp_path / "afa"), str(tmp_path / "meanP")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)

    # the uniform baselines, computed here from demo.json and the tiny data's 4 frames per video
    truth = [v for v in json.loads((student_data.manifest / "demo.json").read_text())["videos"] if v["split"] == "train"]
    named, junk = [], []
    for video in truth:
        seconds = uniform_picks(len(video["timeline"]), 4)
        junk.append(sum(video["timeline"][s].startswith("junk") for s in seconds) / 4)
        named += [sum(s in caption["relevant_seconds"] for s in seconds) / 4 for caption in video["captions"]]
    xpool = result["teachers"]["xpool"]
    assert xpool["captions"] == len(named)
    assert abs(xpool["uniform_share"] - sum(named) / len(named)) < 1e-4
    assert 0 <= xpool["named_object_share"] <= 1
    assert "no frame relevance" in result["teachers"]["captions"]  # the caption-similarity teacher
    afa = result["students"][str(tmp_path / "afa")]
    assert abs(afa["uniform_share"] - sum(junk) / len(junk)) < 1e-4
    assert 0 <= afa["junk_share"] <= 1
    assert result["students"][str(tmp_path / "meanP")] == "no AFA"
