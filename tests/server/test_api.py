"""``leapi-server`` through HTTP, as documented: submit, poll, download, usage, errors, auth, OpenAPI."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from devkit.server import QUICK_START_OPERATION, RunningServer, wait_for_pipeline
from devkit.sources import write_sample_photo
from leapi.constants import IDEMPOTENCY_SUPPORT_HEADER
from leapi.models import PipelineEnvelope, PipelineStatus, SubmitResponse, SubmitStatus, Usage


def body(urls: str | list[str], **operation: object) -> dict:
    return {
        "source": {"http": {"url": urls}},
        "operations": [{**QUICK_START_OPERATION, **operation}],
        "sink": {"temp_store": True},
    }


def submit(client: httpx.Client, payload: dict, **kwargs: object) -> int:
    response = client.post("/v1/pipeline", json=payload, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    answer = SubmitResponse.model_validate(response.json())
    assert answer.status is SubmitStatus.ACCEPTED and answer.pipeline is not None
    return answer.pipeline.id


def used_credits(client: httpx.Client) -> int:
    return client.get("/v1/me/usage/").json()["used"]


def test_quick_start_end_to_end(leapi_server: RunningServer, source_photos: dict[str, str]) -> None:
    """The docs' quick start, byte for byte: a 900x600 JPEG becomes 1800x1200, downloadable via tmp_url."""
    quick_start = body(source_photos["burger.jpg"])
    quick_start["source"]["http"]["url"] = source_photos["burger.jpg"]  # a string, as in the docs
    with leapi_server.client() as client:
        response = client.post(
            "/v1/pipeline", content=json.dumps(quick_start), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200
        accepted = response.json()
        assert accepted["status"] == "ACCEPTED"
        assert isinstance(accepted["pipeline"]["id"], int)
        assert accepted["pipeline"]["notify_url"] is None
        assert accepted["pipeline"]["source"]["http"]["url"] == [source_photos["burger.jpg"]]

        pipeline = wait_for_pipeline(client, accepted["pipeline"]["id"])
        envelope = PipelineEnvelope.model_validate({"pipeline": pipeline})

    assert envelope.pipeline.status is PipelineStatus.DONE
    assert pipeline["errors"] == [] and pipeline["error"] is None
    for stamp in ("submitted_at", "started_at", "finished_at"):
        assert pipeline[stamp] is not None
    assert pipeline["submitted_at"] <= pipeline["started_at"] <= pipeline["finished_at"]
    assert pipeline["operations"] == [QUICK_START_OPERATION]
    (result,) = pipeline["results"]
    expected_keys = {
        "ext", "mps", "url", "mime", "size", "width", "height", "format", "s3_key", "tmp_url",
        "basename", "filename", "interpret", "s3_bucket", "s3_key_prefix",
    }  # fmt: skip
    assert expected_keys <= set(result["input_object"]) and expected_keys <= set(result["output_object"])
    assert result["input_object"] | {"interpret": None} == {
        "ext": "jpg", "mps": 0.54, "url": source_photos["burger.jpg"], "mime": "image/jpeg", "size": [900, 600],
        "width": 900, "height": 600, "format": "JPEG", "s3_key": None, "tmp_url": None, "basename": "burger",
        "filename": "burger.jpg", "interpret": None, "s3_bucket": None, "s3_key_prefix": "",
    }  # fmt: skip
    output = result["output_object"]
    assert (output["width"], output["height"], output["size"], output["mps"]) == (
        1800,
        1200,
        [1800, 1200],
        2.16,
    )
    assert (output["format"], output["mime"], output["ext"], output["interpret"]) == (
        "JPEG",
        "image/jpeg",
        "jpg",
        "srgb",
    )
    assert output["s3_key"] == f"p/{pipeline['id']}/{output['filename']}"
    assert output["filename"] == output["basename"] + ".jpg" and output["basename"].startswith("burger_")

    download = httpx.get(output["tmp_url"])  # no API key: the signature is the credential
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(download.content))
    assert image.format == "JPEG" and image.size == (1800, 1200)


