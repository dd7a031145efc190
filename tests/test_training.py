"""Shared training utilities: schedule, optimizer groups, sampler, frames reader, checkpoints, logs."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from teachclip.core.columns import IdColumn, StringColumn
from teachclip.core.config import EvaluateConfig
from teachclip.core.device import grad_scaler
from teachclip.core.manifest import SplitData
from teachclip.models.scorer import VectorScorer
from teachclip.models.teachers.base import Teacher
from teachclip.training.batches import caption_per_video_batches, frames_batches
from teachclip.training.log import MetricsLog, RunningLosses, read_history, read_summary
from teachclip.training.optim import build_optimizer, lr_factor, warmup_cosine
from teachclip.training.scoring import score_collection
from teachclip.training.state import load_training_state, save_training_state


class FakeStore:
    """The FramesStore reading contract: read(indices) -> (uint8 [n, T, H, W, 3], bool [n, T])."""

    def __init__(self, videos=10, steps=3, size=4):
        rng = np.random.default_rng(0)
        self.frames = rng.integers(0, 256, size=(videos, steps, size, size, 3), dtype=np.uint8)
        self.mask = np.ones((videos, steps), dtype=bool)
        self.mask[::3, -1] = False
        self.reads = []

    def read(self, indices):
        self.reads.append(list(indices))
        return self.frames[indices], self.mask[indices]


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.dropout = nn.Dropout(0.5)
        self.log_logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.dropout(self.norm(self.linear(x) + self.token_embedding.weight[:1])) * self.log_logit_scale


# ---- schedule and optimizer --------------------------------------------------------------------


def test_warmup_then_cosine_shape():
    total, warmup = 100, 10
    factors = [lr_factor(step, total, warmup) for step in range(total)]
    assert factors[0] == pytest.approx(0.1)  # the first step already moves
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert np.all(np.diff(factors[:warmup]) > 0)
    assert np.all(np.diff(factors[warmup:]) < 0)
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[warmup + (total - warmup) // 2] == pytest.approx(0.5)
    assert 0 < factors[-1] < 0.01
    assert lr_factor(5, 100, 0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.05)))


def test_lambda_lr_applies_the_factor_to_every_group():
    model = TinyModel()
    groups = {"backbone": [("linear.weight", model.linear.weight)],
              "new": [(n, p) for n, p in model.named_parameters() if n != "linear.weight"]}
    optimizer = build_optimizer(groups, {"backbone": 1e-3, "new": 1e-2}, weight_decay=0.2)
    scheduler = warmup_cosine(optimizer, total_steps=20, warmup_fraction=0.1)
    for step in range(20):
        expected = lr_factor(step, 20, 2)
        lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
        assert lrs["backbone"] == pytest.approx(1e-3 * expected)
        assert lrs["new/no_decay"] == pytest.approx(1e-2 * expected)
        optimizer.step()
        scheduler.step()


def test_weight_decay_only_on_weight_matrices():
    model = TinyModel()
    model.norm.requires_grad_(False)  # frozen: left out
    optimizer = build_optimizer({"all": list(model.named_parameters())}, {"all": 1e-3}, weight_decay=0.2)
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert set(by_name) == {"all", "all/no_decay"}
    assert by_name["all"]["weight_decay"] == 0.2
    assert by_name["all/no_decay"]["weight_decay"] == 0.0
    decayed = {id(p) for p in by_name["all"]["params"]}
    assert decayed == {id(model.linear.weight)}
    not_decayed = {id(p) for p in by_name["all/no_decay"]["params"]}
    assert not_decayed == {id(model.linear.bias), id(model.token_embedding.weight), id(model.log_logit_scale)}
    with pytest.raises(ValueError, match="learning rate"):
        build_optimizer({"all": list(model.named_parameters()), "afa": []}, {"all": 1e-3}, 0.2)
    with pytest.raises(ValueError, match="in group"):
        build_optimizer({"a": [("w", model.linear.weight)], "b": [("w", model.linear.weight)]},
                        {"a": 1, "b": 1}, 0.2)


def test_grad_scaler_is_a_pass_through_on_cpu():
    scaler = grad_scaler(torch.device("cpu"), amp=True)
    assert not scaler.is_enabled()
    loss = torch.tensor(3.0, requires_grad=True)
    assert scaler.scale(loss) is loss


# ---- data order ---------------------------------------------------------------------------------


def test_sampler_one_caption_per_video_deterministic_per_seed_and_epoch():
    captions_of_video = [[10 * v + c for c in range(v % 4 + 1)] for v in range(23)]
    batches = caption_per_video_batches(captions_of_video, batch_size=5, seed=3, epoch=0)
    videos = np.concatenate([b.videos for b in batches])
    assert sorted(videos.tolist()) == list(range(23))  # every video exactly once
    for batch in batches:
        assert 2 <= len(batch.videos) <= 5
        for video, caption in zip(batch.videos, batch.captions, strict=True):
            assert caption in captions_of_video[video]
    again = caption_per_video_batches(captions_of_video, batch_size=5, seed=3, epoch=0)
    assert all(np.array_equal(a.videos, b.videos) and np.array_equal(a.captions, b.captions)
               for a, b in zip(batches, again, strict=True))
    # global RNGs do not influence it
    np.random.seed(123)
    random.seed(5)
    torch.manual_seed(9)
    assert np.array_equal(caption_per_video_batches(captions_of_video, 5, 3, 0)[0].captions, batches[0].captions)
    # order and captions are re-drawn every epoch
    next_epoch = caption_per_video_batches(captions_of_video, batch_size=5, seed=3, epoch=1)
    assert not np.array_equal(np.concatenate([b.videos for b in next_epoch]), videos)
    drawn = {v: set() for v in range(23)}
    for epoch in range(12):
        for batch in caption_per_video_batches(captions_of_video, 5, 3, epoch):
            for video, caption in zip(batch.videos, batch.captions, strict=True):
                drawn[video].add(int(caption))
    assert drawn[3] == set(captions_of_video[3])  # 4 captions, 12 epochs: all of them show up


def test_sampler_drops_a_single_video_last_batch_and_rejects_captionless_videos():
    batches = caption_per_video_batches([[0]] * 11, batch_size=5, seed=0, epoch=0)
    assert [len(b.videos) for b in batches] == [5, 5]
    with pytest.raises(ValueError, match="no captions"):
        caption_per_video_batches([[0], []], batch_size=2, seed=0, epoch=0)


@pytest.mark.parametrize("prefetch", [False, True])
def test_frames_batches_reads_in_order(prefetch):
    store = FakeStore()
    indices = [np.array([3, 1]), np.array([0, 9, 4]), np.array([7])]
    out = list(frames_batches(store, indices, prefetch=prefetch))
    assert len(out) == 3
    for (frames, mask), wanted in zip(out, indices, strict=True):
        assert frames.dtype == torch.uint8 and mask.dtype == torch.bool
        assert np.array_equal(frames.numpy(), store.frames[wanted])
        assert np.array_equal(mask.numpy(), store.mask[wanted])
    assert list(frames_batches(store, [], prefetch=prefetch)) == []


# ---- checkpoints ---------------------------------------------------------------------------------


def make_training(seed=0):
    torch.manual_seed(seed)
    model = TinyModel()
    optimizer = build_optimizer({"all": list(model.named_parameters())}, {"all": 1e-2}, weight_decay=0.2)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_fraction=0.2)
    return model, optimizer, scheduler, grad_scaler(torch.device("cpu"), amp=True)


def train_steps(model, optimizer, scheduler, steps):
    for _ in range(steps):
        loss = model(torch.randn(3, 4)).pow(2).mean()  # dropout: consumes torch's RNG
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def test_checkpoint_round_trip_continues_identically(tmp_path):
    model, optimizer, scheduler, scaler = make_training()
    train_steps(model, optimizer, scheduler, 4)
    random.seed(11)
    np.random.seed(12)
    save_training_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        epoch=2, step=4, extra={"history": [{"epoch": 1, "loss": 0.5}]})
    # the reference continues from here
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())
    train_steps(model, optimizer, scheduler, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    fresh, fresh_optimizer, fresh_scheduler, fresh_scaler = make_training(seed=99)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    state = load_training_state(tmp_path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler,
                                scaler=fresh_scaler)
    assert state == {"epoch": 2, "step": 4, "extra": {"history": [{"epoch": 1, "loss": 0.5}]}}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    assert fresh_scheduler.last_epoch == 4
    train_steps(fresh, fresh_optimizer, fresh_scheduler, 3)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert [g["lr"] for g in fresh_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path):
    model, optimizer, scheduler, scaler = make_training()
    train_steps(model, optimizer, scheduler, 2)
    for step in (2, 5):  # a second save replaces the first tensors file
        save_training_state(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            epoch=1, step=step)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["training_state-step000000005.safetensors", "training_state.json"]
    document = json.loads((tmp_path / "training_state.json").read_text())
    assert document["tensors"] == names[0] and document["step"] == 5
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / names[0]))
    assert "rng.torch" in tensors and "optimizer.0.exp_avg" in tensors and "model.linear.weight" in tensors
    for path in tmp_path.iterdir():  # no pickle anywhere (pickles start with 0x80)
        assert not path.read_bytes().startswith(b"\x80")


# ---- logs ------------------------------------------------------------------------------------


def test_metrics_log_is_dvclives_layout_without_timestamps(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"epoch": 1, "step": 3, "loss": 2.5})
    log.append({"epoch": 2, "step": 6, "loss": 1.5, "test_t2v_R1": 10.0})
    live = tmp_path / "dvclive"
    assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*") if p.is_file()) == [
        "metrics.json", "plots/metrics/loss.tsv", "plots/metrics/optimizer_steps.tsv",
        "plots/metrics/test_t2v_R1.tsv"]
    assert (live / "plots/metrics/loss.tsv").read_text() == "step\tloss\n1\t2.5\n2\t1.5\n"
    assert (live / "plots/metrics/test_t2v_R1.tsv").read_text() == "step\ttest_t2v_R1\n2\t10.0\n"  # evaluated epochs only
    assert read_summary(tmp_path) == {"step": 2, "optimizer_steps": 6, "loss": 1.5, "test_t2v_R1": 10.0}
    assert read_history(tmp_path) == [{"epoch": "1", "loss": "2.5", "optimizer_steps": "3"},
                                      {"epoch": "2", "loss": "1.5", "optimizer_steps": "6", "test_t2v_R1": "10.0"}]
    # a resume after epoch 1 (rows restored from the checkpoint) rebuilds the log: epoch 2 never twice
    resumed = MetricsLog(tmp_path, rows=log.rows[:1])
    resumed.append({"epoch": 2, "step": 6, "loss": 1.0})
    assert (live / "plots/metrics/loss.tsv").read_text() == "step\tloss\n1\t2.5\n2\t1.0\n"
    assert not (live / "plots/metrics/test_t2v_R1.tsv").exists()
    assert read_summary(tmp_path) == {"step": 2, "optimizer_steps": 6, "loss": 1.0}
    assert not list(tmp_path.glob("*.tsv")) and not (live / "dvc.yaml").exists()


def test_only_the_logging_rank_writes(tmp_path):
    """Under DDP every rank keeps the rows, but only rank 0 calls append: the others write nothing."""
    MetricsLog(tmp_path / "other-rank", rows=[{"epoch": 1, "loss": 1.0}]).rows.append({"epoch": 2, "loss": 0.5})
    assert not (tmp_path / "other-rank").exists()


def test_running_losses():
    running = RunningLosses()
    running.update({"loss": torch.tensor(1.0), "nce": 3.0})
    running.update({"loss": 2.0, "nce": 1.0})
    assert running.means() == {"loss": 1.5, "nce": 2.0}
    assert running.status() == "loss 1.5000 nce 2.0000"


# ---- similarity over a collection ------------------------------------------------------------------


class VectorModel(nn.Module):
    """A student-like model: one vector per text and per video."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3, 4)

    def tokenize(self, texts):
        return torch.tensor([[len(t), t.count("a"), t.count("e")] for t in texts], dtype=torch.float32)

    def encode_text(self, tokens):
        return nn.functional.normalize(self.project(tokens), dim=-1)

    def encode_video(self, frames, mask):
        pooled = (frames.float().mean(dim=(2, 3)) * mask[..., None]).sum(1)  # [V, 3]
        return nn.functional.normalize(self.project(pooled), dim=-1)

    def scorer(self):
        return VectorScorer(self)


