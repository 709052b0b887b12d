"""The FastAPI app: classification, Grad-CAM and differential endpoints, the review workflow
on samples stored in the database, and the page that drives them.

Endpoints are plain ``def`` functions, so FastAPI runs each request in its thread pool:
decoding, inference and database work of concurrent requests do not block the event loop.
"""

from __future__ import annotations

import html
import io
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope import __version__
from leukoscope.data.images import decode_rgb
from leukoscope.inference.predictor import Prediction, Predictor
from leukoscope.reports.differential import CellCall, compute_differential, render_html
from leukoscope.service import store
from leukoscope.service.errors import ApiError, BodySizeLimit, install_error_handlers
from leukoscope.service.exports import export_reviewed_zip, sample_csv
from leukoscope.service.runner import ModelRunner
from leukoscope.service.schemas import (
    CellOut,
    ClassifyResponse,
    Differential,
    DifferentialRequest,
    ErrorOut,
    Health,
    ImagePrediction,
    Limits,
    ModelInfo,
    PredictionOut,
    RejectedFile,
    RelabelRequest,
    RelabelResponse,
    SampleCreate,
    SampleDetail,
    SampleSummary,
    SignOffOut,
    SignOffRequest,
    UploadResponse,
)
from leukoscope.service.settings import Settings
from leukoscope.service.uploads import Upload, read_upload

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
}  # fmt: skip

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "Missing or wrong API token",
        404: "Unknown sample or cell",
        409: "The sample is signed off, or not ready for sign-off",
        413: "Upload over a size, count or pixel limit",
        415: "Not a supported image",
        422: "Invalid request",
    }.items()
}
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
        self, files: Sequence[UploadFile]
    ) -> tuple[list[tuple[Upload, Prediction]], list[RejectedFile]]:
        """Classify uploads within the limits; fail the request only if no file is usable."""
        limit = self.settings.max_files
        if len(files) > limit:
            raise ApiError(
                413, f"too many files: {len(files)} in one request, the limit is {limit}"
            )
        done, rejected = self.runner.classify(
            files, max_bytes=self.settings.max_file_bytes, max_pixels=self.settings.max_pixels
        )
        if not done:
            raise _unusable(rejected)
        return done, rejected

    def read_one(self, file: UploadFile) -> Image.Image:
        """Decode a single upload or fail the request with its problem."""
        settings = self.settings
        result = read_upload(
            file, 0, max_bytes=settings.max_file_bytes, max_pixels=settings.max_pixels
        )
        if isinstance(result, RejectedFile):
            raise _unusable([result])
        return result[1]

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


def require_token(
    service: ServiceDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> None:
    """Check the API token when the server has one (constant-time comparison)."""
    expected = service.settings.token
    if expected is None:
        return
    given = bearer.credentials if bearer is not None else header
    if given is None or not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "missing or invalid API token",
            "send 'Authorization: Bearer <token>' or 'X-API-Token: <token>'",
            {"WWW-Authenticate": "Bearer"},
        )


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
        model_arch=str(service.runner.card["arch"]),
        database=service.engine.dialect.name,
    )


@api.get("/model", tags=["service"], summary="The model: arch, classes, card and test metrics")
def model_info(service: ServiceDep) -> ModelInfo:
    card = service.runner.card
    settings = service.settings
    return ModelInfo(
        arch=card["arch"],
        classes=list(service.runner.classes),
        input_size=card["input_size"],
        sha256=service.runner.sha256,
        metrics=card.get("metrics"),
        card=card,
        limits=Limits(
            max_file_bytes=settings.max_file_bytes,
            max_request_bytes=settings.max_request_bytes,
            max_files=settings.max_files,
            max_pixels=settings.max_pixels,
        ),
    )


@api.post("/classify", tags=["classify"], summary="Classify one or many images (not stored)")
def classify(files: UploadFiles, service: ServiceDep) -> ClassifyResponse:
    """Unusable files are listed under ``rejected``; the request fails only when none is usable
    (with the status of the problem: 400 empty, 413 too large, 415 not an image)."""
    done, rejected = service.classify(files)
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
        return _detail(sample)


@api.get("/samples/{sample_id}", tags=["review"], summary="A sample with its cells")
def get_sample(sample_id: str, service: ServiceDep) -> SampleDetail:
    with service.sessions.begin() as session:
        return _detail(store.get_sample(session, sample_id))


@api.post("/samples/{sample_id}/cells", tags=["review"], summary="Classify and add images")
def add_cells(sample_id: str, files: UploadFiles, service: ServiceDep) -> UploadResponse:
    """Same limits and rejection rules as ``/api/classify``; the images are stored."""
    sha256 = service.runner.sha256
    with service.sessions.begin() as session:  # fail before the costly part when we can
        store.add_cells(session, store.get_sample(session, sample_id), [], sha256)
    done, rejected = service.classify(files)
    new_cells = [_new_cell(upload, prediction) for upload, prediction in done]
    with service.writes.begin() as session:
        sample = store.lock_sample(session, sample_id)
        cells = store.add_cells(session, sample, new_cells, sha256)
        return UploadResponse(added=[CellOut.model_validate(c) for c in cells], rejected=rejected)


