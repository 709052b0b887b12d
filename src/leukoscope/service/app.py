"""The FastAPI app: classification, Grad-CAM and differential endpoints, the review workflow
on samples stored in the database, and the page that drives them.

Endpoints are plain ``def`` functions, so FastAPI runs each request in its thread pool:
decoding, inference and database work of concurrent requests do not block the event loop.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope import __version__
from leukoscope.cells.crops import FieldCell
from leukoscope.cells.fields import CellBox
from leukoscope.cells.overlap import find_duplicates, grey
from leukoscope.data.preprocess import ScaleEstimate
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.inference.shift import advice, check_shift
from leukoscope.reports.differential import CellCall, compute_differential, render_html
from leukoscope.service import store
from leukoscope.service.errors import (
    ApiError,
    BodySizeLimit,
    error_response,
    install_error_handlers,
)
from leukoscope.service.exports import export_reviewed_zip, sample_csv
from leukoscope.service.runner import ModelRunner, StoredCell
from leukoscope.service.schemas import (
    AmendmentOut,
    AmendRequest,
    CallIn,
    CellOut,
    ClassifyResponse,
    CommentOut,
    CommentRequest,
    ConfirmRequest,
    Differential,
    DifferentialRequest,
    ErrorOut,
    FieldOut,
    FieldUploadResponse,
    Health,
    Identity,
    ImagePrediction,
    Limits,
    Magnification,
    ModelInfo,
    PredictionOut,
    RejectedFile,
    RelabelRequest,
    RelabelResponse,
    RenormalisationOut,
    ReviewerRequest,
    SampleCreate,
    SampleDetail,
    SampleSummary,
    SignOffOut,
    UploadResponse,
)
from leukoscope.service.settings import Settings
from leukoscope.service.uploads import Upload, decode_bounded, read_upload

STATIC = resources.files(__package__) / "static"

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
]

BROWSER_IMAGE_FORMATS = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "GIF": "image/gif",
}  # fmt: skip

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "Missing or wrong API token",
        403: "The token may not make this change (named reviewers)",
        404: "Unknown sample or cell",
        409: "The sample is signed off, not signed off (amendments), not ready, or cannot "
        "be renormalised",
        413: "Upload over a size, count or pixel limit",
        415: "Not a supported image",
        422: "Invalid request",
    }.items()
}
RENORMALISE_ADVICE = (
    "Renormalising the model on this sample's cells (Renormalise) may help, or a model adapted "
    "on labelled cells of this lab (`leukoscope adapt`, e.g. on reviewed cells)."
)
"""What a shifted sample's warning advises on the page, for a model that can be renormalised
and has not been on it."""

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}


@dataclass
class Service:
    """What every request needs: the settings, the model and the database."""

    settings: Settings
    runner: ModelRunner
    engine: Engine
    sessions: sessionmaker[Session]
    writes: sessionmaker[Session]
    """Sessions that change a sample (see ``store.writer``)."""

    def classify(
        self,
        files: Sequence[UploadFile],
        scale: ScaleEstimate | None = None,
        earlier: Sequence[bool] = (),
    ) -> tuple[list[tuple[Upload, Prediction]], list[RejectedFile], ScaleEstimate | None]:
        """Classify uploads within the limits, rescaled by ``scale`` or else their own, with
        the sample's ``earlier`` flags (:meth:`ModelRunner.classify`); fail the request only if
        no file is usable."""
        self.check_count(files)
        done, rejected, used = self.runner.classify(
            files,
            max_bytes=self.settings.max_file_bytes,
            max_pixels=self.settings.max_pixels,
            scale=scale,
            earlier=earlier,
        )
        if not done:
            raise _unusable(rejected)
        return done, rejected, used

    def check_count(self, files: Sequence[UploadFile]) -> None:
        """Refuse a request with more files than the server takes at once."""
        limit = self.settings.max_files
        if len(files) > limit:
            raise ApiError(
                413, f"too many files: {len(files)} in one request, the limit is {limit}"
            )

    def read_one(self, file: UploadFile) -> Image.Image:
        """Decode a single upload or fail the request with its problem."""
        settings = self.settings
        result = read_upload(
            file, 0, max_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels
        )
        if isinstance(result, RejectedFile):
            raise _unusable([result])
        return result[1]

    def model_label(self, sha256: str) -> str:
        """The model as reports name it: the released name and sha256 when it is the one
        loaded, else the sha256 alone."""
        runner = self.runner
        name = f"{runner.name}, " if sha256 == runner.sha256 else ""
        return f"{name}sha256 {sha256}"

    @property
    def renormalisable(self) -> bool:
        """Whether the model can be renormalised on a sample's cells (an EfficientNet with
        its abstention rule for renormalised models)."""
        return self.runner.predictor.renormalisable

    def differential(self, sample: store.Sample) -> dict[str, Any]:
        """The sample's differential, with the shift check of the model that made the cells'
        latest calls (renormalised or not) when it is the one loaded."""
        card = self.runner.card
        renormalised = sample.latest_renormalisation is not None
        abstention = card.renormalised_abstention if renormalised else card.abstention
        if sample.model_sha256 != self.runner.sha256:
            abstention = None
        expected = 1 - abstention.target_coverage if abstention else None
        label = self.model_label(sample.model_sha256)
        if renormalised:
            remedy = advice(renormalisable=True, renormalised=True)
        else:
            remedy = (
                RENORMALISE_ADVICE if self.renormalisable else self.runner.predictor.shift_advice
            )
        return _differential(sample, label, expected, remedy)

    def detail(self, sample: store.Sample) -> SampleDetail:
        return SampleDetail(
            **_summary(sample).model_dump(),
            classes=sample.classes,
            model_sha256=sample.model_sha256,
            magnification=(
                Magnification.model_validate(sample.magnification)
                if sample.magnification is not None
                else None
            ),
            cells=[CellOut.model_validate(cell) for cell in sample.cells],
            differential=Differential.model_validate(self.differential(sample)),
            comments=[CommentOut.model_validate(comment) for comment in sample.comments],
            amendments=[AmendmentOut.model_validate(a) for a in sample.amendments],
            fields=[FieldOut.model_validate(field) for field in sample.fields],
            renormalisations=[
                RenormalisationOut.model_validate(r) for r in sample.renormalisations
            ],
            classified_since_renormalised=len(sample.classified_since_renormalised),
        )

    def check_renormalisable(self, sample: store.Sample) -> None:
        """Refuse to renormalise a sample the model cannot be renormalised on: a signed-off
        sample, another model's, a model without normalisation statistics, a sample that does
        not look shifted, or one renormalised before with no cell added since."""
        store.require_open(sample)
        name = sample.name
        if sample.model_sha256 != self.runner.sha256:
            raise store.ConflictError(f"sample {name!r} was classified by another model")
        if not self.renormalisable:
            raise store.ConflictError(
                f"{self.runner.name} has no normalisation statistics to re-estimate"
            )
        if sample.latest_renormalisation is not None:
            if not sample.classified_since_renormalised:
                raise store.ConflictError(
                    f"sample {name!r} is already renormalised on all of its cells"
                )
            return
        shift = self.differential(sample)["shift"]
        if not (shift and shift["shifted"]):
            said = f": {shift['message']}" if shift else "."
            raise store.ConflictError(
                f"sample {name!r} does not look unlike the model's training data{said} "
                "Renormalising would cost accuracy on images like those."
            )

    def stored_cells(self, session: Session, sample: store.Sample) -> list[StoredCell]:
        """The sample's cells with their stored bytes, to be classified again."""
        return [
            StoredCell(
                id=cell.id,
                name=cell.original_name,
                sha256=cell.sha256,
                data=store.cell_bytes(session, cell.id),
                box=_cell_box(cell) if cell.field_id is not None else None,
                counted=cell.exclusion is None,
            )
            for cell in sample.cells
        ]

    def report_html(self, sample: store.Sample) -> str:
        """The printable report: the differential as it stands (as signed off, or as last
        amended), headed by the sample's state, its amendments and comments."""
        if sample.amendments:
            differential = sample.amendments[-1].differential
        elif sample.signoff:
            differential = sample.signoff.differential
        else:
            differential = self.differential(sample)
        page = render_html(differential)
        return page.replace("</h1>", "</h1>" + _report_blocks(sample, differential), 1)

    def check_class(self, label: str | None) -> None:
        if label is not None and label not in self.runner.classes:
            raise store.UnknownClassError(
                f"unknown class {label!r}: choose one of {', '.join(self.runner.classes)}"
            )


