"""How much each departure from the released X-CLIP / X-Pool / TS2-Net scoring changes the scores.

Builds each teacher with the options an official checkpoint implies, at random weights (seeded, the
same weights for every variant), and scores MSR-VTT-like captions against videos with 12, 10, 8 and
5 valid frames (1 fps on clips of 12, 10, 8 and 5 s), once with teachclip's masked scoring and once
per ``scoring`` setting switched to the released code's behaviour (then all of them). Prints one JSON
document: per teacher and variant, the mean |change| relative to the mean |score|, the largest
change, and the share of captions whose best video changes. Usage:
    python bench/released_scoring.py [--backbone ViT-B-32-quickgelu] [--videos 8] [--device cpu]

Random weights say how large the departures can be, not what a trained checkpoint does with them.
"""

from __future__ import annotations

import argparse

import torch
from common import add_device_option, add_threads_option, emit, torch_setup

from teachclip.core.config import TeacherConfig
from teachclip.models.factory import create_teacher
from teachclip.models.teachers.released import APPLIES_TO, RELEASED, TEACHCLIP

CAPTIONS = [
    "a man is cooking pasta in a kitchen",
    "a dog runs",
    "two people are playing tennis on a court while a crowd watches",
    "a woman explains how to apply makeup",
    "cartoon characters talk to each other in a forest",
    "a news anchor reports on the weather in the city and the traffic on the highway this morning "
    "before the big game starts with the two teams walking onto the field",  # > 32 tokens
    "someone plays a song on the guitar",
    "a car drives down a road",
]
VALID_FRAMES = (12, 10, 8, 5)


def official_options(kind: str, probe) -> dict:
    """The options an official checkpoint of ``kind`` implies (teachers/official.py)."""
    if kind == "xclip":
        return {"frame_features": "clip", "full_reweighting": True, "max_frames": 12}
    if kind == "ts2net":
        tokens = probe.backbone.clip.visual.positional_embedding.shape[0]
        return {"positions": "token", "shift": "token", "shift_layers": 2, "shift_div": tokens // 7,
                "shift_next_offset": 3, "topk": 3, "max_frames": 12}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_option(parser, "cpu")
    parser.add_argument("--backbone", default="ViT-B-32-quickgelu")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--kinds", default="xclip,xpool,ts2net")
    add_threads_option(parser, None)
    args = parser.parse_args()
    device = torch_setup(args)

    results: dict = {}
    for kind in args.kinds.split(","):
        settings = [name for name, kinds in APPLIES_TO.items() if kind in kinds]
        teachclip = {name: TEACHCLIP[name] for name in settings}
        variants = {"teachclip": teachclip}
        for name in settings:
            if RELEASED[name][kind] != TEACHCLIP[name]:
                variants[f"{name}={RELEASED[name][kind]}"] = teachclip | {name: RELEASED[name][kind]}
        variants["released"] = {name: RELEASED[name][kind] for name in settings}

        backbone = {"name": args.backbone, "pretrained": None}
        options = official_options(kind, create_teacher(TeacherConfig(kind=kind, backbone=backbone), load_weights=False))
        scores = {}
        for label, scoring in variants.items():
            torch.manual_seed(0)  # the same random weights for every variant
            config = TeacherConfig(kind=kind, backbone=backbone, options=options, scoring=scoring)
            teacher = create_teacher(config, load_weights=False).to(device).eval()
            size = teacher.backbone.image_size
            generator = torch.Generator().manual_seed(1)
            frames = torch.randint(0, 256, (args.videos, 12, size, size, 3), dtype=torch.uint8, generator=generator)
            valid = torch.tensor([VALID_FRAMES[i % len(VALID_FRAMES)] for i in range(args.videos)])
            mask = torch.arange(12)[None] < valid[:, None]
            frames = frames * mask[..., None, None, None]  # padding is black in the frames store
            ids = [f"video{i}" for i in range(args.videos)]
            with torch.no_grad():
                texts = teacher.encode_texts(teacher.text_batch(CAPTIONS, [f"c{i}" for i in range(len(CAPTIONS))],
                                                                ids[: len(CAPTIONS)]))
                videos = teacher.encode_videos({"frames": frames, "mask": mask, "video_ids": ids})
                scores[label] = teacher.score(texts, videos).float().cpu()
            del teacher
        base = scores["teachclip"]
        padded = ~mask.all(dim=1)
        entry = {}
        for label, score in scores.items():
            if label == "teachclip":
                continue
            change = (score - base).abs()
            entry[label] = {
                "relative_change": float(change.mean() / base.abs().mean()),
                "relative_change_padded_videos": float(change[:, padded].mean() / base[:, padded].abs().mean()),
                "relative_change_full_videos": float(change[:, ~padded].mean() / base[:, ~padded].abs().mean()),
                "max_abs_change": float(change.max()),
                "best_video_changed": float((score.argmax(1) != base.argmax(1)).float().mean()),
            }
        results[kind] = {"mean_abs_score": float(base.abs().mean()), "variants": entry}
    emit({"benchmark": "released_scoring", "backbone": args.backbone, "weights": "random (seed 0)",
          "captions": len(CAPTIONS), "videos": args.videos, "valid_frames": list(VALID_FRAMES),
          "teachers": results}, device)


if __name__ == "__main__":
    main()
