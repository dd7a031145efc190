"""Per-pair cost of each teacher's ``score`` vs a meanP dot product, at ViT-B/32 sizes.

Times only the text x video scoring (features precomputed, as in extraction), on random features
of realistic shape: d = 512, T = 12 frames, L = 32 words. Prints one JSON document (and the table
on stderr). Usage:
    python bench/teacher_cost.py [--device cuda] [--texts 64] [--videos 64] [--threads 1]

On CPU the clock is the process's CPU time, which a shared, busy machine does not inflate (run
with --threads 1 for a per-core figure); on CUDA the synchronised wall clock.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import Clock, add_device_option, add_threads_option, emit, torch_setup

from teachclip.core.config import TeacherConfig
from teachclip.models.factory import create_teacher
from teachclip.models.layers import normalize

KINDS = ("xpool", "xclip", "ts2net", "frame_clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_option(parser, "cpu")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--meanp-block", type=int, default=2048,
                        help="captions and videos of the meanP block (large: its per-pair cost is not hidden "
                             "under call overhead)")
    add_threads_option(parser, 1)
    args = parser.parse_args()
    device = torch_setup(args)
    clock = Clock(device)
    n, v, steps, words = args.texts, args.videos, 12, 32
    torch.manual_seed(0)

    seconds_per_call = {}
    with torch.no_grad():
        for kind in KINDS:
            config = TeacherConfig(kind=kind, backbone={"name": args.backbone, "max_words": words})
            teacher = create_teacher(config).to(device).eval()
            d = teacher.embed_dim
            sentence = torch.randn(n, d, device=device)
            frames = torch.randn(v, steps, d, device=device)
            mask = torch.ones(v, steps, dtype=torch.bool, device=device)
            text = {"sentence": normalize(sentence)}
            video = {"frames": normalize(frames), "mask": mask}
            if kind == "xpool":  # per-caption / per-video projections belong to encoding, not scoring
                text["query"] = teacher.head.queries(sentence)
                keys, values = teacher.head.keys_values(frames)
                video = {"keys": keys, "values": values, "mask": mask}
            if kind == "xclip":
                text["words"] = normalize(torch.randn(n, words, d, device=device))
                text["local_words"] = text["words"] @ teacher.word_projection
                text["word_mask"] = torch.ones(n, words, dtype=torch.bool, device=device)
                video["video"] = normalize(torch.randn(v, d, device=device))
            seconds_per_call[kind], _ = clock.mean(lambda t=teacher, a=text, b=video: t.score(a, b), args.repeats,
                                                   warmup=1)
            del teacher
        # meanP on a large block, where its per-pair cost is not hidden under call overhead
        block = args.meanp_block
        sentence = normalize(torch.randn(block, d, device=device))
        videos = normalize(torch.randn(block, d, device=device))
        meanp_call, _ = clock.mean(lambda: sentence @ videos.T, 20, warmup=1)
        meanp = meanp_call / block**2

    per_pair = {kind: seconds / (n * v) for kind, seconds in seconds_per_call.items()}
    print(f"device={device} teacher block={n}x{v} d={d} T={steps} L={words}; meanP block {block}x{block}",
          file=sys.stderr)
    print(f"{'meanP':>10}: {meanp * 1e9:10.3f} ns/pair          1x", file=sys.stderr)
    for kind, seconds in per_pair.items():
        print(f"{kind:>10}: {seconds * 1e9:10.3f} ns/pair   {seconds / meanp:8.0f}x", file=sys.stderr)
    emit({
        "benchmark": "per-pair cost of each teacher's score vs a meanP dot product (features precomputed)",
        "device": str(device),
        "clock": clock.description,
        "threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "teacher_block": [n, v],
        "meanp_block": [block, block],
        "embed_dim": d,
        "frames": steps,
        "words": words,
        "repeats": args.repeats,
        "ns_per_pair": {"meanP": meanp * 1e9} | {kind: seconds * 1e9 for kind, seconds in per_pair.items()},
        "ratio_to_meanP": {kind: seconds / meanp for kind, seconds in per_pair.items()},
        "seconds_per_score_call": seconds_per_call,
    }, device)


if __name__ == "__main__":
    main()
