"""``leukoscope review``: what reviewers did in the web app, for use outside it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from leukoscope.cli.console import console
from leukoscope.cli.options import Command, DbOption, Group, StateDirOption
from leukoscope.errors import LeukoscopeError

review_app = typer.Typer(
    cls=Group, help="Reviewed cells of the web app (leukoscope serve).", no_args_is_help=True
)


@review_app.command("export", cls=Command)
def export_reviewed(
    out: Annotated[
        Path, typer.Option("--out", help="New or empty folder to write <class>/<id> into.")
    ],
    db: DbOption = None,
    data_dir: StateDirOption = None,
    signed_off: Annotated[
        bool,
        typer.Option(
            "--signed-off", help="Also every cell of signed-off samples, not only corrected."
        ),
    ] = False,
) -> None:
    """Write the cells reviewers classified as a labelled image folder (original bytes).

    The folder is what leukoscope data split and leukoscope train read.
    """
    from sqlalchemy.engine import make_url

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
    total = sum(n for label, n in counts.items() if not label.startswith("excluded"))
    console.print(f"{total} images; split with: leukoscope data split {out} --out split.csv")