def test_three_urls_one_broken(
    leapi_server: RunningServer, source_photos: dict[str, str], hostile_sources: dict[str, str]
) -> None:
    urls = [source_photos["burger.jpg"], hostile_sources["truncated.jpg"], source_photos["cat.jpg"]]
    with leapi_server.client() as client:
        before = used_credits(client)
        pipeline = wait_for_pipeline(client, submit(client, body(urls, width=600, height=400)))
        assert used_credits(client) - before == 3  # one credit per URL, the broken one included
    assert pipeline["status"] == "DONE"
    assert [r["input_object"]["url"] for r in pipeline["results"]] == urls
    good, broken, cat = pipeline["results"]
    assert good["output_object"]["size"] == [600, 400] and good["error"] is None
    assert cat["output_object"]["size"] == [600, 399]  # 451x300 is a bit wider than 3:2: the width binds
    assert broken["output_object"] is None
    assert "truncated" in broken["error"]
    assert pipeline["errors"] == [f"{urls[1]}: {broken['error']}"]


def test_all_images_failing_is_error(leapi_server: RunningServer, hostile_sources: dict[str, str]) -> None:
    urls = [hostile_sources[name] for name in ("not-an-image.jpg", "empty.jpg", "missing.jpg")]
    with leapi_server.client() as client:
        pipeline = wait_for_pipeline(client, submit(client, body(urls)))
    assert pipeline["status"] == "ERROR"
    assert pipeline["error"]
    reasons = [r["error"] for r in pipeline["results"]]
    assert "not a supported image" in reasons[0]
    assert "empty" in reasons[1]
    assert "HTTP 404" in reasons[2]
    assert len(pipeline["errors"]) == 3


def test_decompression_bomb_and_truncated_jpeg_fail_cleanly(
    leapi_server: RunningServer, hostile_sources: dict[str, str], source_photos: dict[str, str]
) -> None:
    urls = [hostile_sources["bomb.png"], hostile_sources["truncated.jpg"], source_photos["cat.jpg"]]
    with leapi_server.client() as client:
        pipeline = wait_for_pipeline(client, submit(client, body(urls, width=300, height=300)), timeout=60)
        assert client.get("/healthz").status_code == 200  # the server (and its pool) survived
    bomb, truncated, cat = pipeline["results"]
    assert bomb["output_object"] is None and "too large" in bomb["error"]
    assert "20000" in bomb["error"] or "400" in bomb["error"]
    assert truncated["output_object"] is None and "truncated" in truncated["error"]
    assert cat["error"] is None
    assert pipeline["status"] == "DONE"


@pytest.mark.parametrize(
    ("photo", "box", "expected"),
    [
        ("burger.jpg", (1000, 1000), (1000, 667)),  # landscape into a square: width binds
        ("rocket.jpg", (1800, 1200), (801, 1200)),  # 427x640 portrait into landscape: height binds
        ("burger.jpg", (450, None), (450, 300)),  # one side only
        ("burger.jpg", (None, 900), (1350, 900)),
    ],
)
def test_aspect_ratio_is_preserved(
    leapi_server: RunningServer, source_photos: dict[str, str], photo: str, box: tuple, expected: tuple
) -> None:
    operation: dict = {"width": box[0], "height": box[1]}
    payload = body(source_photos[photo])
    payload["operations"][0] = {
        k: v for k, v in {**QUICK_START_OPERATION, **operation}.items() if v is not None
    }
    with leapi_server.client() as client:
        pipeline = wait_for_pipeline(client, submit(client, payload))
    output = pipeline["results"][0]["output_object"]
    assert (output["width"], output["height"]) == expected
    image = Image.open(io.BytesIO(httpx.get(output["tmp_url"]).content))
    assert image.size == expected


