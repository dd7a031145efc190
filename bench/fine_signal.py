"""How much a fine (frame-level) teacher can teach on the demo, from the files `dvc repro` leaves.

    python bench/fine_signal.py [--manifest data/demo] [--teachers data/teachers.zarr]
        [--features data/features.zarr] [--students runs/afa-s0 runs/both-s0] [--tau 1.0]

The demo's `demo.json` records, per caption, the seconds that show the object it names, and per video
which seconds are junk (title cards, flashes, clutter). Decode takes one candidate frame per second
(`decode.sample_fps` 1) and keeps T of them evenly spread, so frame j shows second
``uniform_picks(seconds, T)[j]`` (frame i is second i for the demo's 12 s and 12 frames). Over the
train split this prints:

- per teacher with frame relevance: the mean share of ``softmax(relevance / tau)`` (the fine
  teaching target) on the frames that show the named object, against a uniform weighting's share;
- per student with AFA: the mean share of the AFA pooling weight on junk frames, against uniform.

A teacher's frame target carries caption-specific information (which object); an AFA weight cannot
depend on the caption, so the one caption-independent thing it can learn from those targets is to
down-weight junk: the two figures together say whether fine teaching has anything left to add.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import emit

from teachclip.core.manifest import load_manifest
from teachclip.models.factory import load_model
from teachclip.models.losses import fine_targets
from teachclip.stores import open_for_manifest
from teachclip.stores.teacher_cache import TeacherCacheError, open_teacher_caches
from teachclip.video import uniform_picks


def frames_of_seconds(seconds: list[int], timeline_seconds: int, frames: int) -> list[int]:
    """The frames (of ``frames`` sampled from a ``timeline_seconds`` video at 1 fps) showing ``seconds``."""
    wanted = set(seconds)
    return [j for j, second in enumerate(uniform_picks(timeline_seconds, frames)) if second in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/demo")
    parser.add_argument("--teachers", default="data/teachers.zarr")
    parser.add_argument("--features", default="data/features.zarr", help="a frame-features or a frames store")
    parser.add_argument("--students", nargs="*", default=["runs/afa-s0", "runs/coarse-s0", "runs/both-s0"])
    parser.add_argument("--tau", type=float, default=1.0, help="train_student.fine_temperature")
    args = parser.parse_args()

    truth = json.loads((Path(args.manifest) / "demo.json").read_text())["videos"]
    train = [video for video in truth if video["split"] == "train"]
    manifest = load_manifest(args.manifest)
    store = open_for_manifest(args.features, manifest)
    result: dict = {"benchmark": "fine_signal", "tau": args.tau, "train_videos": len(train), "teachers": {}, "students": {}}

    # one read of the train videos serves every teacher (masks) and every student (features)
    features, mask = store.read(store.index([video["video_id"] for video in train]))
    features, mask = torch.from_numpy(features), torch.from_numpy(np.asarray(mask, dtype=bool))
    captions = [(position, video, caption) for position, video in enumerate(train) for caption in video["captions"]]
    caption_mask = mask[[position for position, _, _ in captions]]
    for group in open_teacher_caches(args.teachers):
        try:
            relevance = group.frame_relevance(group.text_index([c["caption_id"] for _, _, c in captions]))
        except TeacherCacheError as exc:  # a teacher without frame relevance (e.g. a plain CLIP teacher)
            result["teachers"][group.name] = str(exc)
            continue
        targets = fine_targets(torch.from_numpy(relevance), caption_mask, args.tau).numpy()
        named, uniform = [], []
        for (_, video, caption), target, valid in zip(captions, targets, caption_mask.numpy(), strict=True):
            frames = frames_of_seconds(caption["relevant_seconds"], len(video["timeline"]), int(valid.sum()))
            named.append(float(target[frames].sum()))
            uniform.append(len(frames) / int(valid.sum()))
        result["teachers"][group.name] = {"captions": len(named), "named_object_share": round(float(np.mean(named)), 4),
                                          "uniform_share": round(float(np.mean(uniform)), 4)}

    junk = [frames_of_seconds([s for s, kind in enumerate(video["timeline"]) if kind.startswith("junk")],
                              len(video["timeline"]), int(valid.sum())) for video, valid in zip(train, mask, strict=True)]
    uniform = float(np.mean([len(frames) / int(valid.sum()) for frames, valid in zip(junk, mask, strict=True)]))
    for path in args.students:
        student = load_model(path, torch.device("cpu"))
        if getattr(student, "afa", None) is None:
            result["students"][path] = "no AFA"
            continue
        with torch.no_grad():
            frame_features = features.float() if store.holds_features else student.frame_features(features)
            weights = student.frame_weights_from_features(frame_features, mask).float().numpy()
        share = float(np.mean([weights[i, frames].sum() for i, frames in enumerate(junk)]))
        result["students"][path] = {"junk_share": round(share, 4), "uniform_share": round(uniform, 4)}
    emit(result)


if __name__ == "__main__":
    main()
