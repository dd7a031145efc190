"""Losses against hand-computed values and against straightforward per-row loops."""

import math

import pytest
import torch

from teachclip.models import losses
from teachclip.models.losses import (
    coarse_huber,
    coarse_kl,
    coarse_loss,
    coarse_pearson,
    fine_ce,
    fine_kl,
    fine_loss,
    fine_targets,
    info_nce,
)

# ---- independent reference implementations: plain Python loops over lists ----------------------


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _pearson(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return cov / (sx * sy)


def _kl(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p, strict=True) if a > 0)


def _rows(matrix):
    return matrix.tolist()


def _cols(matrix):
    return matrix.t().tolist()


def _loop_pearson(student, teacher):
    rows = [1 - _pearson(_softmax(s), _softmax(t)) for s, t in zip(_rows(student), _rows(teacher), strict=True)]
    cols = [1 - _pearson(_softmax(s), _softmax(t)) for s, t in zip(_cols(student), _cols(teacher), strict=True)]
    return sum(rows) / len(rows) + sum(cols) / len(cols)


def _loop_kl(student, teacher):
    rows = [_kl(_softmax(t), _softmax(s)) for s, t in zip(_rows(student), _rows(teacher), strict=True)]
    cols = [_kl(_softmax(t), _softmax(s)) for s, t in zip(_cols(student), _cols(teacher), strict=True)]
    return sum(rows) / len(rows) + sum(cols) / len(cols)


def _loop_info_nce(logits):
    n = len(logits)
    rows = [-math.log(_softmax(_rows(logits)[i])[i]) for i in range(n)]
    cols = [-math.log(_softmax(_cols(logits)[j])[j]) for j in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


def _random(n, seed, scale=3.0):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ---- InfoNCE -----------------------------------------------------------------------------------


def test_info_nce_hand_value():
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    # rows: -log softmax([2,0])[0] = log(1+e^-2); -log softmax([1,1])[1] = log 2
    rows = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    # columns [2,1] target 0 and [0,1] target 1: both log(1+e^-1)
    cols = math.log(1 + math.exp(-1))
    assert info_nce(logits).item() == pytest.approx((rows + cols) / 2, abs=1e-6)


def test_info_nce_matches_loop():
    logits = _random(5, seed=0)
    assert info_nce(logits).item() == pytest.approx(_loop_info_nce(logits), abs=1e-5)


def test_info_nce_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        info_nce(torch.zeros(2, 3))


# ---- coarse ------------------------------------------------------------------------------------


def test_pearson_two_by_two_by_hand():
    # two-entry distributions correlate perfectly (+1) or anti-perfectly (-1)
    student = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    same_order = torch.tensor([[5.0, 1.0], [0.0, 3.0]])  # rows and columns ranked as the student
    opposite = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert coarse_pearson(student, [same_order]).item() == pytest.approx(0.0, abs=1e-6)
    assert coarse_pearson(student, opposite).item() == pytest.approx(4.0, abs=1e-6)  # (1+1) rows + (1+1) cols
    # averaged per teacher, not teachers' logits averaged
    assert coarse_pearson(student, [same_order, opposite]).item() == pytest.approx(2.0, abs=1e-6)


def test_pearson_matches_loop_and_averages_teachers():
    student, first, second = _random(4, 1), _random(4, 2), _random(4, 3)
    expected = (_loop_pearson(student, first) + _loop_pearson(student, second)) / 2
    assert coarse_pearson(student, [first, second]).item() == pytest.approx(expected, abs=1e-5)
    averaged_logits = coarse_pearson(student, [(first + second) / 2]).item()
    assert averaged_logits != pytest.approx(expected, abs=1e-3)


def test_teacher_temperature_scales_teacher_only():
    student, teacher = _random(4, 4), _random(4, 5, scale=0.5)
    assert coarse_pearson(student, teacher, teacher_temperature=0.1).item() == pytest.approx(
        _loop_pearson(student, teacher * 10), abs=1e-5)
    assert coarse_kl(student, teacher, teacher_temperature=0.1).item() == pytest.approx(
        _loop_kl(student, teacher * 10), abs=1e-5)


def test_kl_hand_value():
    student = torch.zeros(2, 2)  # uniform p = (1/2, 1/2)
    teacher = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])  # q = (3/4, 1/4) rows and columns
    one_direction = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert coarse_kl(student, teacher).item() == pytest.approx(2 * one_direction, abs=1e-6)
    assert coarse_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_loop_with_temperature():
    student, first, second = _random(5, 6), _random(5, 7), _random(5, 8)
    expected = (_loop_kl(student / 2, first / 2) + _loop_kl(student / 2, second / 2)) / 2
    assert coarse_kl(student, [first, second], temperature=2.0).item() == pytest.approx(expected, abs=1e-5)


def test_huber_averages_teachers_first():
    student = torch.tensor([[0.0, 2.0], [0.5, 0.0]])
    teachers = [torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]])]
    # mean teacher [[0,0],[0.5,0]]: only the entry 2 differs, |2| > delta=1 -> 1 * (2 - 0.5) = 1.5; / 4 entries
    assert coarse_huber(student, teachers).item() == pytest.approx(1.5 / 4, abs=1e-6)
    # delta 3: quadratic branch 0.5 * 2^2 = 2
    assert coarse_huber(student, teachers, delta=3.0).item() == pytest.approx(2.0 / 4, abs=1e-6)