def test_png_output_and_operations_in_order(
    leapi_server: RunningServer, source_photos: dict[str, str]
) -> None:
    payload = body(source_photos["astronaut.png"], width=256, height=256, image_format="PNG")
    payload["operations"].append(
        {"op": "preset/print", "width": 400, "height": 400, "dpi": 300, "image_format": "JPEG"}
    )
    with leapi_server.client() as client:
        pipeline = wait_for_pipeline(client, submit(client, payload))
    (result,) = pipeline["results"]
    assert result["input_object"]["format"] == "PNG" and result["input_object"]["size"] == [512, 512]
    output = result["output_object"]
    assert (output["format"], output["size"]) == ("JPEG", [400, 400])
    image = Image.open(io.BytesIO(httpx.get(output["tmp_url"]).content))
    assert image.format == "JPEG" and image.info.get("dpi") is not None and round(image.info["dpi"][0]) == 300


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            body("https://example.com/a.jpg", restoration_level=11),
            "operations.0.restoration_level: Input should be less than or equal to 10",
        ),
        (
            body("https://example.com/a.jpg", op="preset/sharpen"),
            "operations.0.op: unknown operation 'preset/sharpen'",
        ),
        (body("https://example.com/a.jpg", sharpness=3), "operations.0.sharpness: unknown field"),
        (
            body("https://example.com/a.jpg", quality="best"),
            "operations.0.quality: Input should be a valid integer",
        ),
        (body("ftp://example.com/a.jpg"), "source.http.url.0: must be an http or https URL"),
        (
            body(["https://example.com/a.jpg", "file:///etc/passwd"]),
            "source.http.url.1: must be an http or https URL",
        ),
        (
            {**body("https://example.com/a.jpg"), "notify_url": "mailto:me@example.com"},
            "notify_url: must be an http or https URL",
        ),
        (
            {**body("https://example.com/a.jpg"), "sink": {"temp_store": False}},
            "sink.temp_store: must be true",
        ),
        ({"operations": [QUICK_START_OPERATION]}, "source: Field required"),
        (
            body("https://example.com/a.jpg", width=40000, height=40000),
            "operations.0.width: the 40000x40000 box",
        ),
        ([1, 2, 3], "body: must be a JSON object"),
    ],
)
def test_invalid_requests_are_rejected_naming_the_field_and_cost_nothing(
    leapi_server: RunningServer, payload: object, reason: str
) -> None:
    with leapi_server.client() as client:
        before = used_credits(client)
        response = client.post("/v1/pipeline", json=payload)
        assert response.status_code == 400
        answer = response.json()
        assert answer["status"] == "REJECTED"
        assert answer["reason"].startswith(reason), answer["reason"]
        assert used_credits(client) == before


def test_malformed_json_is_rejected(leapi_server: RunningServer) -> None:
    with leapi_server.client() as client:
        response = client.post(
            "/v1/pipeline", content=b'{"source": {"http": ', headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["status"] == "REJECTED"
    assert response.json()["reason"].startswith("body: malformed JSON")


def test_too_many_urls_and_too_large_bodies_are_rejected(leapi_server: RunningServer) -> None:
    with leapi_server.client() as client:
        before = used_credits(client)
        many = client.post("/v1/pipeline", json=body([f"https://example.com/{i}.jpg" for i in range(10_000)]))
        assert many.status_code == 400
        assert many.json()["reason"].startswith("source.http.url: at most 100 URLs per pipeline")
        huge = client.post("/v1/pipeline", json=body(["https://example.com/" + "a" * 2_000_000]))
        assert huge.status_code == 413 and huge.json()["status"] == "REJECTED"
        assert used_credits(client) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-KEY": "wrong-key"},
        {"X-API-KEY": ""},
        {"X-API-KEY": "test-keyy"},
        {"X-API-KEY": "TEST-KEY"},
    ],
)
def test_missing_or_wrong_key_is_401_everywhere(leapi_server: RunningServer, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=leapi_server.base_url, headers=headers) as client:
        for method, path in (
            ("POST", "/v1/pipeline"),
            ("GET", "/v1/pipeline/1"),
            ("GET", "/v1/me/usage/"),
            ("GET", "/v1/pipeline/1/webhooks"),
        ):
            response = client.request(method, path, json=body("https://example.com/a.jpg"))
            assert response.status_code == 401, (method, path)
            assert response.json()["status"] == "REJECTED"
            assert "key" in response.json()["reason"].lower()


def test_a_key_sees_only_its_own_pipelines(
    leapi_server: RunningServer, source_photos: dict[str, str]
) -> None:
    with leapi_server.client("test-key") as owner, leapi_server.client("other-key") as other:
        other_before = used_credits(other)
        pipeline_id = submit(owner, body(source_photos["cat.jpg"], width=100, height=100))
        hidden = other.get(f"/v1/pipeline/{pipeline_id}")
        assert hidden.status_code == 404 and hidden.json()["status"] == "REJECTED"
        assert other.get(f"/v1/pipeline/{pipeline_id}/webhooks").status_code == 404
        assert owner.get(f"/v1/pipeline/{pipeline_id}").status_code == 200
        assert used_credits(other) == other_before
        assert other.get("/v1/pipeline/999999999").status_code == 404
        assert other.get("/v1/pipeline/not-a-number").status_code == 404
        assert other.get("/v1/pipeline/4%C2%B2").status_code == 404  # "4²": isdigit() but not an int


