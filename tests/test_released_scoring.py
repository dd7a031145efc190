"""Scoring as the released X-CLIP / X-Pool / TS2-Net code vs teachclip's masking, on hand-computed
cases (tests/test_official_checkpoints.py checks whole teachers of both behaviours against the
released formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from teachclip.core.config import TeacherConfig, TeacherScoringConfig
from teachclip.models.factory import ModelConfigError, create_teacher, resolve_teacher_scoring
from teachclip.models.teachers.released import resolve_scoring, ts2net_released_masks, video_generator
from teachclip.models.teachers.ts2net import TokenSelector
from teachclip.models.teachers.xclip import aosm
from teachclip.models.teachers.xpool import repeat_last_frame


def test_automatic_settings_follow_the_checkpoint():
    auto = TeacherScoringConfig()
    released = {kind: resolve_scoring(kind, auto, official=True) for kind in ("xclip", "xpool", "ts2net")}
    assert released["xclip"].mask_padded_words is False and released["xclip"].padded_frames == "released"
    assert released["xpool"].text_context == "model" and released["xpool"].padded_frames == "released"
    assert released["ts2net"].token_selection == "perturbed" and released["ts2net"].text_context == "max_words"
    ours = resolve_scoring("xclip", auto, official=False)
    assert (ours.mask_padded_words, ours.padded_frames, ours.token_selection) == (True, "mask", None)
    # an explicit setting wins over the checkpoint's default
    explicit = resolve_scoring("xclip", TeacherScoringConfig(mask_padded_words=True), official=True)
    assert explicit.mask_padded_words is True and explicit.padded_frames == "released"
    assert resolve_scoring("frame_clip", auto, official=False) == auto  # nothing applies


def test_a_setting_for_another_kind_is_refused():
    config = TeacherConfig(kind="xpool", scoring={"mask_padded_words": False})
    with pytest.raises(ModelConfigError, match="mask_padded_words=False applies to xclip teachers only"):
        resolve_teacher_scoring(config)
    with pytest.raises(ModelConfigError, match="token_selection"):
        create_teacher({"kind": "xclip", "scoring": {"token_selection": "hard"}}, load_weights=False)


def test_word_softmax_over_valid_words_or_every_position():
    """X-CLIP's AOSM over words [0.3, 0.2, pad 0.5] at tau 0.01: masked, the padding takes no part;
    the released code softmaxes over all three, and the padded position dominates."""
    similarity = torch.tensor([[0.3, 0.2, 0.5]])
    valid = torch.tensor([[True, True, False]])
    masked = float(aosm(similarity, valid, 1, 0.01))
    everything = float(aosm(similarity, torch.ones_like(valid), 1, 0.01))
    e = [math.exp(v / 0.01) for v in (0.3, 0.2, 0.5)]
    assert masked == pytest.approx((0.3 * e[0] + 0.2 * e[1]) / (e[0] + e[1]), abs=1e-6)
    assert everything == pytest.approx((0.3 * e[0] + 0.2 * e[1] + 0.5 * e[2]) / sum(e), abs=1e-6)
    assert masked == pytest.approx(0.3, abs=1e-3) and everything == pytest.approx(0.5, abs=1e-3)


def test_ts2net_tiled_mask_by_hand():
    """T = 4 frames, 3 valid, k = 2 tokens per frame: the code's repeat gives token i the mask of
    frame i mod 4, and its pooling reads tokens 0, 2, 4, 6 -> frames 0, 2, 0, 2: all 'valid'."""
    mask = torch.tensor([[True, True, True, False]])
    tokens, frames = ts2net_released_masks(mask, 2)
    assert tokens.tolist() == [[True, True, True, False, True, True, True, False]]
    assert frames.tolist() == [[True, True, True, True]]
    # teachclip's token mask is the interleaved one: [1, 1, 1, 1, 1, 1, 0, 0]
    assert mask.repeat_interleave(2, dim=1).tolist() == [[True] * 6 + [False] * 2]
    # 12 frames, 10 valid, k = 4 (B/32 with topk 3): the pooling scores every frame; tokens of frames
    # 2, 5, 8 and 11 are hidden from the temporal transformer instead
    mask = torch.arange(12)[None] < 10
    tokens, frames = ts2net_released_masks(mask, 4)
    assert bool(frames.all())
    assert torch.nonzero(~tokens[0]).flatten().tolist() == [10, 11, 22, 23, 34, 35, 46, 47]


def test_xpool_repeats_the_last_frame_by_hand():
    frames = torch.tensor([[[1.0], [2.0], [0.0], [0.0]], [[5.0], [0.0], [0.0], [0.0]], [[0.0]] * 4])
    mask = torch.tensor([[True, True, False, False], [True, False, False, False], [False] * 4])
    filled, attended = repeat_last_frame(frames, mask)
    assert filled[..., 0].tolist() == [[1, 2, 2, 2], [5, 5, 5, 5], [0, 0, 0, 0]]
    assert attended.tolist() == [[True] * 4, [True] * 4, [False] * 4]  # a video without frames stays empty


def test_perturbed_selection_by_hand():
    """Patch scores [0.5, 0.5, -1] with k = 1: the hard top-k takes patch 0; the perturbed one picks
    patch 0 or 1 about half the time each, so the selected token is about their mean."""
    torch.manual_seed(0)
    selector = TokenSelector(dim=4, topk=1, samples=2000, sigma=0.05).eval()
    selector.scores = lambda tokens: torch.tensor([[0.5, 0.5, -1.0]])
    tokens = torch.tensor([[[9.0, 9, 9, 9], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]])
    hard = selector(tokens)
    assert hard[0, 1].tolist() == [1, 0, 0, 0]
    selector.perturbed_eval = True
    generators = [video_generator(0, "v0", 0)]
    soft = selector(tokens, generators)
    assert soft[0, 0].tolist() == [9, 9, 9, 9]  # CLS is always kept
    assert soft[0, 1, :2].tolist() == pytest.approx([0.5, 0.5], abs=0.05)
    assert float(soft[0, 1, 2]) == 0.0
    again = selector(tokens, [video_generator(0, "v0", 0)])
    assert torch.equal(soft, again)  # seeded by (seed, video id)
    # well-separated scores: every noisy pick agrees with the hard one
    selector.scores = lambda tokens: torch.tensor([[0.9, -0.9, 0.1]])
    separated = selector(tokens, generators)
    selector.perturbed_eval = False
    torch.testing.assert_close(separated, selector(tokens), atol=1e-4, rtol=0)  # 2000 x 1/2000 in fp32


def test_teachclip_teachers_record_teachclip_scoring_in_the_cache_identity():
    from teachclip.stages.extract_teachers.requests import TeacherRequest, identity_of

    config = TeacherConfig(kind="xclip", backbone={"name": "teachclip-tiny"})
    ours = identity_of(TeacherRequest("xclip", config), "frames", "manifest")
    assert ours.config["scoring"] == {"mask_padded_words": True, "padded_frames": "mask", "token_selection": None,
                                      "selection_seed": 0, "text_context": None}
    other = config.model_copy(update={"scoring": TeacherScoringConfig(padded_frames="released")})
    assert identity_of(TeacherRequest("xclip", other), "frames", "manifest").fingerprint != ours.fingerprint


@pytest.mark.parametrize("kind", ["xclip", "xpool", "ts2net"])
def test_released_video_features_survive_the_extraction_scratch_files(kind, tmp_path):
    """Extraction writes video features to safetensors between tasks: the released-code features
    (with their frame_mask) must be storable and score the same after the round trip."""
    from safetensors.torch import load_file, save_file

    options = {} if kind == "xpool" else {"max_frames": 4} | ({"topk": 2, "shift_div": 3} if kind == "ts2net" else {})
    torch.manual_seed(0)
    teacher = create_teacher({"kind": kind, "backbone": {"name": "teachclip-micro"}, "options": options,
                              "scoring": {"padded_frames": "released"}}, load_weights=False).eval()
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    with torch.no_grad():
        texts = teacher.encode_texts(teacher.text_batch(["a dog", "a red car"], ["c0", "c1"], ["v0", "v1"]))
        videos = teacher.encode_videos({"frames": frames, "mask": mask, "video_ids": ["v0", "v1"]})
        assert "frame_mask" in videos
        save_file({key: value.contiguous() for key, value in videos.items()}, str(tmp_path / "videos.safetensors"))
        reloaded = load_file(str(tmp_path / "videos.safetensors"))
        assert torch.equal(teacher.score(texts, reloaded), teacher.score(texts, videos))
        relevance = teacher.relevance(texts, videos)
    assert bool((relevance[~mask] == 0).all())


@pytest.mark.slow  # a subprocess building 12 teachers: minutes on a busy CPU
def test_bench_released_scoring_prints_every_variant():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "bench" / "released_scoring.py"), "--backbone", "teachclip-micro",
                             "--videos", "4", "--threads", "1"], capture_output=True, text=True, timeout=600,
                            cwd=root / "bench")
    assert result.returncode == 0, result.stderr
    teachers = json.loads(result.stdout)["teachers"]
    assert set(teachers["xclip"]["variants"]) == {"mask_padded_words=False", "padded_frames=released", "released"}
    assert set(teachers["ts2net"]["variants"]) == {"padded_frames=released", "token_selection=perturbed", "released"}
    for kind in ("xclip", "xpool", "ts2net"):  # padding changes only the padded videos
        assert teachers[kind]["variants"]["padded_frames=released"]["relative_change_full_videos"] == 0.0
        assert teachers[kind]["variants"]["padded_frames=released"]["relative_change_padded_videos"] > 0.0
