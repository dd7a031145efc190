"""Benchmark: approximate search (``teach search``'s IVF-SQ8 index) vs exact search at 1M-10M videos.

    nice -n 10 python bench/ann.py [--sizes 1000000,10000000] [--dim 512] [--queries 1000]
                                   [--latency-queries 200] [--exact-latency-queries 50] [--probes 8,16,32,64]
                                   [--libraries faiss,usearch] [--store-max 1000000] [--threads 1]
                                   [--build-threads 2] [--workdir /work/tmp-ann] [--keep]

Synthetic collections of unit vectors of the student's dimension (512: ViT-B/32), clumped like real
embeddings: ``size / 10000`` (at least 16) random centres, each video ``centre + N(0, 1)`` per dimension (cosine ~0.7 to
its centre), normalised; queries drawn the same way around random centres. The vectors are generated
in blocks into a float16 ``np.memmap`` under ``--workdir`` (deleted at the end unless ``--keep``), so
memory stays bounded: nothing ever holds the whole collection in memory except the index under test.

Measured at each size, in one run:

- ``exact``: what ``Searcher`` does without an approximate index (a float16 matrix-vector product with
  torch, then top-10), timed block by block over 2^20-row blocks read from the memmap (one block in
  memory at a time) for ``--exact-latency-queries`` queries; a query's latency is the sum over the
  blocks. The same pass computes the exact top-10 of ``--queries`` queries (float32, chunked brute
  force): the ground truth of recall@10.
- ``faiss``: :class:`teachclip.stores.search_index.AnnIndex` (what ``teach search index`` builds):
  build time, index bytes, and for each ``--probes`` value recall@10 and p50/p99 latency of single
  queries (``--latency-queries``); ratios to the exact p50.
- ``usearch`` (with ``--libraries faiss,usearch``): an HNSW index (M=16, ef_construction=128) over f16
  and i8 vectors, for the library comparison in docs (slow to build: use a small ``--sizes``).
- with ``size <= --store-max``: the faiss index written to ``index.zarr`` by ``write_index``, read back
  by ``read_index`` (checks included) and its results compared with the built one's.

Latencies are process CPU time with ``--threads`` threads (1: a per-core figure, robust to other
processes on a shared machine); build times are wall clock with ``--build-threads``. ``peak_rss_gib``
is the process's peak resident memory after each size. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import Clock, emit

from teachclip.stores.search_index import AnnIndex, read_index, write_index

TOP_K = 10
BLOCK = 1 << 20  # rows of the exact pass held in memory at a time (1 GiB of float16 at d=512)
GT_BLOCK = 1 << 17  # rows converted to float32 for the ground truth at a time
GEN_BLOCK = 1 << 17
VIDEOS_PER_CENTRE = 10_000  # clumps larger than an IVF list (sqrt(size) videos): probing matters
SPREAD = 1.0
DEMO_DIM = 128  # the demo student's embed_dim (teachclip/models/model_configs/teachclip-demo.json)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def centres(size: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((max(16, size // VIDEOS_PER_CENTRE), dim), dtype=np.float32)


def around(centre_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    vectors = centre_rows + SPREAD * rng.standard_normal(centre_rows.shape, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def collection(root: Path, size: int, dim: int, seed: int) -> tuple[np.memmap, np.ndarray]:
    """The float16 memmap [size, dim] (reused when a complete one is there) and the queries' centres."""
    path = root / f"vectors-{size}-{dim}-s{seed}.f16"
    done = path.with_suffix(".done")
    centre_vectors = centres(size, dim, seed)
    if not done.exists():
        vectors = np.memmap(path, dtype=np.float16, mode="w+", shape=(size, dim))
        for block, start in enumerate(range(0, size, GEN_BLOCK)):
            rng = np.random.default_rng([seed, block])
            stop = min(size, start + GEN_BLOCK)
            vectors[start:stop] = around(centre_vectors[rng.integers(0, len(centre_vectors), stop - start)], rng)
        vectors.flush()
        del vectors
        done.touch()
    return np.memmap(path, dtype=np.float16, mode="r", shape=(size, dim)), centre_vectors