@api.post("/cells/{cell_id}/label", tags=["review"], summary="Reclassify a cell")
def relabel(cell_id: str, body: RelabelRequest, service: ServiceDep) -> RelabelResponse:
    with service.writes.begin() as session:
        cell = store.relabel(session, cell_id, body.label, body.reviewer)
        sample = cell.sample
        return RelabelResponse(
            cell=CellOut.model_validate(cell),
            unidentified_count=len(sample.unidentified),
            differential=_differential(sample),
        )


@api.post("/samples/{sample_id}/signoff", tags=["review"], summary="Sign off (then read-only)")
def sign_off(sample_id: str, body: SignOffRequest, service: ServiceDep) -> SampleDetail:
    with service.writes.begin() as session:
        return _detail(store.sign_off(session, sample_id, body.reviewer, _differential))


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
            headers={"Content-Disposition": f'attachment; filename="sample-{sample.id}.csv"'},
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
        return Response(_report_html(sample), media_type="text/html; charset=utf-8")


@api.get(
    "/cells/{cell_id}/image",
    tags=["review"],
    summary="The cell's image as uploaded (TIFF and BMP as PNG)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def cell_image(cell_id: str, service: ServiceDep) -> Response:
    with service.sessions.begin() as session:
        cell = store.get_cell(session, cell_id)
        data = store.cell_bytes(session, cell_id)
    media_type = BROWSER_IMAGE_FORMATS.get(cell.image_format)
    if media_type is None:
        data, media_type = _png(decode_rgb(data, name=cell_id)), "image/png"
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
    service.check_class(target)
    with service.sessions.begin() as session:
        data = store.cell_bytes(session, cell_id)
    image = decode_rgb(data, name=cell_id, max_pixels=service.settings.max_pixels)
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
        original_name=upload.name,
        data=upload.data,
        image_format=upload.image_format,
        sha256=upload.sha256,
        width=upload.width,
        height=upload.height,
        label=prediction.label,
        confidence=prediction.confidence,
        probabilities=prediction.probabilities,
        runner_up=prediction.runner_up,
        runner_up_probability=prediction.runner_up_probability,
        uncertain=prediction.uncertain,
    )


def _differential(sample: store.Sample) -> dict[str, Any]:
    """The sample's differential from its current calls. Unidentified cells go in as the
    model's uncertain guesses: counted for review, left out of the percentages."""
    calls = [
        CellCall(cell.label or str(cell.prediction.label), uncertain=cell.label is None)
        for cell in sample.cells
    ]
    differential = compute_differential(calls, sample.classes)
    return {**differential, "sample": sample.name, "model": f"sha256 {sample.model_sha256[:16]}"}


def _summary(sample: store.Sample) -> SampleSummary:
    return SampleSummary(
        id=sample.id,
        name=sample.name,
        created_at=sample.created_at,
        cell_count=len(sample.cells),
        unidentified_count=len(sample.unidentified),
        signoff=SignOffOut.model_validate(sample.signoff) if sample.signoff else None,
    )


def _detail(sample: store.Sample) -> SampleDetail:
    return SampleDetail(
        **_summary(sample).model_dump(),
        classes=sample.classes,
        cells=[CellOut.model_validate(cell) for cell in sample.cells],
        differential=_differential(sample),
    )


def _report_html(sample: store.Sample) -> str:
    """The printable report of the differential (as signed off, if it was), headed by the
    sample's state."""
    signoff = sample.signoff
    status = (
        f"Signed off by {html.escape(signoff.reviewer)} on {signoff.signed_at:%Y-%m-%d %H:%M} UTC"
        if signoff
        else f"Not signed off: preliminary ({len(sample.unidentified)} unidentified cell(s))"
    )
    created = f"{len(sample.cells)} cells, created {sample.created_at:%Y-%m-%d %H:%M} UTC"
    block = f"\n<p><strong>{status}</strong></p>\n<p>{created}</p>"
    page = render_html(signoff.differential if signoff else _differential(sample))
    return page.replace("</h1>", "</h1>" + block, 1)


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


def create_app(settings: Settings, *, predictor: Predictor | None = None) -> FastAPI:
    """Load the model, upgrade the database to the newest schema, and build the app.

    ``predictor`` lets tests share one loaded model between apps.
    """
    runner = ModelRunner(predictor or Predictor.load(settings.model_path))
    if settings.db_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
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
    return app
