"""The built-in demo benchmark: procedurally generated videos of moving shapes with the nuisances of
real video (junk frames, two-segment videos, varied caption wording). Grammar: docs/demo-data.md.

Two phases, so that the output never depends on the number of worker processes:

1. :func:`plan_videos` makes every decision that captions and splits depend on (timelines, objects,
   caption wording) with one sequential RNG in this process. It is cheap, and it can enforce
   constraints over the whole test split (distinct test targets, disambiguating test captions).
2. :func:`render_video` + :func:`encode_mp4` turn one plan into an H.264 ``.mp4``; the pixels are a
   pure function of the plan and ``(seed, index)``, so a process pool may render in any order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import json
import multiprocessing
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from teachclip.core.config import ConfigError, DemoConfig
from teachclip.core.manifest import write_manifest
from teachclip.core.parallel import progress_bar

GENERATOR_VERSION = 1
META_FILE = "demo.json"  # marks a directory as demo output (and holds the ground truth)

# ---- vocabulary ---------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "crescent")
COLOURS = {
    "red": (230, 40, 40),
    "orange": (255, 140, 0),
    "yellow": (240, 225, 40),
    "green": (40, 200, 70),
    "cyan": (40, 215, 225),
    "blue": (60, 100, 255),
    "magenta": (225, 60, 215),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.1, "large": 0.17}  # object radius as a fraction of the stage side
_D = 0.7071
DIRECTIONS = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}
TEXTURES = ("stripes", "checks", "dots", "grain")
TINTS = {"grey": (100, 100, 100), "brown": (110, 78, 48), "navy": (38, 48, 105), "olive": (85, 95, 42)}
JUNK_KINDS = ("blank", "flash", "noise", "clutter", "title")

# Every attribute value and its caption wordings (the first is the canonical word).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross", "plus sign"),
    "star": ("star", "five-pointed star"),
    "ring": ("ring", "hoop", "donut"),
    "crescent": ("crescent", "crescent moon", "sickle"),
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "lime"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "azure"),
    "magenta": ("magenta", "pink", "fuchsia"),
    "white": ("white", "snowy", "ivory"),
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
    "right": ("to the right", "rightward", "towards the right"),
    "left": ("to the left", "leftward", "towards the left"),
    "up": ("up", "upward", "towards the top"),
    "down": ("down", "downward", "towards the bottom"),
    "up-right": ("up and to the right", "diagonally up-right", "towards the top right"),
    "up-left": ("up and to the left", "diagonally up-left", "towards the top left"),
    "down-right": ("down and to the right", "diagonally down-right", "towards the bottom right"),
    "down-left": ("down and to the left", "diagonally down-left", "towards the bottom left"),
    "stripes": ("striped", "stripy"),
    "checks": ("checkered", "tiled"),
    "dots": ("dotted", "spotted"),
    "grain": ("grainy", "mottled"),
    "grey": ("grey", "gray"),
    "brown": ("brown",),
    "navy": ("navy",),
    "olive": ("olive",),
}
VERBS = ("moves", "slides", "drifts", "travels", "glides", "floats")
GERUNDS = ("moving", "sliding", "drifting", "travelling", "gliding", "heading")
SCENE_PREPOSITIONS = ("on", "against", "over", "in front of")
SCENE_NOUNS = ("background", "backdrop")
# "A_" becomes "a" or "an" after the slots are filled; {scene} is "" or " on a striped grey backdrop".
TEMPLATES = (
    "A_ {size} {colour} {shape} {verb} {direction}{scene}",
    "{direction} {verb} A_ {size} {colour} {shape}{scene}",
    "A_ {colour} {shape}, {size}, {gerund} {direction}{scene}",
    "there is A_ {size} {colour} {shape} {gerund} {direction}{scene}",
    "the {shape} is {size} and {colour}, and it {verb} {direction}{scene}",
    "A_ {size} {shape} coloured {colour} {gerund} {direction}{scene}",
    "{gerund} {direction}{scene}: A_ {size} {colour} {shape}",
    "clip of A_ {size} {colour} {shape} that {verb} {direction}{scene}",
)

# ---- rendering constants ------------------------------------------------------------------------

TRAIL_OPACITY = (0.5, 0.3, 0.15)  # ghosts behind the object: direction is visible in every frame
TRAIL_SPACING = 0.75  # ghost step, in object radii
TRAVEL = 0.35  # distance covered over a segment, in stage sides
JITTER = 0.12  # random offset of the path's centre, in stage sides
PAN_MARGIN = 16  # background tiles are this many pixels larger than the frame; the camera pans
TEXTURE_CONTRAST = 0.22
SUPERSAMPLE = 4  # sprite anti-aliasing
# libx264 settings. asm=0: the x264 build in PyAV's wheel reads uninitialised memory in some of its
# SIMD routines (measured here: one in five videos changed bytes between identical encodes in one
# process); the C routines are deterministic. ultrafast keeps the C-only encoder as fast as the SIMD
# one at "veryfast"; B-frames and CABAC are switched back on so the streams look like real video
# (frame reordering for decoders to handle).
X264_PRESET = "ultrafast"
X264_PARAMS = "asm=0:bframes=3:b-adapt=0:cabac=1"


# ---- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object segment: what moves, where to, and on which background."""

    shape: str
    colour: str
    size: str
    direction: str
    texture: str
    tint: str

    @property
    def description(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.direction)

    @property
    def scene(self) -> tuple[str, str]:
        return (self.texture, self.tint)


