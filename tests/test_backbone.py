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


def test_a_model_trained_from_openai_weights_rebuilds_with_quickgelu():
    """OpenAI weights were trained with QuickGELU and Backbone forces it for `pretrained: openai`; a saved
    model is rebuilt without its pretrained source, which must not silently switch the blocks to GELU."""
    from open_clip.transformer import QuickGELU

    from teachclip.models.io import without_pretrained

    saved = {"backbone": {"name": "ViT-B-32", "pretrained": "openai", "max_words": 32}, "head": "afa"}
    rebuilt = without_pretrained(saved)
    assert rebuilt == {"backbone": {"name": "ViT-B-32-quickgelu", "pretrained": None, "max_words": 32}, "head": "afa"}
    # names that already say QuickGELU, and other weights (a local file, another tag), keep their name
    assert without_pretrained({"name": "ViT-B-32-quickgelu", "pretrained": "openai"})["name"] == "ViT-B-32-quickgelu"
    assert without_pretrained({"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})["name"] == "ViT-B-32"
    assert without_pretrained({"name": "teachclip-demo", "pretrained": "runs/backbone"})["name"] == "teachclip-demo"

    backbone = Backbone(BackboneConfig.model_validate(rebuilt["backbone"]))
    activations = {type(block.mlp.gelu) for block in backbone.clip.transformer.resblocks}
    assert activations == {QuickGELU}
    teacher = create_teacher(TeacherConfig(kind="xpool", backbone=saved["backbone"]), load_weights=False)
    assert {type(block.mlp.gelu) for block in teacher.backbone.clip.visual.transformer.resblocks} == {QuickGELU}
