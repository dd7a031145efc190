"""teach export: the student as an open_clip state dict + head, loaded by the documented snippet alone."""

import json
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from teachclip.cli import app
from teachclip.core.config import BackboneConfig, StudentConfig
from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.io import save_model
from teachclip.models.student import Student
from teachclip.stores.frames import FramesStore
from teachclip.tools.export import export_student

DOC = Path(__file__).resolve().parents[1] / "docs" / "export-and-search.md"
MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


@pytest.fixture(scope="module")
def data(tiny_data):
    """The default tiny dataset of tests/conftest.py (12 demo videos, 4 frames of 32 px): read-only."""
    data = tiny_data()
    return data.manifest, data.frames


def documented_loader():
    """The python block of docs/export-and-search.md's `teach export` section, executed without teachclip
    in its namespace."""
    section = DOC.read_text().split("## `teach export`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "teachclip" not in code
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["ExportedStudent"]


def saved_student(directory, seed, **fields):
    """A student with every weight random (trained weights are just other numbers), saved as train-student does."""
    torch.manual_seed(seed)
    config = StudentConfig(backbone=MICRO, temporal_layers=2, **fields)
    student = Student(config)
    with torch.no_grad():  # move AFA and the head away from their initialisation
        for parameter in student.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    save_model(directory, student, "student", config)
    return load_model(directory)


@pytest.mark.parametrize("fields", [{"head": "seqTransf", "afa": True}, {"head": "meanP", "afa": False},
                                    {"head": "meanP", "afa": True}, {"head": "seqTransf", "afa": False}])
def test_documented_snippet_reproduces_the_student(data, tmp_path, fields):
    manifest_dir, frames = data
    student = saved_student(tmp_path / "model", 0, **fields)
    export_student(tmp_path / "model", tmp_path / "export")
    exported = documented_loader()(tmp_path / "export")

    store = FramesStore.open(frames)
    frames_batch, mask = store.read(np.arange(len(store)))
    mask[1, 2:] = False  # padding must be ignored the same way
    frames_batch, mask = torch.from_numpy(frames_batch), torch.from_numpy(mask)
    texts = [c.text for c in load_manifest(manifest_dir).captions[:10]]
    with torch.no_grad():
        text_student = student.encode_text(student.tokenize(texts))
        video_student = student.encode_video(frames_batch, mask)
    text_export, video_export = exported.encode_text(texts), exported.encode_video(frames_batch, mask)
    # same numbers up to float rounding (open_clip projects before picking the end token, we after)
    torch.testing.assert_close(text_export, text_student, rtol=0, atol=1e-6)
    torch.testing.assert_close(video_export, video_student, rtol=0, atol=1e-6)
    assert (video_student @ text_student.T).std() > 0.01  # not trivially equal vectors


def test_export_files_are_plain_open_clip_weights(data, tmp_path):
    saved_student(tmp_path / "model", 1, head="seqTransf")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    export = tmp_path / "export"
    assert {p.name for p in export.rglob("*") if p.is_file()} == {
        "open_clip_model.safetensors", "head.safetensors", "config.json", "teachclip-micro.json"}
    config = json.loads((export / "config.json").read_text())
    assert config["open_clip_model"] == "teachclip-micro" and config["head"] == "seqTransf" and config["afa"]
    # open_clip alone: create_model(name) + a strict load_state_dict
    clip = open_clip.create_model("teachclip-micro")
    clip.load_state_dict(load_file(str(export / "open_clip_model.safetensors")))
    student_weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, value in clip.state_dict().items():
        if f"backbone.clip.{name}" in student_weights:
            assert torch.equal(value, student_weights[f"backbone.clip.{name}"]), name
    head = load_file(str(export / "head.safetensors"))
    assert {k.split(".")[0] for k in head} == {"temporal", "afa", "log_logit_scale"}


def test_export_refuses_a_teacher_and_missing_models(tmp_path):
    from teachclip.core.config import TeacherConfig
    from teachclip.models.factory import create_teacher, save_teacher

    save_teacher(create_teacher(TeacherConfig(kind="xpool", backbone=MICRO)), tmp_path / "teacher")
    with pytest.raises(ValueError, match="not a student"):
        export_student(tmp_path / "teacher", tmp_path / "x")
    result = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "error:" in result.output
    assert not (tmp_path / "x").exists()