@dataclass(frozen=True)
class CaptionSpec:
    caption_id: str
    object_index: int  # which of the video's objects the caption names
    mentions_scene: bool
    text: str


@dataclass(frozen=True)
class VideoPlan:
    index: int
    video_id: str
    split: str
    # One entry per second: "object:0", "object:1" or "junk:<kind>".
    timeline: tuple[str, ...]
    objects: tuple[ObjectSpec, ...]
    target: int  # the object of the first caption (the only one in the test split)
    captions: tuple[CaptionSpec, ...]

    def seconds_of(self, object_index: int) -> list[int]:
        """The seconds that show object ``object_index`` (its ground-truth relevant frames)."""
        return [s for s, entry in enumerate(self.timeline) if entry == f"object:{object_index}"]

    def to_json(self) -> dict:
        record = asdict(self)
        for caption in record["captions"]:
            caption["relevant_seconds"] = self.seconds_of(caption["object_index"])
        return record


def check_config(config: DemoConfig) -> None:
    """Cross-field checks that pydantic's per-field bounds cannot express."""
    problems = []
    if config.junk_segments_min > config.junk_segments_max:
        problems.append(
            f"junk_segments_min {config.junk_segments_min} > junk_segments_max {config.junk_segments_max}"
        )
    objects = 2 if config.two_segment_fraction > 0 else 1
    if config.seconds < objects * config.min_segment_seconds:
        problems.append(
            f"seconds {config.seconds} cannot hold {objects} segment(s) of min_segment_seconds {config.min_segment_seconds}"
        )
    if split_sizes(config.videos, config.test_fraction, config.val_fraction)[0] < 1:
        problems.append(f"test_fraction + val_fraction leave no train videos out of {config.videos}")
    if problems:
        raise ConfigError("invalid demo config: " + "; ".join(problems))


