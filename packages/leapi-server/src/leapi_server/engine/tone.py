"""Tone AI: contrast, shadows and highlights (``toneai_intensity``), by how much the photo needs them.

Works on the lightness L of CIELAB (colour is left alone). It reads the photo first (on a thumbnail):
its *flatness* (how far the spread of its tones falls short of a normally contrasted photo's), and whether
it is a low-key scene (most of the frame near black: a night shot, a dark stage) or a high-key one (bright
on the whole: fog, snow, a white product on white). Both are kept as they are meant.

1. **Flat contrast**: a flat photo's darkest and brightest tones (0.5th / 99.5th percentiles) are spread
   towards black and white, in proportion to its flatness and by at most ``max_stretch`` levels; black and
   white themselves stay put, so nothing is clipped. A photo with normal contrast is not stretched at
   all, nor is a high-key one (fog keeps its softness).
2. **Shadows and highlights**: a global curve lifts the shadows and holds back the highlights by amounts
   that grow with the share of the image in each (a dark interior is opened up, a bright product shot is
   not flattened); in a low-key scene the shadow lift fades out, so the night stays dark, and in a
   high-key scene the highlight hold-back does, so it stays bright.
3. **Local contrast**: CLAHE (OpenCV), with tiles of about ``clahe_tile_px`` output pixels, blended in by
   ``local_contrast`` and more so in flat photos; not in low- or high-key scenes.

``intensity`` blends the result with the input lightness: 1.0 full, 0.0 disables the stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from leapi_server.engine.light import thumbnail

_LEVELS = np.arange(256, dtype=np.float64) / 255.0


@dataclass(frozen=True)
class ToneTuning:
    """Per-preset tuning of the tone stage (see ``presets.py``). Lightness in OpenCV's 8-bit L (0-255)."""

    shadows: float = 0.5  # maximum shadow lift (curve amplitude), reached when the image is mostly dark
    highlights: float = 0.3  # maximum highlight hold-back
    clahe_clip: float = 1.6  # OpenCV clip limit: higher = more local contrast (and more noise)
    clahe_tile_px: int = 160  # target tile side in output pixels
    #: Share of CLAHE blended into a photo of normal contrast; a fully flat one gets all of it.
    local_contrast: float = 0.4
    #: Standard deviation of L at and above which a photo has normal contrast, and at and below which
    #: it is fully flat (measured: well-exposed photos 40-90, haze and pale textures 10-25).
    normal_spread: float = 45.0
    flat_spread: float = 20.0
    #: Share of near-black pixels (L below 50, L* ~20) from which a scene counts as low-key, and at
    #: which it fully does (no shadow lift at all).
    low_key_from: float = 0.3
    low_key_full: float = 0.6
    #: Or a mean L below this (L* ~35): from here down to half of it the scene counts more and more low-key.
    low_key_mean: float = 90.0
    #: Share of a pixel's headroom (255 - L) that toning may use to brighten it: a highlight that was not
    #: clipped never becomes clipped.
    max_headroom_used: float = 0.8
    #: A bright scene (mean L from ``high_key_from`` to ``high_key_full``) is high-key on purpose (fog, snow,
    #: a white product on white): its softness is kept, neither stretched nor given local contrast.
    high_key_from: float = 150.0
    high_key_full: float = 190.0
    #: How far (L levels) a flat photo's darkest and brightest tones may be spread at most.
    max_stretch: float = 20.0


@dataclass(frozen=True)
class ToneReading:
    """What the tone stage read from a photo (before ``intensity``)."""

    flatness: float  # 0 = normal contrast, 1 = fully flat (and not high-key)
    low_key: float  # 0 = not, 1 = a low-key scene
    high_key: float  # 0 = not, 1 = a high-key scene
    black: float  # 0.5th percentile of L
    white: float  # 99.5th percentile of L
    shadows: float  # shadow lift to apply
    highlights: float  # highlight hold-back to apply


def read(lightness: np.ndarray, tuning: ToneTuning) -> ToneReading:
    """Read a (thumbnail) lightness plane."""
    spread = float(lightness.std())
    flatness = float(
        np.clip((tuning.normal_spread - spread) / (tuning.normal_spread - tuning.flat_spread), 0.0, 1.0)
    )
    # A low-key scene: much of the frame near black, or dark on the whole (dusk, a storm sky).
    near_black = float(np.mean(lightness < 50))
    by_share = (near_black - tuning.low_key_from) / (tuning.low_key_full - tuning.low_key_from)
    by_mean = (tuning.low_key_mean - float(lightness.mean())) / (tuning.low_key_mean / 2.0)
    low_key = float(np.clip(max(by_share, by_mean), 0.0, 1.0))

    share_dark = float(np.mean(lightness < 80))  # L* below ~31
    share_bright = float(np.mean(lightness > 200))  # L* above ~78
    # Saturating: a third of the frame in shadow already earns the full lift.
    shadows = tuning.shadows * min(1.0, share_dark * 3.0) * (1.0 - low_key)
    span = tuning.high_key_full - tuning.high_key_from
    high_key = float(np.clip((float(lightness.mean()) - tuning.high_key_from) / span, 0.0, 1.0))
    flatness *= 1.0 - high_key
    # A high-key scene is bright on purpose: its highlights are not held back either.
    highlights = tuning.highlights * min(1.0, share_bright * 3.0) * (1.0 - high_key)
    black, white = (float(v) for v in np.percentile(lightness, [0.5, 99.5]))
    return ToneReading(flatness, low_key, high_key, black, white, shadows, highlights)


