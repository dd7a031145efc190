"""Student (CLIP4Clip + AFA) on the 32 px micro backbone: shapes, masking, temperatures, freezing."""

import math

import pytest
import torch
import torch.nn.functional as F

from teachclip.core.config import BackboneConfig, StudentConfig
from teachclip.models.layers import masked_softmax
from teachclip.models.student import Student

V, T, DIM = 3, 4, 32


def _config(frozen=False, **fields):
    backbone = BackboneConfig(name="teachclip-micro", freeze_text=frozen, freeze_visual=frozen)
    return StudentConfig(backbone=backbone, **fields)


def _student(seed=0, **fields):
    torch.manual_seed(seed)
    return Student(_config(**fields))


def _frames(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (V, T, 32, 32, 3), dtype=torch.uint8, generator=generator)


def _features(seed=0):
    return torch.randn(V, T, DIM, generator=torch.Generator().manual_seed(seed))


MASK = torch.tensor([[True, True, True, True], [True, True, False, False], [True, False, False, False]])


@pytest.fixture(scope="module")
def students():
    return {
        "meanP": _student(head="meanP", afa=False),
        "meanP+afa": _student(head="meanP", afa=True),
        "seqTransf": _student(head="seqTransf", afa=False, temporal_layers=2),
        "seqTransf+afa": _student(head="seqTransf", afa=True, temporal_layers=2),
    }


def test_shapes_and_normalisation(students):
    frames = _frames()
    for student in students.values():
        tokens = student.tokenize(["a red square", "a blue circle", "noise"])
        text = student.encode_text(tokens)
        features = student.frame_features(frames)
        video = student.encode_video(frames, MASK)
        assert text.shape == (3, DIM) and features.shape == (V, T, DIM) and video.shape == (V, DIM)
        assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(video.norm(dim=-1), torch.ones(V), atol=1e-5)
        assert torch.allclose(video, student.encode_video_from_features(features, MASK), atol=1e-6)


@pytest.mark.parametrize("name", ["meanP", "meanP+afa", "seqTransf", "seqTransf+afa"])
def test_padded_frames_do_not_change_the_video(students, name):
    student = students[name]
    frames = _frames(0)
    other = _frames(1)
    changed = torch.where(MASK[:, :, None, None, None], frames, other)  # new content in padding only
    assert not torch.equal(changed, frames)
    with torch.no_grad():
        assert torch.allclose(student.encode_video(frames, MASK), student.encode_video(changed, MASK), atol=1e-6)
        if student.afa is not None:
            assert torch.allclose(student.frame_weights(frames, MASK), student.frame_weights(changed, MASK), atol=1e-6)
        # and a valid frame does change it, so the check above can fail
        valid_changed = frames.clone()
        valid_changed[0, 0] = other[0, 0]
        assert not torch.allclose(student.encode_video(frames, MASK), student.encode_video(valid_changed, MASK))


def test_seqtransf_mixes_frames_but_masks_padding(students):
    student = students["seqTransf"]
    features = _features()
    with torch.no_grad():
        base = student.temporal(features, MASK)
        padded_changed = features.clone()
        # random directions: a constant shift would vanish in LayerNorm
        padded_changed[1, 3] += 5.0 * torch.randn(DIM)  # video 1 frame 3 is padding
        assert torch.allclose(student.temporal(padded_changed, MASK)[1, :2], base[1, :2], atol=1e-6)
        valid_changed = features.clone()
        valid_changed[1, 0] += 5.0 * torch.randn(DIM)  # a valid frame: attention carries it to frame 1
        assert not torch.allclose(student.temporal(valid_changed, MASK)[1, 1], base[1, 1], atol=1e-4)


def test_all_padding_row_gives_no_nan(students):
    mask = MASK.clone()
    mask[2] = False
    features = _features().requires_grad_(True)
    for student in students.values():
        video = student.encode_video_from_features(features, mask)
        assert torch.isfinite(video).all()
        assert torch.equal(video[2], torch.zeros(DIM))
        loss = video.sum()
        if student.afa is not None:
            weights = student.frame_weights_from_features(features, mask)
            assert torch.isfinite(weights).all() and torch.equal(weights[2], torch.zeros(T))
            loss = loss + (weights * torch.arange(T)).sum()
        (grad,) = torch.autograd.grad(loss, features)
        assert torch.isfinite(grad).all()