def test_usage_counts_one_credit_per_url(leapi_server: RunningServer, source_photos: dict[str, str]) -> None:
    with leapi_server.client("other-key") as client:
        before = Usage.model_validate(client.get("/v1/me/usage/").json())
        submit(client, body([source_photos["cat.jpg"]] * 3, width=64, height=64))
        after = Usage.model_validate(client.get("/v1/me/usage").json())  # without the slash too
    assert after.used == (before.used or 0) + 3
    assert after.period_start is not None and after.period_end is not None
    assert after.period_start.day == 1 and after.period_start < after.period_end


def test_idempotency_key_replays_the_original_answer(
    leapi_server: RunningServer, source_photos: dict[str, str]
) -> None:
    payload = body(source_photos["cat.jpg"], width=80, height=80)
    with leapi_server.client() as client:
        before = used_credits(client)
        first = client.post("/v1/pipeline", json=payload, headers={"Idempotency-Key": "order-42"})
        # The same request spelled differently (url as a list) is the same request.
        respelled = {**payload, "source": {"http": {"url": [source_photos["cat.jpg"]]}}}
        second = client.post("/v1/pipeline", json=respelled, headers={"Idempotency-Key": "order-42"})
        assert first.status_code == second.status_code == 200
        assert second.json() == first.json()
        assert second.headers.get("Idempotent-Replayed") == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert used_credits(client) == before + 1

        reused = client.post(
            "/v1/pipeline", json=body(source_photos["burger.jpg"]), headers={"Idempotency-Key": "order-42"}
        )
        assert reused.status_code == 422
        assert reused.json()["status"] == "REJECTED" and "Idempotency-Key" in reused.json()["reason"]

        # Keys are per API key: another key's identical key is a new pipeline.
        with leapi_server.client("other-key") as other:
            third = other.post("/v1/pipeline", json=payload, headers={"Idempotency-Key": "order-42"})
            assert third.json()["pipeline"]["id"] != first.json()["pipeline"]["id"]
        assert used_credits(client) == before + 1


def test_every_response_advertises_idempotency_support(leapi_server: RunningServer) -> None:
    for response in (
        httpx.get(leapi_server.base_url + "/healthz"),
        httpx.get(leapi_server.base_url + "/v1/me/usage/"),  # 401
        httpx.get(leapi_server.base_url + "/v1/me/usage/", headers=leapi_server.headers()),
        httpx.get(leapi_server.base_url + "/nowhere"),
    ):
        assert response.headers[IDEMPOTENCY_SUPPORT_HEADER] == "supported"


def test_openapi_describes_the_contract(leapi_server: RunningServer) -> None:
    spec = httpx.get(leapi_server.base_url + "/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/pipeline", "/v1/pipeline/{pipeline_id}", "/v1/me/usage/", "/v1/tmp/{key}"} <= set(paths)
    submit_op = paths["/v1/pipeline"]["post"]
    assert submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PipelineRequest"
    )
    assert {"400", "401", "402", "429"} <= set(submit_op["responses"])
    assert "Retry-After" in submit_op["responses"]["429"]["headers"]
    schemas = spec["components"]["schemas"]
    assert {"PipelineRequest", "Rejection", "SubmitResponse", "PipelineEnvelope", "Usage"} <= set(schemas)
    assert "X-API-KEY" in json.dumps(spec["components"]["securitySchemes"])
    assert '"date-time"' not in json.dumps(spec)


@pytest.mark.parametrize(
    ("image_format", "ext", "mime"),
    [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("TIFF", "tiff", "image/tiff"),
        ("BMP", "bmp", "image/bmp"),
        ("WEBP", "webp", "image/webp"),
    ],
)
def test_every_supported_input_format(
    leapi_server: RunningServer, source_dir, source_server: str, image_format: str, ext: str, mime: str
) -> None:
    # The FAQ: "JPEG, TIFF, PNG, BMP, or WEBP". Named .img so that only the content can tell.
    name = f"format-sample-{ext}.img"
    write_sample_photo(source_dir / name, "chelsea", size=(150, 100), image_format=image_format)
    with leapi_server.client() as client:
        pipeline = wait_for_pipeline(
            client, submit(client, body(f"{source_server}/{name}", width=300, height=200))
        )
    (result,) = pipeline["results"]
    assert result["error"] is None
    source = result["input_object"]
    assert (source["format"], source["ext"], source["mime"], source["size"]) == (
        image_format,
        ext,
        mime,
        [150, 100],
    )
    assert result["output_object"]["size"] == [300, 200]
