"""The ``teach`` command line: thin typer wrappers around the stage functions in ``teachclip.stages``.

Every command reads ``params.yaml`` (``--params`` to choose another file) and lets its flags
override single values; the stage functions receive typed config objects and never parse flags.
Heavy imports happen inside the commands so that ``teach --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from teachclip.pipeline.config import ConfigError, Params, load_params

app = typer.Typer(
    name="teach",
    help="teachclip: cache heavy text-video teachers once, train a cheap CLIP4Clip+AFA student from them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect, verify and share teacher caches.", no_args_is_help=True)
search_app = typer.Typer(help="Embed a collection once, then query it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.add_typer(search_app, name="search")


class State:
    params_path: Path = Path("params.yaml")


state = State()


@app.callback()
def main(
    params: Path = typer.Option(
        Path("params.yaml"), "--params", help="Parameters file (missing file: built-in defaults)."
    ),
) -> None:
    state.params_path = params


def load() -> Params:
    """The params of this invocation; a bad file is a clean error, not a traceback."""
    try:
        return load_params(state.params_path)
    except ConfigError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ---- data: demo-data, prepare -------------------------------------------------------------


# ---- decode -------------------------------------------------------------------------------


# ---- teachers: train-teacher, extract-teachers ------------------------------------------------


# ---- cache: info, verify, ls, push, pull, export, import ------------------------------------


# ---- student: train-student, evaluate, export ------------------------------------------------


# ---- search: index, query ------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    app()
