"""Running independent units of work on dask.distributed.

``scheduler="local"`` starts a LocalCluster of worker *processes* (decoding and teacher inference
hold the GIL in places, and a crashing decoder must not take the driver down); ``"sync"`` runs in
this process without dask (debugging, tiny inputs); any other value is a scheduler address.
Results are yielded as they complete, so the caller can record each finished unit at once: that is
what makes a killed run resumable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from teachclip.core.config import ComputeConfig
from teachclip.core.device import local_gpu_count, pick_device


@contextlib.contextmanager
def dask_client(compute: ComputeConfig, resources: dict[str, float] | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``compute`` (None for ``scheduler="sync"``)."""
    if compute.scheduler == "sync":
        yield None
        return
    from distributed import Client, LocalCluster

    if compute.scheduler == "local":
        import dask

        # dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic mmap
        # threshold: every buffer over 128 KiB (a video frame) is mapped and unmapped again, which
        # doubled the CPU time of the decode stage (docs/decode.md). Workers keep glibc's defaults.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(
                n_workers=compute.workers,
                threads_per_worker=compute.threads_per_worker,
                processes=True,
                dashboard_address=":0",  # a free port: parallel runs never fight over 8787
                silence_logs=logging.ERROR,
                resources=resources,
            )
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    else:
        client = Client(compute.scheduler)
        try:
            yield client
        finally:
            client.close()


def map_unordered(
    client: Any,
    function: Callable[..., Any],
    items: Iterable[Any],
    *,
    resources: dict[str, float] | None = None,
    **kwargs: Any,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, function(item, **kwargs))`` in completion order.

    With ``client=None`` the calls run here, one after another. Exceptions propagate: units of work
    are expected to catch and report their own per-item failures.
    """
    items = list(items)
    if client is None:
        for item in items:
            yield item, function(item, **kwargs)
        return
    from distributed import as_completed

    futures = {}
    for item in items:
        future = client.submit(function, item, pure=False, resources=resources, **kwargs)
        futures[future] = item
    for future in as_completed(futures):
        yield futures[future], future.result()


@contextlib.contextmanager
def compute_client(compute: ComputeConfig) -> Iterator[tuple[Any, dict[str, float] | None]]:
    """A dask client for GPU-aware work (None for ``scheduler="sync"``) and the resources each task
    asks for.

    On a local machine with GPUs, workers are one per GPU with a ``GPU`` resource: dask-cuda's
    LocalCUDACluster when installed (it pins each worker with CUDA_VISIBLE_DEVICES), else a
    LocalCluster whose workers pick ``cuda:<worker index>``. A remote scheduler's workers are asked
    for a GPU per task only when they declare one (else tasks would wait forever).
    """
    gpus = local_gpu_count() if compute.scheduler == "local" and pick_device(compute.device).type == "cuda" else 0
    if gpus:
        compute = compute.model_copy(update={"workers": min(compute.workers, gpus)})
        cuda_cluster = _local_cuda_cluster(compute)
        if cuda_cluster is not None:
            from distributed import Client

            with cuda_cluster as cluster, Client(cluster) as client:
                yield client, {"GPU": 1}
            return
    with dask_client(compute, resources={"GPU": 1} if gpus else None) as client:
        yield client, (_declared_gpu_resources(client) if client is not None else None)


def _local_cuda_cluster(compute: ComputeConfig) -> Any:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return None
    return LocalCUDACluster(n_workers=compute.workers, threads_per_worker=compute.threads_per_worker,
                            resources={"GPU": 1}, dashboard_address=None)


def _declared_gpu_resources(client: Any) -> dict[str, float] | None:
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in workers) else None