class PairTeacher(Teacher):
    """A teacher whose score is not a dot product (max over frames), to test the blocked path."""

    kind = "pair"

    def tokenize(self, texts):
        return VectorModel.tokenize(None, texts)

    def encode_texts(self, batch):
        return {"text": batch["tokens"][:, :3] / 10}

    def encode_videos(self, batch):
        assert len(batch["video_ids"]) == batch["frames"].shape[0]
        return {"frames": batch["frames"].float().mean(dim=(2, 3)) / 255, "mask": batch["mask"]}

    def score(self, text_features, video_features):
        per_frame = torch.einsum("nd,vtd->nvt", text_features["text"], video_features["frames"])
        return per_frame.masked_fill(~video_features["mask"][None], -1e4).amax(-1)


def test_score_collection_student_and_teacher(monkeypatch):
    store = FakeStore(videos=9)
    video_indices = np.array([8, 0, 3, 5, 1])
    texts = ["a cat", "the red ball", "a banana", "eee", "x", "a tree falls"]
    caption_ids = [f"c{i}" for i in range(6)]
    caption_video_ids = ["v8", "v0", "v3", "v5", "v1", "v8"]
    video_ids = [f"v{i}" for i in video_indices]
    options = dict(config=EvaluateConfig(batch_videos=2, batch_texts=4, block_texts=4, block_videos=3),
                   device=torch.device("cpu"))

    student = VectorModel().eval()
    data = SplitData("test", IdColumn.of(video_ids), video_indices, IdColumn.of(caption_ids), StringColumn.of(texts),
                     np.array([video_ids.index(v) for v in caption_video_ids]), [])
    assert data.caption_video_ids == caption_video_ids
    similarity = score_collection(student, store, data, **options)
    frames = torch.from_numpy(store.frames[video_indices])
    mask = torch.from_numpy(store.mask[video_indices])
    expected = student.encode_text(student.tokenize(texts)) @ student.encode_video(frames, mask).T
    torch.testing.assert_close(similarity, expected.detach())

    teacher = PairTeacher().eval()
    calls = []
    original = Teacher.score_blocked
    monkeypatch.setattr(Teacher, "score_blocked", lambda self, *a: calls.append(a[2:]) or original(self, *a))
    similarity = score_collection(teacher, store, data, **options)
    assert set(calls) == {(4, 3)}  # a scoring faster than MIN_TIMING_SECONDS is repeated for its timing
    batch = teacher.text_batch(texts, caption_ids, caption_video_ids)
    expected = teacher.similarity(batch, {"frames": frames, "mask": mask, "video_ids": video_ids})
    torch.testing.assert_close(similarity, expected)

