"""The root Typer app: the command table and the handling of errors.

Command modules define plain functions (or a sub-app) and never import this module or each
other; the table below registers them. They import torch, timm and scikit-learn only inside the
command that runs, so ``leukoscope --help`` and usage errors answer in a fraction of a second
(``benchmarks/inference.py``).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoSuchOption, UsageError

from leukoscope.cli import (
    adapt,
    calibrate,
    data,
    demo,
    differential,
    evaluate,
    explain,
    export,
    fallback,
    locate,
    predict,
    release,
    reproduce,
    review,
    scale,
    serve,
    train,
)
from leukoscope.cli.console import err_console
from leukoscope.cli.options import Command, Group
from leukoscope.errors import LeukoscopeError

RENAMED = {"export-reviewed": "review export"}
"""Old command names, answered with their new name."""


class RootGroup(Group):
    """Answers a renamed command with its new name instead of 'No such command'."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in RENAMED:
            ctx.fail(f"'{args[0]}' is now 'leukoscope {RENAMED[args[0]]}'.")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="leukoscope",
    cls=RootGroup,
    help="White-blood-cell image classification with transfer-learned CNNs "
    "(research use, not a diagnosis).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    # main() reads --debug from the command line itself: errors can occur before this runs.
    del debug


app.add_typer(data.data_app, name="data")
app.command("train", cls=Command)(train.train_command)
app.command("evaluate", cls=Command)(evaluate.evaluate_command)
app.command("adapt", cls=Command)(adapt.adapt_command)
app.command("calibrate", cls=Command)(calibrate.calibrate_command)
app.command("scale", cls=Command)(scale.scale_command)
app.command("fallback", cls=Command)(fallback.fallback_command)
app.command("ood-check", cls=Command)(calibrate.ood_check)
app.command("release", cls=Command)(release.release_command)
app.command("predict", cls=Command)(predict.predict)
app.command("locate", cls=Command)(locate.locate)
app.command("differential", cls=Command)(differential.differential)
app.command("explain", cls=Command)(explain.explain)
app.command("export", cls=Command)(export.export)
app.command("demo", cls=Command)(demo.demo)
app.command("reproduce", cls=Command)(reproduce.reproduce_command)
app.command("serve", cls=Command)(serve.serve)
app.add_typer(review.review_app, name="review")


def usage_message(exc: UsageError) -> str:
    """A usage error as one line that names the option and the nearest valid one."""
    if isinstance(exc, NoSuchOption):
        message = f"No such option {exc.option_name}."
        if exc.possibilities:
            message += f" Did you mean {exc.possibilities[0]}?"
        return message
    # Typer words a failed conversion as pydantic does: "Value error, 'x' is not one of ...".
    return exc.format_message().replace(": Value error, ", ": ")


def main() -> None:
    """Entry point: run the app, turning expected failures into one-line errors."""
    debug = "--debug" in sys.argv[1:]
    try:
        result = app(standalone_mode=False)
    except UsageError as exc:
        if debug:
            raise
        message = usage_message(exc)
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
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
