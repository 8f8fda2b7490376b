"""Source images on 127.0.0.1 for tests, demos and benches: the sample photographs, and ``http.server``
servers run from a thread of the calling process.

``sample_photo`` and ``write_sample_photo`` give real photographs (shipped with scikit-image, nothing
downloaded). ``serve_http`` runs any request handler (a webhook receiver, a proxy that misbehaves, ...),
``serve_directory`` serves a folder read-only, and ``serve_gated_photos`` serves photographs only once the
test opens its gate. They speak HTTP/1.0 with a thread per connection: for many requests at once (change
detection at scale), :mod:`devkit.source_hosts` is the fast, keep-alive host.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: scikit-image sample photographs (shipped with the package, nothing downloaded) by short name.
SAMPLE_PHOTOS = (
    "coffee",
    "chelsea",
    "astronaut",
    "rocket",
    "motorcycle",
    "hubble_deep_field",
    "retina",
    "camera",
    "clock",
    "coins",
    "moon",
    "immunohistochemistry",
)


def sample_photo(name: str = "coffee", *, size: tuple[int, int] | None = (900, 600)) -> Any:
    """A real photograph from scikit-image as a Pillow RGB image, resized to ``size`` (width, height).

    ``coffee`` is 600x400 (3:2, so 900x600 keeps its shape, like the docs' reference image).
    Needs scikit-image (dev dependency).
    """
    from PIL import Image
    from skimage import data

    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose from {SAMPLE_PHOTOS}")
    pixels = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = Image.fromarray(pixels).convert("RGB")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def write_sample_photo(
    path: str | os.PathLike[str],
    name: str = "coffee",
    *,
    size: tuple[int, int] | None = (900, 600),
    image_format: str = "JPEG",
    quality: int = 80,
) -> Path:
    """Save :func:`sample_photo` to ``path`` (JPEG with ``quality``, or any Pillow format)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    image = sample_photo(name, size=size)
    options: dict[str, Any] = {"quality": quality} if image_format.upper() == "JPEG" else {}
    image.save(target, format=image_format, **options)
    return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Many concurrent fetches from the worker pool: don't refuse connections under load.
    request_queue_size = 128


@contextlib.contextmanager
def serve_http(handler: Callable[..., http.server.BaseHTTPRequestHandler], *, port: int = 0) -> Iterator[str]:
    """Run ``handler`` in a threaded HTTP server on 127.0.0.1; yields the base URL (no trailing /).

    :param port: the port to bind (0: a free one). A taken port raises ``OSError`` on entering.
    """
    server = _Server(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="serve-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def serve_directory(path: str | os.PathLike[str], *, port: int = 0) -> contextlib.AbstractContextManager[str]:
    """Serve ``path`` read-only over HTTP on 127.0.0.1 (``serve_http``); yields the base URL."""
    return serve_http(functools.partial(_QuietHandler, directory=str(path)), port=port)


class GatedPhotos:
    """Sample photographs served from ``serve_gated_photos`` only once :meth:`open` is called.

    Until then every fetch blocks, so their pipelines stay PROCESSING for as long as a test needs, however
    fast the machine is.
    """

    def __init__(self, base_url: str, gate: threading.Event) -> None:
        self.base_url = base_url
        self._gate = gate

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}.jpg"

    def open(self) -> None:
        self._gate.set()


@contextlib.contextmanager
def serve_gated_photos(directory: Path, photos: Sequence[str]) -> Iterator[GatedPhotos]:
    """Write ``photos`` (scikit-image names, 300x200) to ``directory`` and serve them behind a gate."""
    for name in photos:
        write_sample_photo(directory / f"{name}.jpg", name, size=(300, 200))
    gate = threading.Event()

    class GatedHandler(_QuietHandler):
        def do_GET(self) -> None:
            gate.wait(timeout=60)
            super().do_GET()

    with serve_http(functools.partial(GatedHandler, directory=str(directory))) as base_url:
        try:
            yield GatedPhotos(base_url, gate)
        finally:
            gate.set()  # blocked fetches must return before the server can shut down
