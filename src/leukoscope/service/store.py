"""The review database: samples, their cells, the model's predictions, reviewers' corrections
and sign-offs.

SQLAlchemy 2.x keeps the same code working on SQLite (the default, one file in the data dir)
and PostgreSQL. Image bytes live in their own table, inside the database, so no client-given
name ever becomes a file path and a backup of the database is a backup of everything. The
schema is created and upgraded by the Alembic migrations in ``migrations/``, never by
``create_all``, so an existing lab database can follow later versions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    false,
    func,
    select,
)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)
from sqlalchemy.types import TypeDecorator

from leukoscope.errors import LeukoscopeError
from leukoscope.service.schemas import PredictionOut


class NotFoundError(LeukoscopeError):
    """A sample or cell id that is not in the database."""


class UnknownClassError(LeukoscopeError):
    """A label that is not one of the sample's classes."""


class ConflictError(LeukoscopeError):
    """A change the sample's state forbids (signed off, unidentified cells left)."""


class ForbiddenError(LeukoscopeError):
    """A change the reviewer's token does not allow."""


EXCLUSIONS: dict[str, str] = {
    "artefact": "artefact (noise, blank field, debris)",
    "smudged": "smudged or broken cell",
    "not_white_cell": "not a white cell",
    "duplicate": "duplicate of another cell",
}
"""Why a reviewer leaves an image out of the differential (CellaVision's review has such
categories): category -> description."""

EXCLUDED = "excluded:"
"""Prefix of an exclusion in a correction's labels (``excluded:artefact``), so a category can
never be mistaken for a class of some model."""


def exclusion_call(category: str) -> str:
    return EXCLUDED + category


def exclusion_of(call: str | None) -> str | None:
    """The exclusion category of a call, ``None`` for a class or unidentified."""
    return call.removeprefix(EXCLUDED) if call and call.startswith(EXCLUDED) else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random, unguessable id (32 hex digits), also used as the exported file name."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


Row = TypeVar("Row", bound=Base)


