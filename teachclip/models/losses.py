"""Training losses as small pure functions: retrieval (InfoNCE), coarse and fine teaching.

Conventions
- ``student_logits`` [N, N]: ``logit_scale * text @ video.T`` of a batch whose caption i belongs to
  video i (what :func:`info_nce` takes). Rows are text-to-video, columns video-to-text.
- ``teacher_sims``: one [N, N] matrix or a list of them, the *raw* cached similarities of the same
  captions x videos, on each teacher's own scale (cosines in [-1, 1] for some teachers, logits for
  others). Every coarse loss reads them as teacher logits ``raw / teacher_temperature``.
  Default ``teacher_temperature = 1.0`` = TeachCLIP's code, which softmaxes its teachers' logits (their
  own logit scale, ~100, already applied; its ``beta`` is 1). For a teacher that stores cosines, use
  ~0.01 (CLIP's scale of 100): at temperature 1 a softmax over cosines is nearly uniform.
- Fine teaching works on matched pairs: AFA frame weights [B, T] of video i against the teacher's raw
  frame relevance [B, T] of caption i and video i, with the frame mask [B, T] (False = padding).
  Targets are ``softmax_f(relevance / tau)`` over unmasked frames.

Normalisation choices (documented because they change what a loss weight means)
- KL and fine CE/KL sum over the distribution (videos, texts or frames) and average over its rows
  ("batchmean"): the value is a proper per-row divergence and does not shrink with the batch size or
  the number of frames. TeachCLIP's code takes ``.mean()`` over every matrix element instead, i.e.
  divides by N (coarse ce) or T (fine ce) more; ``reduction="frame"`` of the fine losses divides by the
  number of valid frames, which is the code's scale exactly only when no frame is padded (the code
  averages over all B x T entries, padded frames included, with softmaxes that do not mask them), so
  ``weight_fine = 2`` of the code corresponds to ~``2 / T`` with the default ``reduction="caption"``.
- Pearson is the paper's and code's: mean over rows of ``1 - r`` plus mean over columns, per teacher,
  averaged over teachers.
- Huber (TeachText): teachers' logits averaged first, then the elementwise Huber loss against the
  student matrix *as passed*, averaged over the N x N entries. The student matrix is compared on its
  own scale: pass ``logit_scale * cos`` (the InfoNCE logits) against teachers that store logits, or
  plain ``cos`` (``student_logits / logit_scale``) against teachers that store cosines.

Known pairs (sparse teacher caches)
- Every coarse loss takes ``known``: None (every pair known), one bool [N, N] mask, or one per teacher
  (True = the teacher's score of that pair is stored). Unknown pairs take no part: each row's (and
  column's) softmax, correlation or divergence runs over its known entries only, a row with fewer than
  2 known entries contributes nothing (one entry has no distribution to match), and Huber averages
  over known entries. With every pair known the value is exactly the unmasked one. InfoNCE never
  takes a mask: the student's own contrastive task uses every pair of the batch.

Everything is computed in float32 (safe under autocast); masked frames contribute exactly nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from teachclip.models.layers import masked_softmax

TeacherSims = torch.Tensor | Sequence[torch.Tensor]
KnownPairs = torch.Tensor | Sequence[torch.Tensor | None] | None


# ---- retrieval --------------------------------------------------------------------------------
def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE ``(CE(S) + CE(S^T)) / 2`` with the diagonal as targets."""
    _check_square(logits, "logits")
    logits = logits.float()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


