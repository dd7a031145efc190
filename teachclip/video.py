"""Sampling T frames from one video file, with three interchangeable decoder backends.

The sampling rule (CLIP4Clip's, made exact for variable frame rates; see docs/decode.md):

1. The *timeline* is the sorted presentation timestamps of the video stream's packets, read by
   demuxing only (no decoding). It ends where the last frame stops being shown.
2. Candidate times are ``start + k / sample_fps`` for every k >= 0 before the end (1 frame/s).
3. With n candidates and T = ``frames_per_video``: all of them when n <= T (the rest is zero padding
   with mask False), else candidates ``round_half_up(linspace(0, n - 1, T))``.
4. The frame of a candidate time is the frame on screen at that time: the last one whose timestamp
   is <= the candidate time (exact rational arithmetic, no float drift).
5. Each frame is turned upright as its display matrix says (the same filters the ffmpeg command line
   inserts), its short side scaled to ``size`` (bicubic) and centre-cropped to ``size`` x ``size``
   RGB, by the same libavfilter chain in both backends (:func:`output_filters`).

Backends: ``"pyav"`` decodes in this process, seeks to the keyframe before a sampled frame whenever
that skips decoding, and lets the decoder drop unreferenced frames that are not sampled
(``full_decode=True`` decodes everything instead, which tests compare against);
``"ffmpeg"`` runs the ffmpeg binary (imageio-ffmpeg's, or a configured one) through ffmpeg-python with
a ``select`` filter on the same timestamps. The timeline of both comes from PyAV's demuxer, so both
pick the same frames by construction; the tests check that they also give equal pixels.
``"torchcodec"`` (an optional extra: PyTorch's decoder, which needs FFmpeg's shared libraries) fetches
the same frames by index, on the CPU or on a CUDA GPU (``device``), checks their timestamps against
the timeline, and scales and crops them with torch (bicubic, antialiased). TorchCodec converts whole
frames to RGB before scaling, the other two scale in YUV 4:4:4 first, so its pixels differ from theirs
by rounding and chroma interpolation (within a few levels; tests/test_video.py bounds it), never by
which frame was taken.
"""

from __future__ import annotations

import bisect
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np

from teachclip.core.errors import InputError

BACKENDS = ("pyav", "ffmpeg", "torchcodec")
FALLBACK_RATE = Fraction(25)  # frame rate assumed for raw streams that declare none


class DecoderUnavailableError(InputError):
    """A configured decoder backend that cannot run on this machine (missing package or libraries)."""


class VideoDecodeError(Exception):
    """A video that cannot be sampled; ``reason`` is a short human-readable sentence."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


# ---- timeline and sampling rule ---------------------------------------------------------------


Clip = tuple[float | None, float | None] | None


@dataclass(frozen=True)
class Timeline:
    """Presentation timestamps of one video stream, in units of ``time_base``."""

    stream_index: int
    time_base: Fraction
    pts: tuple[int, ...]  # sorted, unique
    end: int  # first timestamp after the last frame
    keyframes: tuple[int, ...]  # sorted timestamps of keyframes (empty: unknown, never seek)
    has_timestamps: bool  # False: raw stream without timestamps; pts are frame numbers


def sample_positions(
    timeline: Timeline, frames_per_video: int, sample_fps: float, clip: Clip = None
) -> list[int]:
    """Indices into ``timeline.pts`` of the sampled frames (at most ``frames_per_video``, in time
    order, possibly repeated when the video has fewer frames than candidate times).

    ``clip``: (start, end) in seconds from the first frame (either may be None) restricts the
    candidates to that window, as DiDeMo's 0-31 s clips need."""
    if frames_per_video < 1 or sample_fps <= 0:
        raise ValueError("frames_per_video must be >= 1 and sample_fps > 0")
    step = 1 / (Fraction(str(sample_fps)) * timeline.time_base)  # candidate spacing in pts units
    start, end = timeline.pts[0], timeline.end
    if clip is not None:
        clip_start, clip_end = clip
        if clip_start is not None:
            start = timeline.pts[0] + math.ceil(Fraction(str(clip_start)) / timeline.time_base)
        if clip_end is not None:
            end = min(end, timeline.pts[0] + math.floor(Fraction(str(clip_end)) / timeline.time_base))
        if start >= end:
            raise ValueError(f"clip {clip_start}-{clip_end} s lies outside the video")
    candidates = max(1, math.ceil((end - start) / step))
    picks = uniform_picks(candidates, frames_per_video)
    return [bisect.bisect_right(timeline.pts, math.floor(start + k * step)) - 1 for k in picks]