class Sample(Base):
    """One blood smear: the cells uploaded for it and, once reviewed, its sign-off."""

    __tablename__ = "samples"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    classes: Mapped[list[str]]
    """The class list of the model that classified the cells (the reviewer's choices)."""
    model_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    magnification: Mapped[dict[str, Any] | None]
    """How the sample's uploaded cell images are rescaled to the training images'
    magnification (:meth:`ScaleEstimate.to_dict
    <leukoscope.data.preprocess.ScaleEstimate.to_dict>`): measured on the first upload with
    enough cells, and again on all of them when the sample is renormalised; every later upload
    is rescaled by it. None until then."""
    cells: Mapped[list[Cell]] = relationship(
        back_populates="sample", order_by="Cell.position", cascade="all, delete-orphan"
    )
    signoff: Mapped[SignOff | None] = relationship(
        back_populates="sample", cascade="all, delete-orphan"
    )
    comments: Mapped[list[Comment]] = relationship(
        order_by="Comment.id", cascade="all, delete-orphan", lazy="selectin"
    )
    amendments: Mapped[list[Amendment]] = relationship(
        order_by="Amendment.id", cascade="all, delete-orphan", lazy="selectin"
    )
    fields: Mapped[list[Field]] = relationship(
        order_by="Field.position", cascade="all, delete-orphan", lazy="selectin"
    )
    renormalisations: Mapped[list[Renormalisation]] = relationship(
        order_by="Renormalisation.id", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def latest_renormalisation(self) -> Renormalisation | None:
        return self.renormalisations[-1] if self.renormalisations else None

    @property
    def classified_since_renormalised(self) -> list[Cell]:
        """Cells added after the latest renormalisation: the model as loaded classified them."""
        latest = self.latest_renormalisation
        if latest is None:
            return []
        return [c for c in self.cells if c.prediction.renormalisation_id != latest.id]

    @property
    def unidentified(self) -> list[Cell]:
        return [cell for cell in self.cells if cell.call is None]

    @property
    def unconfirmed(self) -> list[Cell]:
        """Cells counted on the model's word alone: classified by its confident call, and no
        person's call yet. On a sample that looks unlike the model's training data each must
        be confirmed or corrected before sign-off."""
        return [cell for cell in self.cells if not cell.corrections and cell.label is not None]

    @property
    def excluded(self) -> list[Cell]:
        return [cell for cell in self.cells if cell.exclusion is not None]


class Upload:
    """The columns of an uploaded image's row, a cell's or a field's (a mixin: each has its
    own table). ``original_name`` is shown to people, never used as a path."""

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    original_name: Mapped[str] = mapped_column(String(255))
    image_format: Mapped[str] = mapped_column(String(8))
    """The format sniffed from the bytes (Pillow's name: JPEG, PNG, TIFF, BMP, MPO)."""
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    byte_size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cell(Upload, Base):
    """One uploaded cell image, or one cell found in an uploaded field image."""

    __tablename__ = "cells"

    duplicate_of: Mapped[str | None] = mapped_column(String(32))
    """The sample's earlier cell with the same bytes, or the same cell in an earlier field
    that overlaps this one's: this one starts excluded as a duplicate."""
    field_id: Mapped[str | None] = mapped_column(
        ForeignKey("fields.id", ondelete="CASCADE"), index=True
    )
    """The field image the cell was found in (its image is then the crop cut from it)."""
    x_min: Mapped[int | None]
    y_min: Mapped[int | None]
    x_max: Mapped[int | None]
    y_max: Mapped[int | None]
    """The cell's box in its field, in the field's pixels (maxima exclusive)."""
    edge: Mapped[bool | None]
    """The box touches the field's edge: the cell may be cut (flagged for review)."""
    possible_duplicate_of: Mapped[str | None] = mapped_column(String(32))
    """An earlier cell of the sample, in a field whose overlap with this one is unknown, that
    looks like this one: it starts unidentified, for a person to decide."""
    sample: Mapped[Sample] = relationship(back_populates="cells")
    image: Mapped[CellImage] = relationship(cascade="all, delete-orphan", lazy="raise")
    predictions: Mapped[list[Prediction]] = relationship(
        order_by="Prediction.id", cascade="all, delete-orphan", lazy="selectin"
    )
    """What the model said, oldest first: the upload's call, then one per renormalisation."""
    corrections: Mapped[list[Correction]] = relationship(
        order_by="Correction.id", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def prediction(self) -> Prediction:
        """The model's latest call on the cell (after a renormalisation, the renormalised
        model's)."""
        return self.predictions[-1]

    @property
    def initial_call(self) -> str | None:
        """Before any correction: a duplicate is excluded, else the model's confident class."""
        if self.duplicate_of is not None:
            return exclusion_call("duplicate")
        if self.possible_duplicate_of is not None:
            return None
        return None if self.prediction.uncertain else self.prediction.label

    @property
    def call(self) -> str | None:
        """The reviewer's latest call (a class or ``excluded:<category>``), else the initial
        one; ``None`` means unidentified (the reviewer must decide before sign-off)."""
        return self.corrections[-1].to_label if self.corrections else self.initial_call

    @property
    def signed_call(self) -> str | None:
        """The call as it stood at sign-off (amendments come after)."""
        signed = [c for c in self.corrections if c.amendment_id is None]
        return signed[-1].to_label if signed else self.initial_call

    @property
    def label(self) -> str | None:
        """The cell's class; ``None`` while unidentified or when excluded."""
        return None if exclusion_of(self.call) else self.call

    @property
    def exclusion(self) -> str | None:
        return exclusion_of(self.call)


class Field(Upload, Base):
    """One uploaded field image (a photo of a smear with several cells): its cells are rows of
    ``cells`` pointing to it, each with its box."""

    __tablename__ = "fields"

    image: Mapped[FieldImage] = relationship(cascade="all, delete-orphan", lazy="raise")


class FieldImage(Base):
    """A field's uploaded bytes, unchanged, apart from its row."""

    __tablename__ = "field_images"

    field_id: Mapped[str] = mapped_column(
        ForeignKey("fields.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class CellImage(Base):
    """The uploaded bytes, unchanged, apart from the cell row so listings never load them."""

    __tablename__ = "cell_images"

    cell_id: Mapped[str] = mapped_column(
        ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Prediction(Base):
    """What the model said about a cell, with the model's sha256 for provenance. Rows are only
    ever added: a renormalisation adds one per cell and keeps the earlier ones."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[str] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    renormalisation_id: Mapped[int | None] = mapped_column(
        ForeignKey("renormalisations.id", ondelete="CASCADE"), index=True
    )
    """Set when the call is that of the model renormalised on the sample's cells."""
    label: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float]
    probabilities: Mapped[dict[str, Any]]
    runner_up: Mapped[str | None] = mapped_column(String(64))
    runner_up_probability: Mapped[float]
    uncertain: Mapped[bool]
    fallback: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Set when the model's fallback model made the call (see ``PredictionOut.fallback``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    renormalisation: Mapped[Renormalisation | None] = relationship(lazy="raise")


class Renormalisation(Base):
    """A reviewer's renormalisation of a sample: the model's normalisation statistics
    re-estimated on the sample's own cells (see :mod:`leukoscope.training.adapt`) and every
    cell classified again; those calls are added beside the earlier ones."""

    __tablename__ = "renormalisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    model_sha256: Mapped[str] = mapped_column(String(64))
    """The renormalised model's weights."""
    cells: Mapped[int]
    """How many of the sample's cells the statistics were re-estimated on."""
    adaptation: Mapped[dict[str, Any]]
    """The renormalised model card's adaptation record (source, cells and their sha256)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Correction(Base):
    """A reviewer's call on a cell: who, when, from which label (``None``: unidentified) to
    which; a first call that keeps the model's label confirms it. Rows are only ever added, so
    the history of a cell is complete."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(primary_key=True)
    cell_id: Mapped[str] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    from_label: Mapped[str | None] = mapped_column(String(64))
    to_label: Mapped[str] = mapped_column(String(64))
    """A class, or ``excluded:<category>``."""
    amendment_id: Mapped[int | None] = mapped_column(
        ForeignKey("amendments.id", ondelete="CASCADE"), index=True
    )
    """Set when the correction was made by an amendment after sign-off."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SignOff(Base):
    """The reviewer's release of a sample, with the differential as it stood; afterwards the
    sample is read-only."""

    __tablename__ = "signoffs"

    sample_id: Mapped[str] = mapped_column(
        ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True
    )
    reviewer: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[datetime] = mapped_column(default=utcnow)
    differential: Mapped[dict[str, Any]]
    sample: Mapped[Sample] = relationship(back_populates="signoff")


class Amendment(Base):
    """A change after sign-off: who, when, why, its corrections and the differential after it.
    The sign-off row keeps the version that was signed; nothing is edited in place."""

    __tablename__ = "amendments"

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    differential: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    corrections: Mapped[list[Correction]] = relationship(order_by="Correction.id", lazy="selectin")


class Comment(Base):
    """A reviewer's note on a sample or one of its cells; only ever added."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[str | None] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


WRITE_LOCK = "leukoscope_write_lock"
"""Execution option marking the engine of :func:`writer`: its transactions take SQLite's
write lock when they begin."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout so the server's
    worker threads can share the file.

    SQLite transactions are begun by SQLAlchemy rather than by the ``sqlite3`` module, which
    only opens one at the first write: reads before it saw no lock and could be stale by then
    (4 concurrent reviewers stored 20 of 159 corrections with a wrong ``from_label``). Read
    transactions begin with ``BEGIN`` (a consistent snapshot under WAL); the :func:`writer`
    sessions with ``BEGIN IMMEDIATE``, which waits for the single write lock before the first
    read, so a change and the checks it rests on are one atomic step.
    """
    try:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    except ArgumentError as exc:
        raise LeukoscopeError(f"invalid database URL: {exc}") from None
    except ImportError as exc:
        raise LeukoscopeError(f"the database driver is not installed ({exc})") from None

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_LOCK, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def create_private_file(path: Path) -> None:
    """Create the SQLite database file readable by its owner only (0600), in a folder of its
    own (0700) when the folder is new: it holds patients' cells and reviewers' names. SQLite
    gives its -wal and -shm files the database file's permissions."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def alembic_config(engine: Engine) -> Config:
    """Alembic's configuration without an ini file: the scripts ship inside this package."""
    config = Config()
    config.set_main_option("script_location", str(resources.files(__package__) / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database schema to the newest migration (``alembic upgrade head``)."""
    config = alembic_config(engine)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise LeukoscopeError(f"cannot open the database {where}: {exc.orig}") from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reading (and for writes that need no lock, such as a new sample)."""
    return sessionmaker(engine, expire_on_commit=False)


def writer(engine: Engine) -> sessionmaker[Session]:
    """Sessions for changes to a sample: begin them, then call :func:`lock_sample` before
    anything else. On SQLite the transaction holds the database's write lock from its start;
    on PostgreSQL the sample's row lock serialises the changes to that sample."""
    return sessionmaker(engine.execution_options(**{WRITE_LOCK: True}), expire_on_commit=False)


def prediction_row(
    call: PredictionOut, model_sha256: str, renormalisation: Renormalisation | None = None
) -> Prediction:
    """The row of the model ``model_sha256``'s ``call`` on a cell (made on ``renormalisation``,
    when given)."""
    return Prediction(
        model_sha256=model_sha256,
        renormalisation=renormalisation,
        **call.model_dump(exclude={"renormalisation_id"}),
    )


@dataclass(frozen=True)
class NewCell:
    """A decoded upload and the model's call on it, ready to be stored."""

    original_name: str
    data: bytes
    image_format: str
    sha256: str
    width: int
    height: int
    prediction: PredictionOut
    box: tuple[int, int, int, int] | None = None
    """For a cell found in a field: its box there ``(x_min, y_min, x_max, y_max)``."""
    edge: bool | None = None
    duplicate_of: str | None = None
    """The same cell, in an earlier field that overlaps this one's (else found by bytes)."""
    possible_duplicate_of: str | None = None


@dataclass(frozen=True)
class NewField:
    """A decoded field upload, ready to be stored."""

    original_name: str
    data: bytes
    image_format: str
    sha256: str
    width: int
    height: int


def create_sample(session: Session, name: str, classes: Sequence[str], model_sha256: str) -> Sample:
    sample = Sample(name=name, classes=list(classes), model_sha256=model_sha256)
    session.add(sample)
    session.flush()
    return sample


def list_samples(session: Session) -> Sequence[Sample]:
    """All samples, newest first, with their cells (not their image bytes)."""
    query = (
        select(Sample)
        .options(selectinload(Sample.cells), selectinload(Sample.signoff))
        .order_by(Sample.created_at.desc())
    )
    return session.scalars(query).all()


def _row(session: Session, table: type[Row], key: str, noun: str) -> Row:
    """The row of ``table`` with primary key ``key``, or a NotFoundError naming it."""
    row = session.get(table, key)
    if row is None:
        raise NotFoundError(f"no {noun} {key!r}")
    return row


def get_sample(session: Session, sample_id: str) -> Sample:
    return _row(session, Sample, sample_id, "sample")


def get_cell(session: Session, cell_id: str) -> Cell:
    return _row(session, Cell, cell_id, "cell")


def get_field(session: Session, field_id: str) -> Field:
    return _row(session, Field, field_id, "field")


def cell_bytes(session: Session, cell_id: str) -> bytes:
    return _row(session, CellImage, cell_id, "cell").data


def field_bytes(session: Session, field_id: str) -> bytes:
    return _row(session, FieldImage, field_id, "field").data


def lock_sample(session: Session, sample_id: str) -> Sample:
    """Lock the sample's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is
    already held by a :func:`writer` session) and load it afresh. Call it before reading
    anything else of the sample: what is read afterwards cannot change until the commit."""
    query = (
        select(Sample)
        .where(Sample.id == sample_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    sample = session.scalars(query).one_or_none()
    if sample is None:
        raise NotFoundError(f"no sample {sample_id!r}")
    return sample


def require_open(sample: Sample) -> None:
    """Refuse changes to a signed-off sample (read under :func:`lock_sample`)."""
    if sample.signoff is not None:
        raise ConflictError(
            f"sample {sample.name!r} was signed off by {sample.signoff.reviewer} and is read-only"
        )


def lock_open_sample(session: Session, sample_id: str) -> Sample:
    """:func:`lock_sample`, refused when the sample is signed off."""
    sample = lock_sample(session, sample_id)
    require_open(sample)
    return sample


def lock_cell(session: Session, cell_id: str) -> Cell:
    """The cell, read after locking its sample (see :func:`lock_sample`)."""
    sample_id = session.scalar(select(Cell.sample_id).where(Cell.id == cell_id))
    if sample_id is None:
        raise NotFoundError(f"no cell {cell_id!r}")
    lock_sample(session, sample_id)
    return get_cell(session, cell_id)


def add_cells(
    session: Session,
    sample: Sample,
    new_cells: Sequence[NewCell],
    model_sha256: str,
    field: Field | None = None,
) -> list[Cell]:
    """Store uploads and the predictions of the model ``model_sha256`` at the end of the
    sample (found in ``field``, when given); refused if another model classified the sample's
    cells (the classes could differ)."""
    require_open(sample)
    if model_sha256 != sample.model_sha256:
        raise ConflictError(
            f"sample {sample.name!r} was classified by another model "
            f"({sample.model_sha256[:12]}); create a new sample for this one"
        )
    start: int = (
        session.scalar(
            select(func.coalesce(func.max(Cell.position), -1)).where(Cell.sample_id == sample.id)
        )
        or 0
    )
    first_with: dict[str, str] = {}  # content hash -> the sample's first cell with it
    query = select(Cell.sha256, Cell.id).where(Cell.sample_id == sample.id)
    for sha256, cell_id in session.execute(query.order_by(Cell.position)):
        first_with.setdefault(sha256, cell_id)
    cells = []
    for offset, new in enumerate(new_cells):
        cell = Cell(
            id=new_id(),
            position=start + 1 + offset,
            original_name=new.original_name[:255],
            image_format=new.image_format,
            sha256=new.sha256,
            width=new.width,
            height=new.height,
            byte_size=len(new.data),
            duplicate_of=new.duplicate_of or first_with.get(new.sha256),
            field_id=None if field is None else field.id,
            x_min=None if new.box is None else new.box[0],
            y_min=None if new.box is None else new.box[1],
            x_max=None if new.box is None else new.box[2],
            y_max=None if new.box is None else new.box[3],
            edge=new.edge,
            possible_duplicate_of=new.possible_duplicate_of,
            image=CellImage(data=new.data),
            predictions=[prediction_row(new.prediction, sample.model_sha256)],
        )
        first_with.setdefault(new.sha256, cell.id)
        sample.cells.append(cell)
        cells.append(cell)
    session.flush()
    return cells


def add_field(
    session: Session,
    sample: Sample,
    new_field: NewField,
    new_cells: Sequence[NewCell],
    model_sha256: str,
) -> tuple[Field, list[Cell]]:
    """Store a field image at the end of the sample's fields, and its cells (see
    :func:`add_cells`)."""
    require_open(sample)
    start: int = (
        session.scalar(
            select(func.coalesce(func.max(Field.position), -1)).where(Field.sample_id == sample.id)
        )
        or 0
    )
    field = Field(
        id=new_id(),
        position=start + 1,
        original_name=new_field.original_name[:255],
        image_format=new_field.image_format,
        sha256=new_field.sha256,
        width=new_field.width,
        height=new_field.height,
        byte_size=len(new_field.data),
        image=FieldImage(data=new_field.data),
    )
    sample.fields.append(field)
    session.flush()
    return field, add_cells(session, sample, new_cells, model_sha256, field)


def add_renormalisation(
    session: Session,
    sample_id: str,
    reviewer: str,
    after: int | None,
    model_sha256: str,
    cells: int,
    adaptation: dict[str, Any],
    predictions: Mapping[str, PredictionOut],
) -> Sample:
    """Record a renormalisation of the open sample: the model ``model_sha256`` renormalised on
    ``cells`` of its cells (its card's ``adaptation``), and its call on each cell
    (``predictions``, by cell id) beside the earlier calls. Reviewers' corrections stand; an
    uncorrected cell's call becomes the new one. Refused when the sample changed since its
    cells were read: cells added, or another renormalisation than ``after`` (the latest then,
    by id) recorded."""
    sample = lock_open_sample(session, sample_id)
    latest = sample.latest_renormalisation
    if (None if latest is None else latest.id) != after:
        raise ConflictError(
            f"sample {sample.name!r} was renormalised by another request meanwhile: reload it"
        )
    if {cell.id for cell in sample.cells} != set(predictions):
        raise ConflictError(
            f"cells were added to sample {sample.name!r} while it was being renormalised: "
            "renormalise it again"
        )
    renormalisation = Renormalisation(
        reviewer=reviewer,
        model_sha256=model_sha256,
        cells=cells,
        adaptation=adaptation,
    )
    sample.renormalisations.append(renormalisation)
    for cell in sample.cells:
        cell.predictions.append(prediction_row(predictions[cell.id], model_sha256, renormalisation))
    session.flush()
    return sample


def check_call(sample: Sample, call: str) -> None:
    """Refuse a call that is neither one of the sample's classes nor an exclusion category."""
    category = exclusion_of(call)
    if category is not None and category not in EXCLUSIONS:
        raise UnknownClassError(
            f"unknown exclusion {category!r}: choose one of {', '.join(EXCLUSIONS)}"
        )
    if category is None and call not in sample.classes:
        choices = ", ".join(sample.classes)
        raise UnknownClassError(f"unknown class {call!r}: choose one of {choices}")


def _correct(cell: Cell, call: str, reviewer: str, amendment: Amendment | None = None) -> bool:
    """Add a correction to ``call`` unless the cell already has it from a person (a first call
    that keeps the model's label is recorded: it confirms it); True when one was added."""
    check_call(cell.sample, call)
    if cell.call == call and (cell.corrections or amendment is not None):
        return False
    correction = Correction(reviewer=reviewer, from_label=cell.call, to_label=call)
    cell.corrections.append(correction)
    if amendment is not None:
        amendment.corrections.append(correction)
    return True


def relabel(session: Session, cell_id: str, call: str, reviewer: str) -> Cell:
    """Record the reviewer's call on a cell (a class or ``excluded:<category>``); calling it
    what a person already called it changes nothing. Its ``from_label`` is the call the cell
    had under the sample's lock."""
    cell = lock_cell(session, cell_id)
    require_open(cell.sample)
    if _correct(cell, call, reviewer):
        session.flush()
    return cell


def confirm(session: Session, sample_id: str, reviewer: str, cell_ids: Sequence[str]) -> Sample:
    """Record the reviewer's confirmation of the model's call on each of ``cell_ids`` (the
    cells a page showed them, never others added meanwhile) that has no person's call yet;
    cells a person already called keep it.

    Raises
    ------
    NotFoundError
        A cell is not in the sample.
    ConflictError
        The sample is signed off, or a cell has no class to confirm (unidentified or excluded).
    """
    sample = lock_open_sample(session, sample_id)
    by_id = {cell.id: cell for cell in sample.cells}
    for cell_id in cell_ids:
        cell = by_id.get(cell_id)
        if cell is None:
            raise NotFoundError(f"no cell {cell_id!r} in sample {sample.name!r}")
        if cell.label is None:
            raise ConflictError(
                f"cell {cell.original_name!r} has no class to confirm: classify it instead"
            )
    for cell_id in dict.fromkeys(cell_ids):
        _correct(by_id[cell_id], str(by_id[cell_id].label), reviewer)
    session.flush()
    return sample


def sign_off(
    session: Session,
    sample_id: str,
    reviewer: str,
    differential: Callable[[Sample], dict[str, Any]],
) -> Sample:
    """Release the sample with ``differential(sample)`` frozen as it stands under the lock;
    refused while any cell is unidentified, or while the differential counts cells
    ``to_confirm`` (on a sample unlike the model's training data, those with only the model's
    call: :attr:`Sample.unconfirmed`)."""
    sample = lock_open_sample(session, sample_id)
    if sample.unidentified:
        raise ConflictError(
            f"{len(sample.unidentified)} unidentified cell(s) must be classified before sign-off"
        )
    frozen = differential(sample)
    if frozen.get("to_confirm"):
        raise ConflictError(
            f"{frozen['to_confirm']} cell(s) have only the model's call: the sample looks "
            "unlike the model's training data, so each call must be confirmed or corrected "
            "before sign-off"
        )
    sample.signoff = SignOff(reviewer=reviewer, differential=frozen)
    session.flush()
    return sample


def amend(
    session: Session,
    sample_id: str,
    reviewer: str,
    reason: str,
    changes: Sequence[tuple[str, str]],
    differential: Callable[[Sample], dict[str, Any]],
) -> Sample:
    """Change calls of a signed-off sample: ``changes`` are ``(cell id, call)``. The sign-off
    keeps the signed version; the amendment records who, when, why, each correction and the
    differential after it."""
    sample = lock_sample(session, sample_id)
    if sample.signoff is None:
        raise ConflictError(f"sample {sample.name!r} is not signed off: change the cells directly")
    by_id = {cell.id: cell for cell in sample.cells}
    amendment = Amendment(reviewer=reviewer, reason=reason, differential={})
    changed = False
    for cell_id, call in changes:
        if cell_id not in by_id:
            raise NotFoundError(f"no cell {cell_id!r} in sample {sample.name!r}")
        changed |= _correct(by_id[cell_id], call, reviewer, amendment)
    if not changed:
        raise ConflictError("the amendment changes no cell's call")
    amendment.differential = differential(sample)
    sample.amendments.append(amendment)
    session.flush()
    return sample


def add_comment(
    session: Session, sample_id: str, reviewer: str, text: str, cell_id: str | None = None
) -> Comment:
    """Add a note on the sample or one of its cells (allowed after sign-off: notes change no
    result, and each carries its author and time)."""
    sample = get_sample(session, sample_id)
    if (
        cell_id is not None
        and session.scalar(select(Cell.id).where(Cell.id == cell_id, Cell.sample_id == sample.id))
        is None
    ):
        raise NotFoundError(f"no cell {cell_id!r} in sample {sample.name!r}")
    comment = Comment(sample_id=sample.id, cell_id=cell_id, reviewer=reviewer, text=text)
    session.add(comment)
    session.flush()
    return comment


def reviewed_cells(
    session: Session, *, signed_off: bool = False
) -> Iterator[tuple[Cell, str | None, str | None]]:
    """Cells whose call a person has vouched for, with that ``(label, exclusion)``: every
    cell a person called (corrected or confirmed) and, with ``signed_off``, every cell of a
    signed-off sample."""
    query = select(Cell).order_by(Cell.created_at, Cell.position)
    if signed_off:
        query = query.where(Cell.corrections.any() | Cell.sample.has(Sample.signoff.has()))
    else:
        query = query.where(Cell.corrections.any())
    for cell in session.scalars(query):
        if cell.call is not None:
            yield cell, cell.label, cell.exclusion
