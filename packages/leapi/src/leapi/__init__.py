"""``leapi``: the Python client and wire contract of the Let's Enhance image API (LEAPI).

``leapi.models`` holds the request and response models (pydantic v2), ``leapi.webhooks`` the webhook
signature verification.
"""

from __future__ import annotations

from importlib.metadata import version

#: The distribution's version: its one source is ``packages/leapi/pyproject.toml``.
__version__ = version("leapi")
