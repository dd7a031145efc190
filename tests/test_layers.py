"""The building blocks the student and the teachers share (teachclip/models/layers.py), one copy each.

Before they were shared, the student and the teachers each had their own masked softmax, masked mean
and temporal transformer, which disagreed on: the output dtype and very negative logits (softmax), the
fill of a fully padded video, the attention mask of a video with no valid frame, and the state-dict
names of the temporal head. These tests pin the one behaviour that remains.
"""

import pytest
import torch
from open_clip.transformer import Transformer

from teachclip.core.config import BackboneConfig, StudentConfig, TeacherConfig
from teachclip.models.factory import create_teacher
from teachclip.models.layers import TemporalTransformer, masked_max, masked_mean, masked_softmax
from teachclip.models.student import Student

MICRO = BackboneConfig(name="teachclip-micro", precision="fp32")


def test_masked_softmax_ignores_padding_whatever_the_logits():
    logits = torch.tensor([[1.0, 2.0, 50.0], [-1e6, -1e6 + 1, 0.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    weights = masked_softmax(logits, mask)
    torch.testing.assert_close(weights[0, :2], torch.softmax(torch.tensor([1.0, 2.0]), 0))
    # valid logits far below any finite "minus infinity" still share the mass among themselves
    torch.testing.assert_close(weights[1, :2], torch.softmax(torch.tensor([0.0, 1.0]), 0))
    assert weights[:, 2].abs().sum() == 0 and weights[2].abs().sum() == 0  # padding and an all-padded row: 0
    assert weights.dtype == torch.float32
    half = masked_softmax(logits[[0, 2]].half(), mask[[0, 2]])  # half input: computed (and returned) in float32
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, weights[[0, 2]])


def test_masked_softmax_gradient_of_a_fully_padded_row_is_zero_not_nan():
    logits = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    (masked_softmax(logits, mask) * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1].abs().sum() == 0


def test_masked_mean_and_max_over_valid_entries_only():
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(values, mask[..., None], dim=1), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    torch.testing.assert_close(masked_max(values, mask[..., None], dim=1), torch.tensor([[3.0, 4.0], [0.0, 0.0]]))


def test_temporal_transformer_masks_padded_frames_and_survives_an_all_padded_video():
    torch.manual_seed(0)
    head = TemporalTransformer(8, 2, positions=6).eval()
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [False, False, False, False]])
    out = head(x, mask)
    assert torch.isfinite(out).all()
    changed = x.clone()
    changed[0, 2:] = 1000.0  # a padded frame's content must not reach the valid frames
    torch.testing.assert_close(head(changed, mask)[0, :2], out[0, :2])
    with pytest.raises(ValueError, match="exceed"):
        head(torch.randn(1, 7, 8), torch.ones(1, 7, dtype=torch.bool))


def test_token_positions_index_the_position_table():
    torch.manual_seed(0)
    head = TemporalTransformer(8, 1, positions=12).eval()
    x, mask = torch.randn(1, 6, 8), torch.ones(1, 6, dtype=torch.bool)
    by_frame = torch.arange(3).repeat_interleave(2)  # TS2-Net "frame" positions: 2 tokens per frame
    shifted = head(x, mask, positions=by_frame)
    table = head.frame_position_embeddings.weight
    with torch.no_grad():
        head.frame_position_embeddings.weight[3:] += 5.0  # rows 0..2 only are used: no effect
    torch.testing.assert_close(head(x, mask, positions=by_frame), shifted)
    assert table.shape == (12, 8)


def test_student_head_starts_as_clip4clip_and_loads_into_open_clip():
    torch.manual_seed(0)
    student = Student(StudentConfig(backbone=MICRO, head="seqTransf", temporal_layers=1))
    text = student.backbone.clip.transformer
    head = student.temporal
    for name, tensor in text.resblocks[0].state_dict().items():  # CLIP4Clip: the first layers copy the text tower
        torch.testing.assert_close(head.transformer.resblocks[0].state_dict()[name], tensor)
    rows = student.backbone.clip.positional_embedding.shape[0]
    torch.testing.assert_close(head.frame_position_embeddings.weight[:rows], student.backbone.clip.positional_embedding)
    # the head's names are open_clip's: its blocks load into a plain open_clip Transformer (what export relies on)
    plain = Transformer(head.frame_position_embeddings.embedding_dim, 1, head.heads, batch_first=True)
    plain.load_state_dict({k.removeprefix("transformer."): v for k, v in head.state_dict().items()
                           if k.startswith("transformer.")})


def test_teachers_saved_with_the_old_temporal_names_still_load():
    torch.manual_seed(0)
    teacher = create_teacher(TeacherConfig(kind="xclip", backbone=MICRO, options={"temporal_layers": 1}))
    state = teacher.state_dict()
    legacy = {}
    for key, value in state.items():  # the names teachers had before they shared the student's head
        key = key.replace("temporal.transformer.resblocks.", "temporal.blocks.")
        key = key.replace("temporal.frame_position_embeddings.weight", "temporal.frame_position.weight")
        legacy[key] = value.clone()
    assert any(k.startswith("temporal.blocks.") for k in legacy)
    torch.manual_seed(1)
    fresh = create_teacher(TeacherConfig(kind="xclip", backbone=MICRO, options={"temporal_layers": 1}))
    fresh.load_state_dict(legacy, strict=True)
    for key, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_the_temporal_heads_position_table_is_decayed_clips_embedding_tables_are_not():
    from teachclip.training.optim import decays

    student = Student(StudentConfig(backbone=MICRO, head="seqTransf", temporal_layers=1))
    teacher = create_teacher(TeacherConfig(kind="xclip", backbone=MICRO, options={"temporal_layers": 1}))
    for model in (student, teacher):
        named = dict(model.named_parameters())
        assert decays("temporal.frame_position_embeddings.weight", named["temporal.frame_position_embeddings.weight"])
        for name in ("backbone.clip.token_embedding.weight", "backbone.clip.positional_embedding",
                     "backbone.clip.visual.positional_embedding"):
            assert not decays(name, named[name]), name
        assert decays("backbone.clip.transformer.resblocks.0.attn.in_proj_weight",
                      named["backbone.clip.transformer.resblocks.0.attn.in_proj_weight"])
