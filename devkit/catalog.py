"""Sample catalogs of real photographs for tests, the demo and benchmarks (needs scikit-image and Pillow).

The photographs ship inside scikit-image (nothing is downloaded); each is written at several sizes and JPEG
qualities so that a catalog has the variety of a real one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from devkit.sources import SAMPLE_PHOTOS, sample_photo

#: scikit-image photographs that ship with the package (no download needed).
PHOTOS = SAMPLE_PHOTOS
PRESET_CYCLE = ("marketplace", "marketplace", "realestate", "print")


@dataclass(frozen=True)
class SampleImage:
    image_id: str
    file_name: str
    photo: str
    width: int
    height: int
    quality: int


def write_sample_images(
    folder: str | os.PathLike[str],
    count: int,
    *,
    long_sides: tuple[int, ...] = (160, 120, 96),
    qualities: tuple[int, ...] = (85, 60, 35),
    prefix: str = "img",
    overwrite: bool = True,
) -> list[SampleImage]:
    """Write ``count`` JPEGs (photo, size and quality cycling) into ``folder``; deterministic.

    :param overwrite: ``False`` keeps files that exist (and their modification times) untouched.
    """
    from PIL import Image

    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}
    written = []
    for index in range(count):
        name = PHOTOS[index % len(PHOTOS)]
        long_side = long_sides[(index // len(PHOTOS)) % len(long_sides)]
        quality = qualities[index % len(qualities)]
        image = cache.get(name) or cache.setdefault(name, sample_photo(name, size=None))
        scale = long_side / max(image.size)
        size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
        resized = image.resize(size, Image.Resampling.LANCZOS)
        file_name = f"{prefix}-{index:04d}-{name}-{size[0]}x{size[1]}-q{quality}.jpg"
        if overwrite or not (target / file_name).exists():
            resized.save(target / file_name, format="JPEG", quality=quality)
        written.append(SampleImage(f"{prefix}-{index:04d}", file_name, name, size[0], size[1], quality))
    return written


def sample_manifest(
    images: list[SampleImage], base_url: str, *, presets: tuple[str, ...] = PRESET_CYCLE, scale: int = 2
) -> pa.Table:
    """A manifest for ``images`` served at ``base_url``: presets cycling, output ``scale`` x the input."""
    rows = []
    for position, image in enumerate(images):
        preset = presets[position % len(presets)]
        rows.append(
            {
                "image_id": image.image_id,
                "source_url": f"{base_url.rstrip('/')}/{image.file_name}",
                "preset": preset,
                "width": image.width * scale,
                "height": image.height * scale,
                "image_format": "JPEG",
                "quality": 85,
                "dpi": 300 if preset == "print" else None,
                "attributes": [("photo", image.photo), ("source_quality", str(image.quality))],
            }
        )
    from leapi_provider.manifests import MANIFEST_SCHEMA

    full = [{name: row.get(name) for name in MANIFEST_SCHEMA.names} for row in rows]
    return pa.Table.from_pylist(full, schema=MANIFEST_SCHEMA)


def sample_catalog(folder: Path, base_url: str, count: int) -> Any:
    """``count`` photographs written into ``folder`` (served at ``base_url``) and their manifest, plus a row
    with an unknown preset (``rejected_row``) and a row whose source does not exist (``error``).

    :returns: the manifest as a ``pyarrow.Table``.
    """
    images = write_sample_images(folder, count, long_sides=(320, 240), qualities=(90, 60, 30), prefix="sku")
    table = sample_manifest(images, base_url)
    rows = table.to_pylist()
    rows.append({**rows[0], "image_id": "sku-bad-preset", "preset": "instagram"})
    rows.append({**rows[1], "image_id": "sku-dead-link", "source_url": f"{base_url}/discontinued.jpg"})
    return pa.Table.from_pylist(rows, schema=table.schema)


def put_manifest(s3: Any, table: Any, *, bucket: str, key: str) -> str:
    """Write ``table`` as Parquet to ``s3://bucket/key`` (creating the bucket); returns the URI."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    existing = {entry["Name"] for entry in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"
