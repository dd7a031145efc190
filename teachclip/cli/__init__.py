"""The ``teach`` command line: thin typer wrappers around the stage and tool functions.

Every command reads ``params.yaml`` (``--params`` to choose another file); ``--set section.field=value``
overrides any value and a few daily flags (``--epochs``, ``--device`` ...) name the field they set
(:mod:`.common`). Commands live by group: :mod:`.data`, :mod:`.teachers`, :mod:`.students`,
:mod:`.cache`, :mod:`.search`, :mod:`.rehearse`. Heavy imports happen inside the commands so that ``teach --help``
stays instant. Errors a user can act on (:class:`teachclip.core.errors.TeachclipError`) end a command
with one line on stderr and exit status 1.
"""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.cli import cache, data, rehearse, search, students, teachers
from teachclip.cli.common import state

app = typer.Typer(
    name="teach",
    help="teachclip: cache heavy text-video teachers once, train a cheap CLIP4Clip+AFA student from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    params: Path = typer.Option(
        Path("params.yaml"), "--params", help="Parameters file (missing file: built-in defaults)."),
) -> None:
    state.params_path = params


data.register(app)
teachers.register(app)
students.register(app)
search.register(app)
cache.register(app)
rehearse.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
