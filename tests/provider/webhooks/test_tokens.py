"""Channels, tokens and notify URLs: deterministic per task instance, unguessable, scoped, compared in
constant time."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

import pytest

from leapi_provider.webhooks import tokens
from leapi_provider.webhooks.tokens import (
    CHANNEL_PATTERN,
    InvalidChannelError,
    channel_for_task,
    channel_token,
    check_channel,
    notify_url,
    token_matches,
)

SECRET = "s3cret-for-tests"


def test_a_channel_is_the_same_for_every_try_and_differs_between_task_instances():
    channel = channel_for_task("feed", "manual__2026-01-01", "batch", 3)
    assert channel == channel_for_task("feed", "manual__2026-01-01", "batch", 3)
    assert CHANNEL_PATTERN.fullmatch(channel)
    others = {
        channel_for_task("feed", "manual__2026-01-01", "batch", 4),
        channel_for_task("feed", "manual__2026-01-02", "batch", 3),
        channel_for_task("feed", "manual__2026-01-01", "submit", 3),
        channel_for_task("feed2", "manual__2026-01-01", "batch", 3),
    }
    assert channel not in others and len(others) == 4


def test_a_token_is_scoped_to_its_channel_and_secret():
    a, b = channel_for_task("d", "r", "t"), channel_for_task("d", "r", "u")
    token = channel_token(SECRET, a)
    assert len(token) == tokens.TOKEN_CHARS and token == channel_token(SECRET, a)
    assert token_matches(SECRET, a, token)
    assert not token_matches(SECRET, b, token), "another channel's token"
    assert not token_matches("another-secret", a, token), "another secret"
    assert not token_matches(SECRET, a, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not token_matches(SECRET, a, "")
    assert not token_matches(SECRET, a, "é" * 32)
    assert not token_matches("", a, token), "no secret, no valid token"


def test_tokens_are_compared_in_constant_time(monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def spy(x, y):
        calls.append((x, y))
        return compare(x, y)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    channel = channel_for_task("d", "r", "t")
    assert token_matches(SECRET, channel, channel_token(SECRET, channel))
    assert len(calls) == 1


def test_notify_url_carries_the_channel_in_the_path_and_the_token_in_the_query():
    channel = channel_for_task("d", "r", "t")
    url = notify_url("https://airflow.example.com/leapi-webhooks/", SECRET, channel)
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "airflow.example.com"
    assert parts.path == f"/leapi-webhooks/v1/{channel}"
    assert parse_qs(parts.query) == {"token": [channel_token(SECRET, channel)]}


@pytest.mark.parametrize(
    "bad", ["", "short", "../../etc/passwd", "ti-" + "a" * 80, "ti-abc def0", "-leading"]
)
def test_a_malformed_channel_is_refused(bad):
    with pytest.raises(InvalidChannelError):
        check_channel(bad)
    assert not token_matches(SECRET, bad, "x" * 32)
