"""moto's S3 server (server mode, a real HTTP subprocess) on a free 127.0.0.1 port, and the AWS
connection and environment that point Airflow, boto3 and s3fs (or a ``leapi-server``) at it.

The server is a separate process so that tests can stop and restart it (S3 outages) and so that its
request handling does not share its user's GIL. The credentials are moto's test ones: no real AWS
credential can leak into a test, a bench or the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from devkit.server import free_port, stop_process, wait_until_answering

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_START_TIMEOUT_S = 30.0


class MotoS3Server:
    """``python -m moto.server`` bound to 127.0.0.1; :meth:`stop` / :meth:`start` keep the same port.

    Stopping loses moto's in-memory state (buckets and objects), like a storage outage that drops data.
    """

    def __init__(self, log_path: Path) -> None:
        self.port = 0
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, port: int | None = None) -> None:
        for _ in range(1 if port else 3):
            self.port = port or free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            if wait_until_answering(
                lambda: httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1).status_code == 200,
                process=self.process,
                timeout=_START_TIMEOUT_S,
                errors=(httpx.HTTPError,),
            ):
                return
            self.stop()
        raise RuntimeError(f"moto S3 server did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start(port=self.port)

    def client(self):  # -> botocore S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION, **CREDENTIALS)


def aws_connection_json(endpoint_url: str) -> str:
    """An ``AIRFLOW_CONN_*`` JSON value for an AWS connection talking to ``endpoint_url``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": CREDENTIALS["aws_access_key_id"],
            "password": CREDENTIALS["aws_secret_access_key"],
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


def s3_environment(moto: MotoS3Server) -> dict[str, str]:
    """The standard AWS variables pointing a server at ``moto`` (no real credential can leak in)."""
    return {
        "AWS_ENDPOINT_URL": moto.endpoint_url,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
    }
