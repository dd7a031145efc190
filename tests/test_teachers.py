"""Teachers on the 32-px ``teachclip-micro`` backbone with random frames (and the real MiniLM for
caption similarity): shapes, masking, blocked == one-shot == per-pair, the formulas, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from teachclip.core.config import TeacherConfig
from teachclip.core.manifest import load_manifest, write_manifest
from teachclip.models.factory import create_teacher, load_teacher, save_teacher
from teachclip.models.scorer import cat_features, slice_features
from teachclip.models.teachers.base import Teacher
from teachclip.models.teachers.ts2net import PerturbedTopK, TokenSelector, temporal_shift
from teachclip.models.teachers.xclip import aosm

CLIP_KINDS = ["xpool", "xclip", "ts2net", "frame_clip"]
TEXTS = ["a red ball rolls to the left", "a cat", "the blue square moves up and down slowly", "two dogs"]
STEPS = 5  # frames per video
ATOL = 2e-5


def make_teacher(kind: str, seed: int = 0, perturb: bool = True, **options) -> Teacher:
    """A micro teacher; ``perturb`` moves every head parameter off its (identity-like) init so
    that masking and blocking bugs cannot hide behind identity matrices."""
    torch.manual_seed(seed)
    config = TeacherConfig(kind=kind, backbone={"name": "teachclip-micro"}, options=options)
    teacher = create_teacher(config).eval()
    if perturb:
        with torch.no_grad():
            for name, param in teacher.named_parameters():
                if not name.startswith("backbone."):
                    param.add_(0.2 * torch.randn_like(param))
    return teacher


def make_videos(videos: int = 3, steps: int = STEPS, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (videos, steps, 32, 32, 3), dtype=torch.uint8, generator=generator)
    mask = torch.ones(videos, steps, dtype=torch.bool)
    if videos > 1:
        mask[1, 3:] = False  # a short video, zero-padded at the end
    if videos > 2:
        mask[2, 1] = False  # a hole in the middle (a frame that failed to decode)
    frames[~mask] = 0
    return {"frames": frames, "mask": mask, "video_ids": [f"v{i}" for i in range(videos)]}


def take_video(batch, index):
    return {"frames": batch["frames"][index : index + 1], "mask": batch["mask"][index : index + 1],
            "video_ids": [batch["video_ids"][index]]}


def text_batch(teacher: Teacher, texts=TEXTS):
    return teacher.text_batch(list(texts), [f"c{i}" for i in range(len(texts))], [f"v{i}" for i in range(len(texts))])


@pytest.fixture(scope="module")
def teachers() -> dict[str, Teacher]:
    return {kind: make_teacher(kind) for kind in CLIP_KINDS}


# ---- every CLIP-backed teacher ------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_shapes_and_batch_first_features(teachers, kind):
    teacher, videos = teachers[kind], make_videos()
    with torch.no_grad():
        text_features = teacher.encode_texts(text_batch(teacher))
        video_features = teacher.encode_videos(videos)
        similarity = teacher.score(text_features, video_features)
        relevance = teacher.relevance(slice_features(text_features, 0, 3), video_features)
    assert all(value.shape[0] == len(TEXTS) for value in text_features.values())
    assert all(value.shape[0] == 3 for value in video_features.values())
    assert similarity.shape == (len(TEXTS), 3) and torch.isfinite(similarity).all()
    assert relevance.shape == (3, STEPS) and torch.isfinite(relevance).all()
    assert teacher.has_frame_relevance and teacher.score_version == 1
    assert teacher.similarity_definition and teacher.relevance_definition
    with pytest.raises(ValueError, match="own video"):
        teacher.relevance(text_features, video_features)  # 4 captions, 3 videos: not matched pairs


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_padded_frames_change_nothing(teachers, kind):
    teacher, videos = teachers[kind], make_videos()
    tokens = text_batch(teacher, TEXTS[:3])
    noisy = dict(videos, frames=videos["frames"].clone())
    noisy["frames"][~videos["mask"]] = torch.randint(0, 256, noisy["frames"][~videos["mask"]].shape, dtype=torch.uint8)
    with torch.no_grad():
        clean_s, noisy_s = teacher.similarity(tokens, videos), teacher.similarity(tokens, noisy)
        clean_r, noisy_r = teacher.frame_relevance(tokens, videos), teacher.frame_relevance(tokens, noisy)
        # the short video scored on its 3 frames alone equals it scored with 2 padded frames appended
        short = take_video(videos, 1)
        alone = {"frames": short["frames"][:, :3], "mask": short["mask"][:, :3], "video_ids": short["video_ids"]}
        padded_s, alone_s = teacher.similarity(tokens, short), teacher.similarity(tokens, alone)
        one_text = {key: value[1:2] if torch.is_tensor(value) else value[1:2] for key, value in tokens.items()}
        padded_r, alone_r = teacher.frame_relevance(one_text, short), teacher.frame_relevance(one_text, alone)
    torch.testing.assert_close(noisy_s, clean_s, atol=ATOL, rtol=0)
    torch.testing.assert_close(noisy_r, clean_r, atol=ATOL, rtol=0)
    torch.testing.assert_close(padded_s, alone_s, atol=ATOL, rtol=0)
    torch.testing.assert_close(padded_r[:, :3], alone_r, atol=ATOL, rtol=0)
    # documented padding value of relevance: exactly 0
    assert (clean_r[~videos["mask"]] == 0).all() and (padded_r[:, 3:] == 0).all()


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_blocked_equals_one_shot_equals_per_pair(teachers, kind):
    teacher, videos = teachers[kind], make_videos()
    tokens = text_batch(teacher)
    with torch.no_grad():
        text_features, video_features = teacher.encode_texts(tokens), teacher.encode_videos(videos)
        one_shot = teacher.score(text_features, video_features)
        blocked = teacher.score_blocked(text_features, video_features, block_texts=3, block_videos=2)
        pairs = torch.empty(len(TEXTS), 3)
        for i in range(len(TEXTS)):
            single_text = {key: value[i : i + 1] for key, value in tokens.items()}
            for j in range(3):
                pairs[i, j] = teacher.similarity(single_text, take_video(videos, j)).squeeze()
        # features computed in pieces concatenate into the same features
        pieces = cat_features([teacher.encode_videos(take_video(videos, j)) for j in range(3)])
        from_pieces = teacher.score(text_features, pieces)
    torch.testing.assert_close(blocked, one_shot, atol=ATOL, rtol=0)
    torch.testing.assert_close(pairs, one_shot, atol=ATOL, rtol=0)
    torch.testing.assert_close(from_pieces, one_shot, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_relevance_is_the_diagonal_definition(teachers, kind):
    teacher, videos = teachers[kind], make_videos()
    tokens = text_batch(teacher, TEXTS[:3])
    with torch.no_grad():
        text_features, video_features = teacher.encode_texts(tokens), teacher.encode_videos(videos)
        relevance = teacher.relevance(text_features, video_features)
        per_pair = torch.cat([
            teacher.frame_relevance({key: value[i : i + 1] for key, value in tokens.items()}, take_video(videos, i))
            for i in range(3)
        ])
        if kind == "xpool":  # the pre-softmax attention logits of the full [texts, videos, T] block
            full = teacher.head.logits(text_features["query"], video_features["keys"])
        else:  # the cosine of the sentence with every frame embedding
            full = torch.einsum("nd,vtd->nvt", text_features["sentence"], video_features["frames"])
        diagonal = full[torch.arange(3), torch.arange(3)].masked_fill(~videos["mask"], 0)
    torch.testing.assert_close(per_pair, relevance, atol=ATOL, rtol=0)
    torch.testing.assert_close(relevance, diagonal, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_save_load_gives_identical_outputs(teachers, kind, tmp_path):
    teacher, videos = teachers[kind], make_videos()
    tokens = text_batch(teacher, TEXTS[:3])
    save_teacher(teacher, tmp_path / kind, extra={"epoch": 3})
    loaded = load_teacher(tmp_path / kind)
    via_config = create_teacher(teacher.config.model_copy(update={"checkpoint": str(tmp_path / kind)})).eval()
    with torch.no_grad():
        expected_s, expected_r = teacher.similarity(tokens, videos), teacher.frame_relevance(tokens, videos)
        for other in (loaded, via_config):
            assert torch.equal(other.similarity(tokens, videos), expected_s)
            assert torch.equal(other.frame_relevance(tokens, videos), expected_r)
    assert type(loaded) is type(teacher) and loaded.config == teacher.config.model_copy(update={"checkpoint": None})


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_autocast_bf16_runs_and_stays_close(teachers, kind):
    teacher, videos = teachers[kind], make_videos()
    tokens = text_batch(teacher, TEXTS[:3])
    with torch.no_grad():
        reference_s, reference_r = teacher.similarity(tokens, videos), teacher.frame_relevance(tokens, videos)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            similarity = teacher.score_blocked(teacher.encode_texts(tokens), teacher.encode_videos(videos), 2, 2)
            relevance = teacher.frame_relevance(tokens, videos)
    assert relevance.dtype == torch.float32
    torch.testing.assert_close(similarity, reference_s, atol=0.02, rtol=0)
    torch.testing.assert_close(relevance, reference_r, atol=0.05, rtol=0)


def test_checkpoint_of_another_kind_is_refused(teachers, tmp_path):
    save_teacher(teachers["xpool"], tmp_path / "xpool")
    config = TeacherConfig(kind="frame_clip", backbone={"name": "teachclip-micro"}, checkpoint=str(tmp_path / "xpool"))
    with pytest.raises(ValueError, match="xpool"):
        create_teacher(config)


def test_options_are_validated():
    with pytest.raises(ValueError, match="poolng"):
        make_teacher("frame_clip", poolng="max")
    with pytest.raises(ValueError):
        make_teacher("frame_clip", pooling="median")
    teacher = make_teacher("xclip", max_frames=4)
    with pytest.raises(ValueError, match="max_frames"):
        teacher.encode_videos(make_videos(steps=5))


# ---- X-Pool ------------------------------------------------------------------------------------


def test_xpool_identity_init():
    teacher = make_teacher("xpool", perturb=False)
    head, videos = teacher.head, make_videos()
    for linear in (head.q_proj, head.k_proj, head.v_proj, head.out_proj, head.refine):
        assert torch.equal(linear.weight, torch.eye(teacher.embed_dim)) and not linear.bias.any()
    with torch.no_grad():
        tokens = text_batch(teacher)
        sentence = teacher.backbone.encode_text(tokens["tokens"])
        frames, mask = teacher.encode_valid_frames(videos)
        pooled = head(sentence, frames, mask)
        similarity = teacher.similarity(tokens, videos)
    # with identity projections and fresh LayerNorms, X-Pool is plain attention of LN(t) over LN(f)
    d = teacher.embed_dim
    for n in range(len(TEXTS)):
        for v in range(3):
            valid = videos["mask"][v]
            t = F.layer_norm(sentence[n], (d,))
            f = F.layer_norm(frames[v][valid], (d,))
            weights = torch.softmax(f @ t / math.sqrt(d), dim=0)
            x = F.layer_norm(weights @ f, (d,))
            expected = F.layer_norm(x + x, (d,))
            torch.testing.assert_close(pooled[n, v], expected, atol=1e-4, rtol=0)
            cosine = F.cosine_similarity(sentence[n], expected, dim=0)
            torch.testing.assert_close(similarity[n, v], cosine, atol=1e-5, rtol=0)


def test_xpool_softmax_of_relevance_gives_its_pooling(teachers):
    """The stored raw logits are exactly what X-Pool softmaxes: rebuilding the pooled vector from
    softmax(relevance) over valid frames reproduces the teacher's own matched similarity."""
    teacher, videos = teachers["xpool"], make_videos()
    head = teacher.head
    with torch.no_grad():
        tokens = text_batch(teacher, TEXTS[:3])
        relevance = teacher.frame_relevance(tokens, videos)
        similarity = teacher.similarity(tokens, videos)
        sentence = teacher.backbone.encode_text(tokens["tokens"])
        frames, _ = teacher.encode_valid_frames(videos)
        for i in range(3):
            valid = videos["mask"][i]
            query, keys = head.q_proj(head.ln_in(sentence[i])), head.k_proj(head.ln_in(frames[i][valid]))
            torch.testing.assert_close(relevance[i][valid], keys @ query / math.sqrt(teacher.embed_dim),
                                       atol=1e-5, rtol=0)
            weights = torch.softmax(relevance[i][valid], dim=0)
            values = head.v_proj(head.ln_in(frames[i][valid]))
            x = head.ln_attn(head.out_proj(weights @ values))  # out_proj after the sum, as X-Pool writes it
            pooled = head.ln_out(x + head.refine(x))
            expected = F.cosine_similarity(sentence[i], pooled, dim=0)
            torch.testing.assert_close(similarity[i, i], expected, atol=1e-5, rtol=0)