def exact_pass(vectors: np.memmap, queries: np.ndarray, latency_queries: int, clock: Clock) -> tuple[np.ndarray, list[float]]:
    """Ground-truth top-10 rows of every query and the exact search's per-query seconds (sum over blocks)."""
    n = len(vectors)
    best_scores = np.full((len(queries), TOP_K), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), TOP_K), np.int64)
    timed = torch.from_numpy(queries[:latency_queries]).half()
    seconds = [0.0] * latency_queries
    for start in range(0, n, BLOCK):
        block = torch.from_numpy(np.ascontiguousarray(vectors[start : start + BLOCK]))
        for q in range(latency_queries):  # what Searcher.top_k does over the index in memory
            seconds[q] += clock.time(lambda q=q, block=block: torch.topk(block @ timed[q], TOP_K))
        for sub in range(0, len(block), GT_BLOCK):
            scores = queries @ block[sub : sub + GT_BLOCK].float().numpy().T
            candidates = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
            merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, candidates, 1)], axis=1)
            merged_rows = np.concatenate([best_rows, candidates + start + sub], axis=1)
            keep = np.argsort(-merged_scores, axis=1)[:, :TOP_K]
            best_scores = np.take_along_axis(merged_scores, keep, 1)
            best_rows = np.take_along_axis(merged_rows, keep, 1)
        del block
    return best_rows, seconds


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / TOP_K for a, b in zip(found, truth, strict=True)]))


def latency_summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4), "queries": len(ms)}


def measure_faiss(ann: AnnIndex, queries, truth, probes, latency_queries, clock, exact_p50) -> dict:
    result = {}
    for probe in probes:
        _, rows = ann.search(queries, TOP_K, probe)
        seconds = [clock.time(lambda q=q, probe=probe: ann.search(queries[q : q + 1], TOP_K, probe))
                   for q in range(latency_queries)]
        summary = latency_summary(seconds)
        result[str(probe)] = {"recall_at_10": round(recall(rows, truth), 4), **summary,
                              "speedup_p50_vs_exact": round(exact_p50 / summary["p50_ms"], 1)}
    return result


def measure_usearch(vectors, queries, truth, latency_queries, clock, build_threads, exact_p50) -> dict:
    from usearch.index import Index

    out = {}
    for dtype in ("f16", "i8"):
        index = Index(ndim=vectors.shape[1], metric="ip", dtype=dtype, connectivity=16, expansion_add=128)
        start = time.perf_counter()
        for first in range(0, len(vectors), GEN_BLOCK):
            block = np.asarray(vectors[first : first + GEN_BLOCK], dtype=np.float32)
            index.add(np.arange(first, first + len(block)), block, threads=build_threads)
        entry = {"build_s": round(time.perf_counter() - start, 1), "index_bytes": int(index.memory_usage),
                 "rss_after_build_gib": round(rss_gib(), 2), "ef": {}}
        for ef in (32, 64, 128):
            index.expansion_search = ef
            rows = index.search(queries, TOP_K, threads=1).keys
            seconds = [clock.time(lambda q=q, index=index: index.search(queries[q], TOP_K, threads=1))
                       for q in range(latency_queries)]
            summary = latency_summary(seconds)
            entry["ef"][str(ef)] = {"recall_at_10": round(recall(rows, truth), 4), **summary,
                                    "speedup_p50_vs_exact": round(exact_p50 / summary["p50_ms"], 1)}
        out[f"hnsw_{dtype}"] = entry
        del index
        gc.collect()
    return out


def store_round_trip(root: Path, vectors, ann: AnnIndex, queries, probe) -> dict:
    path = root / "index.zarr"
    start = time.perf_counter()
    write_index(path, vectors, [f"v{i}" for i in range(len(vectors))], "float16", model_fingerprint="bench",
                model_path="bench", frames_fingerprint="bench", ann=ann)
    written = time.perf_counter() - start
    start = time.perf_counter()
    loaded = read_index(path, approximate=True).ann
    read = time.perf_counter() - start
    (s1, r1), (s2, r2) = ann.search(queries, TOP_K, probe), loaded.search(queries, TOP_K, probe)
    same = bool(np.array_equal(r1, r2) and np.array_equal(s1, s2))
    bytes_on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    del loaded
    shutil.rmtree(path)
    return {"write_s": round(written, 1), "read_and_check_s": round(read, 1), "identical_results": same,
            "store_bytes": bytes_on_disk}


