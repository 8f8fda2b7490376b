"""Running an image-to-image model on overlapping tiles, blended seamlessly, in bounded memory.

A model with a large receptive field (or a fixed input size) cannot run on a whole photograph: its
activations would take gigabytes. Here it runs on tiles of one size, overlapping by ``overlap`` input
pixels; in each overlap the two tiles cross-fade linearly (their weights sum to one), so no seam shows
where a tile's edge, which the model saw without context, meets its neighbour.

Finished output is handed to ``emit`` as soon as no later tile touches it. Only the overlaps still open
are kept, in float: one band of ``overlap x scale`` rows across the output's width and one tile-high
strip of ``overlap x scale`` columns, so working memory is a few tiles' worth whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Tile sides are multiples of this (models with attention windows or strided stages need one).
TILE_MULTIPLE = 16
#: Input pixels two neighbouring tiles share (at most a quarter of the tile, so no pixel is in three).
DEFAULT_OVERLAP = 16

#: ``run(tile)``: an ``h x w x C`` float32 tile in [0, 1] -> its ``h*scale x w*scale x C`` float32 output.
RunTile = Callable[[np.ndarray], np.ndarray]
#: ``emit(rows, cols, values)``: finished output (float32, ``rows x cols x C``, unclipped model values).
Emit = Callable[[slice, slice, np.ndarray], None]


@dataclass(frozen=True)
class Axis:
    """Where the tiles of one axis start (input pixels), their side and their overlap."""

    starts: tuple[int, ...]
    side: int
    overlap: int


def plan_axis(length: int, *, max_side: int, overlap: int = DEFAULT_OVERLAP, fixed: bool = False) -> Axis:
    """Tiles for one axis of ``length`` input pixels.

    :param max_side: the largest tile side (a dynamic model), or the only one (``fixed``).
    :param fixed: the model takes only ``max_side``; otherwise the side shrinks, in steps of
        ``TILE_MULTIPLE``, to the smallest that still covers ``length`` with the same number of tiles.
    """
    overlap = min(overlap, max_side // 4)
    step = max_side - overlap
    count = max(1, math.ceil((length - overlap) / step))
    side = max_side
    if not fixed:
        needed = math.ceil((length - overlap) / count) + overlap if count > 1 else length
        side = min(max_side, TILE_MULTIPLE * math.ceil(needed / TILE_MULTIPLE))
        overlap = min(overlap, side // 4)
    step = side - overlap
    count = max(1, math.ceil((length - overlap) / step))
    return Axis(starts=tuple(i * step for i in range(count)), side=side, overlap=overlap)


def _ramp_weights(size: int, ramp_in: int, ramp_out: int) -> np.ndarray:
    """1 inside, rising over the first ``ramp_in`` and falling over the last ``ramp_out`` entries; two
    neighbours' falling and rising ramps over the same entries sum to exactly 1."""
    weights = np.ones(size, dtype=np.float32)
    if ramp_in:
        weights[:ramp_in] = (np.arange(ramp_in, dtype=np.float32) + 0.5) / ramp_in
    if ramp_out:
        weights[size - ramp_out :] = 1.0 - (np.arange(ramp_out, dtype=np.float32) + 0.5) / ramp_out
    return weights


def _input_tile(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``height x width x C`` float32 in [0, 1] at (top, left), mirrored past the image's bottom/right."""
    tile = image[top : top + height, left : left + width]
    short_h, short_w = height - tile.shape[0], width - tile.shape[1]
    if short_h or short_w:
        # Mirrored, so the model sees no artificial edge there (a single row or column is repeated).
        padding = ((0, short_h), (0, short_w), (0, 0))
        tile = np.pad(tile, padding, mode="reflect" if min(tile.shape[:2]) > 1 else "edge")
    return tile.astype(np.float32) * np.float32(1 / 255)


def run_tiled(
    run: RunTile,
    image: np.ndarray,
    *,
    scale: int,
    rows: Axis,
    cols: Axis,
    emit: Emit,
) -> None:
    """Run ``run`` over ``image`` (``H x W x C`` uint8) tile by tile and ``emit`` the blended output.

    The output (``H*scale x W*scale``) is emitted in pieces, each exactly once, row band by row band.
    """
    out_h, out_w = image.shape[0] * scale, image.shape[1] * scale
    channels = image.shape[2]
    overlap_h, overlap_w = rows.overlap * scale, cols.overlap * scale
    carry_rows: np.ndarray | None = None  # the open overlap with the previous band, whole width
    for j, top in enumerate(rows.starts):
        y0 = top * scale
        y_next = rows.starts[j + 1] * scale if j + 1 < len(rows.starts) else out_h
        y1 = min(y0 + rows.side * scale, out_h)
        weights_y = _ramp_weights(
            rows.side * scale, overlap_h if j else 0, overlap_h if y_next < out_h else 0
        )
        next_rows = np.zeros((y1 - y_next, out_w, channels), dtype=np.float32) if y_next < out_h else None
        carry_cols: np.ndarray | None = None  # the open overlap with the previous tile of this band
        for i, left in enumerate(cols.starts):
            x0 = left * scale
            x_next = cols.starts[i + 1] * scale if i + 1 < len(cols.starts) else out_w
            x1 = min(x0 + cols.side * scale, out_w)
            weights_x = _ramp_weights(
                cols.side * scale, overlap_w if i else 0, overlap_w if x_next < out_w else 0
            )
            block = run(_input_tile(image, top, left, rows.side, cols.side))
            block *= weights_y[:, None, None]
            block *= weights_x[None, :, None]
            block = block[: y1 - y0, : x1 - x0]
            upper = y_next - y0  # rows this band finishes (the rest is the next band's overlap)
            if next_rows is not None:
                next_rows[:, x0:x1] += block[upper:]
            done = block[:upper]
            if carry_cols is not None:
                done[:, : carry_cols.shape[1]] += carry_cols
            own = x_next - x0  # columns this tile finishes
            carry_cols = done[:, own:].copy() if x_next < out_w else None
            done = done[:, :own]
            if carry_rows is not None:
                done[: carry_rows.shape[0]] += carry_rows[:, x0:x_next]
            emit(slice(y0, y_next), slice(x0, x_next), done)
        carry_rows = next_rows
