"""``leapi-server``'s command line is derived from ``ServerConfig``: one flag per field, the field's default,
its help and environment variable; a field added to the configuration is a flag without more code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leapi_server.__main__ import build_parser, config_from_args
from leapi_server.config import ServerConfig, default_workers, setting
from leapi_server.engine.model_spec import DEFAULT_TILE, ExternalModelSpec

#: No server is started: once, not once per server backend.
pytestmark = pytest.mark.own_backends


def _config(
    *flags: str, environ: dict[str, str] | None = None, config_type: type[ServerConfig] = ServerConfig
):
    return config_from_args(build_parser(config_type).parse_args(list(flags)), environ or {}, config_type)


def test_no_flags_give_the_configurations_own_defaults() -> None:
    config = _config("--api-key", "k")
    assert config.api_keys == ("k",)
    assert config.data_dir == Path("leapi-data").resolve()
    for field in dataclasses.fields(ServerConfig):
        if field.name in ("api_keys", "data_dir"):
            continue
        default = default_workers() if field.name == "workers" else field.default
        assert getattr(config, field.name) == default, field.name


def test_every_field_has_its_flag_and_every_value_reaches_the_configuration(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    config = _config(
        "--data-dir", str(tmp_path), "--api-key", "a", "--api-key", "b", "--host", "0.0.0.0", "--port", "9000",
        "--public-url", "https://enhance.example", "--rate-limit-per-minute", "0", "--monthly-quota", "7",
        "--workers", "3", "--temp-url-ttl", "60", "--webhook-retry-delays", "1,2.5", "--webhook-timeout", "3",
        "--webhook-secret", "s", "--allow-private-sources", "--allow-source-network", "10.0.0.0/8",
        "--allow-source-network", "10.1.0.0/16", "--max-urls-per-pipeline", "9", "--max-request-bytes", "10",
        "--max-download-bytes", "11", "--max-input-pixels", "12", "--max-output-pixels", "13",
        "--fetch-connect-timeout", "1", "--fetch-read-timeout", "2", "--fetch-deadline", "4",
        "--max-redirects", "0", "--max-image-seconds", "5", "--max-task-attempts", "2", "--gc-interval", "6",
        "--idempotency-ttl", "8", "--database-url", f"sqlite:///{tmp_path}/x.db", "--temp-store",
        "s3://my-bucket/out", "--lease-seconds", "7", "--db-pool-size", "4", "--compat", "docs",
        "--restoration-model", str(model), "--restoration-model-scale", "4", "--restoration-model-channels",
        "rgb", "--restoration-model-tile", "256",
    )  # fmt: skip
    expected = ServerConfig(
        data_dir=tmp_path, api_keys=("a", "b"), host="0.0.0.0", port=9000, public_url="https://enhance.example",
        rate_limit_per_minute=0, monthly_quota=7, workers=3, temp_url_ttl_s=60.0, webhook_retry_delays_s=(1.0, 2.5),
        webhook_timeout_s=3.0, webhook_secret="s", allow_private_sources=True,
        allowed_source_networks=("10.0.0.0/8", "10.1.0.0/16"), max_urls_per_pipeline=9, max_request_bytes=10,
        max_download_bytes=11, max_input_pixels=12, max_output_pixels=13, fetch_connect_timeout_s=1.0,
        fetch_read_timeout_s=2.0, fetch_deadline_s=4.0, max_redirects=0, max_image_seconds=5.0,
        max_task_attempts=2, gc_interval_s=6.0, idempotency_ttl_s=8.0, database_url=f"sqlite:///{tmp_path}/x.db",
        temp_store="s3://my-bucket/out", lease_s=7.0, db_pool_size=4, compat="docs", restoration_model=model,
        restoration_model_scale=4, restoration_model_channels="rgb", restoration_model_tile=256,
    )  # fmt: skip
    assert config == expected
    assert {f.name for f in dataclasses.fields(ServerConfig)} == set(dataclasses.asdict(expected))
    assert config.restoration_model_spec == ExternalModelSpec(model, scale=4, channels="rgb", tile=256)


def test_a_field_added_to_the_configuration_is_a_flag() -> None:
    @dataclasses.dataclass(frozen=True)
    class Extended(ServerConfig):
        finish_pipelines_shuffled: bool = False
        shuffle_seed: int | None = None
        extra_labels: tuple[str, ...] = ()
        grace_s: float = setting(2.5, help="seconds of grace", env="LEAPI_GRACE")

    defaults = _config("--api-key", "k", config_type=Extended)
    assert isinstance(defaults, Extended)
    assert (defaults.finish_pipelines_shuffled, defaults.shuffle_seed, defaults.extra_labels) == (
        False,
        None,
        (),
    )
    assert defaults.grace_s == 2.5
    given = _config(
        "--api-key", "k", "--finish-pipelines-shuffled", "--shuffle-seed", "7", "--extra-labels", "x",
        "--extra-labels", "y", "--grace", "1",
        config_type=Extended,
    )  # fmt: skip
    assert isinstance(given, Extended)
    assert (given.finish_pipelines_shuffled, given.shuffle_seed, given.grace_s) == (True, 7, 1.0)
    assert given.extra_labels == ("x", "y")  # repeatable, named after the field
    assert _config("--api-key", "k", environ={"LEAPI_GRACE": "4"}, config_type=Extended).grace_s == 4.0  # type: ignore[attr-defined]


def test_unknown_flags_are_refused() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--api-key", "k", "--finish-pipelines-shuffled"])


def test_the_flag_wins_over_the_environment_which_wins_over_the_default(tmp_path: Path) -> None:
    environ = {
        "LEAPI_WEBHOOK_SECRET": "from-env",
        "LEAPI_DATABASE_URL": "postgresql://u:p@db:5432/leapi",
        "LEAPI_RESTORATION_MODEL": str(tmp_path / "env.onnx"),
        "LEAPI_RESTORATION_MODEL_SCALE": "2",
        "LEAPI_RESTORATION_MODEL_CHANNELS": "y",
        "LEAPI_RESTORATION_MODEL_TILE": "128",
    }
    from_env = _config("--api-key", "k", environ=environ)
    assert from_env.webhook_secret == "from-env"
    assert from_env.database_url == "postgresql://u:p@db:5432/leapi"
    assert from_env.restoration_model_spec == ExternalModelSpec(tmp_path / "env.onnx", 2, "y", 128)
    flagged = _config(
        "--api-key", "k", "--webhook-secret", "from-flag", "--restoration-model", "flag.onnx",
        "--restoration-model-scale", "4", environ=environ,
    )  # fmt: skip
    assert flagged.webhook_secret == "from-flag"
    assert flagged.restoration_model == Path("flag.onnx").resolve()  # relative paths: from where it starts
    assert flagged.restoration_model_scale == 4
    # An empty flag or variable is no value.
    assert _config("--api-key", "k", "--webhook-secret", "", environ=environ).webhook_secret == "from-env"
    assert _config("--api-key", "k", environ={"LEAPI_WEBHOOK_SECRET": " "}).webhook_secret is None
    assert _config("--api-key", "k").restoration_model_spec is None
    assert _config("--api-key", "k", "--restoration-model", "m.onnx").restoration_model_tile == DEFAULT_TILE


def test_api_keys_come_from_the_flags_and_the_environment_together() -> None:
    config = _config("--api-key", "k", "--api-key", "j", environ={"LEAPI_API_KEYS": "a, b,k"})
    assert config.api_keys == ("k", "j", "a", "b")
    assert _config(environ={"LEAPI_API_KEYS": "a,b"}).api_keys == ("a", "b")
    with pytest.raises(SystemExit, match="no API key configured: pass --api-key or set LEAPI_API_KEYS"):
        _config()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LEAPI_DATABASE_URL", "mysql://x", "LEAPI_DATABASE_URL: unsupported database URL"),
        ("LEAPI_RESTORATION_MODEL_SCALE", "5", "LEAPI_RESTORATION_MODEL_SCALE: '5' is not one of 2, 3, 4"),
        (
            "LEAPI_RESTORATION_MODEL_CHANNELS",
            "yuv",
            "LEAPI_RESTORATION_MODEL_CHANNELS: 'yuv' is not one of rgb, y",
        ),
        ("LEAPI_RESTORATION_MODEL_TILE", "8", "LEAPI_RESTORATION_MODEL_TILE: must be 32-1024 pixels, got 8"),
    ],
)
def test_a_bad_environment_value_names_its_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _config("--api-key", "k", environ={variable: value})


@pytest.mark.parametrize(
    "flags",
    [
        ["--workers", "0"],
        ["--restoration-model-scale", "5"],
        ["--restoration-model-channels", "yuv"],
        ["--restoration-model-tile", "2000"],
        ["--compat", "strict"],
    ],
)
def test_bad_flag_values_are_usage_errors(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--api-key", "k", *flags])
    assert exited.value.code == 2


def test_help_shows_each_flag_its_default_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--host",
        "--api-key",
        "--lease-seconds",
        "--allow-source-network",
        "--restoration-model-tile",
    ):
        assert flag in shown
    assert "address to listen on; default: 127.0.0.1" in shown
    assert "default: 180,360,600" in shown
    for variable in (
        "LEAPI_API_KEYS",
        "LEAPI_WEBHOOK_SECRET",
        "LEAPI_DATABASE_URL",
        "LEAPI_RESTORATION_MODEL",
    ):
        assert f"env {variable}" in shown
