"""The LEAPI wire contract: pydantic v2 models shared by the provider (client) and ``leapi-server``.

Source of truth: the public LEAPI documentation (``shared/leapi-api-docs.txt``). Where its examples
disagree with each other we accept every documented form and emit one, as noted on each field:

* ``source.http.url`` is a string in every request example and a list in the GET example, and "supports
  multiple URLs": requests accept both and emit a string for one URL, a list for several; pipeline objects
  always emit a list (as the GET example does).
* ``output_object.tmp_url`` (GET example) vs ``temp_url`` (prose): both accepted, ``tmp_url`` emitted.
* ``toneai_intensity`` (every JSON body) vs ``tone_intensity`` (print and marketplace field lists): both
  accepted, ``toneai_intensity`` emitted.
* Intensities are documented as 0.1 - 0.99 but every example sends 1.0: we accept 0.0 - 1.0 inclusive.
  0.0 is a documented extension of this project meaning "stage off".

Request models forbid unknown fields (a typo must be a REJECTED naming the field, not a silent default).
Response models keep unknown fields (``extra="allow"``): the real API adds fields and we must not drop them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
)

#: Documented intensity range is 0.1 - 0.99; examples send 1.0 and 0.0 switches the stage off (extension).
INTENSITY_MIN = 0.0
INTENSITY_MAX = 1.0
RESTORATION_LEVEL_MIN = 1
RESTORATION_LEVEL_MAX = 10
#: Upper bound of an output side. The docs set none; this keeps one output within ~1.6 GP.
MAX_OUTPUT_SIDE = 40_000


class _RequestModel(BaseModel):
    """Strict: unknown fields are an error naming the field."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _ResponseModel(BaseModel):
    """Lenient: unknown fields are kept so that new API fields survive a round trip."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --------------------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------------------


def _as_url_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


class HttpSource(_RequestModel):
    """``source.http``. ``url`` is one string or a list of strings (the docs show both)."""

    url: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

    _coerce_url = field_validator("url", mode="before")(_as_url_list)

    @field_serializer("url")
    def _emit_documented_form(self, urls: list[str]) -> str | list[str]:
        # Request examples always send a single string; a list only where several URLs are sent.
        return urls[0] if len(urls) == 1 else urls


class Source(_RequestModel):
    http: HttpSource


class Sink(_RequestModel):
    temp_store: bool = True


class ImageFormat(str, enum.Enum):
    JPEG = "JPEG"
    PNG = "PNG"

    @classmethod
    def _missing_(cls, value: object) -> ImageFormat | None:
        # Users write "jpeg", "jpg" and "png"; the docs write "JPEG" and "PNG".
        if isinstance(value, str):
            normalized = value.strip().upper()
            if normalized == "JPG":
                normalized = "JPEG"
            for member in cls:
                if member.value == normalized:
                    return member
        return None

    @property
    def mime(self) -> str:
        return "image/jpeg" if self is ImageFormat.JPEG else "image/png"

    @property
    def ext(self) -> str:
        return "jpg" if self is ImageFormat.JPEG else "png"


def _refuse_bool(value: Any) -> Any:
    # pydantic's lax mode reads true/false as 1/0; in a numeric field a boolean is a client bug.
    # (Whole floats such as 1800.0 stay accepted for integers: dataframes with nulls produce them.)
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")  # noqa: TRY004 - pydantic reports ValueError only
    return value


NotBool = BeforeValidator(_refuse_bool)
Intensity = Annotated[float, Field(ge=INTENSITY_MIN, le=INTENSITY_MAX), NotBool]
Side = Annotated[int, Field(ge=1, le=MAX_OUTPUT_SIDE), NotBool]


class _PresetOperation(_RequestModel):
    """Fields every preset documents. ``None`` means "not sent": the server applies its preset default.

    ``width`` / ``height`` describe a box: the output fits inside it with one side equal to it and the
    input's aspect ratio kept (the docs: "the API will never stretch or squeeze an image"). Either may be
    left out (only the other side then constrains); both out keeps the input size.
    """

    # Declared here so that ``op`` is emitted first; each preset narrows it to its own literal.
    op: str
    width: Side | None = None
    height: Side | None = None
    restoration_level: (
        Annotated[int, Field(ge=RESTORATION_LEVEL_MIN, le=RESTORATION_LEVEL_MAX), NotBool] | None
    ) = None
    lightai_intensity: Intensity | None = None
    # Emitted as ``toneai_intensity`` (every JSON example); ``tone_intensity`` (field lists) accepted.
    toneai_intensity: Intensity | None = Field(
        default=None, validation_alias=AliasChoices("toneai_intensity", "tone_intensity")
    )
    image_format: ImageFormat | None = None
    quality: Annotated[int, Field(ge=1, le=100), NotBool] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of this operation, leaving out what was not set so the server's defaults apply."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class MarketplacePreset(_PresetOperation):
    op: Literal["preset/marketplace"] = "preset/marketplace"


class RealEstatePreset(_PresetOperation):
    op: Literal["preset/realestate"] = "preset/realestate"


class PrintPreset(_PresetOperation):
    op: Literal["preset/print"] = "preset/print"
    dpi: Annotated[int, Field(ge=1, le=4800), NotBool] | None = None


Operation = Annotated[MarketplacePreset | RealEstatePreset | PrintPreset, Field(discriminator="op")]
OPERATION_ADAPTER: TypeAdapter[MarketplacePreset | RealEstatePreset | PrintPreset] = TypeAdapter(Operation)
PRESET_OPS: dict[str, type[_PresetOperation]] = {
    "preset/marketplace": MarketplacePreset,
    "preset/realestate": RealEstatePreset,
    "preset/print": PrintPreset,
}
PresetOperation = MarketplacePreset | RealEstatePreset | PrintPreset


class PipelineRequest(_RequestModel):
    """Body of ``POST /v1/pipeline``."""

    source: Source
    notify_url: str | None = None
    operations: Annotated[list[Operation], Field(min_length=1)]
    sink: Sink = Field(default_factory=Sink)

    @field_validator("notify_url")
    @classmethod
    def _http_notify_url(cls, value: str | None) -> str | None:
        # The docs: "This url can be http or https".
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http or https URL")
        return value

    @property
    def urls(self) -> list[str]:
        return self.source.http.url

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to POST: documented forms only, unset optionals left out."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    @classmethod
    def build(
        cls,
        urls: str | list[str],
        operations: list[PresetOperation | dict[str, Any]],
        *,
        notify_url: str | None = None,
        temp_store: bool = True,
    ) -> PipelineRequest:
        """Convenience constructor from plain values (as operators receive them)."""
        return cls.model_validate(
            {
                "source": {"http": {"url": urls}},
                "notify_url": notify_url,
                "operations": [
                    op.model_dump(exclude_none=True) if isinstance(op, BaseModel) else op for op in operations
                ],
                "sink": {"temp_store": temp_store},
            }
        )


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


class PipelineStatus(str, enum.Enum):
    """``pipeline.status`` as documented: PROCESSING, then DONE or ERROR."""

    PROCESSING = "PROCESSING"
    DONE = "DONE"
    ERROR = "ERROR"

    def is_terminal(self) -> bool:
        return self is not PipelineStatus.PROCESSING


class SubmitStatus(str, enum.Enum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


class PipelineHttpSource(_ResponseModel):
    """``source.http`` inside a pipeline object: always a list, as in the GET example."""

    url: list[str] = Field(default_factory=list)

    _coerce_url = field_validator("url", mode="before")(_as_url_list)


class PipelineSource(_ResponseModel):
    http: PipelineHttpSource | None = None


class OperationEcho(_ResponseModel):
    """An operation as the server echoes it back: ``op`` plus whatever fields it reports."""

    op: str


class ImageObject(_ResponseModel):
    """``results[].input_object`` / ``output_object``: every documented field, all nullable."""

    ext: str | None = None
    mps: float | None = None
    url: str | None = None
    mime: str | None = None
    size: list[int] | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    s3_key: str | None = None
    # Emitted as ``tmp_url`` (GET example); ``temp_url`` (quick-start prose) accepted.
    tmp_url: str | None = Field(default=None, validation_alias=AliasChoices("tmp_url", "temp_url"))
    basename: str | None = None
    filename: str | None = None
    interpret: str | None = None
    s3_bucket: str | None = None
    s3_key_prefix: str | None = None

    @property
    def temp_url(self) -> str | None:
        return self.tmp_url


class PipelineResult(_ResponseModel):
    """One element of ``results``: one per source URL.

    ``error`` is an extension of this project's server: the failure of this one image when a pipeline
    with several URLs partly fails (``output_object`` is then null). The real API reports failures in
    ``pipeline.errors`` only; clients must treat a missing ``output_object`` as a failed image either way.
    """

    created_at: datetime | None = None
    input_object: ImageObject | None = None
    output_object: ImageObject | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.output_object is not None and self.error is None


class Pipeline(_ResponseModel):
    """The pipeline object of ``GET /v1/pipeline/{id}`` (and, partly filled, of the submit answer)."""

    id: int
    sink: dict[str, Any] | None = None
    # The docs type ``errors`` as "(int) error type" and show ``[]``: accept any JSON, keep it as sent.
    error: Any = None
    errors: list[Any] = Field(default_factory=list)
    source: PipelineSource | None = None
    status: PipelineStatus | None = None
    results: list[PipelineResult] = Field(default_factory=list)
    notify_url: str | None = None
    operations: list[OperationEcho] = Field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    submitted_at: datetime | None = None

    @property
    def source_urls(self) -> list[str]:
        return self.source.http.url if self.source and self.source.http else []


class SubmitResponse(_ResponseModel):
    """Answer of ``POST /v1/pipeline``: ACCEPTED with ``pipeline`` or REJECTED with ``reason``."""

    status: SubmitStatus
    pipeline: Pipeline | None = None
    reason: str | None = None

    @property
    def is_rate_limited(self) -> bool:
        return self.status is SubmitStatus.REJECTED and (self.reason or "").strip().lower().startswith(
            "too many requests"
        )


class Rejection(_ResponseModel):
    """Body of every refused request: the documented ``{"status": "REJECTED", "reason": "..."}``.

    ``leapi-server`` answers with it on ``POST /v1/pipeline`` (as documented) and, for one error shape
    everywhere, on authentication failures (401), unknown pipelines (404) and refused temp URLs (403).
    """

    status: Literal["REJECTED"] = "REJECTED"
    reason: str


class PipelineEnvelope(_ResponseModel):
    """Answer of ``GET /v1/pipeline/{id}``: ``{"pipeline": {...}}``."""

    pipeline: Pipeline


class Usage(_ResponseModel):
    """Answer of ``GET /v1/me/usage/``.

    The docs name the endpoint but show no body. ``leapi-server`` answers with the fields below; other
    spellings the real service may use are accepted through aliases and anything else is kept as extra.
    ``None`` means the server did not say.
    """

    used: int | None = Field(default=None, validation_alias=AliasChoices("used", "usage", "credits_used"))
    quota: int | None = Field(
        default=None, validation_alias=AliasChoices("quota", "monthly_quota", "limit", "credits_limit")
    )
    remaining: int | None = Field(default=None, validation_alias=AliasChoices("remaining", "credits_left"))
    period_start: datetime | None = None
    period_end: datetime | None = None
    rate_limit_per_minute: int | None = None

    @property
    def credits_remaining(self) -> int | None:
        if self.remaining is not None:
            return self.remaining
        if self.quota is not None and self.used is not None:
            return max(self.quota - self.used, 0)
        return None

    @property
    def unlimited(self) -> bool:
        """The answer says, explicitly, that there is no monthly quota: ``"quota": null`` beside a ``used``
        figure (``leapi-server`` without ``--monthly-quota``). A body that merely lacks the fields is not."""
        return self.quota is None and "quota" in self.model_fields_set and self.used is not None


class WebhookEvent(_ResponseModel):
    """Body of the webhook POST to ``notify_url`` (docs: "a POST and pipeline id").

    ``leapi-server`` sends ``id`` and ``status`` (documented) and the full ``pipeline`` object (extension).
    """

    id: int
    status: PipelineStatus | None = None
    pipeline: Pipeline | None = None


def validation_reason(error: ValidationError, *, max_errors: int = 5) -> str:
    """A REJECTED ``reason`` naming each bad field, e.g.
    ``operations.0.restoration_level: Input should be less than or equal to 10``.

    Field paths are dotted, list indices included; the discriminator tag pydantic inserts into the path of
    an operation (``operations.0.preset/marketplace.width``) is left out.
    """
    parts = []
    for item in error.errors(include_url=False)[:max_errors]:
        loc = [str(p) for p in item["loc"] if not (isinstance(p, str) and p in PRESET_OPS)]
        kind = item["type"]
        message = item["msg"]
        if kind == "union_tag_invalid":
            loc.append("op")
            tag = item.get("ctx", {}).get("tag")
            message = f"unknown operation {tag!r}; expected one of " + ", ".join(sorted(PRESET_OPS))
        elif kind == "union_tag_not_found":
            loc.append("op")
            message = "Field required (the operation name, e.g. 'preset/marketplace')"
        elif kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'body'}: {message}")
    hidden = len(error.errors()) - len(parts)
    if hidden > 0:
        parts.append(f"and {hidden} more error(s)")
    return "; ".join(parts)
