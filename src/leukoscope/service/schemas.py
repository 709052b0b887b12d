"""The API's request and response bodies; FastAPI turns them into the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Reviewer = Annotated[
    str | None,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(
        description="The reviewer's name, recorded with every correction, comment, sign-off "
        "and amendment. Required unless the request's token is a named reviewer's (then the "
        "token's name is recorded; a different name here is refused)."
    ),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Exclusion = Literal["artefact", "smudged", "not_white_cell", "duplicate"]
"""The categories of ``store.EXCLUSIONS``."""


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


class Shift(BaseModel):
    """Whether the sample looks unlike the model's training data (leukoscope.inference.shift):
    many more cells flagged uncertain than the model flags on such images."""

    model_config = ConfigDict(extra="allow")

    cells: int
    uncertain: int
    expected_share: float
    share: float
    p_value: float
    shifted: bool
    message: str


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
    withheld_flags: list[DifferentialFlag] = Field(
        default_factory=list,
        description="Flags of a shifted sample, held back until a person has confirmed or "
        "corrected every counted cell.",
    )
    shift: Shift | None = None
    notes: list[str]
    disclaimer: str
    excluded: dict[str, int] = Field(
        default_factory=dict,
        description="Cells left out of the differential, per exclusion category.",
    )
    to_confirm: int = Field(
        default=0,
        description="Cells of a shifted sample classified by the model's confident call "
        "alone, with no person's call yet: each must be confirmed or corrected before the "
        "flags are released and the sample signed off (0 when the sample does not look "
        "shifted).",
    )


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
    name: str = Field(description="The released model's name (its architecture if unreleased).")
    arch: str
    classes: list[str]
    input_size: int
    sha256: str
    metrics: dict[str, Any] | None = Field(
        description="The test-split scores recorded in the model card at release (None: an "
        "unreleased model)."
    )
    card: dict[str, Any] = Field(description="The full model card.")
    limits: Limits
    exclusions: dict[str, str] = Field(description="Exclusion category -> description.")
    renormalisable: bool = Field(
        description="The model can be renormalised on a shifted sample's cells "
        "(``POST /api/samples/{id}/renormalise``)."
    )
    fallback: str | None = Field(
        None,
        description="The folder name of the model's fallback model, which calls the cells the "
        "model flags uncertain (None: the model calls them itself).",
    )


class Identity(BaseModel):
    """Who the request's token says the caller is."""

    reviewer: str | None = Field(description="The named reviewer of the token, if any.")
    named_reviewers: bool = Field(
        description="The server records reviewers from their tokens (typed names are not used)."
    )


class PredictionOut(BaseModel):
    """The model's call on one image."""

    model_config = ConfigDict(from_attributes=True)

    label: str | None
    confidence: float
    probabilities: dict[str, float]
    runner_up: str | None
    runner_up_probability: float
    uncertain: bool
    fallback: bool = Field(
        False,
        description="The model flagged the cell uncertain and its card's fallback model made "
        "this call (label and probabilities; the flag stays the model's).",
    )
    renormalisation_id: int | None = Field(
        None, description="Set when the call is the model's renormalised on the sample's cells."
    )


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

    cell_id: str
    reviewer: str
    from_label: str | None = Field(
        description="None: the cell was unidentified; 'excluded:<category>': excluded."
    )
    to_label: str
    amendment_id: int | None = Field(description="Set when made by an amendment.")
    created_at: datetime


class CellOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    position: int
    original_name: str
    width: int
    height: int
    sha256: str
    label: str | None = Field(description="The current class; None if unidentified or excluded.")
    exclusion: Exclusion | None = Field(description="Why the cell is left out, if it is.")
    duplicate_of: str | None = Field(
        description="The sample's earlier cell with these bytes, or the same cell in an earlier "
        "field that overlaps this one's."
    )
    field_id: str | None = Field(None, description="The field image the cell was found in.")
    x_min: int | None = Field(None, description="The cell's box in its field (pixels).")
    y_min: int | None = None
    x_max: int | None = Field(None, description="Exclusive.")
    y_max: int | None = None
    edge: bool | None = Field(None, description="The box touches the field's edge.")
    possible_duplicate_of: str | None = Field(
        None,
        description="An earlier cell that looks like this one, in a field whose overlap with "
        "this one's is unknown: the cell starts unidentified, for the reviewer to decide.",
    )
    prediction: PredictionOut
    corrections: list[CorrectionOut]


class FieldOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    position: int
    original_name: str
    width: int
    height: int


class CommentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    cell_id: str | None = Field(description="None: a comment on the whole sample.")
    reviewer: str
    text: str
    created_at: datetime


class AmendmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    reviewer: str
    reason: str
    created_at: datetime
    corrections: list[CorrectionOut]
    differential: Differential = Field(description="The differential after this amendment.")


class RenormalisationOut(BaseModel):
    """A renormalisation of the sample: its cells classified again by the model whose
    normalisation statistics were re-estimated on them."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    reviewer: str
    created_at: datetime
    model_sha256: str = Field(description="The renormalised model's weights.")
    cells: int = Field(description="How many cells the statistics were re-estimated on.")


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
    excluded_count: int
    signoff: SignOffOut | None
    amendment_count: int


class Magnification(BaseModel):
    """How a sample's uploaded cell images are rescaled to the training images' magnification
    (leukoscope.data.preprocess.ScaleEstimate)."""

    factor: float = Field(description="What the images are rescaled by (1: as they are).")
    measured: float | None = Field(description="What the cells gave, applied or not.")
    cells: int = Field(description="How many cells were measured.")
    message: str


class SampleDetail(SampleSummary):
    classes: list[str]
    model_sha256: str
    magnification: Magnification | None = Field(
        None,
        description="Measured on the sample's first upload with enough cells and used for "
        "every later one; None before that (cells cut from fields are at the training "
        "magnification already).",
    )
    cells: list[CellOut]
    differential: Differential = Field(description="From the cells' current calls.")
    comments: list[CommentOut]
    amendments: list[AmendmentOut]
    fields: list[FieldOut] = Field(description="The field images the cells were found in.")
    renormalisations: list[RenormalisationOut]
    classified_since_renormalised: int = Field(
        description="Cells added after the latest renormalisation, which the model as loaded "
        "classified: renormalising again classifies them too."
    )


class UploadResponse(BaseModel):
    added: list[CellOut]
    rejected: list[RejectedFile]


class FieldUploadResponse(UploadResponse):
    fields: list[FieldOut] = Field(description="The fields stored, whose cells are ``added``.")


class CallIn(BaseModel):
    """A cell's new call: a class (``label``) or an exclusion (``exclude``), not both."""

    label: str | None = None
    exclude: Exclusion | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CallIn:
        if (self.label is None) == (self.exclude is None):
            raise ValueError("give either 'label' (a class) or 'exclude' (a category)")
        return self


class RelabelRequest(CallIn):
    reviewer: Reviewer = None


class RelabelResponse(BaseModel):
    cell: CellOut
    unidentified_count: int
    excluded_count: int
    differential: Differential


class ReviewerRequest(BaseModel):
    """A change that needs only who makes it: a sign-off or a renormalisation."""

    reviewer: Reviewer = None


class ConfirmRequest(BaseModel):
    cell_ids: list[str] = Field(
        min_length=1,
        max_length=10_000,
        description="The cells whose current class the reviewer confirms (those shown to them).",
    )
    reviewer: Reviewer = None


class AmendChange(CallIn):
    cell_id: str


class AmendRequest(BaseModel):
    reason: Text = Field(description="Why the signed result changes (kept with the amendment).")
    changes: list[AmendChange] = Field(min_length=1, max_length=10_000)
    reviewer: Reviewer = None


class CommentRequest(BaseModel):
    text: Text
    cell_id: str | None = Field(None, description="Comment on this cell; None: on the sample.")
    reviewer: Reviewer = None