def test_coarse_losses_are_finite_on_constant_rows_and_give_student_gradients():
    student = torch.zeros(3, 3, requires_grad=True)  # constant rows: pearson denominator 0
    teacher = _random(3, 9).float()
    for name in ("pearson", "kl", "huber"):
        loss = coarse_loss(name, student * 1.0, teacher)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all()


def test_coarse_rejects_shape_mismatch_and_empty():
    with pytest.raises(ValueError, match="teacher 0"):
        coarse_pearson(torch.zeros(3, 3), [torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="at least one"):
        coarse_pearson(torch.zeros(3, 3), [])


def test_coarse_dispatch_and_options():
    student, teacher = _random(3, 10), _random(3, 11)
    assert coarse_loss("kl", student, teacher, temperature=2.0).item() == pytest.approx(
        coarse_kl(student, teacher, temperature=2.0).item())
    # an option of another coarse loss is dropped; a typo is an error
    assert coarse_loss("pearson", student, teacher, delta=5.0).item() == pytest.approx(
        coarse_pearson(student, teacher).item())
    with pytest.raises(TypeError, match="detla"):
        coarse_loss("huber", student, teacher, detla=1.0)
    with pytest.raises(ValueError, match="unknown coarse loss"):
        coarse_loss("l2", student, teacher)


# ---- fine --------------------------------------------------------------------------------------


def test_fine_targets_softmax_over_unmasked_frames():
    relevance = torch.tensor([[0.0, math.log(3), float("nan")]])
    mask = torch.tensor([[True, True, False]])
    assert fine_targets(relevance, mask).tolist()[0] == pytest.approx([0.25, 0.75, 0.0])
    # tau = 2 halves the log-odds: y = (1, sqrt 3) / (1 + sqrt 3)
    root = math.sqrt(3)
    assert fine_targets(relevance, mask, tau=2.0).tolist()[0] == pytest.approx([1 / (1 + root), root / (1 + root), 0.0])


def test_fine_ce_and_kl_hand_values():
    weights = torch.tensor([[0.5, 0.5, 0.0]])
    relevance = torch.tensor([[0.0, math.log(3), 99.0]])  # padded frame's huge score must not count
    mask = torch.tensor([[True, True, False]])
    assert fine_ce(weights, relevance, mask).item() == pytest.approx(math.log(2), abs=1e-6)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert fine_kl(weights, relevance, mask).item() == pytest.approx(math.log(2) - entropy, abs=1e-6)


def test_fine_reductions():
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    relevance = torch.zeros(2, 3)  # uniform targets over valid frames
    mask = torch.tensor([[True, True, False], [True, True, True]])
    row0 = math.log(2)  # -(1/2 log 1/2) * 2
    row1 = -(math.log(0.2) + math.log(0.3) + math.log(0.5)) / 3
    assert fine_ce(weights, relevance, mask).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert fine_ce(weights, relevance, mask, reduction="frame").item() == pytest.approx((row0 + row1) / 5, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        fine_ce(weights, relevance, mask, reduction="sum")


def test_fine_losses_safe_with_all_but_one_masked_and_zero_weights():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    weights = losses.masked_softmax(logits, mask)
    # an underflowed weight on a valid frame: log is guarded
    weights = weights * torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    relevance = torch.randn(3, 3)
    for name in ("ce", "kl"):
        loss = fine_loss(name, weights, relevance, mask, tau=0.5)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert torch.isfinite(grad).all()
    # the single-frame row has target 1 on weight 1: contributes 0 to the KL
    only_first = fine_kl(weights[:1], relevance[:1], mask[:1])
    assert only_first.item() == pytest.approx(0.0, abs=1e-6)


def test_fine_all_padding_batch_is_zero_with_graph():
    logits = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss = fine_ce(logits.softmax(-1), torch.randn(2, 3), mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def test_fine_masked_frames_contribute_nothing():
    weights = torch.tensor([[0.6, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    first = fine_ce(weights, torch.tensor([[1.0, 2.0, 3.0, 4.0]]), mask)
    second = fine_ce(weights, torch.tensor([[1.0, 2.0, -50.0, 80.0]]), mask)
    assert first.item() == second.item()


def test_fine_dispatch():
    weights = torch.tensor([[0.2, 0.8]])
    relevance = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert fine_loss("ce", weights, relevance, mask, tau=0.5).item() == pytest.approx(
        fine_ce(weights, relevance, mask, tau=0.5).item())
    with pytest.raises(TypeError, match="delta"):
        fine_loss("ce", weights, relevance, mask, delta=1.0)
    with pytest.raises(ValueError, match="unknown fine loss"):
        fine_loss("pear", weights, relevance, mask)
    with pytest.raises(ValueError, match="shape"):
        fine_ce(weights, relevance[:, :1], mask)
