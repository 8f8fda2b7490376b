"""Names of the LEAPI wire contract: the one place a path, header or fixed text is spelled.

Documented by the public LEAPI docs unless marked as an extension (``leapi-server`` only; a client uses an
extension only when the server advertises it).
"""

from __future__ import annotations

#: The public API (the default base URL of a client).
DEFAULT_BASE_URL = "https://api.letsenhance.io"

API_KEY_HEADER = "X-API-KEY"
PIPELINE_PATH = "/v1/pipeline"
USAGE_PATH = "/v1/me/usage/"

#: The exact ``reason`` text the docs give for a rate-limited submit.
RATE_LIMIT_REASON = "Too Many Requests. Rate limit exceeded."

#: Extension: a client may send this request header on ``POST /v1/pipeline``; the same key from the same
#: API key within 24 h returns the original ACCEPTED answer (same pipeline, no second charge). Rely on it
#: only when a response carries ``IDEMPOTENCY_SUPPORT_HEADER: supported``.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_SUPPORT_HEADER = "X-Leapi-Idempotency"
#: The value of ``IDEMPOTENCY_SUPPORT_HEADER`` that advertises the extension.
IDEMPOTENCY_SUPPORTED = "supported"
#: Extension: ``true`` on an ACCEPTED answer that replays an earlier request with the same Idempotency-Key.
IDEMPOTENT_REPLAY_HEADER = "Idempotent-Replayed"
#: Extension: liveness, no key needed.
HEALTH_PATH = "/healthz"
#: Extension: a signed temporary result file (``tmp_url``) on ``leapi-server``.
TMP_PATH_PREFIX = "/v1/tmp/"
