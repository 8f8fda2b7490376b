"""``make demo``: enhance a real photograph with the LEAPI quick start, end to end, on this machine.

Starts ``leapi-server`` and a small HTTP server for the source image (a photograph shipped with
scikit-image, saved as a 900x600 JPEG like the docs' reference), POSTs the quick start's request body,
polls ``GET /v1/pipeline/{id}`` until DONE, downloads the result from ``tmp_url`` with plain httpx,
prints the output path and sizes, and stops everything. Nothing is downloaded from the internet.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from devkit.server import quick_start_body, running_server
from devkit.sources import serve_directory, write_sample_photo

REPO = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO / ".cache" / "demo"  # git-ignored
API_KEY = "1234567890"  # the docs' example key


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="leapi-demo-") as scratch:
        sources = Path(scratch) / "sources"
        photo = write_sample_photo(sources / "burger.jpg", "coffee", size=(900, 600), quality=70)
        print(
            f"source photograph: {photo.name} {Image.open(photo).size[0]}x{Image.open(photo).size[1]} JPEG, "
            f"{photo.stat().st_size} bytes (scikit-image 'coffee')"
        )
        with (
            serve_directory(sources) as source_base,
            running_server(api_keys=(API_KEY,), extra_args=("--workers", "2")) as server,
        ):
            print(f"leapi-server on {server.base_url} (data dir {server.data_dir})")
            headers = {"X-API-KEY": API_KEY, "Content-Type": "application/json"}
            submitted = time.monotonic()
            answer = httpx.post(
                f"{server.base_url}/v1/pipeline",
                json=quick_start_body(f"{source_base}/burger.jpg"),
                headers=headers,
            ).json()
            if answer["status"] != "ACCEPTED":
                print(f"REJECTED: {answer['reason']}", file=sys.stderr)
                return 1
            pipeline_id = answer["pipeline"]["id"]
            print(f"POST /v1/pipeline -> ACCEPTED, pipeline.id = {pipeline_id}")

            while True:
                pipeline = httpx.get(f"{server.base_url}/v1/pipeline/{pipeline_id}", headers=headers).json()[
                    "pipeline"
                ]
                if pipeline["status"] != "PROCESSING":
                    break
                time.sleep(0.2)
            print(
                f"GET /v1/pipeline/{pipeline_id} -> {pipeline['status']} after {time.monotonic() - submitted:.1f} s"
            )
            if pipeline["status"] != "DONE":
                print(f"errors: {pipeline['errors']}", file=sys.stderr)
                return 1

            result = pipeline["results"][0]
            source, output = result["input_object"], result["output_object"]
            download = httpx.get(output["tmp_url"])
            download.raise_for_status()
            OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
            target = OUTPUT_DIR / output["filename"]
            target.write_bytes(download.content)
            written = Image.open(io.BytesIO(download.content))

    print(f"input : {source['width']}x{source['height']} {source['format']} ({source['mps']} MP)")
    print(
        f"output: {output['width']}x{output['height']} {output['format']} ({output['mps']} MP), "
        f"{len(download.content)} bytes, decoded {written.size[0]}x{written.size[1]}"
    )
    print(f"saved : {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