# ---- X-CLIP ------------------------------------------------------------------------------------


def reference_aosm(similarity, temperature, reweight=None):
    weights = torch.softmax(similarity / temperature, dim=0)
    if reweight is not None:
        weights = weights @ reweight
    return (weights * similarity).sum()


def test_aosm_masks_before_and_after_reweighting():
    torch.manual_seed(0)
    similarity, reweight = torch.randn(2, 6), torch.randn(6, 6)
    mask = torch.tensor([[True, True, False, True, False, True]] * 2)
    got = aosm(similarity, mask, 1, 0.5, reweight)
    valid = mask[0]
    for row in range(2):
        expected = reference_aosm(similarity[row][valid], 0.5, reweight[valid][:, valid])
        torch.testing.assert_close(got[row], expected)


def test_xclip_score_matches_the_direct_formula(teachers):
    teacher, videos = teachers["xclip"], make_videos()
    tau = teacher.options.temperature
    with torch.no_grad():
        tf = teacher.encode_texts(text_batch(teacher))
        vf = teacher.encode_videos(videos)
        score = teacher.score(tf, vf)
        for n in range(len(TEXTS)):
            words_valid = tf["word_mask"][n]
            words, sentence = tf["words"][n][words_valid], tf["sentence"][n]
            w_idx = words_valid.nonzero().squeeze(1)
            for v in range(3):
                f_idx = videos["mask"][v].nonzero().squeeze(1)
                frames = vf["frames"][v][f_idx]
                video = F.normalize(frames.mean(0), dim=0)
                torch.testing.assert_close(vf["video"][v], video, atol=1e-5, rtol=0)
                video_sentence = sentence @ video
                video_word = reference_aosm(words @ video, tau)
                sentence_frame = reference_aosm(frames @ sentence, tau)
                fine = (words @ teacher.word_projection) @ frames.T  # [words, frames]
                rw = teacher.word_reweight[w_idx][:, w_idx]
                rf = teacher.frame_reweight[f_idx][:, f_idx]
                rf2 = teacher.frame_reweight_2[f_idx][:, f_idx]
                rw2 = teacher.word_reweight_2[w_idx][:, w_idx]
                word_level = torch.stack([reference_aosm(fine[:, t], tau, rw) for t in range(len(f_idx))])
                frame_level = torch.stack([reference_aosm(fine[w], tau, rf) for w in range(len(w_idx))])
                frame_word = (reference_aosm(word_level, tau, rf2) + reference_aosm(frame_level, tau, rw2)) / 2
                expected = (video_sentence + video_word + sentence_frame + frame_word) / 4
                torch.testing.assert_close(score[n, v], expected, atol=1e-5, rtol=0)


