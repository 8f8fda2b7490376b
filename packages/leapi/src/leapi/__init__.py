"""``leapi``: the Python client and wire contract of the Let's Enhance image API (LEAPI).

``leapi.Client`` / ``leapi.AsyncClient`` submit pipelines, wait for them, read the usage and download
verified results, with retries that never pay twice; ``leapi.models`` holds the request and response
models (pydantic v2), ``leapi.errors`` the exceptions, ``leapi.webhooks`` the webhook signature
verification. See ``packages/leapi/README.md``.
"""

from __future__ import annotations

from importlib.metadata import version

from leapi.async_client import AsyncClient
from leapi.client import Client
from leapi.download import DownloadedResult, VerifiedResult
from leapi.errors import (
    LeapiAuthError,
    LeapiError,
    LeapiHTTPError,
    LeapiNotFoundError,
    LeapiPipelineFailedError,
    LeapiRateLimitError,
    LeapiRejectedError,
    LeapiResponseError,
    LeapiResultExpiredError,
    LeapiResultMissingError,
    LeapiResultVerificationError,
    LeapiSubmitUncertainError,
    LeapiWaitTimeoutError,
)
from leapi.idempotency import IdempotencyMode, derive_idempotency_key
from leapi.imageinfo import ImageInfo, read_image_info
from leapi.models import (
    MarketplacePreset,
    Pipeline,
    PipelineRequest,
    PipelineStatus,
    PrintPreset,
    RealEstatePreset,
    Usage,
)
from leapi.results import ResultFile, result_files

#: The distribution's version: its one source is ``packages/leapi/pyproject.toml``.
__version__ = version("leapi")

__all__ = [
    "AsyncClient",
    "Client",
    "DownloadedResult",
    "IdempotencyMode",
    "ImageInfo",
    "LeapiAuthError",
    "LeapiError",
    "LeapiHTTPError",
    "LeapiNotFoundError",
    "LeapiPipelineFailedError",
    "LeapiRateLimitError",
    "LeapiRejectedError",
    "LeapiResponseError",
    "LeapiResultExpiredError",
    "LeapiResultMissingError",
    "LeapiResultVerificationError",
    "LeapiSubmitUncertainError",
    "LeapiWaitTimeoutError",
    "MarketplacePreset",
    "Pipeline",
    "PipelineRequest",
    "PipelineStatus",
    "PrintPreset",
    "RealEstatePreset",
    "ResultFile",
    "Usage",
    "VerifiedResult",
    "derive_idempotency_key",
    "read_image_info",
    "result_files",
]
