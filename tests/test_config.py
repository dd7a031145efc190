from pathlib import Path

import pytest

from teachclip.core.config import ConfigError, DecodeConfig, Params, apply_settings, load_params


def test_missing_file_gives_defaults(tmp_path: Path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_sections_map_to_typed_objects(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "decode:\n  frames_per_video: 8\n  size: 64\n"
        "teachers:\n  xpool:\n    kind: xpool\n    backbone: {name: teachclip-micro}\n"
        "train_student:\n  teachers: [{name: xpool, weight: 0.5}]\n"
    )
    params = load_params(path)
    assert isinstance(params.decode, DecodeConfig)
    assert (params.decode.frames_per_video, params.decode.size) == (8, 64)
    assert params.teachers["xpool"].backbone.name == "teachclip-micro"
    assert params.train_student.teachers[0].weight == 0.5


def test_unknown_key_is_an_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("decode:\n  frames_per_vidoe: 8\n")
    with pytest.raises(ConfigError, match="frames_per_vidoe") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_invalid_value_and_bad_yaml(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("decode:\n  frames_per_video: 0\n")
    with pytest.raises(ConfigError, match="frames_per_video"):
        load_params(path)
    path.write_text("decode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_settings_replace_single_values_read_as_yaml(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("decode:\n  frames_per_video: 8\n  size: 64\n")
    params = load_params(path, ["decode.size=32", "train_student.teachers=[]", "student.backbone.pretrained=null",
                                "teachers.t.kind=xpool", "teachers.t.options.dropout=0.5", "evaluate.split=val"])
    assert (params.decode.frames_per_video, params.decode.size) == (8, 32)  # the rest of the section stays
    assert params.train_student.teachers == [] and params.student.backbone.pretrained is None
    assert params.teachers["t"].options == {"dropout": 0.5} and params.evaluate.split == "val"
    untouched = load_params(path)
    assert apply_settings(untouched, []) is untouched


def test_unknown_or_invalid_settings_are_errors_naming_the_field():
    params = Params()
    with pytest.raises(ConfigError, match="decode has no field 'sizes'") as info:
        apply_settings(params, ["decode.sizes=3"])
    assert "frames_per_video" in str(info.value)  # the fields that exist are listed
    with pytest.raises(ConfigError, match="params has no field 'decoder'"):
        apply_settings(params, ["decoder.size=3"])
    with pytest.raises(ConfigError, match="decode.size"):
        apply_settings(params, ["decode.size=-1"])
    with pytest.raises(ConfigError, match="expected section.field=value"):
        apply_settings(params, ["decode.size"])
    with pytest.raises(ConfigError, match="student.backbone has no field 'nme'"):
        apply_settings(params, ["student.backbone.nme=x"])


def test_settings_apply_after_the_variant(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("train_student: {epochs: 3}\nstudents:\n  short: {train_student: {epochs: 1, weight_fine: 0.0}}\n")
    params = load_params(path, ["train_student.epochs=5"], variant="short")
    assert params.train_student.epochs == 5  # typed on the command line: wins over the variant
    assert params.train_student.weight_fine == 0.0  # the variant's other values stay


def test_repository_params_file_is_valid():
    load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def test_student_variants_override_student_sections(tmp_path: Path):
    from teachclip.core.config import with_variant

    path = tmp_path / "params.yaml"
    path.write_text(
        "student: {head: meanP, afa: true, backbone: {name: teachclip-micro}}\n"
        "train_student: {epochs: 3, teachers: [{name: xpool}]}\n"
        "students:\n"
        "  baseline: {student: {afa: false}, train_student: {teachers: []}}\n"
        "  bad: {train_student: {epochs: 0}}\n"
    )
    params = load_params(path)
    baseline = with_variant(params, "baseline")
    assert baseline.student.afa is False and baseline.train_student.teachers == []
    assert baseline.student.backbone.name == "teachclip-micro"  # untouched nested fields survive
    assert baseline.train_student.epochs == 3
    assert with_variant(params, None) is params
    with pytest.raises(ConfigError, match="unknown student variant 'nope'"):
        with_variant(params, "nope")
    with pytest.raises(ConfigError, match="'bad' is invalid"):
        with_variant(params, "bad")
