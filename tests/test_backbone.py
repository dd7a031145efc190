from pathlib import Path

import torch

from teachclip.core.config import BackboneConfig, TeacherConfig
from teachclip.models.backbone import Backbone
from teachclip.models.factory import create_teacher, save_teacher


def test_a_saved_teacher_file_initialises_a_backbone(tmp_path: Path):
    """The demo starts students from a trained teacher's towers: the "backbone.clip." prefix of a
    teachclip model file is understood by a local `pretrained` path."""
    teacher = create_teacher(TeacherConfig(kind="xpool", backbone=BackboneConfig(name="teachclip-micro")))
    save_teacher(teacher, tmp_path)
    backbone = Backbone(BackboneConfig(name="teachclip-micro", pretrained=str(tmp_path / "model.safetensors")))
    tokens = backbone.tokenize(["a red square moves left"])
    frames = torch.randint(0, 255, (1, 2, 40, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(backbone.encode_text(tokens), teacher.backbone.encode_text(tokens))
        assert torch.equal(backbone.encode_frames(frames), teacher.backbone.encode_frames(frames))
    fresh = Backbone(BackboneConfig(name="teachclip-micro"))
    assert not torch.equal(fresh.encode_text(tokens), backbone.encode_text(tokens))