def run_size(root: Path, size: int, args: argparse.Namespace, clock: Clock) -> dict:
    import faiss

    started = time.perf_counter()
    vectors, centre_vectors = collection(root, size, args.dim, args.seed)
    generated = time.perf_counter() - started
    rng = np.random.default_rng([args.seed, 10**9])
    queries = around(centre_vectors[rng.integers(0, len(centre_vectors), args.queries)], rng).astype(np.float32)

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    truth, exact_seconds = exact_pass(vectors, queries, args.exact_latency_queries, clock)
    exact = {**latency_summary(exact_seconds), "pass_s": round(time.perf_counter() - start, 1),
             "index_bytes": size * args.dim * 2}
    result = {"size": size, "dim": args.dim, "centres": len(centre_vectors), "generate_s": round(generated, 1),
              "exact_float16": exact}

    if "faiss" in args.libraries:
        faiss.omp_set_num_threads(args.build_threads)
        start = time.perf_counter()
        ann = AnnIndex.build(vectors, seed=args.seed)
        build_s = time.perf_counter() - start
        faiss.omp_set_num_threads(args.threads)
        result["faiss_ivf_sq8"] = {"lists": ann.settings["lists"], "train_videos": min(size, ann.settings["train_videos"]),
                                   "build_s": round(build_s, 1), "index_bytes": ann.nbytes,
                                   "rss_after_build_gib": round(rss_gib(), 2),
                                   "probes": measure_faiss(ann, queries, truth, args.probes, args.latency_queries,
                                                           clock, exact["p50_ms"])}
        if size <= args.store_max:
            result["faiss_ivf_sq8"]["store"] = store_round_trip(root, vectors, ann, queries, 32)
        del ann
        gc.collect()
    if "usearch" in args.libraries:
        result["usearch"] = measure_usearch(vectors, queries, truth, args.latency_queries, clock,
                                            args.build_threads, exact["p50_ms"])
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    del vectors
    if not args.keep:
        for file in root.glob(f"vectors-{size}-{args.dim}-s{args.seed}.*"):
            file.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="queries with exact ground truth (recall@10)")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--exact-latency-queries", type=int, default=50)
    parser.add_argument("--probes", default="8,16,32,64")
    parser.add_argument("--libraries", default="faiss")
    parser.add_argument("--store-max", type=int, default=1_000_000, help="round-trip the index through index.zarr up to this size")
    parser.add_argument("--threads", type=int, default=1, help="threads of the timed queries")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/work/tmp-ann"))
    parser.add_argument("--keep", action="store_true", help="keep the generated vectors")
    args = parser.parse_args()
    args.probes = [int(p) for p in args.probes.split(",")]
    args.libraries = args.libraries.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    clock = Clock(cpu="process")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(run_size(args.workdir, size, args, clock))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # partial results as they come
    emit({"benchmark": "ann", "top_k": TOP_K, "clock": clock.description + f", {args.threads} thread(s)",
          "data": {"videos_per_centre": VIDEOS_PER_CENTRE, "spread": SPREAD, "seed": args.seed},
          "student_dim": {"ViT-B/32": 512, "demo (teachclip-demo)": DEMO_DIM}, "results": results,
          "summary": {r["size"]: {"exact_p50_ms": r["exact_float16"]["p50_ms"],
                                  **({f"faiss_probe{p}": {k: r["faiss_ivf_sq8"]["probes"][str(p)][k] for k in (
                                      "recall_at_10", "p50_ms", "p99_ms", "speedup_p50_vs_exact")}
                                      for p in args.probes} if "faiss_ivf_sq8" in r else {})}
                      for r in results}})


if __name__ == "__main__":
    main()
