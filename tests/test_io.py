"""Saving and rebuilding models: round trips, refusals, clear errors."""

import json
import os
import pathlib
import stat

import pytest
import torch
from torch import nn

from teachclip.core.config import BackboneConfig, StudentConfig
from teachclip.core.files import write_json
from teachclip.models.factory import load_model
from teachclip.models.io import CheckpointError, load_state_dict_safely, load_weights, read_config, save_model
from teachclip.models.student import Student


class _Tied(nn.Module):
    """Two names for one tensor, as tied embeddings have."""

    def __init__(self, width: int):
        super().__init__()
        self.encoder = nn.Linear(width, width, bias=False)
        self.decoder = nn.Linear(width, width, bias=False)
        self.decoder.weight = self.encoder.weight

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _student_inputs(student):
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8, generator=generator)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return student.tokenize(["a red square moves left", "noise"]), frames, mask


def _student_outputs(student, tokens, frames, mask):
    with torch.no_grad():
        return (student.encode_text(tokens), student.encode_video(frames, mask),
                student.frame_weights(frames, mask), student.logit_scale())


def test_student_save_load_save_load_is_identical(tmp_path):
    config = StudentConfig(backbone=BackboneConfig(name="teachclip-micro"), head="seqTransf", temporal_layers=1)
    torch.manual_seed(0)
    original = Student(config).eval()
    with torch.no_grad():  # move the AFA and scale away from their init so a skipped load would show
        original.log_logit_scale.fill_(3.0)
        original.afa.score.bias.fill_(0.7)
    save_model(tmp_path / "first", original, "student", config, extra={"epoch": 3})
    torch.manual_seed(1)  # a rebuild starts from different random weights
    first = load_model(tmp_path / "first")
    save_model(tmp_path / "second", first, "student", first.config)
    second = load_model(tmp_path / "second")

    inputs = _student_inputs(original)
    for expected, got_first, got_second in zip(_student_outputs(original, *inputs), _student_outputs(first, *inputs),
                                               _student_outputs(second, *inputs), strict=True):
        assert torch.equal(expected, got_first)
        assert torch.equal(got_first, got_second)
    assert not second.training
    assert second.config == config
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (tmp_path / "second" / "model.safetensors").read_bytes()
    document = read_config(tmp_path / "first")
    assert document["kind"] == "student" and document["extra"] == {"epoch": 3}
    text = (tmp_path / "first" / "config.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys: stable bytes for DVC


def test_written_files_get_the_mode_of_a_new_file_not_a_private_one(tmp_path):
    # atomic writes go through mkstemp, whose files are 0600: a model, metric or report shared with
    # a team must be readable by them like any file the user creates (0644 under umask 022)
    umask = os.umask(0o022)
    try:
        save_model(tmp_path / "model", _Tied(4), "student", {"width": 4})
        write_json(tmp_path / "metrics.json", {"R1": 1.0})
    finally:
        os.umask(umask)
    for path in (tmp_path / "model" / "model.safetensors", tmp_path / "model" / "config.json", tmp_path / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "metrics.json", "model", "model.safetensors"]


def test_student_rebuild_does_not_fetch_pretrained(tmp_path):
    config = StudentConfig(backbone=BackboneConfig(name="teachclip-micro"))
    save_model(tmp_path, Student(config), "student", config)
    document = json.loads((tmp_path / "config.json").read_text())
    document["config"]["backbone"]["pretrained"] = str(tmp_path / "gone.safetensors")  # a moved checkpoint
    (tmp_path / "config.json").write_text(json.dumps(document))
    model = load_model(tmp_path)
    assert model.config.backbone.pretrained.endswith("gone.safetensors")


def test_tied_tensors_round_trip(tmp_path):
    model = _Tied(4)
    save_model(tmp_path, model, "test-tied", {"width": 4})
    loaded = _Tied(4)
    load_weights(loaded, tmp_path)
    assert loaded.decoder.weight is loaded.encoder.weight
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    config = StudentConfig(backbone=BackboneConfig(name="teachclip-micro"))
    save_model(tmp_path, Student(config), "student", config)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_unknown_kind_lists_registered(tmp_path):
    save_model(tmp_path, nn.Linear(2, 3), "no-such-kind", {})
    with pytest.raises(CheckpointError, match="no-such-kind.*student"):
        load_model(tmp_path)


def test_shape_mismatch_names_the_file(tmp_path):
    save_model(tmp_path, nn.Linear(2, 3), "test-linear", {"inputs": 2, "outputs": 3})
    with pytest.raises(CheckpointError, match=r"(?s)model\.safetensors.*size mismatch"):
        load_weights(nn.Linear(2, 5), tmp_path)
    config = StudentConfig(backbone=BackboneConfig(name="teachclip-micro"))
    save_model(tmp_path / "student", Student(config), "student", config)
    document = json.loads((tmp_path / "student" / "config.json").read_text())
    document["config"]["backbone"]["name"] = "teachclip-tiny"  # another architecture than the weights
    (tmp_path / "student" / "config.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=r"(?s)model\.safetensors.*size mismatch"):
        load_model(tmp_path / "student")


def test_every_teacher_kind_and_the_student_rebuild_by_kind():
    from teachclip.models.factory import BACKBONE, STUDENT, _builder, is_retrieval_model
    from teachclip.models.teachers import TEACHERS

    for kind in [STUDENT, BACKBONE, *TEACHERS]:
        assert callable(_builder(kind, pathlib.Path("config.json")))
    assert is_retrieval_model(STUDENT) and all(is_retrieval_model(kind) for kind in TEACHERS)
    assert not is_retrieval_model(BACKBONE)


class _RunsCode:
    """Unpickling this runs ``Path.touch`` on the marker: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(ValueError, match="refused"):
        load_state_dict_safely(evil)
    assert not marker.exists()

    # control: a weights-only file with the same tensors loads
    fine = tmp_path / "fine.pt"
    torch.save({"state_dict": {"weight": torch.ones(2)}}, fine)
    assert torch.equal(load_state_dict_safely(fine)["weight"], torch.ones(2))
