"""MCKD-style loss options against hand-computed values (teachclip/models/losses.py)."""

import numpy as np
import pytest
import torch

from teachclip.models.losses import margin_loss, relation_matrix, relational_loss


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---- relational structure -----------------------------------------------------------------------


def test_relation_matrix_by_hand():
    # centred rows: [-1, 0, 1], [1, 0, -1], [0, 0, 0] (a constant row correlates with nothing)
    relation = relation_matrix(t([[1, 2, 3], [3, 2, 1], [1, 1, 1]]))
    torch.testing.assert_close(relation, t([[1, -1, 0], [-1, 1, 0], [0, 0, 0]]))


def test_relational_loss_by_hand():
    student = t([[2, 1], [1, 2]])  # rows anti-correlated, columns anti-correlated
    torch.testing.assert_close(relational_loss(student, t([[1, 2], [2, 1]])), torch.tensor(0.0))
    # teacher rows [2, 1], [2, 1]: correlated (+1); its columns are constant (correlation 0):
    # texts (-1 - 1)^2 = 4 on both off-diagonal entries, videos (-1 - 0)^2 = 1
    torch.testing.assert_close(relational_loss(student, t([[2, 1], [2, 1]])), torch.tensor(5.0))


def test_relational_loss_matches_a_numpy_reference_and_ignores_scale_and_shift():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 5, generator=generator), torch.randn(5, 5, generator=generator)
    off = ~np.eye(5, dtype=bool)

    def structure_gap(a, b):
        return ((np.corrcoef(a) - np.corrcoef(b))[off] ** 2).mean()

    expected = structure_gap(student.numpy(), teacher.numpy()) + structure_gap(student.numpy().T, teacher.numpy().T)
    assert relational_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert relational_loss(student * 30, teacher / 0.01 + 3).item() == pytest.approx(expected, rel=1e-4)
    # several teachers: their losses averaged
    other = torch.randn(5, 5, generator=generator)
    both = relational_loss(student, [teacher, other])
    torch.testing.assert_close(both, (relational_loss(student, teacher) + relational_loss(student, other)) / 2)


def test_relational_loss_is_zero_at_the_teachers_structure_and_has_a_gradient():
    teacher = t([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.4, 0.2, 0.7]])
    torch.testing.assert_close(relational_loss(teacher * 100, teacher), torch.tensor(0.0))
    student = torch.zeros(3, 3, requires_grad=True)
    with torch.no_grad():
        student += t([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    relational_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


# ---- hard-negative margin -----------------------------------------------------------------------

STUDENT = t([[0.5, 0.1, 0.45],
             [0.4, 0.3, 0.6],
             [0.0, 0.9, 0.7]])
TEACHER = t([[1.0, 0.5, 0.9],
             [0.2, 1.0, 0.1],
             [0.3, 0.9, 0.8]])


def test_margin_loss_hardest_negative_by_hand():
    # rows (captions): teacher-hardest negatives 0->2, 1->0, 2->0 (video 1 is scored above caption 2's
    # own video by the teacher: never a negative, although the student scores it 0.9):
    #   max(0, .2 - (.5 - .45)) = .15, max(0, .2 - (.3 - .4)) = .3, max(0, .2 - (.7 - 0)) = 0 -> mean .15
    # columns (videos): 0->caption 2, 1->caption 2, 2->caption 1 (caption 0 scores .9 >= .8: skipped):
    #   max(0, .2 - (.5 - 0)) = 0, max(0, .2 - (.3 - .9)) = .8, max(0, .2 - (.7 - .6)) = .1 -> mean .3
    loss = margin_loss(STUDENT, TEACHER, margin=0.2, hard_negatives=1)
    assert loss.item() == pytest.approx(0.45, abs=1e-6)


def test_margin_loss_two_negatives_by_hand():
    # rows: pairs (0,2) .15, (0,1) 0, (1,0) .3, (1,2) .5, (2,0) 0 -> .95 / 5
    # columns: (0,2) 0, (0,1) .1, (1,2) .8, (1,0) 0, (2,1) .1 -> 1.0 / 5
    loss = margin_loss(STUDENT, TEACHER, margin=0.2, hard_negatives=2)
    assert loss.item() == pytest.approx(0.19 + 0.2, abs=1e-6)


def test_margin_loss_without_candidates_is_zero_and_keeps_a_graph():
    student = STUDENT.clone().requires_grad_(True)
    loss = margin_loss(student, torch.ones(3, 3), margin=0.2)  # the teacher ties everything: no negative
    assert loss.item() == 0.0
    loss.backward()
    torch.testing.assert_close(student.grad, torch.zeros(3, 3))


def test_margin_loss_gradient_separates_positive_from_negative():
    student = STUDENT.clone().requires_grad_(True)
    margin_loss(student, TEACHER, margin=0.2).backward()
    # caption 1's positive (1,1) is pushed up, its mined negative (1,0) down
    assert student.grad[1, 1] < 0 and student.grad[1, 0] > 0
    # (2,1) is not a negative of caption 2 (the teacher prefers it), only of video 1 (caption 2 vs
    # caption 1): the gradient is that column's alone, 1/3, not 2/3
    assert student.grad[2, 1].item() == pytest.approx(1 / 3)


def test_margin_loss_averages_teachers_and_checks_arguments():
    other = TEACHER.t().contiguous()
    both = margin_loss(STUDENT, [TEACHER, other])
    torch.testing.assert_close(both, (margin_loss(STUDENT, TEACHER) + margin_loss(STUDENT, other)) / 2)
    with pytest.raises(ValueError, match="hard_negatives"):
        margin_loss(STUDENT, TEACHER, hard_negatives=0)
    with pytest.raises(ValueError, match="square"):
        margin_loss(STUDENT[:2], TEACHER)


# ---- wiring into train-student --------------------------------------------------------------------


def test_train_student_adds_the_terms_with_their_weights():
    from types import SimpleNamespace

    from teachclip.core.config import TrainStudentConfig
    from teachclip.stages.train_student import SoftLabels, batch_losses, loss_weights

    config = TrainStudentConfig(weight_nce=0.5, weight_coarse=0.0, weight_relational=2.0, weight_margin=3.0,
                                margin=0.3, margin_negatives=2)
    teacher = SimpleNamespace(group=SimpleNamespace(has_frame_relevance=False))
    terms = loss_weights(config, [teacher])
    assert terms == {"nce": 0.5, "relational": 2.0, "margin": 3.0}
    assert "relational" not in loss_weights(TrainStudentConfig(), [teacher])  # off by default
    generator = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    video = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    similarities = [(1.0, torch.rand(4, 4, generator=generator)), (3.0, torch.rand(4, 4, generator=generator))]
    outputs = {"text": text, "video": video, "logit_scale": torch.tensor(20.0)}
    losses = batch_losses(outputs, SoftLabels(similarities, []), terms, config, sizes=[4])
    cosines = text @ video.T
    relational = (relational_loss(20 * cosines, similarities[0][1]) + 3 * relational_loss(20 * cosines, similarities[1][1])) / 4
    margin = (margin_loss(cosines, similarities[0][1], 0.3, 2) + 3 * margin_loss(cosines, similarities[1][1], 0.3, 2)) / 4
    torch.testing.assert_close(losses["relational"], relational)
    torch.testing.assert_close(losses["margin"], margin)
    torch.testing.assert_close(losses["loss"], 0.5 * losses["nce"] + 2 * relational + 3 * margin)