def test_xclip_mean_pooled_head():
    teacher = make_teacher("xclip", video_head="meanP")
    assert teacher.temporal is None
    videos = make_videos()
    with torch.no_grad():
        vf = teacher.encode_videos(videos)
        raw, mask = teacher.encode_valid_frames(videos)
    torch.testing.assert_close(vf["frames"], F.normalize(raw, dim=-1, eps=1e-6).masked_fill(~mask[..., None], 0))


# ---- TS2-Net -----------------------------------------------------------------------------------


def hand_shift(tokens, mask, mode, div):
    videos, steps, count, channels = tokens.shape
    out = tokens.clone()
    for v in range(videos):
        for t in range(steps):
            for token in range(1, count):
                p = token - 1
                if mode == "token":
                    if p % div == 0 and t > 0 and mask[v, t - 1]:
                        out[v, t, token] = tokens[v, t - 1, token]
                    if p % div == div // 2 and t + 1 < steps and mask[v, t + 1]:
                        out[v, t, token] = tokens[v, t + 1, token]
                else:
                    fold = channels // div
                    if t > 0 and mask[v, t - 1]:
                        out[v, t, token, :fold] = tokens[v, t - 1, token, :fold]
                    if t + 1 < steps and mask[v, t + 1]:
                        out[v, t, token, fold : 2 * fold] = tokens[v, t + 1, token, fold : 2 * fold]
    return out


