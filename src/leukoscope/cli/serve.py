"""``leukoscope serve`` (the lab web app) and ``leukoscope export-reviewed`` (its reviewed cells
as a labelled image folder for ``leukoscope data split`` and ``leukoscope train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table
from sqlalchemy.engine import make_url

from leukoscope.cli.app import app, console
from leukoscope.errors import LeukoscopeError

DB_HELP = "SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite file "
DB_HELP += "in the data dir)."
DATA_DIR_HELP = "Folder for the default SQLite database (default: ~/.local/share/leukoscope)."


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


@app.command("serve")
def serve(
    model: Path = typer.Option(..., "--model", help="Trained model directory (or its weights)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; any non-loopback one needs a token."
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    db: str | None = typer.Option(None, "--db", envvar="LEUKOSCOPE_DB_URL", help=DB_HELP),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="LEUKOSCOPE_DATA_DIR", help=DATA_DIR_HELP
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="LEUKOSCOPE_TOKEN",
        help="API token clients send as 'Authorization: Bearer T' or 'X-API-Token: T' "
        "(prefer the environment variable: command lines are visible to other users).",
    ),
    max_file_mb: float | None = typer.Option(None, "--max-file-mb", help="Largest image file."),
    max_request_mb: float | None = typer.Option(
        None, "--max-request-mb", help="Largest request body."
    ),
    max_files: int | None = typer.Option(None, "--max-files", help="Images per request."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="Largest width x height."),
) -> None:
    """Serve the web app: classify uploads, review cells, sign off samples (binds to loopback
    unless told otherwise)."""
    import uvicorn

    from leukoscope.service.app import create_app
    from leukoscope.service.settings import MIB, Settings

    try:
        settings = Settings(
            model_path=model,
            host=host,
            port=port,
            **_given(
                db_url=db,
                data_dir=data_dir,
                token=token,
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
    auth = "token required" if settings.token else "no token (loopback only)"
    console.print(f"Serving on http://{host}:{port}/ ({auth}); Ctrl+C stops.", highlight=False)
    uvicorn.run(web_app, host=host, port=port, server_header=False, log_level="info")


@app.command("export-reviewed")
def export_reviewed(
    out: Path = typer.Option(..., "--out", help="New or empty folder to write <class>/<id> into."),
    db: str | None = typer.Option(None, "--db", envvar="LEUKOSCOPE_DB_URL", help=DB_HELP),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", envvar="LEUKOSCOPE_DATA_DIR", help=DATA_DIR_HELP
    ),
    signed_off: bool = typer.Option(
        False, "--signed-off", help="Also every cell of signed-off samples, not only corrected."
    ),
) -> None:
    """Write the cells reviewers classified as a labelled image folder (original bytes)."""
    from leukoscope.service import store
    from leukoscope.service.exports import export_reviewed_dir
    from leukoscope.service.settings import default_data_dir, default_db_url

    url = make_url(db or default_db_url(data_dir or default_data_dir()))
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise LeukoscopeError(f"no database at {url.database}: pass --db or --data-dir")
    engine = store.make_engine(url.render_as_string(hide_password=False))
    try:
        store.upgrade(engine)
        with store.session_factory(engine)() as session:
            counts = export_reviewed_dir(session, out, signed_off=signed_off)
    finally:
        engine.dispose()
    table = Table(title=f"Reviewed cells in {out}")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label, count in counts.items():
        table.add_row(label, str(count))
    console.print(table)
    total = sum(counts.values())
    console.print(f"{total} images; split with: leukoscope data split {out} --out split.csv")
