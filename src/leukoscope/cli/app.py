"""The root Typer app, error handling and shared console helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from leukoscope.errors import LeukoscopeError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="leukoscope",
    help="White-blood-cell image classification with transfer-learned CNNs "
    "(research use, not a diagnosis).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[tuple[Progress, int]]:
    """A Rich progress bar with count, elapsed and remaining time (on stderr)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield progress, task


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from leukoscope.cli import (  # noqa: F401
        calibrate,
        data,
        demo,
        differential,
        evaluate,
        explain,
        export,
        predict,
        release,
        reproduce,
        serve,
        train,
    )


def main() -> None:
    """Entry point: run the app, turning expected failures into one-line errors."""
    _register_commands()
    debug = "--debug" in sys.argv[1:]
    try:
        result = app(standalone_mode=False)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("[bold red]aborted[/]")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        expected = isinstance(exc, LeukoscopeError | OSError | ValueError)
        message = str(exc) if expected else f"unexpected {type(exc).__name__}: {exc}"
        hint = "" if expected else " (rerun with --debug for the traceback)"
        err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
