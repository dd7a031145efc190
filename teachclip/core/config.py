"""Typed configuration: every section of ``params.yaml`` maps to one pydantic model here.

``params.yaml`` is the single source of truth. A field declared here is all it takes for a setting
to exist: every ``teach`` command accepts ``--set section.field=value`` (``-S``) for any field, so no
flag is declared twice (:func:`load_params` applies them, after a ``students:`` variant). pydantic
(rather than bare dataclasses) gives validation with readable errors naming the offending key, which
matters because users edit params files by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from teachclip.core.errors import InputError


class ConfigError(InputError):
    """A params file or a ``--set`` that cannot be read or does not validate."""


class Section(BaseModel):
    """Base of every params section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComputeConfig(Section):
    """Where parallel work runs (decode, teacher extraction)."""

    # "local": a dask LocalCluster of `workers` processes; "sync": in this process, no dask;
    # anything else: the address of a running dask scheduler (tcp://host:8786).
    scheduler: str = "local"
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    device: str = "auto"  # "auto" picks cuda when available, else cpu


class DemoConfig(Section):
    """The built-in procedurally generated benchmark (see docs/demo-data.md)."""

    out: Path = Path("data/demo")
    videos: int = Field(400, ge=4)
    seed: int = 0
    test_fraction: float = Field(0.25, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    captions_per_video: int = Field(4, ge=1)  # train and val videos
    test_captions_per_video: int = Field(1, ge=1)
    # frame size (even, for yuv420p); objects move inside the central min(width, height) square
    width: int = Field(96, ge=32, multiple_of=2)
    height: int = Field(96, ge=32, multiple_of=2)
    fps: int = Field(4, ge=1)
    # whole seconds: decode samples 1 frame/s, so 12 s maps one second to each of 12 frames
    seconds: int = Field(12, ge=6)
    two_segment_fraction: float = Field(0.8, ge=0, le=1)  # videos with a second, different object
    min_segment_seconds: int = Field(3, ge=1)
    junk_segments_min: int = Field(1, ge=0)  # blank / flash / noise / clutter / title-card blocks
    junk_segments_max: int = Field(3, ge=0)
    other_segment_caption_fraction: float = Field(0.25, ge=0, le=1)  # train captions naming the other object
    scene_mention_fraction: float = Field(0.5, ge=0, le=1)  # captions that also name the background
    crf: int = Field(20, ge=0, le=51)  # libx264 quality


class DecodeConfig(Section):
    """Frame sampling and the frames store (CLIP4Clip conventions)."""

    frames_per_video: int = Field(12, ge=1, le=4096)
    sample_fps: float = Field(1.0, gt=0)  # first sample at this rate, then linspace down to T
    size: int = Field(224, ge=8, le=4096)  # short side resized to this, then center crop size x size
    backend: Literal["pyav", "ffmpeg", "torchcodec"] = "pyav"  # chosen by bench/decode.py (docs/decode.md)
    # where the torchcodec backend decodes: "cpu", "cuda" or "cuda:N" (pyav and ffmpeg decode on the CPU)
    device: str = "cpu"
    ffmpeg_binary: str | None = None  # None: the binary shipped by imageio-ffmpeg
    decoder_threads: int = Field(1, ge=1)  # per video; 1 is best when workers fill the cores
    videos_per_shard: int = Field(16, ge=1)
    max_failure_fraction: float = Field(0.05, ge=0, le=1)
    fingerprint_mode: Literal["content", "stat"] = "content"


class BackboneConfig(Section):
    """An open_clip model: a registered name plus a pretrained tag or a local checkpoint path."""

    name: str = "teachclip-tiny"
    pretrained: str | None = None  # open_clip tag ("openai", "laion2b_s34b_b79k") or a file path
    max_words: int = Field(32, ge=4, le=1024)
    precision: Literal["fp32", "amp"] = "amp"  # amp only takes effect on CUDA
    # True: the image tower never trains (LiT-style). Its per-frame features are then a fixed function
    # of the frames, so `teach encode-frames` can compute them once into a frame-features store that
    # every training, extraction and evaluation stage reads instead of pixels
    freeze_visual: bool = False
    # True: the text tower never trains. With both towers frozen a student's text vectors and frame
    # features are computed once per run and its steps only train the head (fast on a CPU)
    freeze_text: bool = False


class StudentConfig(Section):
    """CLIP4Clip student with optional AFA (see teachclip/models/student.py)."""

    backbone: BackboneConfig = BackboneConfig()
    head: Literal["meanP", "seqTransf"] = "meanP"
    afa: bool = True
    afa_pool_temperature: float = Field(0.1, gt=0)  # softmax(w / this) pools the video vector
    afa_weight_temperature: float = Field(1.0, gt=0)  # softmax(w / this): the weights the fine loss supervises
    temporal_layers: int = Field(4, ge=1, le=48)  # seqTransf only
    # seqTransf init, as CLIP4Clip: copy the text tower's first layers and positions ("random": don't)
    temporal_init: Literal["text", "random"] = "text"
    max_frames: int = Field(64, ge=1, le=4096)  # frame position embeddings of seqTransf
    # None: the backbone's own learned scale (1/0.07 for a model trained from scratch, 100 for OpenAI CLIP)
    logit_scale_init: float | None = Field(None, gt=0)


class PretrainBackboneConfig(Section):
    """``teach pretrain-backbone``: the demo's stand-in for OpenAI's CLIP pretraining (image-text
    contrastive learning on single frames of a separate set of demo videos; docs/training.md)."""

    data: DemoConfig = DemoConfig(out=Path("data/pretrain"), videos=1000, seed=1000, test_fraction=0.1)
    backbone: BackboneConfig = BackboneConfig()
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(256, ge=2)  # (frame, caption) pairs
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    eval_pairs: int = Field(1000, ge=2)  # held-out (frame, caption) pairs of the data's test split


class TeacherScoringConfig(Section):
    """Where X-CLIP's, X-Pool's and TS2-Net's released code scores differently from teachclip's masked
    scoring (docs/distillation.md#scoring-as-the-released-code). ``None`` = automatic: the released
    code's behaviour for an official checkpoint (a checkpoint learnt its weights under it), teachclip's
    for every other teacher. A setting that does not apply to the teacher's kind is an error."""

    # X-CLIP: True = padded word positions take no part in the word softmaxes (teachclip);
    # False = every token position of backbone.max_words counts, padding included (released code)
    mask_padded_words: bool | None = None
    # xclip/xpool/ts2net: "mask" = padded frames take no part in any softmax or mean (teachclip);
    # "released" = as the released code: X-CLIP and TS2-Net feed an all-zero (normalised) frame through
    # the image tower and score it, TS2-Net with its tiled frame mask; X-Pool repeats the last frame
    padded_frames: Literal["mask", "released"] | None = None
    # TS2-Net at inference: "hard" top-k tokens (teachclip) or "perturbed" = the mean of
    # options.topk_samples noisy top-k picks (released code, which never switches it off), seeded
    token_selection: Literal["hard", "perturbed"] | None = None
    selection_seed: int = 0  # perturbed selection: noise from (seed, video id), so scores are reproducible
    # caption tokens: "max_words" = cut at backbone.max_words (teachclip); "model" = the CLIP model's
    # context (77 tokens), as X-Pool's code (xpool, ts2net; X-CLIP's word matrices fix its length)
    text_context: Literal["max_words", "model"] | None = None


class TeacherConfig(Section):
    """One teacher: its kind, backbone and kind-specific options."""

    # a registered teacher kind (teachclip/models/teachers/__init__.py: xpool, xclip, ts2net, frame_clip,
    # caption_sim); checked when the teacher is built
    kind: str
    backbone: BackboneConfig = BackboneConfig()
    # trained weights: a `save_teacher` directory, a safetensors / weights-only torch state dict of this
    # teacher, or an official X-Pool/X-CLIP/TS2-Net checkpoint (mapped by teachers/official.py; detected
    # from its key names, or set options.checkpoint_format: official)
    checkpoint: str | None = None
    options: dict[str, Any] = {}  # kind-specific, validated by the teacher (teachclip/models/teachers/<kind>.py)
    scoring: TeacherScoringConfig = TeacherScoringConfig()  # released code's scoring vs teachclip's


class TrainTeacherConfig(Section):
    """``teach train-teacher``: symmetric InfoNCE on the train split (see docs/training.md)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)  # one caption per video, so also videos per batch
    lr: float = Field(1e-4, gt=0)  # the teacher's own modules and the logit scale
    lr_backbone: float = Field(1e-4, ge=0)  # the open_clip towers (parameters named backbone.*)
    weight_decay: float = Field(0.2, ge=0)  # never on biases, norms, embeddings, logit scale
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    prefetch: bool = True  # read the next frames batch in a background thread
    eval_every: int = Field(1, ge=1)  # test-split retrieval every N epochs (and always the last)


class CandidatesConfig(Section):
    """``extract.candidates``: candidate-based extraction (docs/teacher-cache.md, "Candidate groups").

    For each caption a cheap retriever proposes its ``k`` best videos (one blocked matrix product,
    ``block_videos`` videos at a time); the teacher scores only those, the caption's own video and
    ``random`` videos drawn uniformly from the rest. The result is a sparse group: teacher cost and
    disk are O(captions x (k + random + 1)) instead of O(captions x videos)."""

    # "clip": the frozen CLIP towers of `student.backbone` (caption vectors against mean-pooled frame
    # vectors, read from the frames or frame-features store); or a trained student directory
    retriever: str = "clip"
    k: int = Field(32, ge=1)
    # random videos per caption: they estimate the teacher's score of an unscored video (the fill
    # value) and give the sampler known easy negatives; at least 1
    random: int = Field(8, ge=1)
    seed: int = 0  # of the random videos (drawn per block, so a resumed run draws the same ones)
    block_videos: int = Field(65536, ge=1)  # videos per retriever matrix product (bounds its memory)


class ExtractConfig(Section):
    """Teacher extraction into the teacher cache (see docs/teacher-cache.md)."""

    teachers: list[str] = []  # names from the `teachers:` section (or teacher kinds), optionally NAME=CHECKPOINT
    # per worker: a block's float32 output may take half of it, a scoring step's workspace the other half
    memory_budget_mb: int = Field(1024, ge=16)
    # rows (captions) per block: one shard file per array, the unit of work and of resume; fewer when
    # a block would not fit the memory budget; rounded down to whole chunks
    block_texts: int = Field(2048, ge=1)
    chunk_texts: int = Field(32, ge=1)  # rows per chunk inside a shard: what a random read decodes
    block_videos: int | None = Field(None, ge=1)  # columns per chunk; None: every train video in one chunk
    encode_batch: int = Field(32, ge=1)  # captions / videos per encode call (videos per feature unit)
    shared_cache: str | None = None  # fsspec URL searched by fingerprint before computing
    # None: dense groups (every caption x every train video); set: candidate groups (CandidatesConfig),
    # e.g. `-S extract.candidates.k=32`
    candidates: CandidatesConfig | None = None


class TeacherWeight(Section):
    name: str
    weight: float = 1.0


class TrainStudentConfig(Section):
    """``teach train-student``: a CLIP4Clip/AFA student from cached teacher soft labels (see
    teachclip/stages/train_student.py for the loss and how the terms are normalised)."""

    # teachers to learn from: group names in the teacher cache(s) given to the stage, each with a
    # weight. None: every group of the given caches at weight 1. []: no teacher, the untaught
    # CLIP4Clip/AFA baseline (InfoNCE alone, at weight 1), whatever caches are given
    teachers: list[TeacherWeight] | None = None
    weight_nce: float = Field(0.2, ge=0)  # TeachCLIP code: 0.2 / 1 / 2 (paper: 1 / 1 / 1)
    weight_coarse: float = Field(1.0, ge=0)
    weight_fine: float = Field(2.0, ge=0)
    coarse_loss: Literal["pearson", "kl", "huber"] = "pearson"
    fine_loss: Literal["ce", "kl"] = "ce"
    # teacher logits = cached similarity / this; caches store cosines, and 0.01 (CLIP's scale of 100)
    # reproduces TeachCLIP's code, which softmaxes its teachers' scaled logits
    teacher_temperature: float = Field(0.01, gt=0)
    fine_temperature: float = Field(1.0, gt=0)  # tau of softmax(relevance / tau)
    # "frame": mean over captions x valid frames (TeachCLIP's scale, the one weight_fine=2 is for,
    # exactly only without padded frames: its code averages over all B x T entries, padding included);
    # "caption": sum over frames, mean over captions
    fine_reduction: Literal["frame", "caption"] = "frame"
    huber_delta: float = Field(1.0, gt=0)
    # MCKD-style options (docs/distillation.md), 0 = off: the teacher's text-text / video-video
    # structure, and a margin between positives and the teacher's hardest in-batch negatives
    weight_relational: float = Field(0.0, ge=0)
    weight_margin: float = Field(0.0, ge=0)
    margin: float = Field(0.2, ge=0)  # on the student's cosines
    margin_negatives: int = Field(1, ge=1)  # hardest teacher-mined negatives per caption / video
    # "caption_per_video": CLIP4Clip's random batches; "candidates": for sparse caches, random seed
    # videos plus a `hard_fraction` of each batch taken from the seeds' stored candidates
    # (docs/training.md, "Training on sparse caches"); "neighbourhood": every member grown from the
    # first teacher's stored videos (all negatives hard: hard_fraction 1 without the random part)
    sampler: Literal["caption_per_video", "candidates", "neighbourhood"] = "caption_per_video"
    # sampler "candidates": the share of each batch that are candidates of the batch's seed captions
    # (hard negatives whose teacher scores are stored); 0 = random batches, 1 = all hard
    hard_fraction: float = Field(0.25, ge=0, le=1)
    # a sparse cache's pairs it holds no score for: "mask" leaves them out of the coarse losses
    # (InfoNCE still uses every pair); "fill" reads them as the group's fill value (rest_mean)
    unknown_pairs: Literal["mask", "fill"] = "mask"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(120, ge=2)  # global batch (all ranks together): videos, one caption each
    lr_backbone: float = Field(1e-7, ge=0)  # the open_clip towers (CLIP4Clip: 1e-7 from pretrained CLIP)
    lr_new: float = Field(1e-4, ge=0)  # temporal transformer, logit scale
    lr_afa: float = Field(1e-3, ge=0)
    weight_decay: float = Field(0.2, ge=0)  # never on biases, norms, embeddings, logit scale
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    caption_mask: str | None = None  # file from `teach audit-captions`
    eval_every: int = Field(1, ge=1)  # test-split retrieval every N epochs (and always the last)
    prefetch: bool = True  # read the next frames batch in a background thread
    # teacher caches: true loads a group's score arrays into RAM (fast random batches), false reads each
    # batch's rows from disk (memory independent of the collection); empty: by size, dense groups up to
    # 4 GiB and sparse ones up to 64 MiB (about 250,000 captions at K = 32) are loaded
    cache_in_memory: bool | None = None


class EvaluateConfig(Section):
    """``teach evaluate`` and the per-epoch evaluation of the training stages."""

    split: str = "test"
    block_texts: int = Field(512, ge=1)  # teacher scoring: texts x videos per score() call
    block_videos: int = Field(2048, ge=1)
    batch_videos: int = Field(32, ge=1)  # videos per encode call (frames read and encoded together)
    batch_texts: int = Field(512, ge=1)  # captions per encode call


class AuditConfig(Section):
    """``teach audit-captions``: TeachText's caption-noise audit (docs/distillation.md)."""

    top_k: int = Field(100, ge=1)  # a caption is flagged when its own video ranks outside the top K
    block_texts: int = Field(1024, ge=1)  # cache rows read at a time (bounds memory)


class ReportConfig(Section):
    """``teach report``'s results gallery (``gallery.html``; docs/guide.md, "Reading the gallery")."""

    gallery_queries: int = Field(20, ge=0)  # test queries shown (the selection rule: stages/report/gallery.py)
    gallery_flagged: int = Field(12, ge=0)  # flagged training captions shown (those ranked worst first)
    top_k: int = Field(5, ge=1, le=20)  # retrieved videos shown per model and query
    strip_frames: int = Field(4, ge=1)  # frames in the strip of a retrieved video
    thumbnail_px: int = Field(96, ge=16, le=512)  # longest side of an embedded frame (never enlarged)
    jpeg_quality: int = Field(80, ge=20, le=95)


class SparsifyConfig(Section):
    """``teach cache sparsify``: keep each caption's top-k teacher videos (docs/distillation.md)."""

    top_k: int = Field(32, ge=1)  # videos kept per caption, besides its own video
    block_texts: int = Field(1024, ge=1)  # dense rows read at a time (bounds memory)


class SearchConfig(Section):
    """``teach search``: the stored vectors' precision, and the approximate (IVF) index that
    ``search index`` adds to large collections (docs/export-and-search.md)."""

    dtype: Literal["float16", "float32"] = "float16"  # float16 halves the index; scores differ by ~1e-3
    ann_threshold: int = Field(500_000, ge=1)  # videos from which an approximate index is built too
    ann_lists: int = Field(0, ge=0)  # IVF lists (faiss nlist); 0: sqrt(videos)
    ann_train_videos: int = Field(262_144, ge=1)  # k-means trains on a seeded sample of this many videos
    ann_seed: int = 0  # the training sample and k-means initialisation
    ann_probe: int = Field(32, ge=1)  # lists a query scans (faiss nprobe; query time): recall vs latency


class RehearseConfig(Section):
    """``teach rehearse``: an MSR-VTT pipeline end to end at real model size on a generated MSR-VTT-shaped
    corpus with locally written weight files (docs/guide.md#rehearse-msr-vtt-before-you-have-it)."""

    params: Path = Path("params/msrvtt-b32.yaml")  # the params file rehearsed, as a user would run it
    pipeline: Path = Path("pipelines/msrvtt")  # its DVC project (dvc.yaml), run in a scratch copy
    train_videos: int = Field(48, ge=2)  # the 9k train CSV's videos
    test_videos: int = Field(16, ge=2)  # the JSFusion 1k-A CSV's videos
    captions_per_video: int = Field(20, ge=1)  # MSR-VTT has 20
    min_seconds: float = Field(10.0, gt=0)  # MSR-VTT clips last 10-30 s
    max_seconds: float = Field(30.0, gt=0)
    x264_preset: str = "medium"  # x264's default; faster presets change the bitstream, not the layout
    seed: int = 0  # corpus and weights
    epochs: int = Field(1, ge=1)  # train_student.epochs of the rehearsal
    batch_size: int = Field(8, ge=2)  # train_student.batch_size of the rehearsal
    extract_memory_mb: int = Field(2048, ge=64)  # extract.memory_budget_mb of the rehearsal
    query: str = "a man is talking about a car"  # one `teach search query` at the end


class StudentVariant(Section):
    """A named student recipe (``students.<name>`` in params.yaml): field overrides of the
    ``student`` and ``train_student`` sections. The demo compares variants such as the meanP
    baseline, AFA without teaching and taught students with one code path."""

    description: str = ""
    student: dict[str, Any] = {}
    train_student: dict[str, Any] = {}


class Params(Section):
    """The whole ``params.yaml``."""

    compute: ComputeConfig = ComputeConfig()
    demo: DemoConfig = DemoConfig()
    decode: DecodeConfig = DecodeConfig()
    student: StudentConfig = StudentConfig()
    pretrain_backbone: PretrainBackboneConfig = PretrainBackboneConfig()
    teachers: dict[str, TeacherConfig] = {}
    train_teacher: TrainTeacherConfig = TrainTeacherConfig()
    extract: ExtractConfig = ExtractConfig()
    train_student: TrainStudentConfig = TrainStudentConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    audit: AuditConfig = AuditConfig()
    report: ReportConfig = ReportConfig()
    sparsify: SparsifyConfig = SparsifyConfig()
    search: SearchConfig = SearchConfig()
    rehearse: RehearseConfig = RehearseConfig()
    students: dict[str, StudentVariant] = {}
    # Free-form paths for a dvc.yaml (pipelines/msrvtt/dvc.yaml reads ``${paths.frames}`` ...); not
    # read by the library itself.
    paths: dict[str, str] = {}


def load_params(path: str | Path | None = "params.yaml", settings: Sequence[str] = (),
                variant: str | None = None) -> Params:
    """Read ``params.yaml`` (a missing file: all defaults) into :class:`Params`, then apply the student
    ``variant`` (``students.<name>``, None: none) and then ``settings``, ``section.field=value`` strings
    (``teach -S``), so that what is typed on the command line wins."""
    raw: Any = {}
    if path is not None and Path(path).exists():
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid parameters:\n{exc}") from exc
    return apply_settings(with_variant(params, variant), settings)


def apply_settings(params: Params, settings: Sequence[str]) -> Params:
    """``params`` with each ``dotted.path=value`` of ``settings`` set; the value is read as YAML
    (``3``, ``1e-4``, ``true``, ``null``, ``[a, b]``, ``{name: xpool}``). Unknown paths are refused
    naming the fields that exist there; the result is validated like a params file."""
    if not settings:
        return params
    document = params.model_dump(mode="json")
    for setting in settings:
        key, equals, text = setting.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--set {setting!r}: expected section.field=value")
        path = key.strip().split(".")
        _check_setting_path(path, setting)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {setting!r}: the value is not valid YAML: {exc}") from exc
        target = document
        for name in path[:-1]:
            if not isinstance(target.get(name), dict):
                target[name] = {}
            target = target[name]
        target[path[-1]] = value
    try:
        return Params.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(f"invalid --set {', '.join(settings)}:\n{exc}") from exc


def _check_setting_path(path: list[str], setting: str) -> None:
    """Walk the pydantic models along ``path``; free-form mappings (``teachers``, ``options``) accept any key."""
    annotation: Any = Params
    for depth, name in enumerate(path):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = annotation.model_fields
            if name not in fields:
                where = ".".join(path[:depth]) or "params"
                raise ConfigError(f"--set {setting!r}: {where} has no field {name!r} "
                                  f"(it has: {', '.join(fields)})")
            annotation = fields[name].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return  # inside a free-form value (Any, a list): validation judges it
        # X | None -> X
        if get_origin(annotation) not in (None, dict, list, Literal) and type(None) in get_args(annotation):
            annotation = next(arg for arg in get_args(annotation) if arg is not type(None))


def with_variant(params: Params, name: str | None) -> Params:
    """``params`` with the overrides of student variant ``name`` applied (None: unchanged)."""
    if name is None:
        return params
    if name not in params.students:
        known = ", ".join(sorted(params.students)) or "none defined"
        raise ConfigError(f"unknown student variant {name!r} (params.yaml students: {known})")
    variant = params.students[name]
    try:
        student = type(params.student).model_validate(
            _deep_merge(params.student.model_dump(), variant.student)
        )
        train_student = type(params.train_student).model_validate(
            _deep_merge(params.train_student.model_dump(), variant.train_student)
        )
    except ValidationError as exc:
        raise ConfigError(f"student variant {name!r} is invalid:\n{exc}") from exc
    return params.model_copy(update={"student": student, "train_student": train_student})


def _deep_merge(base: dict, updates: dict) -> dict:
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
