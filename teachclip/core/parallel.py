"""Running independent units of work on dask.distributed, with a rich progress bar.

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

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from teachclip.core.config import ComputeConfig


def progress_bar(transient: bool = False) -> Progress:
    """The one progress bar style of the project (stderr, so stdout stays parseable)."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        transient=transient,
    )


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
