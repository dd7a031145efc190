"""``teach demo-data``: the built-in demo benchmark, procedurally generated videos of moving shapes with
the nuisances of real video (junk frames, two-segment videos, varied caption wording). Grammar:
docs/demo-data.md; vocabulary and pixels: :mod:`teachclip.demo`.

Two phases, so that the output never depends on the number of worker processes:

1. :func:`plan_videos` makes every decision that captions and splits depend on (timelines, objects,
   caption wording) with one sequential RNG in this process. It is cheap, and it can enforce
   constraints over the whole test split (distinct test targets, disambiguating test captions).
2. :func:`teachclip.demo.render.render_and_encode` turns plans into H.264 ``.mp4`` files in any order.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import multiprocessing
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from teachclip.core.config import ConfigError, DemoConfig
from teachclip.core.manifest import write_manifest
from teachclip.core.progress import progress_bar
from teachclip.demo.render import X264_PARAMS, X264_PRESET, render_and_encode
from teachclip.demo.vocabulary import (
    COLOURS,
    DIRECTIONS,
    GENERATOR_VERSION,
    JUNK_KINDS,
    META_FILE,
    SHAPES,
    SIZES,
    TEMPLATES,
    TEXTURES,
    TINTS,
    CaptionSpec,
    ObjectSpec,
    VideoPlan,
    compose_caption,
    pick,
)

# ---- plans --------------------------------------------------------------------------------------


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
    return ObjectSpec(*description, texture=pick(rng, TEXTURES), tint=pick(rng, tuple(TINTS)))


def _other_object(rng: np.random.Generator, target: ObjectSpec) -> ObjectSpec:
    """A clearly different object (other shape and other colour); usually after a scene change."""
    shape = pick(rng, tuple(s for s in SHAPES if s != target.shape))
    colour = pick(rng, tuple(c for c in COLOURS if c != target.colour))
    size, direction = pick(rng, tuple(SIZES)), pick(rng, tuple(DIRECTIONS))
    if rng.random() < 0.7:
        return ObjectSpec(shape, colour, size, direction, pick(rng, TEXTURES), pick(rng, tuple(TINTS)))
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
    kinds = [pick(rng, JUNK_KINDS) for _ in lengths]
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
    with progress_bar(progress) as bar:
        task = bar.add_task("demo videos", total=len(plans), status="")
        if workers <= 1:
            for batch in batches:
                bar.advance(task, render_and_encode(batch, config, videos_dir))
        else:
            # spawn: the caller may hold threads (torch, dask) that a forked child must not inherit
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(render_and_encode, batch, config, videos_dir) for batch in batches]
                for future in concurrent.futures.as_completed(futures):
                    bar.advance(task, future.result())

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