def test_meanp_is_the_hand_mean(students):
    student = students["meanP"]
    features = _features()
    video = student.encode_video_from_features(features, MASK)
    for index in range(V):
        valid = [F.normalize(features[index, f], dim=0) for f in range(T) if MASK[index, f]]
        expected = F.normalize(sum(valid) / len(valid), dim=0)
        assert torch.allclose(video[index], expected, atol=1e-6)


def test_afa_temperatures():
    student = _student(head="meanP", afa=True)
    with torch.no_grad():  # sharper scores so the two temperatures differ clearly
        student.afa.score.weight.mul_(20)
    features = _features()
    scores = student.afa.frame_scores(features)
    weights = student.frame_weights_from_features(features, MASK)
    video = student.encode_video_from_features(features, MASK)
    for index in range(V):
        valid = [f for f in range(T) if MASK[index, f]]
        supervised = torch.softmax(scores[index, valid] / 1.0, dim=0)
        pooling = torch.softmax(scores[index, valid] / 0.1, dim=0)
        assert torch.allclose(weights[index, valid], supervised, atol=1e-6)
        assert weights[index, ~MASK[index]].abs().sum() == 0
        frames = F.normalize(features[index, valid], dim=-1)
        expected = F.normalize((pooling[:, None] * frames).sum(dim=0), dim=0)
        assert torch.allclose(video[index], expected, atol=1e-5)
    # the pooling temperature is a config choice that reaches the pooling only
    student.afa.pool_temperature = 1.0
    assert not torch.allclose(student.encode_video_from_features(features, MASK), video, atol=1e-4)
    assert torch.allclose(student.frame_weights_from_features(features, MASK), weights)


def test_masked_softmax():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 1.0]])
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    probs = masked_softmax(logits, mask)
    e1, e3 = math.exp(1), math.exp(3)
    assert probs[0].tolist() == pytest.approx([e1 / (e1 + e3), 0.0, e3 / (e1 + e3)])
    assert probs[1].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(probs[2], torch.softmax(logits[2], dim=0))


def test_video_is_independent_of_text(students):
    student = students["seqTransf+afa"]
    frames = _frames()
    tokens = student.tokenize(["one caption", "another", "a third"])
    with torch.no_grad():
        alone = student.encode_video(frames, MASK)
        first = student(tokens, MASK, frames=frames)["video"]
        second = student(student.tokenize(["x", "y", "z"]), MASK, frames=frames)["video"]
    assert torch.equal(first, second)
    assert torch.allclose(alone, first, atol=1e-6)
    # one video encoded alone equals its row in a batch
    assert torch.allclose(student.encode_video(frames[1:2], MASK[1:2]), alone[1:2], atol=1e-5)


def test_frame_weights_without_afa_is_a_clear_error(students):
    with pytest.raises(ValueError, match="AFA"):
        students["meanP"].frame_weights(_frames(), MASK)
    with pytest.raises(ValueError, match="AFA"):
        students["seqTransf"].frame_weights_from_features(_features(), MASK)


def test_logit_scale():
    student = _student(head="meanP", afa=False)
    assert student.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        student.log_logit_scale.fill_(10.0)
    assert student.logit_scale().item() == pytest.approx(100.0)
    assert _student(logit_scale_init=50.0).logit_scale().item() == pytest.approx(50.0, rel=1e-5)


def _trainable(module):
    return {id(p) for p in module.parameters() if p.requires_grad}


