"""``leukoscope serve``: the lab web app (``leukoscope.service``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leukoscope.cli.console import console
from leukoscope.cli.options import DbOption, StateDirOption
from leukoscope.demo import DEFAULT_MODEL
from leukoscope.errors import LeukoscopeError

if TYPE_CHECKING:
    from pydantic import ValidationError


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set, so unset ones keep the defaults of Settings."""
    return {key: value for key, value in options.items() if value is not None}


def _settings_problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``field: message``, or the message for whole-settings
    checks (such as the token rule)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)


def serve(
    model: Annotated[
        Path, typer.Option("--model", help="Trained model directory (or its weights).")
    ] = DEFAULT_MODEL,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; any non-loopback one needs a token."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")
    ] = 8000,
    db: DbOption = None,
    data_dir: StateDirOption = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="LEUKOSCOPE_TOKEN",
            help="API token clients send as 'Authorization: Bearer T' or 'X-API-Token: T' "
            "(prefer the environment variable: command lines are visible to other users).",
        ),
    ] = None,
    reviewers: Annotated[
        Path | None,
        typer.Option(
            "--reviewers",
            envvar="LEUKOSCOPE_REVIEWERS",
            help='JSON file {"reviewer name": "token", ...}: each reviewer signs with their own '
            "token, recorded on every correction and sign-off instead of a typed name.",
        ),
    ] = None,
    max_file_mb: Annotated[
        float | None, typer.Option("--max-file-mb", help="Largest image file, in MiB.")
    ] = None,
    max_request_mb: Annotated[
        float | None, typer.Option("--max-request-mb", help="Largest request body, in MiB.")
    ] = None,
    max_files: Annotated[
        int | None, typer.Option("--max-files", help="Images per request.")
    ] = None,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", help="Largest width x height.")
    ] = None,
) -> None:
    """Serve the web app: classify uploads, review cells, sign off samples.

    It binds to loopback unless told otherwise.
    """
    import uvicorn
    from pydantic import ValidationError
    from sqlalchemy.engine import make_url

    from leukoscope.service.app import create_app
    from leukoscope.service.settings import MIB, Settings, load_reviewers

    try:
        settings = Settings(
            model_path=model,
            host=host,
            port=port,
            **_given(
                db_url=db,
                data_dir=data_dir,
                token=token,
                reviewer_tokens=None if reviewers is None else load_reviewers(reviewers),
                max_file_bytes=None if max_file_mb is None else int(max_file_mb * MIB),
                max_request_bytes=None if max_request_mb is None else int(max_request_mb * MIB),
                max_files=max_files,
                max_pixels=max_pixels,
            ),
        )
    except ValidationError as exc:
        raise LeukoscopeError(_settings_problems(exc)) from None
    web_app = create_app(settings)
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    console.print(f"Database: {database}", highlight=False)
    auth = (
        f"{len(settings.reviewer_tokens)} named reviewer token(s)"
        if settings.reviewer_tokens
        else "token required"
        if settings.token
        else "no token (loopback only)"
    )
    console.print(f"Serving on http://{host}:{port}/ ({auth}); Ctrl+C stops.", highlight=False)
    uvicorn.run(web_app, host=host, port=port, server_header=False, log_level="info")
