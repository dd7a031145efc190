"""The demo's pixels: one planned video rendered to frames (:func:`render_video`) and encoded to a
deterministic H.264 MP4 (:func:`encode_mp4`). The pixels are a pure function of the plan and
``(seed, index)``, so a process pool may render in any order.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from teachclip.core.config import DemoConfig
from teachclip.demo.vocabulary import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    TINTS,
    ObjectSpec,
    VideoPlan,
    pick,
)

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
        frames[:] = np.rint(np.array(COLOURS[pick(rng, tuple(COLOURS))]) * rng.uniform(0.7, 1.0)).astype(
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
    image = _texture(rng, pick(rng, TEXTURES), TINTS[pick(rng, tuple(TINTS))], width, height)
    stage = min(width, height)
    for _ in range(int(rng.integers(10, 21))):
        mask = sprite(pick(rng, SHAPES), round(float(rng.uniform(0.04, 0.1)) * stage, 2))
        colour = np.array(COLOURS[pick(rng, tuple(COLOURS))], np.float32)
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