@pytest.mark.parametrize("fields", [
    {"head": "seqTransf", "afa": True, "temporal_layers": 1},
    {"head": "meanP", "afa": False},
    {"head": "seqTransf", "afa": True, "temporal_layers": 1, "frozen": True},
])
def test_param_groups_partition_trainable_params(fields):
    student = _student(**fields)
    groups = student.param_groups()
    assert set(groups) == {"backbone", "new", "afa"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == _trainable(student)
    assert id(student.log_logit_scale) in {id(p) for p in groups["new"]}
    assert {id(p) for p in groups["backbone"]} == _trainable(student.backbone)
    assert {id(p) for p in groups["afa"]} == (_trainable(student.afa) if student.afa else set())
    assert not student.backbone.clip.logit_scale.requires_grad  # unused: must not look trainable


def test_frozen_backbone_gets_no_gradients():
    student = _student(head="seqTransf", afa=True, temporal_layers=1, frozen=True).train()
    assert not student.backbone.training  # frozen backbone stays in eval mode
    assert student.param_groups()["backbone"] == []
    frames, tokens = _frames(), student.tokenize(["a", "b", "c"])
    features = student.frame_features(frames)
    assert not features.requires_grad  # cacheable
    out = student(tokens, MASK, frames=frames)
    loss = (out["logit_scale"] * out["text"] @ out["video"].t()).logsumexp(dim=1).mean() + out["frame_weights"][:, 0].sum()
    loss.backward()
    assert all(p.grad is None for p in student.backbone.parameters())
    assert student.afa.hidden.weight.grad is not None and student.temporal.frame_position_embeddings.weight.grad is not None
    assert student.log_logit_scale.grad is not None
    # the cached path gives the same result as the frames path
    with torch.no_grad():
        assert torch.allclose(student.encode_video_from_features(features, MASK), student.encode_video(frames, MASK))


def test_every_trainable_param_gets_a_gradient():
    # what DDP without find_unused_parameters needs
    student = _student(head="seqTransf", afa=True, temporal_layers=1)
    out = student(student.tokenize(["a", "b", "c"]), MASK, frames=_frames())
    (out["logit_scale"] * out["text"] @ out["video"].t()).sum().backward()
    missing = [name for name, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert student.backbone.clip.visual.conv1.weight.grad.abs().sum() > 0


def test_temporal_init_copies_text_layers():
    student = _student(head="seqTransf", temporal_layers=3)  # micro has 2 text layers
    text_blocks = student.backbone.clip.transformer.resblocks
    temporal_blocks = student.temporal.transformer.resblocks
    for index in range(2):
        assert torch.equal(temporal_blocks[index].attn.in_proj_weight, text_blocks[index].attn.in_proj_weight)
    positions = student.backbone.clip.positional_embedding  # 16 positions; max_frames 64
    assert torch.equal(student.temporal.frame_position_embeddings.weight[:16], positions)
    random_init = _student(head="seqTransf", temporal_layers=1, temporal_init="random")
    assert not torch.equal(random_init.temporal.transformer.resblocks[0].attn.in_proj_weight,
                           random_init.backbone.clip.transformer.resblocks[0].attn.in_proj_weight)


def test_too_many_frames_is_a_clear_error():
    student = _student(head="seqTransf", temporal_layers=1, max_frames=3)
    with pytest.raises(ValueError, match="max_frames"):
        student.encode_video_from_features(_features(), MASK)


def test_forward_needs_exactly_one_video_input(students):
    student = students["meanP"]
    tokens = student.tokenize(["a", "b", "c"])
    with pytest.raises(ValueError, match="exactly one"):
        student(tokens, MASK)
    with pytest.raises(ValueError, match="exactly one"):
        student(tokens, MASK, frames=_frames(), frame_features=_features())


def test_works_under_cpu_autocast(students):
    student = students["seqTransf+afa"]
    frames = _frames()
    with torch.no_grad():
        plain = student.encode_video(frames, MASK)
        with torch.autocast(device_type="cpu", enabled=False):
            off = student.encode_video(frames, MASK)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            low = student.encode_video(frames, MASK)
            weights = student.frame_weights(frames, MASK)
    assert torch.equal(plain, off)
    assert torch.isfinite(low).all() and torch.isfinite(weights).all()
    assert torch.allclose(low.float(), plain, atol=0.1)