# ---- coarse teaching --------------------------------------------------------------------------
def coarse_pearson(student_logits: torch.Tensor, teacher_sims: TeacherSims,
                   teacher_temperature: float = 1.0, eps: float = 1e-12, known: KnownPairs = None) -> torch.Tensor:
    """TeachCLIP's CgT: per teacher ``mean_i (1 - r(p_i, q_i)) + mean_j (1 - r(p_j, q_j))`` over the
    row (text-to-video) and column (video-to-text) softmaxes, averaged over teachers. ``known``: see
    the module docstring (softmaxes and correlations over the known entries of each row/column)."""
    student = _student(student_logits)
    teachers = _teachers(teacher_sims, student, teacher_temperature)
    masks = _known_masks(known, teachers, student)
    per_teacher = []
    for teacher, mask in zip(teachers, masks, strict=True):
        if mask is None:
            per_teacher.append(_one_minus_pearson(student.softmax(dim=1), teacher.softmax(dim=1), 1, eps).mean()
                               + _one_minus_pearson(student.softmax(dim=0), teacher.softmax(dim=0), 0, eps).mean())
            continue
        per_teacher.append(sum(_masked_mean_over(_one_minus_pearson_known(student, teacher, mask, dim, eps),
                                                 mask.sum(dim=dim) >= 2) for dim in (1, 0)))
    return torch.stack(per_teacher).mean()


def coarse_kl(student_logits: torch.Tensor, teacher_sims: TeacherSims, temperature: float = 1.0,
              teacher_temperature: float = 1.0, known: KnownPairs = None) -> torch.Tensor:
    """``KL(teacher softmax || student softmax)`` summed over each row (and each column), averaged
    over rows (columns); rows + columns per teacher, averaged over teachers. ``temperature`` is the
    distillation temperature applied to both sides after ``teacher_temperature`` (no T^2 factor).
    ``known``: see the module docstring."""
    student = _student(student_logits) / temperature
    teachers = [teacher / temperature for teacher in _teachers(teacher_sims, student, teacher_temperature)]
    masks = _known_masks(known, teachers, student)
    per_teacher = []
    for teacher, mask in zip(teachers, masks, strict=True):
        if mask is None:
            rows = F.kl_div(student.log_softmax(dim=1), teacher.log_softmax(dim=1), reduction="none", log_target=True)
            cols = F.kl_div(student.log_softmax(dim=0), teacher.log_softmax(dim=0), reduction="none", log_target=True)
            per_teacher.append(rows.sum(dim=1).mean() + cols.sum(dim=0).mean())
            continue
        terms = []
        for dim in (1, 0):
            log_p = _masked_log_softmax(teacher, mask, dim)
            log_q = _masked_log_softmax(student, mask, dim)
            divergence = torch.where(mask, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p)).sum(dim=dim)
            terms.append(_masked_mean_over(divergence, mask.sum(dim=dim) >= 2))
        per_teacher.append(sum(terms))
    return torch.stack(per_teacher).mean()


def coarse_huber(student_logits: torch.Tensor, teacher_sims: TeacherSims, delta: float = 1.0,
                 teacher_temperature: float = 1.0, known: KnownPairs = None) -> torch.Tensor:
    """TeachText: Huber(student, mean of the teachers' logits), mean over entries. The student matrix
    is compared on the scale it is passed in (see the module docstring). ``known``: the mean runs over
    the entries every teacher knows."""
    student = _student(student_logits)
    teachers = _teachers(teacher_sims, student, teacher_temperature)
    teacher = torch.stack(teachers).mean(dim=0)
    masks = [m for m in _known_masks(known, teachers, student) if m is not None]
    if not masks:
        return F.huber_loss(student, teacher, delta=delta, reduction="mean")
    mask = torch.stack(masks).all(dim=0)
    per_entry = F.huber_loss(student, teacher, delta=delta, reduction="none")
    return torch.where(mask, per_entry, torch.zeros_like(per_entry)).sum() / mask.sum().clamp_min(1)