@pytest.mark.parametrize("mode,div", [("token", 3), ("token", 7), ("channel", 4)])
def test_token_shift_against_hand_shifted_tensor(mode, div):
    tokens = torch.arange(2 * 4 * 10 * 8, dtype=torch.float).view(2, 4, 10, 8)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    got = temporal_shift(tokens, mask, mode, div)
    assert torch.equal(got, hand_shift(tokens, mask, mode, div))
    assert torch.equal(got[:, :, 0], tokens[:, :, 0])  # CLS never moves
    assert not torch.equal(got, tokens)


def test_token_selection_keeps_cls_and_top_patches_in_order():
    torch.manual_seed(0)
    selector = TokenSelector(dim=8, topk=3).eval()
    tokens = torch.randn(5, 1 + 16, 8)
    with torch.no_grad():
        scores = selector.scores(tokens)
        selected = selector(tokens)
    for b in range(5):
        best = sorted(scores[b].topk(3).indices.tolist())
        assert torch.equal(selected[b, 0], tokens[b, 0])
        assert torch.equal(selected[b, 1:], tokens[b, 1:][best])


def test_perturbed_topk_tends_to_hard_topk_and_has_gradients():
    torch.manual_seed(0)
    scores = torch.randn(4, 10, requires_grad=True)
    indicators = PerturbedTopK.apply(scores, 3, 200, 1e-4)
    hard = F.one_hot(scores.topk(3).indices.sort(-1).values, 10).float()
    torch.testing.assert_close(indicators, hard)
    soft = PerturbedTopK.apply(scores, 3, 500, 0.5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(4, 3))
    (soft * torch.randn(4, 3, 10)).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_ts2net_pooling_formula_and_training_mode(teachers):
    teacher, videos = teachers["ts2net"], make_videos()
    with torch.no_grad():
        tf = teacher.encode_texts(text_batch(teacher))
        vf = teacher.encode_videos(videos)
        score = teacher.score(tf, vf)
    for n in range(len(TEXTS)):
        for v in range(3):
            e = vf["frames"][v][videos["mask"][v]] @ tf["sentence"][n]
            alpha = torch.softmax(4 * e / e.norm(), dim=0)
            torch.testing.assert_close(score[n, v], (alpha * e).sum(), atol=1e-5, rtol=0)
    # training mode (perturbed top-k) runs, and gradients reach the token scorer
    trainable = make_teacher("ts2net", topk_samples=20).train()
    loss = trainable.similarity(text_batch(trainable), videos).sum()
    loss.backward()
    scorer_grad = sum(p.grad.abs().sum() for p in trainable.selector.parameters() if p.grad is not None)
    assert scorer_grad > 0


