"""The one progress bar of the project: rich, on stderr (stdout stays parseable), rates and ETA.

``progress_bar(enabled=False)`` returns the same object with its display switched off, so long-running
code adds tasks and advances them unconditionally instead of branching on a ``progress`` flag.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(enabled: bool = True, transient: bool = False) -> Progress:
    """A ``rich.progress.Progress`` (use as a context manager); ``enabled=False``: silent."""
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
        disable=not enabled,
    )
