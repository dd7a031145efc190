"""Every params file shipped under params/ loads, and its parts fit together without building a model
(no weights are read or fetched): teacher options validate, model names and pretrained tags exist,
names referenced by extract/train_student are defined. The MSR-VTT recipes carry TeachCLIP's settings."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest

import teachclip.models.backbone  # noqa: F401  (registers the project's own open_clip configs)
from teachclip.core.config import load_params
from teachclip.models.teachers import TEACHERS
from teachclip.models.teachers.caption_sim import CaptionSimOptions
from teachclip.models.teachers.official import split_checkpoint_options

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"
FILES = sorted(PARAMS_DIR.glob("*.yaml")) + sorted(PARAMS_DIR.glob("*.yml"))


def test_there_are_params_files():
    names = {path.name for path in FILES}
    assert {"msrvtt-b32.yaml", "msrvtt-b16.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=[path.name for path in FILES])
def test_params_file_is_valid(path):
    assert path.read_text().strip(), f"{path} is empty (load_params would silently use the defaults)"
    params = load_params(path)
    backbones = [params.student.backbone]
    for name, teacher in params.teachers.items():
        config, checkpoint_format, _ = split_checkpoint_options(teacher)
        options_class = getattr(TEACHERS[config.kind], "options_class", CaptionSimOptions)
        options_class.model_validate(config.options)  # unknown or invalid options fail here
        if config.kind != "caption_sim":
            backbones.append(config.backbone)
        if checkpoint_format == "official":
            model = open_clip.get_model_config(config.backbone.name)
            assert model and model.get("quick_gelu"), f"teacher {name}: official checkpoints need a -quickgelu model"
    for backbone in backbones:
        assert open_clip.get_model_config(backbone.name) is not None, f"unknown open_clip model {backbone.name}"
        if backbone.pretrained and not Path(backbone.pretrained).suffix:  # a tag, not a file
            assert backbone.pretrained in open_clip.list_pretrained_tags_by_model(backbone.name)
    for name in params.extract.teachers:
        assert name.partition("=")[0] in params.teachers or name.partition("=")[0] in TEACHERS, name
    for teacher in params.train_student.teachers or []:
        assert teacher.name in params.teachers or teacher.name in TEACHERS, teacher.name


@pytest.mark.parametrize("name, model", [("msrvtt-b32.yaml", "ViT-B-32-quickgelu"),
                                         ("msrvtt-b16.yaml", "ViT-B-16-quickgelu")])
def test_msrvtt_recipes_carry_teachclip_settings(name, model):
    params = load_params(PARAMS_DIR / name)
    decode, student, train = params.decode, params.student, params.train_student
    assert (decode.frames_per_video, decode.sample_fps, decode.size) == (12, 1.0, 224)
    assert (student.backbone.name, student.backbone.pretrained, student.backbone.max_words) == (model, "openai", 32)
    assert (student.head, student.afa, student.temporal_layers) == ("seqTransf", True, 4)
    assert (train.batch_size, train.epochs, train.weight_decay, train.warmup_fraction) == (120, 10, 0.2, 0.1)
    assert (train.lr_new, train.lr_backbone, train.lr_afa) == (1e-4, 1e-7, 1e-3)
    assert (train.coarse_loss, train.fine_loss) == ("pearson", "ce")
    assert (train.weight_nce, train.weight_coarse, train.weight_fine) == (0.2, 1.0, 2.0)
    assert [t.name for t in train.teachers] == ["xclip", "xpool"] == params.extract.teachers
    assert {"xclip", "xpool", "ts2net"} <= set(params.teachers)
    for teacher in params.teachers.values():
        assert teacher.backbone.name == model and teacher.checkpoint
        assert teacher.options["checkpoint_format"] == "official"
    assert params.compute.workers == 16 and params.compute.device == "cuda"
