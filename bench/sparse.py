"""Benchmark: disk and memory of a dense vs a sparse (top-k) teacher cache, extrapolated to WebVid scale.

    python bench/sparse.py [--captions 10000000] [--videos 2000000] [--top-k 32]
                           [--measure-captions 2048] [--measure-videos 1024] [--workdir DIR]

Two sources, both printed as one JSON document:

- ``dense`` / ``sparse``: the arrays' uncompressed sizes for ``--captions x --videos``: the dense
  ``similarity`` is float16 [captions, videos]; the sparse group stores per caption K int32 columns,
  K float16 scores, a float16 own score and a float16 rest mean (the fill). The readers hold exactly these arrays in RAM (the dense
  one when it fits ``IN_MEMORY_LIMIT_BYTES``, else it decodes the chunks of each batch from disk).
  ``frame_relevance`` (float32 [captions, T]) is the same in both and left out.
- ``measured``: a real dense cache of ``--measure-captions x --measure-videos`` random teacher-like
  scores (zstd-compressed as the writer does) is written and sparsified; bytes on disk per element
  (dense) and per caption (sparse) are extrapolated linearly, with the sparsify throughput.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import Clock, add_workdir_option, emit, workdir

from teachclip.stores.teacher_cache.dense import create_group, write_block
from teachclip.stores.teacher_cache.publish import mark_group_complete
from teachclip.stores.teacher_cache.schema import (
    IN_MEMORY_LIMIT_BYTES,
    SIMILARITY,
    TeacherIdentity,
    plan_layout,
)
from teachclip.stores.teacher_cache.sparse import sparsify
from teachclip.stores.zarr_io import tree_bytes

GIB = 1 << 30


def dense_bytes(captions: int, videos: int) -> int:
    return 2 * captions * videos  # float16


def sparse_bytes(captions: int, top_k: int) -> int:
    return captions * (top_k * (4 + 2) + 4)  # int32 column + float16 score per neighbour; own score, rest mean


def measure(root: Path, captions: int, videos: int, top_k: int) -> dict:
    rng = np.random.default_rng(0)
    # cosine-like scores: a shared per-video offset plus noise, the own video a little higher
    similarity = (0.2 + 0.05 * rng.standard_normal(videos)[None] + 0.05 * rng.standard_normal((captions, videos)))
    own = rng.integers(0, videos, captions)
    similarity[np.arange(captions), own] += 0.1
    identity = TeacherIdentity(kind="synthetic", config={}, checkpoint_sha256=None, score_version=1,
                                     has_frame_relevance=False, similarity_definition="bench", relevance_definition="",
                                     frames_fingerprint="bench", manifest_fingerprint="bench")
    layout = plan_layout(captions, videos, 12, block_texts=512, chunk_texts=32, block_videos=None,
                               memory_budget_mb=1024)
    store = root / "dense.zarr"
    create_group(store, "t", identity, layout, [f"c{i:09d}" for i in range(captions)],
                       [f"v{i:09d}" for i in range(videos)], own)
    for block in range(layout.n_blocks):
        start, stop = layout.block_rows(block)
        write_block(store / "t", block, similarity[start:stop].astype(np.float32), None)
    mark_group_complete(store / "t")
    seconds = Clock(cpu="wall").time(lambda: sparsify(store / "t", root / "sparse.zarr", top_k=top_k))
    return {
        "captions": captions, "videos": videos,
        "dense_similarity_disk_bytes": tree_bytes(store / "t" / SIMILARITY),
        "sparse_disk_bytes": sum(tree_bytes(root / "sparse.zarr" / "t" / name)
                                 for name in ("neighbour_videos", "neighbour_scores", "own_score", "rest_mean")),
        "sparsify_seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=10_000_000)
    parser.add_argument("--videos", type=int, default=2_000_000)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--measure-captions", type=int, default=2048)
    parser.add_argument("--measure-videos", type=int, default=1024)
    add_workdir_option(parser)
    args = parser.parse_args()

    with workdir(args.workdir, "sparse") as root:
        measured = measure(root, args.measure_captions, args.measure_videos, args.top_k)
    dense_per_element = measured["dense_similarity_disk_bytes"] / (measured["captions"] * measured["videos"])
    sparse_per_caption = measured["sparse_disk_bytes"] / measured["captions"]
    dense_total, sparse_total = dense_bytes(args.captions, args.videos), sparse_bytes(args.captions, args.top_k)
    document = {
        "target": {"captions": args.captions, "videos": args.videos, "top_k": args.top_k},
        "dense": {"disk_bytes": dense_total, "disk_GiB": round(dense_total / GIB, 2),
                  "ram_GiB_in_memory": round(dense_total / GIB, 2),
                  "fits_in_memory_reader": dense_total <= IN_MEMORY_LIMIT_BYTES},
        "sparse": {"disk_bytes": sparse_total, "disk_GiB": round(sparse_total / GIB, 2),
                   "ram_GiB": round(sparse_total / GIB, 2)},
        "ratio_dense_over_sparse": round(dense_total / sparse_total, 1),
        "measured": measured | {
            "dense_disk_bytes_per_element": round(dense_per_element, 4),
            "sparse_disk_bytes_per_caption": round(sparse_per_caption, 2),
            "extrapolated_dense_disk_GiB": round(dense_per_element * args.captions * args.videos / GIB, 2),
            "extrapolated_sparse_disk_GiB": round(sparse_per_caption * args.captions / GIB, 2),
            "extrapolated_sparsify_hours_one_process": round(
                measured["sparsify_seconds"] / measured["captions"] * args.captions
                * args.videos / measured["videos"] / 3600, 1),
        },
    }
    emit(document, indent=1)


if __name__ == "__main__":
    main()
