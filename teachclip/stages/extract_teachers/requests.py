"""Which teachers ``extract-teachers`` computes: ``NAME[=CHECKPOINT]`` arguments resolved to requests,
and the cache identity (fingerprint inputs) of each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from teachclip.core.config import TeacherConfig
from teachclip.core.errors import InputError
from teachclip.core.fingerprint import sha256_file
from teachclip.models.factory import ModelConfigError, resolve_teacher_scoring
from teachclip.models.io import CONFIG_FILE, WEIGHTS_FILE, read_config, weights_path
from teachclip.models.teachers import TEACHERS, trainable_kinds
from teachclip.stores.teacher_cache.schema import TeacherIdentity, check_group_name


class ExtractError(InputError):
    """Inputs or an existing cache that the extraction refuses; the message says which and why."""


@dataclass(frozen=True)
class TeacherRequest:
    """One teacher to extract: its group name, config and (optional) trained checkpoint."""

    name: str
    config: TeacherConfig  # for a trained-teacher directory: the config saved with it
    checkpoint: str | None = None  # a trained-teacher directory or a weights file

    @property
    def weights_file(self) -> Path | None:
        return None if self.checkpoint is None else weights_path(self.checkpoint)


def resolve_teachers(arguments: Sequence[str], configured: dict[str, TeacherConfig]) -> list[TeacherRequest]:
    """Turn ``NAME[=CHECKPOINT]`` arguments into requests.

    NAME is an entry of the params ``teachers:`` section or, without one, a teacher kind with its
    default config, or any name when CHECKPOINT is a trained-teacher directory. CHECKPOINT is a
    trained-teacher directory (``config.json`` + ``model.safetensors`` from ``teach train-teacher``,
    whose saved config then defines the teacher) or a weights file. Teachers with no weights at all
    (no checkpoint, no pretrained backbone) are refused: they would score noise.
    """
    if not arguments:
        raise ExtractError("no teachers requested: pass --teacher NAME[=CHECKPOINT] or set extract.teachers")
    requests, seen = [], set()
    for argument in arguments:
        name, _, checkpoint = argument.partition("=")
        name = check_group_name(name.strip())
        if name in seen:
            raise ExtractError(f"teacher {name!r} requested twice")
        seen.add(name)
        checkpoint = checkpoint.strip()
        if name in configured:
            config = configured[name]
        elif name in TEACHERS:
            config = TeacherConfig(kind=name)
        elif checkpoint and Path(checkpoint).is_dir():
            config = None  # the trained-teacher directory says what it is
        else:
            raise ExtractError(
                f"unknown teacher {name!r}: not in params.yaml `teachers:` ({', '.join(sorted(configured)) or 'empty'}),"
                f" not a teacher kind ({', '.join(TEACHERS)}) and no trained-teacher directory given"
            )
        checkpoint = checkpoint or (config.checkpoint if config is not None else None)
        if checkpoint:
            checkpoint = str(Path(checkpoint).resolve())  # workers may run elsewhere than this directory
            config = _config_for_checkpoint(name, config, Path(checkpoint))
        elif config.kind in trainable_kinds() and not config.backbone.pretrained:  # caption_sim brings its own
            raise ExtractError(
                f"teacher {name!r} ({config.kind}) has no weights: pass {name}=CHECKPOINT (a trained teacher from "
                f"`teach train-teacher`) or set backbone.pretrained; a randomly initialised teacher scores noise"
            )
        requests.append(TeacherRequest(name, config, checkpoint or None))
    return requests


def _config_for_checkpoint(name: str, config: TeacherConfig | None, checkpoint: Path) -> TeacherConfig:
    if checkpoint.is_file() and config is not None:
        return config.model_copy(update={"checkpoint": str(checkpoint)})
    if not checkpoint.is_dir():
        raise ExtractError(f"{checkpoint}: checkpoint of teacher {name!r} not found")
    if not (checkpoint / WEIGHTS_FILE).is_file():
        raise ExtractError(f"{checkpoint}: not a trained-teacher directory (no {WEIGHTS_FILE})")
    document = read_config(checkpoint)
    try:
        saved = TeacherConfig.model_validate(document["config"])
    except ValueError as exc:
        raise ExtractError(f"{checkpoint / CONFIG_FILE}: not a teacher config: {exc}") from exc
    if config is not None and saved.kind != config.kind:
        raise ExtractError(
            f"{checkpoint}: holds a {saved.kind!r} teacher, but {name!r} is configured as {config.kind!r}"
        )
    return saved.model_copy(update={"checkpoint": str(checkpoint)})


def identity_of(request: TeacherRequest, frames_fingerprint: str, manifest_fingerprint: str) -> TeacherIdentity:
    """The cache identity of a request; paths are replaced by the sha256 of the files they name.

    The score definitions are left empty here: they are instance properties of a loaded teacher,
    filled in by :func:`describe_teacher` on a worker (they are not part of the fingerprint).
    """
    if request.config.kind not in TEACHERS:
        raise ExtractError(f"teacher {request.name!r}: unknown kind {request.config.kind!r} (known: {', '.join(TEACHERS)})")
    cls = TEACHERS[request.config.kind]
    try:  # the scoring the teacher will use (official checkpoints: the released code's): part of the identity
        resolved = resolve_teacher_scoring(request.config)
    except ModelConfigError as exc:
        raise ExtractError(f"teacher {request.name!r}: {exc}") from exc
    config = resolved.model_dump(mode="json") | {"checkpoint": None}
    pretrained = config["backbone"].get("pretrained")
    if pretrained and Path(pretrained).is_file():
        config["backbone"]["pretrained"] = "sha256:" + sha256_file(pretrained)
    weights = request.weights_file
    return TeacherIdentity(
        kind=request.config.kind,
        config=config,
        checkpoint_sha256=sha256_file(weights) if weights is not None else None,
        score_version=int(cls.score_version),
        has_frame_relevance=bool(cls.has_frame_relevance),
        similarity_definition="",
        relevance_definition="",
        frames_fingerprint=frames_fingerprint,
        manifest_fingerprint=manifest_fingerprint,
    )


def load_failure(request: TeacherRequest, exc: BaseException, limit: int = 600) -> str:
    """A readable one-paragraph reason (state-dict mismatches run to pages)."""
    reason = str(exc.args[-1] if isinstance(exc, ValueError) and exc.args and exc.args[0] == "Long error message"
                 else exc)
    reason = reason if len(reason) <= limit else reason[:limit] + " ..."
    return f"teacher {request.name!r} ({request.config.kind}, checkpoint {request.checkpoint}) failed to load: {reason}"
