"""Per-pair cost of each teacher's ``score`` vs a meanP dot product, at ViT-B/32 sizes.

Times only the text x video scoring (features precomputed, as in extraction), on random features
of realistic shape: d = 512, T = 12 frames, L = 32 words. Usage:
    python bench/teacher_cost.py [--device cuda] [--texts 64] [--videos 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from teachclip.core.config import TeacherConfig
from teachclip.models.factory import create_teacher
from teachclip.models.layers import normalize


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call: wall clock on CUDA; on CPU the process's CPU time, which a shared, busy
    machine does not inflate (run with --threads 1 for a per-core figure)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, v, steps, words = args.texts, args.videos, 12, 32
    torch.manual_seed(0)

    results = {}
    with torch.no_grad():
        for kind in ("xpool", "xclip", "ts2net", "frame_clip"):
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
            results[kind] = timed(lambda t=teacher, a=text, b=video: t.score(a, b), args.repeats, device)
            del teacher
        # meanP on a large block, where its per-pair cost is not hidden under call overhead
        sentence = normalize(torch.randn(2048, d, device=device))
        videos = normalize(torch.randn(2048, d, device=device))
        meanp = timed(lambda: sentence @ videos.T, 20, device) / 2048**2

    print(f"device={device} teacher block={n}x{v} d={d} T={steps} L={words}; meanP block 2048x2048")
    print(f"{'meanP':>10}: {meanp * 1e9:10.3f} ns/pair          1x")
    for kind, seconds in results.items():
        per_pair = seconds / (n * v)
        print(f"{kind:>10}: {per_pair * 1e9:10.3f} ns/pair   {per_pair / meanp:8.0f}x")


if __name__ == "__main__":
    main()