def test_ts2net_selection_inside_the_vit():
    teacher = make_teacher("ts2net", select_before_last=1, shift_layers=1, shift="channel", temporal_layers=1)
    assert teacher.selector.token_mlp[0].normalized_shape[0] == teacher.backbone.clip.visual.conv1.out_channels
    videos = make_videos()
    with torch.no_grad():
        tokens = teacher.frame_tokens(videos["frames"], videos["mask"])
        similarity = teacher.similarity(text_batch(teacher), videos)
    assert tokens.shape[:3] == (3, STEPS, 1 + 3) and torch.isfinite(similarity).all()


# ---- frame-CLIP --------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "max", "softmax"])
def test_frame_clip_pooling(teachers, pooling):
    teacher = teachers["frame_clip"]
    teacher.options = teacher.options.model_copy(update={"pooling": pooling, "temperature": 0.05})
    try:
        videos = make_videos()
        with torch.no_grad():
            tf = teacher.encode_texts(text_batch(teacher))
            vf = teacher.encode_videos(videos)
            score = teacher.score(tf, vf)
        definition = teacher.similarity_definition
    finally:
        teacher.options = teacher.options.model_copy(update={"pooling": "mean"})
    for n in range(len(TEXTS)):
        for v in range(3):
            cosine = vf["frames"][v][videos["mask"][v]] @ tf["sentence"][n]
            expected = {"mean": cosine.mean(), "max": cosine.max(),
                        "softmax": (torch.softmax(cosine / 0.05, 0) * cosine).sum()}[pooling]
            torch.testing.assert_close(score[n, v], expected, atol=1e-5, rtol=0)
    assert pooling in definition