# ---- fine teaching ----------------------------------------------------------------------------
def fine_targets(teacher_relevance: torch.Tensor, mask: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``y = softmax_f(relevance / tau)`` over unmasked frames, 0 on padding (a row with no valid
    frame: all zeros)."""
    relevance = teacher_relevance.float()
    # padded entries may hold anything, NaN included: replace before scaling
    relevance = relevance.masked_fill(~mask.to(device=relevance.device, dtype=torch.bool), 0.0)
    return masked_softmax(relevance / tau, mask)


def fine_ce(frame_weights: torch.Tensor, teacher_relevance: torch.Tensor, mask: torch.Tensor,
            tau: float = 1.0, reduction: str = "caption") -> torch.Tensor:
    """``-sum_f y_if log a_if`` per caption, averaged over captions (``reduction="caption"``), or
    summed over captions and divided by the number of valid frames (``"frame"``, TeachCLIP's scale when
    no frame is padded).
    ``a`` are the student's AFA weights (probabilities, 0 on padding), ``y`` the teacher targets."""
    mask, weights, targets = _fine_inputs(frame_weights, teacher_relevance, mask, tau)
    per_frame = -targets * _safe_log(weights)
    return _reduce_frames(per_frame, mask, reduction)


def fine_kl(frame_weights: torch.Tensor, teacher_relevance: torch.Tensor, mask: torch.Tensor,
            tau: float = 1.0, reduction: str = "caption") -> torch.Tensor:
    """``KL(y_i || a_i) = sum_f y_if (log y_if - log a_if)``, reduced as :func:`fine_ce` (it is
    ``fine_ce`` minus the targets' entropy: same gradient, zero at a perfect match)."""
    mask, weights, targets = _fine_inputs(frame_weights, teacher_relevance, mask, tau)
    per_frame = torch.xlogy(targets, targets) - targets * _safe_log(weights)
    return _reduce_frames(per_frame, mask, reduction)


# ---- dispatch ---------------------------------------------------------------------------------
COARSE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "pearson": coarse_pearson, "kl": coarse_kl, "huber": coarse_huber,
}
FINE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"ce": fine_ce, "kl": fine_kl}


def coarse_loss(name: str, student_logits: torch.Tensor, teacher_sims: TeacherSims, **options) -> torch.Tensor:
    """``COARSE_LOSSES[name]``. Options another coarse loss takes (e.g. ``delta`` for pearson) are
    dropped, so a config can pass all of its options; an option no coarse loss takes is an error."""
    function = _lookup(COARSE_LOSSES, name, "coarse")
    return function(student_logits, teacher_sims, **_options_for(function, COARSE_LOSSES, options))


def fine_loss(name: str, frame_weights: torch.Tensor, teacher_relevance: torch.Tensor, mask: torch.Tensor,
              **options) -> torch.Tensor:
    """``FINE_LOSSES[name]`` with the option handling of :func:`coarse_loss`."""
    function = _lookup(FINE_LOSSES, name, "fine")
    return function(frame_weights, teacher_relevance, mask, **_options_for(function, FINE_LOSSES, options))


# ---- helpers ----------------------------------------------------------------------------------
def _check_square(matrix: torch.Tensor, what: str) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{what} must be a square [N, N] matrix (caption i matches video i), got {tuple(matrix.shape)}")


def _student(student_logits: torch.Tensor) -> torch.Tensor:
    _check_square(student_logits, "student_logits")
    return student_logits.float()


def _teachers(teacher_sims: TeacherSims, student: torch.Tensor, teacher_temperature: float) -> list[torch.Tensor]:
    teachers = [teacher_sims] if isinstance(teacher_sims, torch.Tensor) else list(teacher_sims)
    if not teachers:
        raise ValueError("coarse teaching needs at least one teacher similarity matrix")
    for index, teacher in enumerate(teachers):
        if teacher.shape != student.shape:
            raise ValueError(
                f"teacher {index} similarity has shape {tuple(teacher.shape)}, the student's is {tuple(student.shape)}"
            )
    # teacher labels are constants: no gradient flows into a cache or a teacher
    return [teacher.detach().to(device=student.device, dtype=torch.float32) / teacher_temperature
            for teacher in teachers]


def _known_masks(known: KnownPairs, teachers: list[torch.Tensor], student: torch.Tensor) -> list[torch.Tensor | None]:
    """One bool mask (or None: every pair known) per teacher, on the student's device."""
    masks = [known] * len(teachers) if known is None or isinstance(known, torch.Tensor) else list(known)
    if len(masks) != len(teachers):
        raise ValueError(f"{len(masks)} known-pair masks for {len(teachers)} teachers")
    out = []
    for index, mask in enumerate(masks):
        if mask is not None and mask.shape != student.shape:
            raise ValueError(f"known-pair mask {index} has shape {tuple(mask.shape)}, the student's is "
                             f"{tuple(student.shape)}")
        out.append(None if mask is None else mask.to(device=student.device, dtype=torch.bool))
    return out


