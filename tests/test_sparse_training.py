"""Training on sparse caches: coarse losses that mask unknown pairs, the candidates sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from teachclip.models.losses import coarse_huber, coarse_kl, coarse_loss, coarse_pearson
from teachclip.training.batches import candidate_batches, caption_per_video_batches

S = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
T = torch.tensor([[0.0, 1.0, 100.0], [100.0, 3.0, 100.0], [5.0, 100.0, 6.0]])
KNOWN = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)


def test_masked_pearson_by_hand():
    """Two known entries per row/column: the softmaxes over them are (p, 1 - p), so r = +1 when the
    student and the teacher prefer the same entry and -1 otherwise (1 - r = 0 or 2). Row 1 and column 2
    know one entry each: no distribution, no contribution. The unknown 100s take no part.
    rows: row 0 student prefers col 0, teacher col 1 -> 2; row 2 both col 2 -> 0; mean 1.
    cols: col 0 student prefers row 0, teacher row 2 -> 2; col 1 both row 1 -> 0; mean 1."""
    assert coarse_pearson(S, T, known=KNOWN).item() == pytest.approx(2.0, abs=1e-5)
    assert coarse_loss("pearson", S, T, known=KNOWN).item() == pytest.approx(2.0, abs=1e-5)


def test_masked_kl_by_hand():
    """KL(q || p) of the two-entry softmaxes of the known rows (0, 2) and columns (0, 1)."""
    def kl(teacher, student):
        q, p = torch.tensor(teacher).softmax(0), torch.tensor(student).softmax(0)
        return float((q * (q / p).log()).sum())

    rows = (kl([0.0, 1.0], [2.0, 1.0]) + kl([5.0, 6.0], [1.0, 2.0])) / 2
    cols = (kl([0.0, 5.0], [2.0, 1.0]) + kl([1.0, 3.0], [1.0, 2.0])) / 2
    assert coarse_kl(S, T, known=KNOWN).item() == pytest.approx(rows + cols, rel=1e-5)


def test_masked_huber_by_hand():
    """Mean over the 5 known entries of Huber(S, T), delta 1."""
    diffs = torch.tensor([2.0 - 0.0, 1.0 - 1.0, 2.0 - 3.0, 1.0 - 5.0, 2.0 - 6.0]).abs()
    expected = torch.where(diffs < 1, 0.5 * diffs**2, diffs - 0.5).mean()
    assert coarse_huber(S, T, known=KNOWN).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("loss", [coarse_pearson, coarse_kl, coarse_huber])
def test_an_all_known_mask_equals_no_mask_and_unknown_pairs_are_ignored(loss):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(6, 6, generator=generator, requires_grad=True)
    teacher = torch.randn(6, 6, generator=generator)
    assert loss(student, teacher, known=torch.ones(6, 6, dtype=torch.bool)).item() == pytest.approx(
        loss(student, teacher).item(), rel=1e-6, abs=1e-7)
    known = torch.rand(6, 6, generator=generator) < 0.6
    known |= torch.eye(6, dtype=torch.bool)
    changed = torch.where(known, teacher, torch.full_like(teacher, 50.0))  # other values where unknown
    value = loss(student, teacher, known=known)
    assert value.item() == pytest.approx(loss(student, changed, known=known).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(student.grad).all()
    # the student's unknown entries do not move the loss either
    assert (student.grad[~known] == 0).all()


def test_one_mask_per_teacher():
    generator = torch.Generator().manual_seed(1)
    student, a, b = (torch.randn(4, 4, generator=generator) for _ in range(3))
    mask = torch.rand(4, 4, generator=generator) < 0.7
    both = coarse_pearson(student, [a, b], known=[mask, None])
    assert both.item() == pytest.approx((coarse_pearson(student, a, known=mask)
                                         + coarse_pearson(student, b)).item() / 2, rel=1e-6)
    with pytest.raises(ValueError, match="masks for"):
        coarse_pearson(student, [a, b], known=[mask])


# ---- the candidates sampler ------------------------------------------------------------------------

N_VIDEOS = 400


def ring():
    """Two captions per video; caption c of video v lists the 6 videos nearest to v on a ring (best
    first) as its candidates, as a cache whose neighbourhoods are local would."""
    captions_of_video = [[2 * v, 2 * v + 1] for v in range(N_VIDEOS)]
    steps = [1, -1, 2, -2, 3, -3]
    neighbours = np.array([[(c // 2 + step) % N_VIDEOS for step in steps] for c in range(2 * N_VIDEOS)])
    return captions_of_video, neighbours


def known_fraction(batches, neighbours) -> float:
    known = total = 0
    for batch in batches:
        for caption, own in zip(batch.captions, batch.videos, strict=True):
            listed = set(neighbours[caption]) | {own}
            known += sum(int(v) in listed for v in batch.videos)
            total += len(batch.videos)
    return known / total


def test_batch_composition_seeds_then_their_candidates():
    captions_of_video, neighbours = ring()
    batches = list(candidate_batches(captions_of_video, neighbours, 8, 0.5, seed=0, epoch=0))
    videos = np.concatenate([b.videos for b in batches])
    assert sorted(videos.tolist()) == list(range(N_VIDEOS))  # every video once per epoch
    for batch in batches:
        assert all(c // 2 == v for c, v in zip(batch.captions, batch.videos, strict=True))  # its own caption
    first = batches[0]  # nothing used yet: 4 random seeds, then 4 of their candidates
    seeds, hard = first.videos[:4], first.videos[4:]
    listed = set(neighbours[first.captions[:4]].ravel())
    assert set(hard.tolist()) <= listed
    # round-robin by rank: every seed's best unused candidate before any seed's second
    used, expected = set(seeds.tolist()), []
    for rank in range(neighbours.shape[1]):
        for caption in first.captions[:4]:
            if (video := int(neighbours[caption][rank])) not in used:
                used.add(video)
                expected.append(video)
    assert hard.tolist() == expected[:4]
    again = list(candidate_batches(captions_of_video, neighbours, 8, 0.5, seed=0, epoch=0))
    assert all(np.array_equal(a.videos, b.videos) for a, b in zip(batches, again, strict=True))
    other = list(candidate_batches(captions_of_video, neighbours, 8, 0.5, seed=0, epoch=1))
    assert not all(np.array_equal(a.videos, b.videos) for a, b in zip(batches, other, strict=True))


def test_the_knob_runs_from_random_to_hard_batches():
    captions_of_video, neighbours = ring()
    fractions = [known_fraction(list(candidate_batches(captions_of_video, neighbours, 8, h, seed=0, epoch=0)), neighbours)
                 for h in (0.0, 0.25, 0.5, 1.0)]
    assert fractions == sorted(fractions) and fractions[0] < 0.2 and fractions[-1] > 2 * fractions[0]
    # hard_fraction 0: random seeds only, as random as CLIP4Clip's epoch
    random = caption_per_video_batches(captions_of_video, 8, seed=0, epoch=0)
    assert known_fraction(random, neighbours) == pytest.approx(fractions[0], abs=0.1)
    # 1: one random seed per batch, everything else its neighbourhood
    hard = list(candidate_batches(captions_of_video, neighbours, 8, 1.0, seed=0, epoch=0))
    assert all(len(b.videos) == 8 for b in hard[:-1])


def test_random_fill_when_the_seeds_list_nothing_unused():
    captions_of_video = [[v] for v in range(9)]
    neighbours = np.full((9, 3), -1)  # no candidates at all
    batches = list(candidate_batches(captions_of_video, neighbours, 4, 0.75, seed=3, epoch=0))
    assert [len(b.videos) for b in batches] == [4, 4]  # the last single video is dropped
    with pytest.raises(ValueError, match="hard_fraction"):
        candidate_batches(captions_of_video, neighbours, 4, 1.5, seed=3, epoch=0)
