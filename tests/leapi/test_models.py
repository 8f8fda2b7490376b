"""The wire contract parses every JSON example of the LEAPI docs (embedded verbatim below) and emits the
documented forms.

The two examples that the docs abbreviate with ``...`` (quick-start response bodies) are not JSON; their
complete versions appear later in the docs and are parsed here.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from leapi.constants import RATE_LIMIT_REASON
from leapi.models import (
    MarketplacePreset,
    Pipeline,
    PipelineEnvelope,
    PipelineRequest,
    PipelineStatus,
    PrintPreset,
    RealEstatePreset,
    Rejection,
    SubmitResponse,
    SubmitStatus,
    Usage,
    WebhookEvent,
    validation_reason,
)

# --- verbatim from the docs -----------------------------------------------------------------------------

QUICK_START_REQUEST = """
{
    "source": {
        "http": {
            "url": "https://letsenhance.io/docs/assets/samples/burger.jpg"
        }
    }, 
    "operations": [
        {
            "op": "preset/marketplace",
            "width": 1800,
            "height": 1200,
            "restoration_level": 4,
            "lightai_intensity": 1.0,
            "toneai_intensity": 0.5,
            "image_format": "JPEG",
            "quality": 75
        }
    ],
    "sink": {
        "temp_store": true
    }
}
"""

WEBHOOK_REQUEST = """
{
    "source": {
        "http": {
            "url": "https://letsenhance.io/docs/assets/samples/burger.jpg"
        }
    },
    "notify_url": "https://your.domain/path/to/webhook",
    "operations": [
        {
            "op": "preset/marketplace",
            "width": 1800,
            "height": 1200,
            "restoration_level": 4,
            "lightai_intensity": 1.0,
            "toneai_intensity": 0.5,
            "image_format": "JPEG",
            "quality": 75
        }
    ],
    "sink": {
        "temp_store": true
    }
}
"""

# "API In-depth > Request fields > JSON object": identical text to WEBHOOK_REQUEST in the docs.
IN_DEPTH_REQUEST = WEBHOOK_REQUEST

ACCEPTED_RESPONSE_ABRIDGED = """
{
    "status": "ACCEPTED",
    "pipeline": {
        "source": {
 ...
        },
        "id": 26082838,
        "notify_url": null
    }
}
"""

GET_RESPONSE = """
{
    "pipeline": {
        "id": 27312832,
        "sink": {
            "temp_store": true
        },
        "error": null,
        "errors": [],
        "source": {
            "http": {
                "url": [
                    "https://letsenhance.io/docs/assets/samples/burger.jpg"
                ]
            }
        },
        "status": "DONE",
        "results": [
            {
                "created_at": "2021-04-26T13:46:09.145864",
                "input_object": {
                    "ext": "jpg",
                    "mps": 0.54,
                    "url": "https://letsenhance.io/docs/assets/samples/burger.jpg",
                    "mime": "image/jpeg",
                    "size": [
                        900,
                        600
                    ],
                    "width": 900,
                    "format": "JPEG",
                    "height": 600,
                    "s3_key": null,
                    "tmp_url": null,
                    "basename": "burger",
                    "filename": "burger.jpg",
                    "interpret": null,
                    "s3_bucket": null,
                    "s3_key_prefix": ""
                },
                "output_object": {
                    "ext": "jpg",
                    "mps": 2.16,
                    "url": null,
                    "mime": "image/jpeg",
                    "size": [
                        1800,
                        1200
                    ],
                    "width": 1800,
                    "format": "JPEG",
                    "height": 1200,
                    "s3_key": "p/27312832/burger_j63Bv5.jpg",
                    "tmp_url": "https://s3.amazonaws.com/leapi-tmp-us-east-1/p/27312832/burger_j63Bv5.jpg?response-content-type=image%2Fjpeg&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIFU5PY2YVSAGMK3Q%2F20210426%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20210426T134609Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=8b821e5f2d14ef6358921bef3212801cb309d6caa168a4823e05db427f8b5e77",
                    "basename": "burger_j63Bv5",
                    "filename": "burger_j63Bv5.jpg",
                    "interpret": "srgb",
                    "s3_bucket": "leapi-tmp-us-east-1",
                    "s3_key_prefix": ""
                }
            }
        ],
        "notify_url": "https://your.domain/path/to/webhook",
        "operations": [
            {
                "op": "preset/marketplace",
                "width": 1600,
                "height": 900,
                "restoration_level": 4,
                "lightai_intensity": 1.0,
                "toneai_intensity": 0.5,
                "image_format": "JPEG",
                "quality": 75
            }
        ],
        "started_at": "2021-04-26T13:46:01.358819",
        "finished_at": "2021-04-26T13:46:09.361341",
        "submitted_at": "2021-04-26T13:46:01.309535"
    }
}
"""

REALESTATE_OPERATION = """
{
    "op": "preset/realestate",
    "width": 1600,
    "height": 900,
    "restoration_level": 4,
    "lightai_intensity": 1.0,
    "toneai_intensity": 0.5,
    "image_format": "JPEG",
    "quality": 75
}
"""

PRINT_OPERATION = """
{
    "op": "preset/print",
    "width": 1600,
    "height": 1065,
    "restoration_level": 2,
    "lightai_intensity": 1.0,
    "toneai_intensity": 0.5,
    "dpi": 300,
    "image_format": "JPEG",
    "quality": 85
}
"""

MARKETPLACE_OPERATION = """
{
    "op": "preset/marketplace",
    "width": 1200,
    "height": 1600,
    "restoration_level": 2,
    "lightai_intensity": 1.0,
    "toneai_intensity": 0.5,
    "image_format": "JPEG",
    "quality": 75
}
"""

RATE_LIMIT_RESPONSE = """
{
    "status": "REJECTED",
    "reason": "Too Many Requests. Rate limit exceeded."
}
"""

# --- requests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [QUICK_START_REQUEST, WEBHOOK_REQUEST, IN_DEPTH_REQUEST])
def test_every_documented_request_body_parses(text: str) -> None:
    request = PipelineRequest.model_validate_json(text)
    assert request.urls == ["https://letsenhance.io/docs/assets/samples/burger.jpg"]
    (operation,) = request.operations
    assert isinstance(operation, MarketplacePreset)
    assert (operation.width, operation.height, operation.restoration_level) == (1800, 1200, 4)
    assert operation.lightai_intensity == 1.0 and operation.toneai_intensity == 0.5
    assert operation.image_format is not None and operation.image_format.value == "JPEG"
    assert operation.quality == 75
    assert request.sink.temp_store is True


def test_request_round_trips_to_the_documented_form() -> None:
    original = json.loads(WEBHOOK_REQUEST)
    assert PipelineRequest.model_validate(original).to_wire() == original


def test_quick_start_request_without_notify_url_emits_none() -> None:
    wire = PipelineRequest.model_validate_json(QUICK_START_REQUEST).to_wire()
    assert "notify_url" not in wire
    assert wire == json.loads(QUICK_START_REQUEST)


@pytest.mark.parametrize(
    ("text", "model"),
    [
        (REALESTATE_OPERATION, RealEstatePreset),
        (PRINT_OPERATION, PrintPreset),
        (MARKETPLACE_OPERATION, MarketplacePreset),
    ],
)
def test_every_documented_preset_body_parses(text: str, model: type) -> None:
    request = PipelineRequest.model_validate(
        {"source": {"http": {"url": "https://x.test/a.jpg"}}, "operations": [json.loads(text)]}
    )
    (operation,) = request.operations
    assert isinstance(operation, model)
    assert operation.to_wire() == json.loads(text)


def test_whole_floats_are_accepted_for_integer_fields() -> None:
    # Integer columns with nulls come out of pandas as floats (1800.0); they are still valid sizes.
    operation = PipelineRequest.model_validate(
        {
            "source": {"http": {"url": "https://x.test/a.jpg"}},
            "operations": [{"op": "preset/marketplace", "width": 1800.0}],
        }
    ).operations[0]
    assert operation.to_wire() == {"op": "preset/marketplace", "width": 1800}


def test_print_preset_keeps_dpi() -> None:
    operation = PipelineRequest.model_validate(
        {"source": {"http": {"url": "https://x.test/a.jpg"}}, "operations": [json.loads(PRINT_OPERATION)]}
    ).operations[0]
    assert isinstance(operation, PrintPreset) and operation.dpi == 300


def test_url_list_and_tone_intensity_spelling_are_accepted() -> None:
    request = PipelineRequest.model_validate(
        {
            "source": {"http": {"url": ["https://x.test/a.jpg", "https://x.test/b.jpg"]}},
            "operations": [{"op": "preset/marketplace", "tone_intensity": 0.3, "image_format": "jpg"}],
        }
    )
    assert request.urls == ["https://x.test/a.jpg", "https://x.test/b.jpg"]
    wire = request.to_wire()
    assert wire["source"]["http"]["url"] == ["https://x.test/a.jpg", "https://x.test/b.jpg"]
    assert wire["operations"][0] == {
        "op": "preset/marketplace",
        "toneai_intensity": 0.3,
        "image_format": "JPEG",
    }


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (
            {"op": "preset/marketplace", "restoration_level": 11},
            "operations.0.restoration_level: Input should be less than or equal to 10",
        ),
        (
            {"op": "preset/marketplace", "restoration_level": 0},
            "operations.0.restoration_level: Input should be greater than or equal to 1",
        ),
        (
            {"op": "preset/marketplace", "lightai_intensity": 1.5},
            "operations.0.lightai_intensity: Input should be less than or equal to 1",
        ),
        ({"op": "preset/print", "dpi": "high"}, "operations.0.dpi: Input should be a valid integer"),
        (
            {"op": "preset/marketplace", "image_format": "GIF"},
            "operations.0.image_format: Input should be 'JPEG' or 'PNG'",
        ),
        ({"op": "preset/marketplace", "colour": 1}, "operations.0.colour: unknown field"),
        (
            {"op": "preset/marketplace", "lightai_intensity": True},
            "operations.0.lightai_intensity: must be a number",
        ),
        ({"op": "preset/marketplace", "width": False}, "operations.0.width: must be a number, not a boolean"),
        ({"op": "preset/unknown"}, "operations.0.op: unknown operation 'preset/unknown'"),
        ({"width": 100}, "operations.0.op: Field required"),
    ],
)
def test_validation_reason_names_the_field(operation: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        PipelineRequest.model_validate(
            {"source": {"http": {"url": "https://x.test/a.jpg"}}, "operations": [operation]}
        )
    assert validation_reason(info.value).startswith(expected)


def test_validation_reason_for_request_level_fields() -> None:
    with pytest.raises(ValidationError) as info:
        PipelineRequest.model_validate(
            {"source": {"http": {"url": []}}, "operations": [], "notify_url": "ftp://x", "sinc": {}}
        )
    reason = validation_reason(info.value)
    for fragment in (
        "source.http.url:",
        "operations:",
        "notify_url: must be an http or https URL",
        "sinc: unknown field",
    ):
        assert fragment in reason


# --- responses -------------------------------------------------------------------------------------------


def test_documented_get_response_parses_with_every_field() -> None:
    envelope = PipelineEnvelope.model_validate_json(GET_RESPONSE)
    pipeline = envelope.pipeline
    assert pipeline.id == 27312832 and pipeline.status is PipelineStatus.DONE
    assert pipeline.source_urls == ["https://letsenhance.io/docs/assets/samples/burger.jpg"]
    (result,) = pipeline.results
    assert result.succeeded
    assert result.input_object is not None and result.output_object is not None
    assert result.input_object.size == [900, 600] and result.input_object.mps == 0.54
    assert result.output_object.size == [1800, 1200] and result.output_object.interpret == "srgb"
    assert result.output_object.temp_url is not None and result.output_object.temp_url.startswith(
        "https://s3."
    )
    assert result.output_object.s3_key == "p/27312832/burger_j63Bv5.jpg"
    assert pipeline.operations[0].op == "preset/marketplace"
    assert pipeline.finished_at is not None and pipeline.submitted_at is not None
    # Every documented field survives a round trip unchanged (modulo timestamp formatting).
    again = json.loads(envelope.model_dump_json(by_alias=True))
    original = json.loads(GET_RESPONSE)
    for side in ("input_object", "output_object"):
        assert again["pipeline"]["results"][0][side] == original["pipeline"]["results"][0][side]


def test_unknown_response_fields_are_kept() -> None:
    data = json.loads(GET_RESPONSE)
    data["pipeline"]["brand_new_field"] = {"x": 1}
    data["pipeline"]["results"][0]["output_object"]["dominant_color"] = "#fff"
    pipeline = Pipeline.model_validate(data["pipeline"])
    dumped = pipeline.model_dump(mode="json")
    assert dumped["brand_new_field"] == {"x": 1}
    assert dumped["results"][0]["output_object"]["dominant_color"] == "#fff"


def test_temp_url_spelling_is_accepted() -> None:
    data = json.loads(GET_RESPONSE)
    output = data["pipeline"]["results"][0]["output_object"]
    output["temp_url"] = output.pop("tmp_url")
    pipeline = Pipeline.model_validate(data["pipeline"])
    assert pipeline.results[0].output_object is not None
    assert pipeline.results[0].output_object.tmp_url == output["temp_url"]


def test_abridged_accepted_response_shape() -> None:
    # The quick start abbreviates the body with "..."; with the ellipsis removed it is the ACCEPTED shape.
    text = ACCEPTED_RESPONSE_ABRIDGED.replace(" ...\n", "")
    response = SubmitResponse.model_validate_json(text)
    assert response.status is SubmitStatus.ACCEPTED
    assert response.pipeline is not None and response.pipeline.id == 26082838
    assert response.pipeline.notify_url is None


def test_documented_rate_limit_response() -> None:
    response = SubmitResponse.model_validate_json(RATE_LIMIT_RESPONSE)
    assert response.status is SubmitStatus.REJECTED
    assert response.reason == RATE_LIMIT_REASON
    assert response.is_rate_limited
    assert Rejection.model_validate_json(RATE_LIMIT_RESPONSE).reason == RATE_LIMIT_REASON


def test_usage_accepts_other_spellings() -> None:
    usage = Usage.model_validate({"credits_used": 3, "credits_limit": 10})
    assert (usage.used, usage.quota, usage.credits_remaining) == (3, 10, 7)


@pytest.mark.parametrize(
    ("body", "remaining", "unlimited"),
    [
        ({"used": 3, "quota": None, "remaining": None}, None, True),  # leapi-server without a quota
        ({"used": 3, "quota": 10}, 7, False),
        ({"used": 3}, None, False),  # no quota field at all: not readable, not unlimited
        ({"quota": None}, None, False),  # no usage figure beside it
        ({"plan": "pro"}, None, False),
    ],
)
def test_usage_unlimited_only_when_said_explicitly(
    body: dict, remaining: int | None, unlimited: bool
) -> None:
    usage = Usage.model_validate(body)
    assert (usage.credits_remaining, usage.unlimited) == (remaining, unlimited)


def test_webhook_event_parses_documented_id_and_status() -> None:
    event = WebhookEvent.model_validate({"id": 26082838, "status": "DONE"})
    assert event.id == 26082838 and event.status is PipelineStatus.DONE
