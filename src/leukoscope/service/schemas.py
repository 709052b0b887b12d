"""The API's request and response bodies; FastAPI turns them into the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Reviewer = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(description="The reviewer's name, recorded with every correction and sign-off."),
]


class DifferentialRow(BaseModel):
    """One white-cell class: count, percent of the white cells counted, 95% interval, adult
    reference range and whether the percent lies below, within or above it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    class_: str = Field(alias="class")
    count: int
    percent: float | None
    ci_low: float | None
    ci_high: float | None
    reference_low: float | None
    reference_high: float | None
    status: Literal["low", "normal", "high"] | None


class DifferentialFlag(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    code: str
    text: str
    class_: str = Field(alias="class")
    definite: bool = Field(description="The whole 95% interval lies beyond the reference.")


class ForReview(BaseModel):
    model_config = ConfigDict(extra="allow")

    total: int
    by_predicted_class: dict[str, int]


class Differential(BaseModel):
    """The differential count of leukoscope.reports.differential. Cells flagged uncertain
    (unidentified) are counted apart and left out of the percentages until classified."""

    model_config = ConfigDict(extra="allow")

    classes: list[str]
    cells_total: int
    white_cells_counted: int
    for_review: ForReview
    rows: list[DifferentialRow]
    erythroblasts: dict[str, Any] | None
    platelets: dict[str, Any] | None
    reference: dict[str, Any]
    interval: str
    flags: list[DifferentialFlag]
    notes: list[str]
    disclaimer: str


class ErrorOut(BaseModel):
    """Every error response: a one-line message and machine-readable detail."""

    error: str
    detail: Any = None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    model_arch: str
    database: str = Field(description="The database backend (sqlite, postgresql...).")


class Limits(BaseModel):
    max_file_bytes: int
    max_request_bytes: int
    max_files: int
    max_pixels: int


class ModelInfo(BaseModel):
    arch: str
    classes: list[str]
    input_size: int
    sha256: str
    metrics: dict[str, Any] | None = Field(description="Test metrics from the model card.")
    card: dict[str, Any] = Field(description="The full model card.")
    limits: Limits


class PredictionOut(BaseModel):
    """The model's call on one image."""

    model_config = ConfigDict(from_attributes=True)

    label: str | None
    confidence: float
    probabilities: dict[str, float]
    runner_up: str | None
    runner_up_probability: float
    uncertain: bool


class ImagePrediction(PredictionOut):
    name: str = Field(description="The uploaded file name, as given (display only).")


class RejectedFile(BaseModel):
    name: str
    status: int = Field(description="The HTTP status this problem alone would get.")
    error: str


class ClassifyResponse(BaseModel):
    predictions: list[ImagePrediction]
    rejected: list[RejectedFile]


class CellCallIn(BaseModel):
    label: str
    uncertain: bool = False


class DifferentialRequest(BaseModel):
    cells: list[CellCallIn] = Field(min_length=1)


class SampleCreate(BaseModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class CorrectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    reviewer: str
    from_label: str | None = Field(description="None: the cell was unidentified.")
    to_label: str
    created_at: datetime


class CellOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    position: int
    original_name: str
    width: int
    height: int
    label: str | None = Field(description="The current call; None while unidentified.")
    prediction: PredictionOut
    corrections: list[CorrectionOut]


class SignOffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    reviewer: str
    signed_at: datetime
    differential: Differential = Field(description="The differential frozen at sign-off.")


class SampleSummary(BaseModel):
    id: str
    name: str
    created_at: datetime
    cell_count: int
    unidentified_count: int
    signoff: SignOffOut | None


class SampleDetail(SampleSummary):
    classes: list[str]
    cells: list[CellOut]
    differential: Differential


class UploadResponse(BaseModel):
    added: list[CellOut]
    rejected: list[RejectedFile]


class RelabelRequest(BaseModel):
    label: str
    reviewer: Reviewer


class RelabelResponse(BaseModel):
    cell: CellOut
    unidentified_count: int
    differential: Differential


class SignOffRequest(BaseModel):
    reviewer: Reviewer