def split_sizes(videos: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts; test and val get at least one video when their fraction is > 0."""
    test = max(1, round(videos * test_fraction))
    val = max(1, round(videos * val_fraction)) if val_fraction > 0 else 0
    return videos - test - val, val, test


def video_id_for(index: int, videos: int) -> str:
    return f"demo{index:0{max(5, len(str(videos - 1)))}d}"


def plan_videos(config: DemoConfig) -> list[VideoPlan]:
    """Every video's timeline, objects and captions, deterministic in ``config``."""
    check_config(config)
    rng = np.random.default_rng([config.seed, 0])
    n_train, n_val, n_test = split_sizes(config.videos, config.test_fraction, config.val_fraction)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    # One shuffled deck of all descriptions per split: balanced attributes, and distinct test
    # targets while the test split has at most len(deck) videos.
    decks = {split: _description_deck(rng) for split in ("train", "val", "test")}

    drafts = []
    for index, split in enumerate(splits):
        target = _scene_for(rng, next(decks[split]))
        objects = [target]
        if rng.random() < config.two_segment_fraction:
            objects.append(_other_object(rng, target))
        timeline = _plan_timeline(rng, config, len(objects))
        if len(objects) == 2 and rng.random() < 0.5:  # the target is the second segment as often as the first
            objects.reverse()
            timeline = tuple(_swap_objects(entry) for entry in timeline)
        drafts.append((index, split, timeline, tuple(objects), objects.index(target)))

    ambiguous_test = _ambiguous_test_targets(drafts)
    plans = []
    for index, split, timeline, objects, target in drafts:
        video_id = video_id_for(index, config.videos)
        captions = _plan_captions(rng, config, video_id, split, objects, target, index in ambiguous_test)
        plans.append(VideoPlan(index, video_id, split, timeline, objects, target, captions))
    return plans


def _description_deck(rng: np.random.Generator) -> Iterator[tuple[str, str, str, str]]:
    every = list(itertools.product(SHAPES, COLOURS, SIZES, DIRECTIONS))
    while True:
        for position in rng.permutation(len(every)):
            yield every[position]


def _scene_for(rng: np.random.Generator, description: tuple[str, str, str, str]) -> ObjectSpec:
    return ObjectSpec(*description, texture=_pick(rng, TEXTURES), tint=_pick(rng, tuple(TINTS)))


def _other_object(rng: np.random.Generator, target: ObjectSpec) -> ObjectSpec:
    """A clearly different object (other shape and other colour); usually after a scene change."""
    shape = _pick(rng, tuple(s for s in SHAPES if s != target.shape))
    colour = _pick(rng, tuple(c for c in COLOURS if c != target.colour))
    size, direction = _pick(rng, tuple(SIZES)), _pick(rng, tuple(DIRECTIONS))
    if rng.random() < 0.7:
        return ObjectSpec(shape, colour, size, direction, _pick(rng, TEXTURES), _pick(rng, tuple(TINTS)))
    return ObjectSpec(shape, colour, size, direction, target.texture, target.tint)


def _plan_timeline(rng: np.random.Generator, config: DemoConfig, n_objects: int) -> tuple[str, ...]:
    """Whole seconds of object segments with 1-2 s junk blocks inserted anywhere (intro, cut, outro,
    or interrupting a segment, which then continues where it left off)."""
    n_junk = int(rng.integers(config.junk_segments_min, config.junk_segments_max + 1))
    lengths = [2 if rng.random() < 0.3 else 1 for _ in range(n_junk)]
    room = config.seconds - n_objects * config.min_segment_seconds
    while sum(lengths) > room:  # short videos: shorten 2 s blocks first, then drop blocks
        if 2 in lengths:
            lengths[lengths.index(2)] = 1
        else:
            lengths.pop()
    content_seconds = config.seconds - sum(lengths)
    first = content_seconds
    if n_objects == 2:
        first = int(
            rng.integers(config.min_segment_seconds, content_seconds - config.min_segment_seconds + 1)
        )
    content = ["object:0"] * first + ["object:1"] * (content_seconds - first)
    kinds = [_pick(rng, JUNK_KINDS) for _ in lengths]
    positions = rng.integers(0, len(content) + 1, size=len(lengths))
    # insert from the back so earlier positions stay valid
    for position, kind, length in sorted(zip(positions.tolist(), kinds, lengths, strict=True), reverse=True):
        content[position:position] = [f"junk:{kind}"] * length
    return tuple(content)


def _swap_objects(entry: str) -> str:
    return {"object:0": "object:1", "object:1": "object:0"}.get(entry, entry)


def _ambiguous_test_targets(drafts: Sequence[tuple]) -> set[int]:
    """Test videos whose target description alone also fits an object of another test video."""
    holders: dict[tuple, set[int]] = {}
    for index, split, _timeline, objects, _target in drafts:
        if split == "test":
            for obj in objects:
                holders.setdefault(obj.description, set()).add(index)
    return {
        index
        for index, split, _timeline, objects, target in drafts
        if split == "test" and len(holders[objects[target].description]) > 1
    }


def _plan_captions(
    rng: np.random.Generator,
    config: DemoConfig,
    video_id: str,
    split: str,
    objects: tuple[ObjectSpec, ...],
    target: int,
    must_name_scene: bool,
) -> tuple[CaptionSpec, ...]:
    """Captions with distinct templates (cycling when more captions than templates) and texts.

    Test captions all name the target; a train/val caption after the first names the other object
    with probability ``other_segment_caption_fraction``. A test caption whose description is
    ambiguous within the test split always names the scene, as a human annotator would."""
    count = config.test_captions_per_video if split == "test" else config.captions_per_video
    templates = [int(t) for t in rng.permutation(len(TEMPLATES))]
    captions: list[CaptionSpec] = []
    texts: set[str] = set()
    for k in range(count):
        named = target
        if (
            split != "test"
            and k > 0
            and len(objects) == 2
            and rng.random() < config.other_segment_caption_fraction
        ):
            named = 1 - target
        mention = bool(rng.random() < config.scene_mention_fraction) or (split == "test" and must_name_scene)
        template = TEMPLATES[templates[k % len(templates)]]
        text = compose_caption(rng, objects[named], template, mention)
        for _retry in range(20):  # a cycled template may repeat a text: draw other synonyms
            if text not in texts:
                break
            text = compose_caption(rng, objects[named], TEMPLATES[int(rng.integers(len(TEMPLATES)))], mention)
        texts.add(text)
        captions.append(CaptionSpec(f"{video_id}_c{k}", named, mention, text))
    return tuple(captions)


def compose_caption(rng: np.random.Generator, obj: ObjectSpec, template: str, mention_scene: bool) -> str:
    """Fill ``template`` with a random wording of ``obj``'s attributes (and its scene)."""

    def word(value: str) -> str:
        return _pick(rng, SYNONYMS[value])

    scene = ""
    if mention_scene:
        scene = f" {_pick(rng, SCENE_PREPOSITIONS)} A_ {word(obj.texture)} {word(obj.tint)} {_pick(rng, SCENE_NOUNS)}"
    text = template.format(
        size=word(obj.size),
        colour=word(obj.colour),
        shape=word(obj.shape),
        direction=word(obj.direction),
        verb=_pick(rng, VERBS),
        gerund=_pick(rng, GERUNDS),
        scene=scene,
    )
    return re.sub(r"A_ (\w)", lambda m: ("an " if m.group(1) in "aeiou" else "a ") + m.group(1), text)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


# ---- rendering ----------------------------------------------------------------------------------


def render_video(plan: VideoPlan, config: DemoConfig) -> np.ndarray:
    """uint8 RGB frames [seconds * fps, height, width, 3] of one planned video."""
    rng = np.random.default_rng([config.seed, plan.index, 1])
    fps, height, width = config.fps, config.height, config.width
    frames = np.empty((len(plan.timeline) * fps, height, width, 3), np.uint8)
    for object_index, obj in enumerate(plan.objects):
        seconds = plan.seconds_of(object_index)
        frame_ids = [s * fps + f for s in seconds for f in range(fps)]
        scene = _ObjectScene.draw(rng, obj, width, height, len(frame_ids))
        for k, frame_id in enumerate(frame_ids):
            frames[frame_id] = scene.frame(k)
    for kind, start, stop in _junk_runs(plan.timeline):
        frames[start * fps : stop * fps] = _junk_frames(rng, kind, (stop - start) * fps, width, height)
    return frames


def _junk_runs(timeline: Sequence[str]) -> Iterator[tuple[str, int, int]]:
    """(kind, first second, end second) of every run of identical junk seconds."""
    second = 0
    for entry, run in itertools.groupby(timeline):
        length = len(list(run))
        if entry.startswith("junk:"):
            yield entry.removeprefix("junk:"), second, second + length
        second += length


@dataclass
class _ObjectScene:
    """A moving object with a fading trail over a panning textured background."""

    tile: np.ndarray  # background, PAN_MARGIN pixels larger than the frame
    pan_start: np.ndarray  # (x, y) offset into the tile at the first frame
    pan_step: np.ndarray  # offset change per frame
    sprite: np.ndarray  # alpha mask of the object and its trail
    colour: np.ndarray
    centre: np.ndarray  # (x, y) of the object at the first frame
    step: np.ndarray  # (x, y) per frame along the path
    width: int
    height: int

    @classmethod
    def draw(
        cls, rng: np.random.Generator, obj: ObjectSpec, width: int, height: int, frames: int
    ) -> _ObjectScene:
        stage = min(width, height)  # objects stay inside the central square that a center crop keeps
        radius = SIZES[obj.size] * stage
        direction = np.array(DIRECTIONS[obj.direction])
        centre = np.array([width / 2, height / 2]) + rng.uniform(-JITTER, JITTER, 2) * stage
        pan_total = rng.uniform(-0.8, 0.8, 2) * PAN_MARGIN
        pan_start = rng.uniform(np.maximum(0, -pan_total), PAN_MARGIN - np.maximum(0, pan_total))
        span = max(frames - 1, 1)
        return cls(
            tile=_texture(rng, obj.texture, TINTS[obj.tint], width + PAN_MARGIN, height + PAN_MARGIN),
            pan_start=pan_start,
            pan_step=pan_total / span,
            sprite=trail_sprite(obj.shape, round(radius, 2), obj.direction),
            colour=np.array(COLOURS[obj.colour], np.float32),
            centre=centre - direction * TRAVEL * stage / 2,
            step=direction * TRAVEL * stage / span,
            width=width,
            height=height,
        )

    def frame(self, k: int) -> np.ndarray:
        x0, y0 = np.rint(self.pan_start + self.pan_step * k).astype(int)
        image = self.tile[y0 : y0 + self.height, x0 : x0 + self.width].copy()
        _blit(image, self.sprite, self.colour, self.centre + self.step * k, 1.0)
        return image


def _blit(
    image: np.ndarray, mask: np.ndarray, colour: np.ndarray, centre: np.ndarray, opacity: float
) -> None:
    """Alpha-blend ``colour`` through ``mask`` centred at ``centre`` (x, y), clipped to the image."""
    size = mask.shape[0]
    left, top = int(round(centre[0])) - size // 2, int(round(centre[1])) - size // 2
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size, image.shape[1]), min(top + size, image.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    alpha = mask[y0 - top : y1 - top, x0 - left : x1 - left, None] * opacity
    region = image[y0:y1, x0:x1].astype(np.float32)
    image[y0:y1, x0:x1] = np.rint(region + alpha * (colour - region)).astype(np.uint8)


@functools.cache
def sprite(shape: str, radius: float) -> np.ndarray:
    """Anti-aliased float32 alpha mask (odd square) of ``shape`` with circumradius ``radius`` px."""
    size = 2 * int(np.ceil(radius * 1.1)) + 3
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - size / 2
    y, x = np.meshgrid(offsets / radius, offsets / radius, indexing="ij")
    inside = _inside(shape, x, y)
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


@functools.cache
def trail_sprite(shape: str, radius: float, direction: str) -> np.ndarray:
    """The object's mask merged with its fading ghosts, centred on the object.

    Blending one colour layer after layer equals one blend with alpha ``1 - prod(1 - a_i)``,
    so a frame needs one blit instead of one per ghost."""
    base = sprite(shape, radius)
    step = np.array(DIRECTIONS[direction]) * TRAIL_SPACING * radius
    offsets = [np.rint(-step * ghost).astype(int) for ghost in range(len(TRAIL_OPACITY) + 1)]
    pad = int(max(abs(offset).max() for offset in offsets))
    size = base.shape[0]
    transparency = np.ones((size + 2 * pad, size + 2 * pad), np.float32)
    for (dx, dy), opacity in zip(offsets, (1.0, *TRAIL_OPACITY), strict=True):
        transparency[pad + dy : pad + dy + size, pad + dx : pad + dx + size] *= 1 - opacity * base
    return 1 - transparency


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (in radii, y down) lie inside ``shape``."""
    r2 = x * x + y * y
    if shape == "circle":
        return r2 <= 1
    if shape == "ring":
        return (r2 <= 1) & (r2 >= 0.5**2)
    if shape == "crescent":
        return (r2 <= 1) & ((x - 0.45) ** 2 + y * y >= 0.8**2)
    if shape == "square":
        return np.maximum(abs(x), abs(y)) <= 0.82
    if shape == "diamond":
        return abs(x) + abs(y) <= 1.05
    if shape == "cross":
        return ((abs(x) <= 1) & (abs(y) <= 0.34)) | ((abs(x) <= 0.34) & (abs(y) <= 1))
    if shape == "triangle":
        return _inside_polygon(x, y, [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)])
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return _inside_polygon(x, y, list(zip(radii * np.cos(angles), radii * np.sin(angles), strict=True)))
    raise ValueError(f"unknown shape {shape!r}")


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over the points."""
    inside = np.zeros(x.shape, bool)
    for (xa, ya), (xb, yb) in zip(vertices, list(vertices[1:]) + [vertices[0]], strict=True):
        crosses = (ya > y) != (yb > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (x < x_cross)
    return inside


def _texture(
    rng: np.random.Generator, texture: str, tint: Sequence[int], width: int, height: int
) -> np.ndarray:
    """uint8 RGB background: ``tint`` modulated by a pattern in [-1, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if texture == "stripes":
        angle = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi
        period = rng.uniform(8, 16)
        phase = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform()
        pattern = np.clip(np.sin(2 * np.pi * phase) * 2.5, -1, 1)
    elif texture == "checks":
        cell = int(rng.integers(7, 14))
        pattern = np.where(((x // cell) + (y // cell)) % 2 == 0, 1.0, -1.0)
    elif texture == "dots":
        spacing = int(rng.integers(10, 17))
        distance = np.hypot(x % spacing - spacing / 2, y % spacing - spacing / 2)
        pattern = np.where(distance < 0.28 * spacing, 1.0, -0.4)
    elif texture == "grain":
        coarse = rng.uniform(-1, 1, (height // 6 + 2, width // 6 + 2))
        pattern = np.kron(coarse, np.ones((6, 6)))[:height, :width]
        pattern = 0.7 * pattern + rng.uniform(-0.3, 0.3, (height, width))
    else:
        raise ValueError(f"unknown texture {texture!r}")
    tile = np.asarray(tint, np.float32) * (1 + TEXTURE_CONTRAST * pattern[..., None])
    return np.clip(np.rint(tile), 0, 255).astype(np.uint8)


def _junk_frames(rng: np.random.Generator, kind: str, count: int, width: int, height: int) -> np.ndarray:
    """Uninformative frames: what intros, scene cuts and outros look like to a frame sampler."""
    frames = np.empty((count, height, width, 3), np.uint8)
    if kind == "blank":  # fade to black
        frames[:] = int(rng.integers(0, 25))
    elif kind == "flash":  # a full-frame colour: misleads colour pooling
        frames[:] = np.rint(np.array(COLOURS[_pick(rng, tuple(COLOURS))]) * rng.uniform(0.7, 1.0)).astype(
            np.uint8
        )
    elif kind == "noise":  # blocky static, new every frame
        block = 4
        for k in range(count):
            static = rng.integers(0, 256, (height // block + 1, width // block + 1, 3), dtype=np.uint8)
            frames[k] = np.repeat(np.repeat(static, block, 0), block, 1)[:height, :width]
    elif kind == "clutter":  # many small shapes of many colours: evidence for the wrong captions
        frames[:] = _clutter(rng, width, height)
    elif kind == "title":  # an intro card: light "text lines" on a dark plate
        card = np.empty((height, width, 3), np.uint8)
        card[:] = rng.integers(10, 60, 3).astype(np.uint8)
        lines = int(rng.integers(2, 5))
        for row in np.linspace(0.3, 0.7, lines) * height:
            half = int(rng.uniform(0.15, 0.4) * width)
            card[int(row) - 2 : int(row) + 2, width // 2 - half : width // 2 + half] = 225
        frames[:] = card
    else:
        raise ValueError(f"unknown junk kind {kind!r}")
    return frames


def _clutter(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    image = _texture(rng, _pick(rng, TEXTURES), TINTS[_pick(rng, tuple(TINTS))], width, height)
    stage = min(width, height)
    for _ in range(int(rng.integers(10, 21))):
        mask = sprite(_pick(rng, SHAPES), round(float(rng.uniform(0.04, 0.1)) * stage, 2))
        colour = np.array(COLOURS[_pick(rng, tuple(COLOURS))], np.float32)
        _blit(image, mask, colour, rng.uniform(0, 1, 2) * (width, height), 1.0)
    return image


# ---- encoding -----------------------------------------------------------------------------------


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int) -> None:
    """Write uint8 RGB ``frames`` as H.264 yuv420p in MP4, byte-identical for identical input.

    In-process libx264 through PyAV (about 2x the throughput of piping into an ffmpeg process).
    Determinism: one encoder thread, C routines only (see X264_PARAMS), explicit timestamps,
    bitexact flags, and nothing time- or host-dependent in the container (the mp4 muxer stores no
    creation time unless asked to)."""
    height, width = frames.shape[1:3]
    time_base = Fraction(1, fps)
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {
            "crf": str(crf),
            "preset": X264_PRESET,
            "x264-params": X264_PARAMS,
            "g": str(2 * fps),  # a keyframe every 2 s: seeking decoders have something to seek to
            "threads": "1",
            "flags": "+bitexact",
        }
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_and_encode(plans: Sequence[VideoPlan], config: DemoConfig, videos_dir: Path) -> int:
    """Worker task: write the mp4 of each plan; returns how many were written."""
    for plan in plans:
        encode_mp4(render_video(plan, config), videos_dir / f"{plan.video_id}.mp4", config.fps, config.crf)
    return len(plans)


# ---- the stage ----------------------------------------------------------------------------------


def generate_demo(out_dir: Path, config: DemoConfig, progress: bool = True, workers: int = 1) -> Path:
    """Write the demo benchmark into ``out_dir``: ``videos/<id>.mp4``, ``videos.csv``,
    ``captions.csv`` and ``demo.json`` (the ground truth: timelines, objects, relevant seconds of
    every caption, summary). Built in ``<out_dir>.partial`` and renamed when complete; an existing
    ``out_dir`` is replaced only if it is an earlier demo output."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    plans = plan_videos(config)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    videos_dir = partial / "videos"
    videos_dir.mkdir(parents=True)

    batches = [plans[i : i + 8] for i in range(0, len(plans), 8)]
    with _progress(progress, len(plans)) as advance:
        if workers <= 1:
            for batch in batches:
                advance(render_and_encode(batch, config, videos_dir))
        else:
            # spawn: the caller may hold threads (torch, dask) that a forked child must not inherit
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(render_and_encode, batch, config, videos_dir) for batch in batches]
                for future in concurrent.futures.as_completed(futures):
                    advance(future.result())

    write_manifest(
        partial,
        [(p.video_id, f"videos/{p.video_id}.mp4", p.split) for p in plans],
        [(c.caption_id, p.video_id, c.text) for p in plans for c in p.captions],
    )
    meta = {
        "generator_version": GENERATOR_VERSION,
        "config": config.model_dump(mode="json", exclude={"out"}),
        "encoder": {
            "library": f"PyAV {av.__version__}",
            "codec": "libx264",
            "preset": X264_PRESET,
            "params": X264_PARAMS,
            "crf": config.crf,
        },
        "summary": summarize(plans),
        "videos": [plan.to_json() for plan in plans],
    }
    (partial / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise FileExistsError(
            f"{out_dir}: directory is not empty and is not an earlier demo output (no {META_FILE}); "
            "choose another directory"
        )


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(count)``: a progress bar on stderr, or nothing."""
    if not enabled:
        yield lambda count: None
        return
    with progress_bar() as bar:
        task = bar.add_task("demo videos", total=total, status="")
        yield lambda count: bar.advance(task, count)


def summarize(plans: Sequence[VideoPlan]) -> dict:
    """How hard the benchmark is: nuisance shares and the best R@1 any model could reach on test."""
    seconds = sum(len(p.timeline) for p in plans)
    junk_seconds = sum(entry.startswith("junk:") for p in plans for entry in p.timeline)
    named_shares = [len(p.seconds_of(c.object_index)) / len(p.timeline) for p in plans for c in p.captions]
    splits = {split: sum(p.split == split for p in plans) for split in ("train", "val", "test")}
    return {
        "videos": len(plans),
        "captions": sum(len(p.captions) for p in plans),
        "splits": splits,
        "two_segment_videos": sum(len(p.objects) == 2 for p in plans),
        "junk_seconds_fraction": round(junk_seconds / seconds, 4),
        "named_object_seconds_fraction": round(float(np.mean(named_shares)), 4),
        "test_oracle_r1": round(oracle_r1(plans), 4),
        **{f"test_ideal_r1_{pool}": round(r1, 4) for pool, r1 in pooling_oracles(plans).items()},
    }


def oracle_r1(plans: Sequence[VideoPlan]) -> float:
    """Expected text-to-video R@1 of a model that reads captions and frames perfectly: a test
    caption that fits k test videos (same object description, and same scene if it names one)
    is ranked first with probability 1/k under random tie-breaking."""
    test = [p for p in plans if p.split == "test"]
    by_description: dict[tuple, set[int]] = {}
    by_description_and_scene: dict[tuple, set[int]] = {}
    for plan in test:
        for obj in plan.objects:
            by_description.setdefault(obj.description, set()).add(plan.index)
            by_description_and_scene.setdefault((obj.description, obj.scene), set()).add(plan.index)
    scores = []
    for plan in test:
        for caption in plan.captions:
            named = plan.objects[caption.object_index]
            if caption.mentions_scene:
                fitting = by_description_and_scene[(named.description, named.scene)]
            else:
                fitting = by_description[named.description]
            scores.append(1 / len(fitting))
    return float(np.mean(scores)) if scores else 0.0


def pooling_oracles(plans: Sequence[VideoPlan]) -> dict[str, float]:
    """Expected test R@1 of two idealised models that recognise every attribute of every frame
    perfectly and score a (caption, frame) pair by the share of the caption's four object
    attributes the frame shows (junk frames: 0). ``mean_pool`` averages the frame scores over the
    video's seconds, which is exactly what a mean-pooled video vector does with a linear score;
    ``best_frame`` takes the best frame, as a text-conditioned teacher can. The gap between the two
    is the headroom that junk frames and the second segment leave for fine-grained teachers."""
    test = [p for p in plans if p.split == "test"]
    if not test:
        return {"mean_pool": 0.0, "best_frame": 0.0}
    vocab = (SHAPES, tuple(COLOURS), tuple(SIZES), tuple(DIRECTIONS))
    seconds = max(len(p.timeline) for p in test)
    shown = np.full((len(test), seconds, 4), -1)  # attribute codes per second; -1: junk (or padding)
    for row, plan in enumerate(test):
        for second, entry in enumerate(plan.timeline):
            if entry.startswith("object:"):
                obj = plan.objects[int(entry.removeprefix("object:"))]
                shown[row, second] = [
                    names.index(value) for names, value in zip(vocab, obj.description, strict=True)
                ]
    present = shown[:, :, 0] >= 0
    lengths = np.array([len(p.timeline) for p in test])
    r1: dict[str, list[float]] = {"mean_pool": [], "best_frame": []}
    for row, plan in enumerate(test):
        for caption in plan.captions:
            named = plan.objects[caption.object_index].description
            codes = [names.index(value) for names, value in zip(vocab, named, strict=True)]
            frame_scores = np.where(present, (shown == codes).mean(axis=2), 0.0)
            for pool, scores in (
                ("mean_pool", frame_scores.sum(axis=1) / lengths),
                ("best_frame", frame_scores.max(axis=1)),
            ):
                own = scores[row]
                r1[pool].append(0.0 if (scores > own + 1e-12).any() else 1 / np.isclose(scores, own).sum())
    return {pool: float(np.mean(values)) for pool, values in r1.items()}