def contrast_curve(black: float, white: float, flatness: float, max_stretch: float = 255.0) -> np.ndarray:
    """A 256-entry float curve (0-1) spreading ``black``..``white`` towards 0..255 by ``flatness``, each
    end moving at most ``max_stretch`` levels."""
    if flatness <= 0.0 or white - black < 1.0:
        return _LEVELS.copy()
    new_black = black - min(black * flatness, max_stretch)
    new_white = white + min((255.0 - white) * flatness, max_stretch)
    points = ([0.0, black, white, 255.0], [0.0, new_black, new_white, 255.0])
    return np.interp(_LEVELS * 255.0, *points) / 255.0


def shadows_highlights_curve(shadows: float, highlights: float) -> np.ndarray:
    """A 256-entry uint8 curve on L. Both terms vanish at 0 and 1, so black and white stay put.

    ``x + s * 27/4 x (1 - x)^2 * 0.15 - h * 27/4 x^2 (1 - x) * 0.15``: each bump peaks at 0.15 * amount
    (at 1/3 and 2/3 of the range); the curve stays monotonic for amounts up to 1.
    """
    return _to_uint8(_shadows_highlights(_LEVELS, shadows, highlights))


def _shadows_highlights(x: np.ndarray, shadows: float, highlights: float) -> np.ndarray:
    bump = 27.0 / 4.0 * 0.15
    return x + shadows * bump * x * (1 - x) ** 2 - highlights * bump * x**2 * (1 - x)


def _to_uint8(curve: np.ndarray) -> np.ndarray:
    return np.clip(np.round(curve * 255.0), 0, 255).astype(np.uint8)


def apply_tone(rgb: np.ndarray, *, intensity: float, tuning: ToneTuning) -> np.ndarray:
    """Adjust the tones of an ``HxWx3`` uint8 sRGB image.

    Written for big images: every full-size step works in place where it can (a 25 MP photo's planes are
    25 MB each, its colour images 75 MB).
    """
    if intensity <= 0.0:
        return rgb
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    lightness = lab[..., 0].copy()  # the input's: lab's own plane is overwritten below
    reading = read(thumbnail(lightness), tuning)
    curve = _shadows_highlights(
        contrast_curve(reading.black, reading.white, reading.flatness, tuning.max_stretch),
        **_amounts(reading),
    )
    curved = cv2.LUT(lightness, _to_uint8(curve))
    height, width = lightness.shape
    grid = (max(2, round(width / tuning.clahe_tile_px)), max(2, round(height / tuning.clahe_tile_px)))
    toned = cv2.createCLAHE(clipLimit=tuning.clahe_clip, tileGridSize=grid).apply(curved)
    local = tuning.local_contrast + (1.0 - tuning.local_contrast) * reading.flatness
    # Local contrast in a low-key scene lifts its darkness the way the shadow curve would: held back too.
    local *= (1.0 - reading.low_key) * (1.0 - reading.high_key)
    cv2.addWeighted(toned, local, curved, 1.0 - local, 0.0, dst=toned)
    del curved
    # The headroom ceiling as a lookup table (a float expression would cost 8 bytes a pixel).
    levels = np.arange(256, dtype=np.float64)
    ceiling = np.floor(levels + (255.0 - levels) * tuning.max_headroom_used).astype(np.uint8)
    np.minimum(toned, cv2.LUT(lightness, ceiling), out=toned)
    if intensity < 1.0:
        cv2.addWeighted(toned, intensity, lightness, 1.0 - intensity, 0.0, dst=toned)
    lab[..., 0] = toned
    del toned
    return _unclip(rgb, lightness, lab)


#: Halvings of a pixel's lightness change tried before it is left as it was (see ``_unclip``).
_UNCLIP_STEPS = 4


def _unclip(rgb: np.ndarray, lightness: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """``lab`` back to sRGB (in place: ``lab`` is consumed), with no channel clipped at 255 that the
    input ``rgb`` had not clipped.

    Brightening a saturated colour at constant chroma can push a channel out of gamut even when L stays
    below white. Those few pixels get their lightness change halved until they fit, or keep their input.
    """
    out = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB, dst=lab)
    # Candidates first (one byte a pixel; pure white input pixels cannot be newly clipped), then per channel.
    rows, cols = np.nonzero((out.max(axis=2) == 255) & (rgb.min(axis=2) < 255))
    before = rgb[rows, cols]
    newly = ((out[rows, cols] == 255) & (before < 255)).any(axis=1)
    rows, cols, before = rows[newly], cols[newly], before[newly]
    if rows.size == 0:
        return out
    # The toned Lab of these pixels: the input's a* and b* (tone leaves colour alone), the toned L.
    pixels = cv2.cvtColor(before[:, None, :], cv2.COLOR_RGB2Lab)
    pixels[:, 0, 0] = cv2.cvtColor(out[rows, cols][:, None, :], cv2.COLOR_RGB2Lab)[:, 0, 0]
    original = lightness[rows, cols].astype(np.int16)
    for _ in range(_UNCLIP_STEPS):
        change = pixels[:, 0, 0].astype(np.int16) - original
        pixels[:, 0, 0] = (original + change // 2).astype(np.uint8)
        fixed = cv2.cvtColor(pixels, cv2.COLOR_Lab2RGB)
        still = ((fixed[:, 0] == 255) & (before < 255)).any(axis=1)
        out[rows[~still], cols[~still]] = fixed[~still, 0]
        if not still.any():
            return out
        rows, cols, original, pixels, before = (
            rows[still],
            cols[still],
            original[still],
            pixels[still],
            before[still],
        )
    # Still out of gamut (or pushed there by the 8-bit Lab round trip alone): the input pixel as it was.
    out[rows, cols] = before
    return out


def _amounts(reading: ToneReading) -> dict[str, float]:
    return {"shadows": reading.shadows, "highlights": reading.highlights}
