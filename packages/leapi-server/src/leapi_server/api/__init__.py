"""The HTTP surface of ``leapi-server``: one router per resource (``routes``), the dependencies they share
(``deps``: the runtime, the API key), the one mapping of domain refusals to HTTP (``errors``), the
OpenAPI document (``openapi``) and the response-wide header (``middleware``)."""