# ---- caption similarity (real MiniLM) ----------------------------------------------------------

CAPTIONS = [
    ("c0", "v0", "a man plays the guitar"), ("c1", "v0", "someone is playing a guitar on stage"),
    ("c2", "v0", "a musician performs a song"), ("c3", "v1", "a dog runs in the park"),
    ("c4", "v1", "a puppy is running on grass"), ("c5", "v2", "a chef cooks pasta"),
    ("c6", "v3", "a test caption about cars"),
]


@pytest.fixture(scope="module")
def caption_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    videos = [("v0", "v0.mp4", "train"), ("v1", "v1.mp4", "train"), ("v2", "v2.mp4", "train"), ("v3", "v3.mp4", "test")]
    manifest = load_manifest(write_manifest(root, videos, CAPTIONS))
    teacher = create_teacher(TeacherConfig(kind="caption_sim")).eval()
    teacher.bind_manifest(manifest)
    return teacher


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_caption_sim_excludes_self_and_reduces(caption_teacher, reduce):
    teacher = caption_teacher
    teacher.options = teacher.options.model_copy(update={"reduce": reduce})
    texts = [text for *_, text in CAPTIONS[:6]] + ["a guitar solo"]
    caption_ids = [cid for cid, *_ in CAPTIONS[:6]] + ["query-not-in-manifest"]
    batch = teacher.text_batch(texts, caption_ids, ["v0"] * 7)
    videos = {"video_ids": ["v0", "v1", "v2"]}
    try:
        with torch.no_grad():
            tf, vf = teacher.encode_texts(batch), teacher.encode_videos(videos)
            score = teacher.score(tf, vf)
            blocked = teacher.score_blocked(tf, vf, block_texts=4, block_videos=2)
    finally:
        teacher.options = teacher.options.model_copy(update={"reduce": "max"})
    embeddings = teacher.sentence_model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    by_id = dict(zip(caption_ids, embeddings, strict=True))
    for n, caption_id in enumerate(caption_ids):
        for v, video in enumerate(["v0", "v1", "v2"]):
            others = [cid for cid, vid, _ in CAPTIONS if vid == video and cid != caption_id]
            if not others:
                assert score[n, v] == 0.0  # c5 is v2's only caption: nothing left to compare with
                continue
            cosines = torch.stack([by_id[n_id] @ by_id[caption_id] for n_id in others])
            expected = cosines.max() if reduce == "max" else cosines.mean()
            torch.testing.assert_close(score[n, v], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(blocked, score.cpu(), atol=1e-6, rtol=0)
    # a caption scores against its own video through its siblings only, never itself (cos = 1)
    assert (score[:6] < 0.999).all()
    assert not teacher.has_frame_relevance
    with pytest.raises(NotImplementedError):
        teacher.relevance(tf, vf)


def test_caption_sim_needs_a_manifest_and_known_videos(caption_teacher):
    fresh = create_teacher(TeacherConfig(kind="caption_sim"))
    with pytest.raises(RuntimeError, match="bind_manifest"):
        fresh.encode_videos({"video_ids": ["v0"]})
    with pytest.raises(KeyError, match="v3"):
        caption_teacher.encode_videos({"video_ids": ["v3"]})  # a test video has no train captions
    with pytest.raises(FileNotFoundError):
        create_teacher(TeacherConfig(kind="caption_sim", options={"model": "/nonexistent/model"}))
