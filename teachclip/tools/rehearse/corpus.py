"""An MSR-VTT-shaped corpus: the official annotation files and videos like the real ones, N of them.

Layout (what ``teach prepare --dataset msrvtt`` reads, docs/datasets.md):

    OUT/MSRVTT_data.json          {"info", "videos": [{video_id, category, url, "start time", "end time",
                                  split, id}], "sentences": [{caption, video_id, sen_id}]}
    OUT/MSRVTT_train.9k.csv       video_id          (every video not in the 1k-A test)
    OUT/MSRVTT_train.7k.csv       video_id          (the official train + validate videos)
    OUT/MSRVTT_JSFUSION_test.csv  key,vid_key,video_id,sentence   (ret0, msr{n}, video{n}, one caption)
    OUT/videos/all/video{n}.mp4   320x240, 30 fps, 10-30 s, H.264 (libx264, its default GOP of 250) + AAC

The videos are ffmpeg's procedural sources (moving test patterns, cellular automata, gradients) with
hue shifts and temporal noise, so they decode like camera footage (every frame differs) rather than
like a still; their lengths are drawn in [min_seconds, max_seconds] like MSR-VTT's, so clips under 12 s
exist and decode pads them (12 frames at 1 fps need 11+ s). Everything is a pure function of the seed:
one video's bytes depend only on (seed, its number), whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from teachclip.core.errors import InputError
from teachclip.core.files import atomic_write
from teachclip.core.progress import progress_bar

WIDTH, HEIGHT, FPS = 320, 240, 30
CATEGORIES = 20  # MSR-VTT's category ids 0..19
# The official split by video number scaled to N videos: 6513 train / 497 validate / 2990 test of 10,000
TRAIN_FRACTION, VALIDATE_FRACTION = 0.6513, 0.0497

SUBJECTS = ("a man", "a woman", "a boy", "a girl", "two people", "a group of kids", "a chef", "a dog",
            "a cat", "a singer", "a reporter", "a player", "an old man", "a band", "a cartoon character")
ACTIONS = ("is talking about", "is cooking", "is playing", "is driving", "is showing", "is singing about",
           "is explaining", "is walking past", "is riding", "is dancing next to", "is fixing", "is holding")
OBJECTS = ("a car", "a guitar", "some pasta", "a football", "a video game", "the news", "a horse",
           "a recipe", "a phone", "the weather", "a computer", "a bike", "a song", "a house", "the crowd")
PLACES = ("", "in a kitchen", "on a stage", "on the street", "in a field", "at a studio", "on tv",
          "in a room", "at the beach", "in a stadium")
EXTRA = ("while people watch and cheer loudly in the background of a very crowded and noisy hall "
         "full of excited fans who came from all over the country to see the show tonight")


class CorpusError(InputError):
    """An output folder holding a corpus made with other settings."""


@dataclass(frozen=True)
class CorpusSpec:
    train_videos: int = 48
    test_videos: int = 16
    captions_per_video: int = 20
    min_seconds: float = 10.0
    max_seconds: float = 30.0
    x264_preset: str = "medium"
    seed: int = 0

    @property
    def videos(self) -> int:
        return self.train_videos + self.test_videos


@dataclass(frozen=True)
class VideoPlan:
    number: int
    seconds: float
    source: str  # the lavfi video graph
    audio: str  # the lavfi audio source
    category: int

    @property
    def video_id(self) -> str:
        return f"video{self.number}"


def corpus_spec(config, videos: int | None = None) -> CorpusSpec:
    """The corpus a :class:`teachclip.core.config.RehearseConfig` asks for (``videos``: train + test in
    all, overriding its train_videos)."""
    train = config.train_videos if videos is None else videos - config.test_videos
    if train < 1:
        raise CorpusError(f"{videos} videos leave no train video beside {config.test_videos} test videos")
    return CorpusSpec(train, config.test_videos, config.captions_per_video, config.min_seconds,
                      config.max_seconds, config.x264_preset, config.seed)


def plan_video(spec: CorpusSpec, number: int) -> VideoPlan:
    """What video ``number`` shows: a pure function of (seed, number)."""
    rng = np.random.default_rng([spec.seed, number])
    seconds = round(float(rng.uniform(spec.min_seconds, spec.max_seconds)), 2)
    size, rate, seed = f"{WIDTH}x{HEIGHT}", FPS, int(rng.integers(0, 2**31 - 1))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        source = f"testsrc2=size={size}:rate={rate}"
    elif kind == 1:
        # cellular sources at a quarter of the size, scaled up: blobs rather than pixel noise
        source = (f"life=size={WIDTH // 4}x{HEIGHT // 4}:rate={rate}:seed={seed}:mold=10:ratio=0.{int(rng.integers(1, 6))}"
                  f":mold_color=#{int(rng.integers(0, 2**24)):06x},scale={WIDTH}:{HEIGHT}:flags=bicubic")
    elif kind == 2:
        source = (f"cellauto=size={WIDTH // 4}x{HEIGHT // 4}:rate={rate}:seed={seed}"
                  f":rule={int(rng.choice([18, 30, 90, 110, 150]))}:scroll=1:full=1,scale={WIDTH}:{HEIGHT}:flags=bicubic")
    else:
        source = f"gradients=size={size}:rate={rate}:seed={seed}:speed=0.0{int(rng.integers(1, 9))}:nb_colors={int(rng.integers(2, 8))}"
    hue = int(rng.integers(0, 360))
    noise = int(rng.integers(1, 5))
    graph = f"{source},format=yuv420p,hue=h={hue},noise=alls={noise}:allf=t:all_seed={seed % 65536}"
    audio = f"sine=frequency={int(rng.integers(110, 880))}:sample_rate=44100:duration={seconds}"
    return VideoPlan(number, seconds, graph, audio, int(rng.integers(0, CATEGORIES)))


def captions_for(spec: CorpusSpec, number: int) -> list[str]:
    """``captions_per_video`` captions of video ``number`` (about 9 words, like MSR-VTT's; every 40th is
    long enough to be cut at 32 tokens)."""
    rng = np.random.default_rng([spec.seed, number, 1])
    captions = []
    for k in range(spec.captions_per_video):
        words = [str(rng.choice(SUBJECTS)), str(rng.choice(ACTIONS)), str(rng.choice(OBJECTS)), str(rng.choice(PLACES))]
        if (number * spec.captions_per_video + k) % 40 == 39:
            words.append(EXTRA)
        captions.append(" ".join(w for w in words if w))
    return captions


def encode_command(ffmpeg: str, plan: VideoPlan, out: Path, preset: str) -> list[str]:
    """One ffmpeg call: bit-exact flags and one thread, so the bytes depend on the plan only."""
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", plan.source, "-f", "lavfi", "-i", plan.audio,
        "-t", f"{plan.seconds}", "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "96k", "-ac", "2",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", "-f", "mp4", str(out),
    ]


def _encode(ffmpeg: str, plan: VideoPlan, out: Path, preset: str) -> None:
    if out.exists():  # a finished video (written under a temporary name, then renamed)
        return

    def write(tmp: Path) -> None:
        result = subprocess.run(encode_command(ffmpeg, plan, tmp, preset), capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed on {out.name}: {result.stderr.decode(errors='replace')[-500:]}")

    atomic_write(out, write)


def splits(spec: CorpusSpec) -> tuple[list[int], list[int], dict[int, str]]:
    """(9k train numbers, 1k-A test numbers, official split per number). As in MSR-VTT, the 1k-A test
    videos come from the official test range and the 9k train set is everything else."""
    total = spec.videos
    # the 1k-A videos (the last test_videos) always lie in the official test range
    validate_end = min(round(total * (TRAIN_FRACTION + VALIDATE_FRACTION)), total - spec.test_videos)
    train_end = min(round(total * TRAIN_FRACTION), validate_end)
    official = {n: "train" if n < train_end else "validate" if n < validate_end else "test" for n in range(total)}
    test = list(range(total - spec.test_videos, total))
    train = [n for n in range(total) if n not in set(test)]
    return train, test, official


def write_msrvtt_like(out: str | Path, spec: CorpusSpec, *, workers: int = 2, ffmpeg: str | None = None,
                      progress: bool = True) -> Path:
    """Write the corpus into ``out`` (resumable: finished videos are kept; a corpus of other settings
    is refused). Returns ``out``."""
    from teachclip.video import ffmpeg_binary_path

    out = Path(out)
    if spec.min_seconds > spec.max_seconds:
        raise CorpusError(f"min_seconds {spec.min_seconds} > max_seconds {spec.max_seconds}")
    settings = out / "corpus.json"
    if settings.exists():
        recorded = json.loads(settings.read_text())
        if recorded != asdict(spec):
            raise CorpusError(f"{settings}: a corpus of other settings ({recorded}); choose another folder")
    videos_dir = out / "videos" / "all"
    videos_dir.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(asdict(spec), indent=2))

    train, test, official = splits(spec)
    plans = [plan_video(spec, n) for n in range(spec.videos)]
    videos, sentences = [], []
    for plan in plans:
        start = round(float(np.random.default_rng([spec.seed, plan.number, 2]).uniform(0, 300)), 2)
        videos.append({"category": plan.category, "url": f"https://www.youtube.com/watch?v=rehearsal{plan.number}",
                       "video_id": plan.video_id, "start time": start, "end time": round(start + plan.seconds, 2),
                       "split": official[plan.number], "id": plan.number})
        for caption in captions_for(spec, plan.number):
            sentences.append({"caption": caption, "video_id": plan.video_id, "sen_id": len(sentences)})
    data = {"info": {"contributor": "teachclip rehearsal (generated)", "data_created": "2016-04-01 12:00:00",
                     "version": "1.0", "description": "MSR-VTT-shaped corpus", "year": "2016"},
            "videos": videos, "sentences": sentences}
    text = json.dumps(data)
    atomic_write(out / "MSRVTT_data.json", lambda tmp: tmp.write_text(text))
    _write_csv(out / "MSRVTT_train.9k.csv", ["video_id"], [[f"video{n}"] for n in train])
    _write_csv(out / "MSRVTT_train.7k.csv", ["video_id"],
               [[f"video{n}"] for n in range(spec.videos) if official[n] != "test"])
    jsfusion = []
    for key, n in enumerate(test):
        pick = int(np.random.default_rng([spec.seed, n, 3]).integers(0, spec.captions_per_video))
        jsfusion.append([f"ret{key}", f"msr{n}", f"video{n}", captions_for(spec, n)[pick]])
    _write_csv(out / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], jsfusion)

    binary = ffmpeg_binary_path(ffmpeg)
    with progress_bar(enabled=progress) as bar, ThreadPoolExecutor(max(1, workers)) as pool:
        task = bar.add_task("encode MSR-VTT-like videos", total=len(plans), status="")
        jobs = [pool.submit(_encode, binary, plan, videos_dir / f"{plan.video_id}.mp4", spec.x264_preset)
                for plan in plans]
        for job in jobs:
            job.result()
            bar.advance(task)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