def uniform_picks(n: int, t: int) -> list[int]:
    """``round_half_up(linspace(0, n - 1, t))`` in integers; all of ``range(n)`` when n <= t."""
    if n <= t:
        return list(range(n))
    if t == 1:
        return [0]
    return [(2 * (n - 1) * j + (t - 1)) // (2 * (t - 1)) for j in range(t)]


# ---- opening a file with readable errors ------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_dir():
        raise VideoDecodeError(path, "is a directory, not a video file")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _libav_reason(exc: Exception) -> str:
    """'Invalid data found when processing input (moov atom not found)' from a PyAV error."""
    message = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    log = getattr(exc, "log", None)
    if log and len(log) == 3 and str(log[2]).strip():
        message = f"{message} ({str(log[2]).strip()})"
    return message


class _LibavErrors:
    """Capture libav's error log lines so exceptions carry the reason ("moov atom not found")
    instead of printing it; restores the caller's log level afterwards."""

    def __enter__(self) -> _LibavErrors:
        self._level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)
        self._capture = av.logging.Capture()
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._capture.__exit__(*exc_info)
        av.logging.set_level(self._level)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot open: {_libav_reason(exc)}") from exc
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot open: {exc.strerror or exc}") from exc


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first video stream that is not cover art; a clear error when there is none."""
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoDecodeError(path, f"no video stream (found: {', '.join(kinds)})")
    stream = videos[0]
    if stream.codec_context is None:
        raise VideoDecodeError(path, "unsupported codec: no decoder for this video stream")
    return stream


# ---- timeline from the demuxer ----------------------------------------------------------------


def read_timeline(path: str | Path) -> Timeline:
    """Demux (without decoding) the video stream of ``path`` into a :class:`Timeline`."""
    path = Path(path)
    _check_file(path)
    with _LibavErrors(), _open(path) as container:
        stream = _video_stream(container, path)
        packets = []
        try:
            for packet in container.demux(stream):
                if packet.size:  # size 0: the flush packet at the end
                    packets.append((packet.pts, packet.duration or 0, packet.is_keyframe))
        except av.FFmpegError as exc:
            if not packets:
                raise VideoDecodeError(path, f"cannot read packets: {_libav_reason(exc)}") from exc
            # a damaged tail: sample what could be read
        if not packets:
            raise VideoDecodeError(path, "no video frames")
        if any(pts is None for pts, _, _ in packets):
            return _frame_number_timeline(stream, len(packets))
        return _pts_timeline(stream, packets)


def _pts_timeline(stream, packets: list[tuple[int, int, bool]]) -> Timeline:
    pts = sorted({p for p, _, _ in packets})
    last_duration = max(d for p, d, _ in packets if p == pts[-1])
    if last_duration <= 0:  # unknown: the typical gap between frames
        last_duration = int(np.median(np.diff(pts))) if len(pts) > 1 else 1
    keyframes = sorted({p for p, _, key in packets if key})
    return Timeline(
        stream_index=stream.index,
        time_base=Fraction(stream.time_base),
        pts=tuple(pts),
        end=pts[-1] + max(last_duration, 1),
        keyframes=tuple(keyframes),
        has_timestamps=True,
    )


def _frame_number_timeline(stream, frames: int) -> Timeline:
    """Raw streams (e.g. .h264) carry no timestamps: frame numbers at the declared rate."""
    rate = stream.guessed_rate or stream.average_rate or FALLBACK_RATE
    return Timeline(
        stream_index=stream.index,
        time_base=1 / Fraction(rate),
        pts=tuple(range(frames)),
        end=frames,
        keyframes=(),
        has_timestamps=False,
    )


# ---- the output transform shared by both backends ---------------------------------------------


def output_filters(size: int) -> list[tuple[str, str]]:
    """Short side to ``size`` (bicubic), centre crop ``size`` x ``size``, packed RGB.

    Scaling happens in YUV 4:4:4 (chroma upsampled bicubically along the way) and only the crop is
    converted to RGB: about 5x faster than swscale's combined scale-to-RGB path and within a few
    levels of it. Every conversion is an explicit filter, so no auto-inserted scaler with
    library-dependent defaults takes part.
    """
    return [
        ("scale", f"{size}:{size}:force_original_aspect_ratio=increase:flags=bicubic"),
        ("format", "yuv444p"),
        ("crop", f"{size}:{size}"),
        ("scale", "flags=bicubic"),
        ("format", "rgb24"),
    ]


def _filter_string(filters: list[tuple[str, str]]) -> str:
    return ",".join(f"{name}={args}" for name, args in filters)


def rotation_filters(matrix: tuple[int, ...] | None) -> list[tuple[str, str]]:
    """The filters the ffmpeg command line inserts to honour a display matrix (autorotate)."""
    if matrix is None:
        return []
    theta = _rotation_degrees(matrix)
    if abs(theta - 90) < 1.0:
        return [("transpose", "cclock_flip" if matrix[3] > 0 else "clock")]
    if abs(theta - 180) < 1.0:
        return ([("hflip", "")] if matrix[0] < 0 else []) + ([("vflip", "")] if matrix[4] < 0 else [])
    if abs(theta - 270) < 1.0:
        return [("transpose", "clock_flip" if matrix[3] < 0 else "cclock")]
    if abs(theta) > 1.0:
        return [("rotate", f"{theta:f}*PI/180")]
    return [("vflip", "")] if matrix[4] < 0 else []


def _rotation_degrees(matrix: tuple[int, ...]) -> float:
    """ffmpeg's get_rotation(): clockwise degrees in [0, 360)."""
    scale0 = math.hypot(matrix[0] / 65536, matrix[3] / 65536)
    scale1 = math.hypot(matrix[1] / 65536, matrix[4] / 65536)
    if scale0 == 0 or scale1 == 0:
        return 0.0
    rotation = -math.degrees(math.atan2(matrix[1] / 65536 / scale1, matrix[0] / 65536 / scale0))
    theta = -float(round(rotation))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    for side_data in frame.side_data:
        if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return tuple(int(v) for v in np.frombuffer(bytes(side_data), dtype="<i4")[:9])
    return None