def _masked_mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``valid`` (0 when nothing is: still in the graph, no host sync)."""
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """log softmax over the known entries of ``dim``; 0 (never -inf, never NaN) elsewhere."""
    filled = logits.masked_fill(~mask, float("-inf"))
    filled = torch.where(mask.any(dim, keepdim=True), filled, torch.zeros_like(filled))
    return torch.where(mask, filled.log_softmax(dim), torch.zeros_like(filled))


def _one_minus_pearson_known(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, dim: int,
                             eps: float) -> torch.Tensor:
    """``1 - r`` per row (dim=1) or column (dim=0) between the student's and the teacher's softmaxes
    over the known entries only (unknown entries are neither in the softmaxes nor in the means)."""
    p, q = masked_softmax(student, mask, dim), masked_softmax(teacher, mask, dim)
    count = mask.sum(dim=dim, keepdim=True).clamp_min(1)
    p = torch.where(mask, p - p.sum(dim=dim, keepdim=True) / count, torch.zeros_like(p))
    q = torch.where(mask, q - q.sum(dim=dim, keepdim=True) / count, torch.zeros_like(q))
    denominator = (p.norm(dim=dim) * q.norm(dim=dim)).clamp_min(eps)
    return 1 - (p * q).sum(dim=dim) / denominator


def _one_minus_pearson(p: torch.Tensor, q: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    p = p - p.mean(dim=dim, keepdim=True)
    q = q - q.mean(dim=dim, keepdim=True)
    # a constant distribution has no correlation: r = 0 (loss 1) instead of 0/0
    denominator = (p.norm(dim=dim) * q.norm(dim=dim)).clamp_min(eps)
    return 1 - (p * q).sum(dim=dim) / denominator


def _fine_inputs(frame_weights, teacher_relevance, mask, tau):
    if frame_weights.shape != teacher_relevance.shape or frame_weights.shape != mask.shape:
        raise ValueError(
            "frame_weights, teacher_relevance and mask must share one [B, T] shape, got "
            f"{tuple(frame_weights.shape)}, {tuple(teacher_relevance.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.to(device=frame_weights.device, dtype=torch.bool)
    weights = frame_weights.float()
    targets = fine_targets(teacher_relevance.to(frame_weights.device), mask, tau)
    return mask, weights, targets


def _safe_log(weights: torch.Tensor) -> torch.Tensor:
    # a weight that underflowed to 0 would give log 0 = -inf (and 0 * -inf = NaN on padding)
    return weights.clamp_min(torch.finfo(weights.dtype).tiny).log()


def _reduce_frames(per_frame: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    per_frame = torch.where(mask, per_frame, torch.zeros_like(per_frame))
    # counts clamped at 1: a batch with nothing to teach gives 0 (still in the graph), no host sync
    if reduction == "caption":
        valid_rows = mask.any(dim=1)
        return per_frame.sum() / valid_rows.sum().clamp_min(1)
    if reduction == "frame":
        return per_frame.sum() / mask.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}: expected 'caption' or 'frame'")


def _lookup(table: dict[str, Callable[..., torch.Tensor]], name: str, family: str) -> Callable[..., torch.Tensor]:
    if name not in table:
        raise ValueError(f"unknown {family} loss {name!r}: expected one of {', '.join(sorted(table))}")
    return table[name]


def _keyword_names(function: Callable) -> set[str]:
    parameters = list(inspect.signature(function).parameters.values())
    return {p.name for p in parameters if p.default is not inspect.Parameter.empty}


def _options_for(function: Callable, family: dict[str, Callable], options: dict) -> dict:
    known = set().union(*(_keyword_names(f) for f in family.values()))
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown loss option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    accepted = _keyword_names(function)
    return {key: value for key, value in options.items() if key in accepted}


# ---- MCKD-style terms: relational structure and hard-negative discrimination ------------------
# (see docs/distillation.md for the formulas and why the teacher side is derived from its similarity)
def relation_matrix(similarity: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation between the *rows* of ``similarity`` [N, M]: ``R[i, k] = r(X_i,:, X_k,:)``.

    Applied to a [texts, videos] matrix it says how alike two texts rank the batch's videos (text-text
    structure); to its transpose, how alike two videos rank the texts (video-video structure). A
    constant row has no correlation with anything (0, and 0 with itself)."""
    centred = similarity.float() - similarity.float().mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1, keepdim=True)
    unit = centred / norms.clamp_min(eps)
    return unit @ unit.t()