def _unusable(rejected: Sequence[RejectedFile]) -> ApiError:
    """The error for a request without a usable image: the first problem's status."""
    first = rejected[0]
    error = f"{first.name}: {first.error}" if len(rejected) == 1 else "no usable image"
    return ApiError(first.status, error, [r.model_dump() for r in rejected])


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description="The server's API token as a Bearer token.")
_header = APIKeyHeader(name="X-API-Token", auto_error=False, description="The server's API token.")


@dataclass(frozen=True)
class Caller:
    """Who sent the request: ``reviewer`` is set when the token is a named reviewer's."""

    reviewer: str | None = None


def require_token(
    service: ServiceDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> Caller:
    """Check the API token when the server has one (constant-time comparisons): the shared
    token, or a named reviewer's, which identifies the caller."""
    settings = service.settings
    if settings.open_access:
        return Caller()
    given = (bearer.credentials if bearer is not None else header or "").encode()
    reviewer = None
    for token, name in settings.reviewer_tokens.items():  # every one, whichever matches
        if secrets.compare_digest(given, token.encode()):
            reviewer = name
    if reviewer is not None:
        return Caller(reviewer)
    if settings.token is not None and secrets.compare_digest(given, settings.token.encode()):
        return Caller()
    raise ApiError(
        401,
        "missing or invalid API token",
        "send 'Authorization: Bearer <token>' or 'X-API-Token: <token>'",
        {"WWW-Authenticate": "Bearer"},
    )


CallerDep = Annotated[Caller, Depends(require_token)]


def reviewer_name(service: Service, caller: Caller, given: str | None) -> str:
    """The name recorded for a change: the named token's, else the one the request gives."""
    if caller.reviewer is not None:
        if given is not None and given != caller.reviewer:
            raise store.ForbiddenError(
                f"this token belongs to {caller.reviewer}; it cannot act as {given}"
            )
        return caller.reviewer
    if service.settings.reviewer_tokens:
        raise store.ForbiddenError("changes need a named reviewer's token on this server")
    if given is None:
        raise ApiError(422, "the reviewer's name is required")
    return given


def _call(body: CallIn) -> str:
    return body.label if body.label is not None else store.exclusion_call(str(body.exclude))


public = APIRouter(prefix="/api", tags=["service"])
api = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

UploadFiles = Annotated[
    list[UploadFile], File(description="Cell images (JPEG, PNG, TIFF or BMP, sniffed from bytes).")
]


@public.get("/health", summary="Liveness and what the server runs")
def health(service: ServiceDep) -> Health:
    return Health(
        status="ok",
        version=__version__,
        model_arch=service.runner.arch,
        database=service.engine.dialect.name,
    )


@api.get("/model", tags=["service"], summary="The model: arch, classes, card and test metrics")
def model_info(service: ServiceDep) -> ModelInfo:
    card = service.runner.card
    settings = service.settings
    fallback = service.runner.predictor.fallback_dir
    return ModelInfo(
        name=service.runner.name,
        arch=card.arch,
        classes=list(service.runner.classes),
        input_size=card.preprocessing.input_size,
        sha256=service.runner.sha256,
        metrics=card.to_json().get("test_metrics"),
        card=card.to_json(),
        limits=Limits(
            max_file_bytes=settings.max_file_bytes,
            max_request_bytes=settings.max_request_bytes,
            max_files=settings.max_files,
            max_pixels=settings.max_pixels,
        ),
        exclusions=store.EXCLUSIONS,
        renormalisable=service.renormalisable,
        fallback=None if fallback is None else fallback.name,
    )


@api.get("/me", tags=["service"], summary="Who the request's token identifies")
def identity(service: ServiceDep, caller: CallerDep) -> Identity:
    return Identity(
        reviewer=caller.reviewer, named_reviewers=bool(service.settings.reviewer_tokens)
    )


@api.post("/classify", tags=["classify"], summary="Classify one or many images (not stored)")
def classify(files: UploadFiles, service: ServiceDep) -> ClassifyResponse:
    """Unusable files are listed under ``rejected``; the request fails only when none is usable
    (with the status of the problem: 400 empty, 413 too large, 415 not an image)."""
    done, rejected, _ = service.classify(files)
    return ClassifyResponse(
        predictions=[_image_prediction(upload, prediction) for upload, prediction in done],
        rejected=rejected,
    )


@api.post(
    "/heatmap",
    tags=["classify"],
    summary="Grad-CAM heatmap of an uploaded image (PNG)",
    response_class=Response,
    responses=PNG_RESPONSE,
)
def heatmap(
    file: Annotated[UploadFile, File(description="One cell image.")],
    service: ServiceDep,
    target: Annotated[str | None, Form(description="Class to explain; default: predicted.")] = None,
) -> Response:
    service.check_class(target)
    png = service.runner.heatmap_png(service.read_one(file), target)
    return Response(png, media_type="image/png")


@api.post("/differential", tags=["classify"], summary="Differential count of a batch of calls")
def differential(body: DifferentialRequest, service: ServiceDep) -> Differential:
    if len(body.cells) > service.settings.max_differential_cells:
        raise ApiError(413, f"more than {service.settings.max_differential_cells:,} cells")
    for cell in body.cells:
        service.check_class(cell.label)
    calls = [CellCall(cell.label, cell.uncertain) for cell in body.cells]
    return Differential.model_validate(compute_differential(calls, service.runner.classes))


@api.get("/samples", tags=["review"], summary="All samples, newest first")
def list_samples(service: ServiceDep) -> list[SampleSummary]:
    with service.sessions.begin() as session:
        return [_summary(sample) for sample in store.list_samples(session)]


@api.post("/samples", tags=["review"], status_code=201, summary="Create an empty sample")
def create_sample(body: SampleCreate, service: ServiceDep) -> SampleDetail:
    with service.sessions.begin() as session:
        runner = service.runner
        sample = store.create_sample(session, body.name, runner.classes, runner.sha256)
        return service.detail(sample)


@api.get("/samples/{sample_id}", tags=["review"], summary="A sample with its cells")
def get_sample(sample_id: str, service: ServiceDep) -> SampleDetail:
    with service.sessions.begin() as session:
        return service.detail(store.get_sample(session, sample_id))


@api.post("/samples/{sample_id}/cells", tags=["review"], summary="Classify and add images")
def add_cells(sample_id: str, files: UploadFiles, service: ServiceDep) -> UploadResponse:
    """Same limits and rejection rules as ``/api/classify``; the images are stored.

    A sample's cell images are all rescaled by one magnification, as ``predict`` rescales a
    sample: the first upload with enough cells measures it (:meth:`ModelRunner.measure`), and
    the sample keeps it for every later upload. Each upload measuring its own, from its first
    32 images, made one sample's images differ: the 5-class 128-px SqueezeNet scored 95.0% on
    its PBC test split uploaded 200 files at a time in class order, against 98.6% through
    ``predict`` and now in the app (``benchmarks/samples.py --web``).

    Likewise, with a model whose card names a fallback model, whether the cells it flags go to
    the fallback is decided on the whole sample: the stored cells' flags count with the
    upload's in the shift check (nothing is referred in a shifted sample), so that a sample
    uploaded a few cells at a time is judged as one uploaded at once."""
    sha256 = service.runner.sha256
    with service.sessions.begin() as session:  # fail before the costly part when we can
        sample = store.get_sample(session, sample_id)
        store.add_cells(session, sample, [], sha256)
        measured = sample.magnification
        kept = None if measured is None else ScaleEstimate.from_dict(measured)
        # The sample's flags as its page checks them for shift (``differential``).
        flags = [c.prediction.uncertain for c in sample.cells if c.exclusion is None and not c.edge]
    done, rejected, used = service.classify(files, kept, flags)
    new_cells = [_new_cell(upload, prediction) for upload, prediction in done]
    with service.writes.begin() as session:
        sample = store.lock_sample(session, sample_id)
        cells = store.add_cells(session, sample, new_cells, sha256)
        if sample.magnification is None and used is not None and service.runner.settles(used):
            sample.magnification = used.to_dict()
        return UploadResponse(added=[CellOut.model_validate(c) for c in cells], rejected=rejected)


@api.post(
    "/samples/{sample_id}/fields",
    tags=["review"],
    summary="Find, classify and add the white cells of field images",
)
def add_fields(sample_id: str, files: UploadFiles, service: ServiceDep) -> FieldUploadResponse:
    """Each field image (a microscope photo of the smear) is stored, and every white cell found
    in it becomes a cell of the sample: its image is the crop cut around it, with its box in
    the field. A cell cut by the field's edge starts unidentified. A cell seen in an earlier
    field of the sample that overlaps this one (measured by image registration) is excluded as
    a duplicate; one that only looks like an earlier cell, in a field whose overlap is unknown,
    starts unidentified as a possible duplicate. Same limits and rejection rules as
    ``/api/classify``; a field without white cells is stored with none."""
    sha256 = service.runner.sha256
    with service.sessions.begin() as session:  # fail before the costly part when we can
        store.add_cells(session, store.get_sample(session, sample_id), [], sha256)
    service.check_count(files)
    settings = service.settings
    fields: list[FieldOut] = []
    added: list[CellOut] = []
    rejected: list[RejectedFile] = []
    for index, file in enumerate(files):
        result = read_upload(
            file, index, max_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels
        )
        if isinstance(result, RejectedFile):
            rejected.append(result)
            continue
        upload, image = result
        rgb = np.asarray(image)
        found = service.runner.classify_field(rgb, upload.name)
        with service.writes.begin() as session:
            sample = store.lock_sample(session, sample_id)
            repeats = _repeats(session, sample, rgb, [cell.box for cell, _ in found], settings)
            new_cells = [
                _field_cell(upload.name, k, cell, prediction, repeat)
                for k, ((cell, prediction), repeat) in enumerate(zip(found, repeats, strict=True))
            ]
            field, cells = store.add_field(session, sample, _new_field(upload), new_cells, sha256)
            fields.append(FieldOut.model_validate(field))
            added.extend(CellOut.model_validate(cell) for cell in cells)
    if not fields:
        raise _unusable(rejected)
    return FieldUploadResponse(added=added, rejected=rejected, fields=fields)


@api.post(
    "/samples/{sample_id}/renormalise",
    tags=["review"],
    summary="Classify a shifted sample again, by the model renormalised on its cells",
)
def renormalise(
    sample_id: str, body: ReviewerRequest, service: ServiceDep, caller: CallerDep
) -> SampleDetail:
    """For an open sample that looks unlike the model's training data (its differential's
    ``shift``): the model's normalisation statistics are re-estimated on up to 256 of the
    sample's cells (not excluded ones), and every cell is classified again, as ``leukoscope
    predict`` does by itself on a shifted sample (see ``leukoscope.training.adapt``). The new
    calls are added beside the earlier ones, with the reviewer, time and renormalised model;
    reviewers' corrections stand. The sample's magnification is measured again, on all its
    uploaded cell images, and kept for later uploads. Cells added later are classified by the
    model as loaded: renormalising again takes them in. Refused (409) for another model's
    sample, a model without normalisation statistics, a sample that does not look shifted or
    has fewer than 32 cells. It took 10-20 s for samples of 100-300 cells on a 2-core Xeon
    (``benchmarks/samples.py --web``), during which other classifications wait."""
    reviewer = reviewer_name(service, caller, body.reviewer)
    with service.sessions.begin() as session:
        sample = store.get_sample(session, sample_id)
        service.check_renormalisable(sample)
        name = sample.name
        latest = sample.latest_renormalisation
        cells = service.stored_cells(session, sample)
    data = f"sample {name!r} ({sample_id})"
    result = service.runner.renormalise(cells, data, max_pixels=service.settings.max_pixels)
    if isinstance(result, str):
        raise store.ConflictError(f"sample {name!r} was not renormalised: {result}")
    predictions = {key: PredictionOut.model_validate(p) for key, p in result.predictions.items()}
    with service.writes.begin() as session:
        sample = store.add_renormalisation(
            session,
            sample_id,
            reviewer,
            None if latest is None else latest.id,
            result.model_sha256,
            result.cells,
            result.adaptation,
            predictions,
        )
        if result.magnification is not None:  # every upload was rescaled by it just now
            sample.magnification = result.magnification.to_dict()
        return service.detail(sample)


@api.post("/cells/{cell_id}/label", tags=["review"], summary="Reclassify or exclude a cell")
def relabel(
    cell_id: str, body: RelabelRequest, service: ServiceDep, caller: CallerDep
) -> RelabelResponse:
    """``label`` sets the cell's class; ``exclude`` leaves it out of the differential as an
    artefact, a smudged or broken cell, not a white cell, or a duplicate."""
    reviewer = reviewer_name(service, caller, body.reviewer)
    with service.writes.begin() as session:
        cell = store.relabel(session, cell_id, _call(body), reviewer)
        sample = cell.sample
        return RelabelResponse(
            cell=CellOut.model_validate(cell),
            unidentified_count=len(sample.unidentified),
            excluded_count=len(sample.excluded),
            differential=Differential.model_validate(service.differential(sample)),
        )


@api.post(
    "/samples/{sample_id}/confirmations",
    tags=["review"],
    summary="Confirm the model's call on cells (a shifted sample needs it on every cell)",
)
def confirm(
    sample_id: str, body: ConfirmRequest, service: ServiceDep, caller: CallerDep
) -> SampleDetail:
    """Record the reviewer's confirmation of each listed cell's class, as a correction from
    and to that class, for the cells no person has called yet (the others keep their call).
    The page sends the cells of one class group that it showed: a reviewer confirms a group
    after looking it over, as in a gallery review, and corrects the odd ones out first."""
    reviewer = reviewer_name(service, caller, body.reviewer)
    with service.writes.begin() as session:
        return service.detail(store.confirm(session, sample_id, reviewer, body.cell_ids))


@api.post("/samples/{sample_id}/signoff", tags=["review"], summary="Sign off (then read-only)")
def sign_off(
    sample_id: str, body: ReviewerRequest, service: ServiceDep, caller: CallerDep
) -> SampleDetail:
    reviewer = reviewer_name(service, caller, body.reviewer)
    with service.writes.begin() as session:
        return service.detail(store.sign_off(session, sample_id, reviewer, service.differential))


@api.post("/samples/{sample_id}/amendments", tags=["review"], summary="Amend a signed sample")
def amend(
    sample_id: str, body: AmendRequest, service: ServiceDep, caller: CallerDep
) -> SampleDetail:
    """Change calls after sign-off: the signed version stays as it was, and the amendment keeps
    who changed which cells, when, why, and the differential after it."""
    reviewer = reviewer_name(service, caller, body.reviewer)
    changes = [(change.cell_id, _call(change)) for change in body.changes]
    with service.writes.begin() as session:
        sample = store.amend(
            session, sample_id, reviewer, body.reason, changes, service.differential
        )
        return service.detail(sample)


@api.post(
    "/samples/{sample_id}/comments",
    tags=["review"],
    status_code=201,
    summary="Comment on a sample or one of its cells",
)
def comment(
    sample_id: str, body: CommentRequest, service: ServiceDep, caller: CallerDep
) -> CommentOut:
    reviewer = reviewer_name(service, caller, body.reviewer)
    with service.writes.begin() as session:
        added = store.add_comment(session, sample_id, reviewer, body.text, body.cell_id)
        return CommentOut.model_validate(added)


@api.get(
    "/samples/{sample_id}/cells.csv",
    tags=["export"],
    summary="The sample's cells as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def sample_cells_csv(sample_id: str, service: ServiceDep) -> Response:
    with service.sessions.begin() as session:
        sample = store.get_sample(session, sample_id)
        return Response(
            sample_csv(sample),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": attachment(f"{sample.name}.csv")},
        )


@api.get(
    "/samples/{sample_id}/report.html",
    tags=["export"],
    summary="Printable differential report",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
)
def sample_report(sample_id: str, service: ServiceDep) -> Response:
    with service.sessions.begin() as session:
        sample = store.get_sample(session, sample_id)
        return Response(
            service.report_html(sample),
            media_type="text/html; charset=utf-8",
            headers={"Content-Disposition": attachment(f"{sample.name}.html", "inline")},
        )


@api.get(
    "/cells/{cell_id}/image",
    tags=["review"],
    summary="The cell's image as uploaded (TIFF and BMP as PNG)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def cell_image(cell_id: str, service: ServiceDep) -> Response:
    return _stored_image(service, cell_id, store.get_cell, store.cell_bytes)


@api.get(
    "/fields/{field_id}/image",
    tags=["review"],
    summary="A field image as uploaded (TIFF and BMP as PNG)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def field_image(field_id: str, service: ServiceDep) -> Response:
    return _stored_image(service, field_id, store.get_field, store.field_bytes)


def _stored_image(
    service: Service,
    key: str,
    row: Callable[[Session, str], store.Cell | store.Field],
    image_bytes: Callable[[Session, str], bytes],
) -> Response:
    """An uploaded image (a cell's or a field's) as the browser can show it: its stored bytes
    as they are, or converted to PNG."""
    with service.sessions.begin() as session:
        image_format = row(session, key).image_format
        data = image_bytes(session, key)
    media_type = BROWSER_IMAGE_FORMATS.get(image_format)
    if media_type is None:
        image = decode_bounded(data, name=key, max_pixels=service.settings.max_pixels)
        data, media_type = _png(image), "image/png"
    return Response(
        data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"}
    )


@api.get(
    "/cells/{cell_id}/heatmap",
    tags=["review"],
    summary="Grad-CAM heatmap of a stored cell (PNG)",
    response_class=Response,
    responses=PNG_RESPONSE,
)
def cell_heatmap(
    cell_id: str,
    service: ServiceDep,
    target: Annotated[
        str | None, Query(description="Class to explain; default: predicted.")
    ] = None,
) -> Response:
    """Where the model as loaded looks for ``target``: for a renormalised sample, the model
    before renormalising (the renormalised one is not kept); for a call its fallback model
    made, the model as loaded too, where it looks for the fallback's class."""
    service.check_class(target)
    with service.sessions.begin() as session:
        data = store.cell_bytes(session, cell_id)
    image = decode_bounded(data, name=cell_id, max_pixels=service.settings.max_pixels)
    return Response(service.runner.heatmap_png(image, target), media_type="image/png")


@api.get(
    "/reviewed.zip",
    tags=["export"],
    summary="Reviewed cells as a labelled image folder (zip) for training",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def reviewed_zip(
    service: ServiceDep,
    signed_off: Annotated[
        bool, Query(description="Also every cell of signed-off samples, not only corrected ones.")
    ] = False,
) -> StreamingResponse:
    with service.sessions.begin() as session:
        archive = export_reviewed_zip(session, signed_off=signed_off)

    def chunks() -> Iterator[bytes]:
        with archive:
            yield from iter(lambda: archive.read(1024 * 1024), b"")

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="leukoscope-reviewed.zip"'},
    )


def _image_prediction(upload: Upload, prediction: Prediction) -> ImagePrediction:
    fields = PredictionOut.model_validate(prediction).model_dump()
    return ImagePrediction(name=upload.name, **fields)


def _new_cell(upload: Upload, prediction: Prediction) -> store.NewCell:
    return store.NewCell(
        **_upload_columns(upload), prediction=PredictionOut.model_validate(prediction)
    )


def _new_field(upload: Upload) -> store.NewField:
    return store.NewField(**_upload_columns(upload))


def _upload_columns(upload: Upload) -> dict[str, Any]:
    """What a stored cell and a stored field keep of their upload."""
    return {
        "original_name": upload.name,
        "data": upload.data,
        "image_format": upload.image_format,
        "sha256": upload.sha256,
        "width": upload.width,
        "height": upload.height,
    }


def _field_cell(
    field_name: str, index: int, cell: FieldCell, prediction: Prediction, repeat: Repeat
) -> store.NewCell:
    """A cell found in a field: its crop as PNG, its box, and whether it repeats an earlier
    cell (``("same", id)``: excluded as a duplicate; ``("possible", id)``: unidentified)."""
    data = _png(Image.fromarray(cell.rgb))
    box = cell.box
    kind, earlier = repeat if repeat is not None else (None, None)
    return store.NewCell(
        original_name=f"{field_name} cell {index + 1}",
        data=data,
        image_format="PNG",
        sha256=hashlib.sha256(data).hexdigest(),
        width=cell.rgb.shape[1],
        height=cell.rgb.shape[0],
        prediction=PredictionOut.model_validate(prediction),
        box=(box.x_min, box.y_min, box.x_max, box.y_max),
        edge=box.edge,
        duplicate_of=earlier if kind == "same" else None,
        possible_duplicate_of=earlier if kind == "possible" else None,
    )


Repeat = tuple[str, str] | None
"""How a new field's cell repeats an earlier cell of the sample: ``(kind, cell id)``."""


def _repeats(
    session: Session,
    sample: store.Sample,
    rgb: np.ndarray,
    boxes: Sequence[CellBox],
    settings: Settings,
) -> list[Repeat]:
    """For each cell of a new field, the earlier cell of the sample it repeats, if any (see
    :func:`leukoscope.cells.overlap.find_duplicates`); every earlier field is decoded again."""
    if not boxes or not sample.fields:
        return [None] * len(boxes)
    earlier = []
    ids: list[list[str]] = []
    for field in sample.fields:
        cells = [c for c in sample.cells if c.field_id == field.id and c.x_min is not None]
        data = store.field_bytes(session, field.id)
        image = decode_bounded(data, name=field.original_name, max_pixels=settings.max_pixels)
        earlier.append((grey(np.asarray(image)), [_cell_box(cell) for cell in cells]))
        ids.append([cell.id for cell in cells])
    found = find_duplicates(grey(rgb), boxes, earlier)
    return [None if d is None else (d.kind, ids[d.field][d.cell]) for d in found]


def _cell_box(cell: store.Cell) -> CellBox:
    return CellBox(
        int(cell.x_min or 0),
        int(cell.y_min or 0),
        int(cell.x_max or 0),
        int(cell.y_max or 0),
        1.0,
        bool(cell.edge),
    )


def _differential(
    sample: store.Sample, model: str, expected_uncertain: float | None, advice: str
) -> dict[str, Any]:
    """The sample's differential from its current calls. Unidentified cells go in as the
    model's uncertain guesses: counted for review, left out of the percentages. Excluded
    cells (artefacts, duplicates...) are left out and counted per category.

    With ``expected_uncertain``, the share of cells the model flags on images like its
    training data, the model's own flags are checked for a shifted sample (see
    :mod:`leukoscope.inference.shift`), whose flags are withheld until a person has confirmed
    or corrected every counted cell (``to_confirm`` says how many are left): on such a sample
    the model's confident calls are no safer than its flagged ones (the released 128-px
    SqueezeNet kept a quarter of another lab's cells, 5% of them right); ``advice`` ends the
    warning (the adaptation left to try)."""
    counted = [cell for cell in sample.cells if cell.exclusion is None]
    calls = [
        CellCall(cell.label or str(cell.prediction.label), uncertain=cell.label is None)
        for cell in counted
    ]
    shift = None
    if expected_uncertain is not None:
        flags = [cell.prediction.uncertain for cell in counted]
        shift = check_shift(
            flags, expected_uncertain, advice, [bool(cell.edge) for cell in counted]
        )
    to_confirm = len(sample.unconfirmed) if shift is not None and shift.shifted else 0
    differential = compute_differential(
        calls, sample.classes, shift, reviewed=not sample.unidentified and not to_confirm
    )
    excluded = Counter(cell.exclusion for cell in sample.excluded)
    return {
        **differential,
        "sample": sample.name,
        "model": model,
        "excluded": {category: excluded[category] for category in store.EXCLUSIONS},
        "to_confirm": to_confirm,
    }


def _summary(sample: store.Sample) -> SampleSummary:
    return SampleSummary(
        id=sample.id,
        name=sample.name,
        created_at=sample.created_at,
        cell_count=len(sample.cells),
        unidentified_count=len(sample.unidentified),
        excluded_count=len(sample.excluded),
        signoff=SignOffOut.model_validate(sample.signoff) if sample.signoff else None,
        amendment_count=len(sample.amendments),
    )


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _report_blocks(sample: store.Sample, differential: dict[str, Any]) -> str:
    """HTML paragraphs on the sample's state (with ``differential``, as the report shows it,
    the cells left to confirm), amendments, exclusions and comments."""
    e = html.escape
    signoff = sample.signoff
    to_confirm = differential.get("to_confirm", 0)
    left = f"; {to_confirm} cell(s) with only the model's call to confirm" if to_confirm else ""
    status = (
        f"Signed off by {e(signoff.reviewer)} on {_when(signoff.signed_at)}"
        if signoff
        else f"Not signed off: preliminary ({len(sample.unidentified)} unidentified cell(s){left})"
    )
    blocks = [f"<p><strong>{status}</strong></p>"]
    blocks.append(f"<p>{len(sample.cells)} cells, created {_when(sample.created_at)}</p>")
    if sample.magnification is not None:
        blocks.append(f"<p>Magnification: {e(sample.magnification['message'])}.</p>")
    for renormalisation in sample.renormalisations:
        blocks.append(
            f"<p>Renormalised by {e(renormalisation.reviewer)} on "
            f"{_when(renormalisation.created_at)}: the model's normalisation statistics were "
            f"re-estimated on {renormalisation.cells} of the sample's cells, which it then "
            f"classified again (sha256 {renormalisation.model_sha256}).</p>"
        )
    if since := len(sample.classified_since_renormalised):
        blocks.append(f"<p>{since} cell(s) added since, classified by the model as loaded.</p>")
    names = {cell.id: cell.original_name for cell in sample.cells}
    for amendment in sample.amendments:
        changes = "; ".join(
            f"{e(names[c.cell_id])}: {e(str(c.from_label))} → {e(c.to_label)}"
            for c in amendment.corrections
        )
        blocks.append(
            f"<p><strong>Amended by {e(amendment.reviewer)} on {_when(amendment.created_at)}"
            f"</strong>: {e(amendment.reason)} ({changes})</p>"
        )
    if sample.amendments and signoff:
        signed = ", ".join(f"{row['class']} {row['count']}" for row in signoff.differential["rows"])
        blocks.append(f"<p>As signed off before amendment: {e(signed)}.</p>")
    for comment in sample.comments:
        about = f" on {e(names[comment.cell_id])}" if comment.cell_id else ""
        blocks.append(
            f"<p>Comment{about} by {e(comment.reviewer)}, {_when(comment.created_at)}: "
            f"{e(comment.text)}</p>"
        )
    return "\n" + "\n".join(blocks)


UNSAFE_IN_FILE_NAMES = re.compile(r'[\x00-\x1f\x7f\\/:*?"<>|]+')


def attachment(filename: str, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` that names the file ``filename`` (from a sample's name, so any
    text): characters unsafe in file names replaced, an ASCII fallback and the UTF-8 name."""
    safe = UNSAFE_IN_FILE_NAMES.sub("_", filename).strip(" .") or "download"
    fallback = safe.encode("ascii", "replace").decode().replace("?", "_")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(safe)}"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class SecurityHeaders:
    """Headers that stop browsers sniffing uploads as HTML and the page being framed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header without its port (``[::1]:8000`` -> ``::1``)."""
    try:
        return urlsplit(f"//{header}").hostname
    except ValueError:
        return None


class HostCheck:
    """Answer only requests addressed to this machine's loopback names. A tokenless server
    trusts whoever can connect; a web page that rebinds its DNS name to 127.0.0.1 can connect,
    but its requests still carry its own name in ``Host``."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.allowed:
                allowed = ", ".join(sorted(self.allowed))
                error = f"unexpected Host {header!r}: this server without a token answers only "
                error += f"to {allowed} (a guard against DNS rebinding)"
                await error_response(400, error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings, *, predictor: Predictor | None = None) -> FastAPI:
    """Load the model, upgrade the database to the newest schema, and build the app.

    ``predictor`` lets tests share one loaded model between apps.
    """
    runner = ModelRunner(predictor or Predictor.load(settings.model_path))
    if settings.db_url is None:
        store.create_private_file(settings.database_path)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="leukoscope",
        lifespan=lifespan,
        version=__version__,
        summary="White-blood-cell classification and review (research use, not a diagnosis).",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is at /api/openapi.json
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.service = Service(
        settings, runner, engine, store.session_factory(engine), store.writer(engine)
    )
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    if settings.open_access:
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    return app