class _RgbConverter:
    """Rotation + scale + crop + RGB through a libavfilter graph, rebuilt when frames change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._graph = None
        self._key = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        matrix = _display_matrix(frame)
        key = (
            frame.width,
            frame.height,
            frame.format.name,
            int(frame.colorspace),
            int(frame.color_range),
            matrix,
        )
        if key != self._key:
            self._graph, self._key = self._build(frame, matrix), key
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()

    def _build(self, frame: av.VideoFrame, matrix) -> av.filter.Graph:
        graph = av.filter.Graph()
        # colour matrix and range as the ffmpeg command line passes them: YUV->RGB depends on both
        time_base = frame.time_base or Fraction(1, 1)
        node = graph.add(
            "buffer",
            f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}"
            f":time_base={time_base.numerator}/{time_base.denominator}:pixel_aspect=1/1"
            f":colorspace={int(frame.colorspace)}:range={int(frame.color_range)}",
        )
        for name, args in rotation_filters(matrix) + output_filters(self.size):
            following = graph.add(name, args or None)
            node.link_to(following)
            node = following
        sink = graph.add("buffersink")
        node.link_to(sink)
        graph.configure()
        return graph


# ---- PyAV backend -----------------------------------------------------------------------------


def _frames(container, stream, keep: frozenset[int] | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames from the current position. With ``keep``, frames that nothing references
    and whose timestamp is not in ``keep`` are skipped by the decoder (about half the work for
    H.264 with B-frames; the frames that are decoded come out bit-identical)."""
    codec = stream.codec_context
    for packet in container.demux(stream):
        if keep is not None:
            codec.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in keep else "NONREF"
        yield from packet.decode()