def relational_loss(student_logits: torch.Tensor, teacher_sims: TeacherSims, eps: float = 1e-12) -> torch.Tensor:
    """MCKD-style structure matching, per teacher, averaged over teachers::

        L_rel = mean_{i != k} (R(S)_ik - R(T)_ik)^2 + mean_{j != l} (R(S^T)_jl - R(T^T)_jl)^2

    with ``R`` = :func:`relation_matrix`. Correlations ignore scale and shift, so neither the student's
    logit scale nor the teacher's temperature changes the loss: pass any positive multiple of either."""
    student = _student(student_logits)
    teachers = _teachers(teacher_sims, student, 1.0)
    n = student.shape[0]
    if n < 2:
        raise ValueError("relational_loss needs at least 2 pairs")
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)
    text_structure, video_structure = relation_matrix(student, eps), relation_matrix(student.t(), eps)
    per_teacher = [
        (text_structure - relation_matrix(teacher, eps))[off_diagonal].square().mean()
        + (video_structure - relation_matrix(teacher.t(), eps))[off_diagonal].square().mean()
        for teacher in teachers
    ]
    return torch.stack(per_teacher).mean()


def margin_loss(student_cosines: torch.Tensor, teacher_sims: TeacherSims, margin: float = 0.2,
                hard_negatives: int = 1) -> torch.Tensor:
    """Explicit discrimination on teacher-mined hard negatives, per teacher, averaged over teachers::

        L_m = mean_{(i, j) in H} max(0, m - (s_ii - s_ij)) + mean_{(k, j) in H'} max(0, m - (s_jj - s_kj))

    ``s`` = the student's cosines. ``H``: for each caption i, the ``hard_negatives`` videos j != i the
    teacher scores highest *among those it scores strictly below the positive* (``T_ij < T_ii``);
    ``H'`` the same for each video j over captions k. A candidate the teacher scores at or above the
    positive is more likely a duplicate than a negative, so it is never pushed away. A caption (video)
    with no candidate contributes nothing; a batch with none gives 0."""
    student = _student(student_cosines)
    teachers = _teachers(teacher_sims, student, 1.0)
    if hard_negatives < 1:
        raise ValueError(f"hard_negatives must be at least 1, got {hard_negatives}")
    per_teacher = [_hinge_on_teacher_negatives(student, teacher, margin, hard_negatives)
                   + _hinge_on_teacher_negatives(student.t(), teacher.t(), margin, hard_negatives)
                   for teacher in teachers]
    return torch.stack(per_teacher).mean()


def _hinge_on_teacher_negatives(student: torch.Tensor, teacher: torch.Tensor, margin: float, k: int) -> torch.Tensor:
    """Row-wise hinge of :func:`margin_loss`: negatives of row i mined from ``teacher``, scored by ``student``."""
    n = student.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    candidates = (teacher < teacher.diagonal()[:, None]) & ~eye
    mined = teacher.masked_fill(~candidates, float("-inf")).topk(min(k, n - 1), dim=1)
    valid = torch.isfinite(mined.values)
    gaps = margin - (student.diagonal()[:, None] - student.gather(1, mined.indices))
    hinges = torch.where(valid, F.relu(gaps), torch.zeros_like(gaps))
    return hinges.sum() / valid.sum().clamp_min(1)