class _Cursor:
    """Walks decoded frames forward; answers 'the last frame with pts <= target'."""

    def __init__(self, container, stream, seek_to: int | None, keep: frozenset[int] | None) -> None:
        if seek_to is not None:
            container.seek(seek_to, backward=True, any_frame=False, stream=stream)
        self.frames = _frames(container, stream, keep)
        self.held: av.VideoFrame | None = None  # the answer to the previous target
        self.ahead: av.VideoFrame | None = None  # first frame past the previous target
        self.position = seek_to  # decoding has reached at least this timestamp

    def frame_at(self, target: int, path: Path) -> av.VideoFrame | None:
        """None when this cursor started after ``target`` (a seek that overshot)."""
        best = self.held
        if self.ahead is not None:
            if self.ahead.pts > target:
                return best
            best, self.ahead = self.ahead, None
        if best is None or best.pts != target:
            for frame in self.frames:
                if frame.pts is None:
                    raise VideoDecodeError(path, "decoded a frame without a timestamp")
                self.position = frame.pts if self.position is None else max(self.position, frame.pts)
                if frame.pts > target:
                    self.ahead = frame
                    break
                best = frame
                if frame.pts == target:
                    break
        self.held = best
        return best


def _configure_decoder(stream, threads: int) -> None:
    stream.codec_context.thread_count = threads
    stream.codec_context.thread_type = "AUTO" if threads > 1 else "SLICE"


def _decode_pyav(
    path: Path, timeline: Timeline, wanted: list[int], size: int, full_decode: bool, threads: int
) -> dict[int, np.ndarray]:
    convert = _RgbConverter(size)
    if timeline.has_timestamps and not full_decode:
        with _open(path) as container:
            found = _frames_fast(container, path, timeline, wanted, threads, convert)
            if found is not None:
                return found
    with _open(path) as container:  # the reference path, and the fallback of the fast one
        stream = _video_stream(container, path)
        _configure_decoder(stream, threads)
        if not timeline.has_timestamps:
            return _decode_by_count(container, stream, wanted, convert)
        cursor = _Cursor(container, stream, None, None)
        out: dict[int, np.ndarray] = {}
        for position in wanted:
            frame = cursor.frame_at(timeline.pts[position], path)
            if frame is None:
                raise VideoDecodeError(
                    path, f"no decodable frame at or before {_seconds(timeline, position)}"
                )
            out[position] = convert(frame)
        return out


def _frames_fast(
    container, path: Path, timeline: Timeline, wanted: list[int], threads: int, convert: _RgbConverter
) -> dict[int, np.ndarray] | None:
    """The sampled frames by seeking and skipping, or None when anything is not exactly as the
    timeline says (a seek that lands elsewhere, a frame the decoder did not produce, a container
    that cannot seek): the caller then decodes everything, so both ways always agree."""
    stream = _video_stream(container, path)
    _configure_decoder(stream, threads)
    targets = {position: timeline.pts[position] for position in wanted}
    cursor = _Cursor(container, stream, None, frozenset(targets.values()))
    cursor.position = timeline.keyframes[0] if timeline.keyframes else timeline.pts[0]
    found = {}
    for position, target in targets.items():
        key = _keyframe_before(timeline.keyframes, target)
        try:
            if key is not None and key > cursor.position:  # jumping there skips decoding
                cursor = _Cursor(container, stream, key, frozenset(targets.values()))
            frame = cursor.frame_at(target, path)
        except av.FFmpegError:
            return None
        if frame is None or frame.pts != target:
            return None
        found[position] = convert(frame)
    return found


def _seconds(timeline: Timeline, position: int) -> str:
    return f"{float(timeline.pts[position] * timeline.time_base):.3f} s"


def _keyframe_before(keyframes: tuple[int, ...], target: int) -> int | None:
    index = bisect.bisect_right(keyframes, target) - 1
    return keyframes[index] if index >= 0 else None


def _decode_by_count(container, stream, wanted: list[int], convert) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    remaining = set(wanted)
    for number, frame in enumerate(_frames(container, stream)):
        if number in remaining:
            out[number] = convert(frame)
            remaining.discard(number)
            if not remaining:
                break
    return out


# ---- ffmpeg backend ---------------------------------------------------------------------------


def ffmpeg_binary_path(configured: str | None = None) -> str:
    """The configured ffmpeg binary, or the one imageio-ffmpeg ships."""
    if configured:
        return configured
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version(binary: str) -> str:
    """First line of ``ffmpeg -version`` ("ffmpeg version n9.0.2-...")."""
    try:
        result = subprocess.run([binary, "-version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"ffmpeg binary {binary!r} does not run: {exc}") from exc
    return result.stdout.splitlines()[0].strip()


def select_expression(timeline: Timeline, wanted: list[int]) -> str:
    """An ffmpeg ``select`` expression true exactly for the wanted frames.

    With timestamps: a window around each frame's time reaching halfway to its neighbours, so the
    float ``t`` ffmpeg computes cannot fall on the wrong side. Without: frame numbers.
    """
    if not timeline.has_timestamps:
        return "+".join(f"eq(n,{i})" for i in wanted)
    seconds = [Fraction(p) * timeline.time_base for p in timeline.pts]
    terms = []
    for i in wanted:
        low = (seconds[i - 1] + seconds[i]) / 2 if i > 0 else seconds[i] - 1
        high = (seconds[i] + seconds[i + 1]) / 2 if i + 1 < len(seconds) else seconds[i] + 1
        terms.append(f"between(t,{float(low)!r},{float(high)!r})")
    return "+".join(terms)


_POINTER = re.compile(r" @ 0x[0-9a-f]+")


def _ffmpeg_reason(stderr: bytes, path: Path) -> str:
    """The last meaningful stderr line, without pointers or the file's own path."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "ffmpeg failed without a message"
    text = _POINTER.sub("", lines[-1] if len(lines) == 1 else "; ".join(lines[-2:]))
    return text.replace(f"file:{path}", path.name).replace(str(path), path.name)


def _decode_ffmpeg(
    path: Path, timeline: Timeline, wanted: list[int], size: int, binary: str, threads: int
) -> dict[int, np.ndarray]:
    import ffmpeg  # ffmpeg-python

    vf = f"select='{select_expression(timeline, wanted)}'," + _filter_string(output_filters(size))
    command = (
        ffmpeg.input(
            f"file:{path}", hide_banner=None, nostdin=None, loglevel="error", copyts=None, threads=threads
        )
        .output(
            "pipe:",
            map=f"0:{timeline.stream_index}",
            vf=vf,
            filter_threads=threads,
            fps_mode="passthrough",  # one output per selected frame (-vsync is gone in ffmpeg 9)
            format="rawvideo",
            pix_fmt="rgb24",
            **{"frames:v": len(wanted)},  # stop decoding after the last sampled frame
        )
        .compile(cmd=binary)
    )
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise VideoDecodeError(path, f"ffmpeg failed: {_ffmpeg_reason(result.stderr, path)}")
    frame_bytes = size * size * 3
    if len(result.stdout) != frame_bytes * len(wanted):
        got = len(result.stdout) // frame_bytes
        raise VideoDecodeError(path, f"ffmpeg returned {got} of {len(wanted)} sampled frames")
    frames = np.frombuffer(result.stdout, dtype=np.uint8).reshape(len(wanted), size, size, 3)
    return dict(zip(wanted, frames, strict=True))


# ---- TorchCodec backend -----------------------------------------------------------------------


def _torchcodec():
    """torchcodec's VideoDecoder, with its FFmpeg libraries loaded (DecoderUnavailableError if not)."""
    try:
        from torchcodec import _core
        from torchcodec.decoders import VideoDecoder

        _core.get_ffmpeg_library_versions()  # loads libtorchcodec and the FFmpeg shared libraries
    except (ImportError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DecoderUnavailableError(
            f"decode.backend torchcodec: not usable here ({first}); install it with "
            f"pip install 'teachclip[torchcodec]' plus FFmpeg's shared libraries (docs/decode.md)") from exc
    return VideoDecoder


def resize_and_crop(frames, size: int):
    """uint8 RGB torch frames [N, H, W, 3] (any device) -> [N, size, size, 3]: short side to ``size``
    (bicubic, antialiased; the long side as ffmpeg's force_original_aspect_ratio=increase rounds
    it), centre crop."""
    import torch
    import torch.nn.functional as F

    height, width = frames.shape[1:3]
    if height <= width:
        new_height, new_width = size, max(size, int(Fraction(width * size, height) + Fraction(1, 2)))
    else:
        new_height, new_width = max(size, int(Fraction(height * size, width) + Fraction(1, 2))), size
    x = frames.permute(0, 3, 1, 2).float()
    if (new_height, new_width) != (height, width):
        x = F.interpolate(x, size=(new_height, new_width), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _decode_torchcodec(
    path: Path, timeline: Timeline, wanted: list[int], size: int, threads: int, device: str
) -> dict[int, np.ndarray]:
    VideoDecoder = _torchcodec()
    if not timeline.has_timestamps:
        raise VideoDecodeError(path, "torchcodec cannot index a raw stream without timestamps (use decode.backend "
                               "pyav or ffmpeg for such files)")
    try:
        decoder = VideoDecoder(str(path), stream_index=timeline.stream_index, dimension_order="NHWC",
                               num_ffmpeg_threads=threads, device=device, seek_mode="exact")
        # the frame on screen halfway to the next one: float seconds cannot land on the wrong side
        times = [float(_halfway(timeline, i)) for i in wanted]
        batch = decoder.get_frames_played_at(seconds=times)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise VideoDecodeError(path, f"torchcodec: {str(exc).strip().splitlines()[0]}") from exc
    # the same frames as the timeline's, by timestamp (within half the shortest gap between frames)
    seconds = [float(timeline.pts[i] * timeline.time_base) for i in wanted]
    gaps = np.diff(np.asarray(timeline.pts, dtype=np.float64)) * float(timeline.time_base)
    slack = float(gaps.min()) / 2 if len(gaps) else 0.5
    for position, want, got in zip(wanted, seconds, batch.pts_seconds.tolist(), strict=True):
        if abs(got - want) > slack:
            raise VideoDecodeError(path, f"torchcodec returned the frame at {got:.3f} s for frame {position} "
                                   f"at {want:.3f} s")
    pictures = batch.data
    if decoder.metadata.rotation is not None:  # a display matrix: turn upright exactly as ffmpeg does
        pictures = _upright(pictures, decoder.metadata.rotation, path)
    frames = resize_and_crop(pictures, size).cpu().numpy()
    return dict(zip(wanted, frames, strict=True))


def _halfway(timeline: Timeline, position: int) -> Fraction:
    """Seconds halfway between frame ``position`` and the next one (or the end of the last one)."""
    following = timeline.pts[position + 1] if position + 1 < len(timeline.pts) else timeline.end
    return (timeline.pts[position] + following) * timeline.time_base / 2


def _upright(frames, rotation: float, path: Path):
    """TorchCodec applies only the rotation part of a display matrix (``rot90`` by ``rotation``
    degrees); ffmpeg's autorotate also mirrors. Undo TorchCodec's turn, then apply the filters
    :func:`rotation_filters` gives ffmpeg for the matrix (read from the first frame by PyAV)."""
    import torch

    with _open(path) as container:
        matrix = _display_matrix(next(container.decode(_video_stream(container, path))))
    frames = torch.rot90(frames, -round(rotation / 90) % 4, dims=(1, 2))
    for name, args in rotation_filters(matrix):
        if name == "hflip":
            frames = frames.flip(2)
        elif name == "vflip":
            frames = frames.flip(1)
        elif (name, args) == ("transpose", "cclock_flip"):
            frames = frames.transpose(1, 2)
        elif (name, args) == ("transpose", "clock"):
            frames = torch.rot90(frames, -1, dims=(1, 2))
        elif (name, args) == ("transpose", "cclock"):
            frames = torch.rot90(frames, 1, dims=(1, 2))
        elif (name, args) == ("transpose", "clock_flip"):
            frames = torch.rot90(frames, -1, dims=(1, 2)).flip(1)
        else:
            raise VideoDecodeError(path, f"torchcodec backend: display matrix needs {name}={args}, which only the "
                                   f"pyav and ffmpeg backends apply")
    return frames.contiguous()


# ---- the one entry point ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplePlan:
    timeline: Timeline
    positions: list[int]  # indices into timeline.pts, one per sampled slot

    @property
    def seconds(self) -> list[float]:
        """Presentation time of each sampled frame."""
        return [float(self.timeline.pts[i] * self.timeline.time_base) for i in self.positions]


def plan_samples(path: str | Path, frames_per_video: int, sample_fps: float, clip: Clip = None) -> SamplePlan:
    timeline = read_timeline(path)
    try:
        return SamplePlan(timeline, sample_positions(timeline, frames_per_video, sample_fps, clip))
    except ValueError as exc:
        raise VideoDecodeError(Path(path), str(exc)) from exc


def sample_frames(
    path: str | Path,
    frames_per_video: int,
    sample_fps: float,
    size: int,
    backend: str = "pyav",
    ffmpeg_binary: str | None = None,
    *,
    full_decode: bool = False,
    threads: int = 1,
    clip: Clip = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, size, size, 3] (zero padded) and mask bool [T] of one video.

    Raises :class:`VideoDecodeError` with a readable reason for anything that cannot be sampled.
    ``full_decode=True`` (pyav) decodes every frame from the start, without seeking or skipping:
    the reference the fast path is tested against. ``threads``: decoder threads. ``clip``: sample
    only inside (start, end) seconds (see :func:`sample_positions`). ``device``: where the torchcodec
    backend decodes ("cpu", "cuda", "cuda:1"; the others always decode on the CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    path = Path(path)
    plan = plan_samples(path, frames_per_video, sample_fps, clip)
    wanted = sorted(set(plan.positions))
    try:
        with _LibavErrors():
            if backend == "pyav":
                decoded = _decode_pyav(path, plan.timeline, wanted, size, full_decode, threads)
            elif backend == "torchcodec":
                decoded = _decode_torchcodec(path, plan.timeline, wanted, size, threads, device)
            else:
                binary = ffmpeg_binary_path(ffmpeg_binary)
                decoded = _decode_ffmpeg(path, plan.timeline, wanted, size, binary, threads)
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"cannot decode: {_libav_reason(exc)}") from exc
    missing = [p for p in wanted if p not in decoded]
    if missing:
        raise VideoDecodeError(
            path, f"decoder stopped early: {len(missing)} of {len(wanted)} sampled frames missing"
        )
    frames = np.zeros((frames_per_video, size, size, 3), dtype=np.uint8)
    mask = np.zeros(frames_per_video, dtype=bool)
    for slot, position in enumerate(plan.positions):
        frames[slot] = decoded[position]
        mask[slot] = True
    return frames, mask


def decoder_identity(backend: str, ffmpeg_binary: str | None = None, device: str = "cpu") -> dict:
    """Name and versions of what produces the pixels; part of the frames fingerprint (for torchcodec
    also its FFmpeg libraries and the device type: a GPU decoder may round differently)."""
    libraries = {name: ".".join(map(str, version)) for name, version in sorted(av.library_versions.items())}
    identity = {"name": backend, "pyav": av.__version__, "libav": libraries}
    if backend == "ffmpeg":
        identity["ffmpeg"] = ffmpeg_version(ffmpeg_binary_path(ffmpeg_binary))
    if backend == "torchcodec":
        _torchcodec()  # a readable error when it cannot run here
        import torch
        import torchcodec
        from torchcodec import _core

        versions = _core.get_ffmpeg_library_versions()
        identity["torchcodec"] = torchcodec.__version__
        identity["torchcodec_ffmpeg"] = {name: ".".join(map(str, value)) if isinstance(value, list) else str(value)
                                         for name, value in sorted(versions.items())}
        identity["device"] = torch.device(device).type
    return identity
