"""Light AI: colour and brightness correction (``lightai_intensity``) that does no harm.

It reads the photo (on a thumbnail) and corrects only what is evidently wrong; the correction is applied
to the full image as one lookup table per channel (one table lookup per pixel). A photo that is right,
or dark, cool or toned on purpose, comes back (nearly) unchanged: no global target is imposed. A black and
white image (no pixel with colour to speak of) is a rendering, not a camera's mistake, and is left alone.

1. **Colour cast.** The illuminant is estimated three times in linear light, as log-chromaticities
   (``log R/G``, ``log B/G``): shades-of-grey (Finlayson & Trezzi 2004), grey-edge (van de Weijer et al.
   2007) and white-patch (the brightest unclipped tones). A scene's own colours (a field of grass, an
   orange cat, a toned print, a coloured backdrop) also pull these estimates, so only what looks like a
   real light is corrected: a **warm** cast (tungsten, the common mistake; a cool cast is blue hour,
   shade, fog or winter, and is kept) on which the first two agree, that lies along the warm-cool axis
   rather than green-magenta, that also tints the whites (a sepia toning or a grade leaves them neutral)
   and that is not so strong that it must be the subject's colour. A dead zone leaves mild warmth alone.
   Gains keep white at white.
2. **Under-exposure.** A well-exposed photograph has its whites near white, an under-exposed one has not:
   the exposure gain is the one that brings the 99.5th percentile of the brightest channel up to
   ``target_highlight``, beyond a dead zone, and it is only as sure as the evidence:

   * it never lifts the photo's key (log-average luminance) above ``max_key``, about middle grey: a photo
     without highlights that is not dark overall (a texture, fur, a grey day) is not under-exposed; a little
     more when the brightest tones are smooth, neutral whites (paper, sky: not an orange cat's fur);
   * it is weaker when the brightest tones are coloured surfaces (a green leaf) rather than whites,
     since those sit well below white when exposed right;
   * it fades out in low-key scenes (most of the frame near black: night, a dark stage) and in cool, dim
     scenes (dusk, blue hour): they are dark on purpose.

   The gain has a soft shoulder that keeps 1.0 at 1.0: no highlight is clipped that was not clipped
   before.

Nothing is ever darkened, and black and white points are not moved (flat contrast is tone's job).
``intensity`` scales the correction towards identity (gains and exposure geometrically): 1.0 is the
photo's own corrected version, 0.0 disables the stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from leapi_server.engine.color import linear_to_srgb, srgb_to_linear

THUMBNAIL_SIDE = 256
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_REC709_LUMINANCE = np.array([0.2126, 0.7152, 0.0722])
#: The warm-cool axis in (log R/G, log B/G): a warmer light raises red and lowers blue.
_WARM_COOL_AXIS = np.array([1.0, -1.0]) / math.sqrt(2.0)


@dataclass(frozen=True)
class LightTuning:
    """Per-preset tuning of the light stage (see ``presets.py``). Log-chromaticities are natural logs."""

    minkowski_p: float = 6.0
    #: Casts along the warm-cool axis smaller than this are left alone (mild warmth is often intended).
    cast_dead_zone: float = 0.05
    #: The two estimates must agree within this (log-chromaticity distance), else no correction.
    cast_agreement: float = 0.3
    #: Green-magenta component (off the warm-cool axis) tolerated in a correctable cast.
    max_cast_off_axis: float = 0.15
    #: Casts stronger than this are the subject's colour (a red product), not the light's.
    max_cast: float = 0.7
    #: Cool casts (blue hour, shade, fog, winter) are kept: in catalog photographs they are rarely the
    #: camera's mistake, and often the mood.
    correct_cool_casts: bool = False
    #: Missing highlights are evidence of under-exposure only when the brightest tones are whites (paper,
    #: sky, a product's background) that should be near white. The brightest 2 % (by luminance) this far
    #: off the warm-cool axis (median log-chromaticity distance; a light tints whites along it only) are
    #: coloured surfaces (a green leaf), which sit well below white when exposed right: the evidence fades
    #: from ``white_saturation`` to ``coloured_saturation``, down to ``coloured_evidence``.
    white_saturation: float = 0.25
    coloured_saturation: float = 0.6
    coloured_evidence: float = 0.5
    #: A dim scene this cool (warm-cool component of the estimated light, log units) is dusk, blue hour or
    #: night, dim on purpose: the brightening fades out from ``cool_scene_from`` to ``cool_scene_full``.
    cool_scene_from: float = 0.0
    cool_scene_full: float = 0.2
    #: The brightest unclipped tones (white-patch estimate) must carry at least this share of the cast: a
    #: light tints white surfaces most of all; a toning or grade that leaves the whites neutral is not a light.
    min_white_patch_share: float = 0.5
    #: Linear 99.5th percentile of the brightest channel that a well-exposed photo reaches.
    target_highlight: float = 1.0
    #: Highlights within this many stops of the target count as well exposed; from there the correction
    #: ramps up (twice as steep) until it is whole at twice this.
    exposure_dead_zone_ev: float = 0.3
    max_brighten_ev: float = 1.6
    #: Near-black (linear luminance below 0.01, sRGB ~10 %) shares: below ``low_key_from`` the scene is
    #: brightened fully, above ``low_key_full`` not at all (a night scene).
    low_key_from: float = 0.25
    low_key_full: float = 0.5
    #: Brightening never lifts the log-average luminance (Reinhard's key, linear) above this: a scene
    #: without highlights that is already bright (a texture, a grey day) is not under-exposed.
    max_key: float = 0.2
    #: ... up to this when the brightest tones are smooth areas (paper, sky, a studio background, a clock
    #: face): a large smooth area that is grey rather than white is the surest sign of under-exposure,
    #: while the bright specks of a texture (gravel, fur, grass) are not whites at all. Smoothness is the
    #: median local contrast (5x5 standard deviation over mean, thumbnail) of the brightest 5 %: whole
    #: from ``smooth_whites`` down, none from ``textured_whites`` up.
    max_key_smooth_whites: float = 0.35
    smooth_whites: float = 0.02
    textured_whites: float = 0.06
    #: ... and only when those smooth whites are neutral once balanced (log-chromaticity distance from grey of
    #: the brightest 5 %): whole up to ``neutral_whites``, none from ``tinted_whites`` (an orange cat's
    #: light fur is smooth, but it is fur, not paper).
    neutral_whites: float = 0.1
    tinted_whites: float = 0.3
    #: A monochrome image (99th percentile of each pixel's channel spread at most this many sRGB levels:
    #: black and white, a greyscale scan) is a rendering, not a camera's mistake: light leaves it alone.
    monochrome_spread: float = 3.0


@dataclass(frozen=True)
class LightCorrection:
    """The measured correction, before ``intensity`` is applied; also useful for logging and tests."""

    white_balance_gains: tuple[float, float, float]
    exposure_ev: float

    def scaled(self, intensity: float) -> LightCorrection:
        gains = tuple(float(g**intensity) for g in self.white_balance_gains)
        return LightCorrection(
            white_balance_gains=gains,  # type: ignore[arg-type]
            exposure_ev=self.exposure_ev * intensity,
        )

    @property
    def is_identity(self) -> bool:
        return self.exposure_ev == 0.0 and set(self.white_balance_gains) == {1.0}

    def tables(self) -> np.ndarray:
        """A 256x3 uint8 lookup table per channel (sRGB in, sRGB out); only 255 maps to 255."""
        tables = _to_uint8(self._curves(_LEVELS))
        # The curves keep 1.0 at 1.0 and below it stay below it, but rounding can still land on 255.
        tables[:255] = np.minimum(tables[:255], 254)
        return tables

    def _curves(self, levels: np.ndarray) -> np.ndarray:
        linear = srgb_to_linear(levels)
        # White balance as a curve with the gain's slope that keeps 1.0 at 1.0: white stays white
        # (a product's white background must not turn yellow), greys and colours get the gain.
        balanced = np.column_stack([_gain_curve(linear, g) for g in self.white_balance_gains])
        return linear_to_srgb(_exposure_with_shoulder(balanced, 2.0**self.exposure_ev))


def _to_uint8(curves: np.ndarray) -> np.ndarray:
    return np.clip(np.round(curves * 255.0), 0, 255).astype(np.uint8)


def _gain_curve(linear: np.ndarray, gain: float) -> np.ndarray:
    """``g x / (1 + (g - 1) x)``: slope ``g`` in the shadows, 0 and 1 fixed, monotonic for any g > 0."""
    return gain * linear / (1.0 + (gain - 1.0) * linear)


#: Where the exposure gain's shoulder starts (linear): below it the gain is exactly linear.
_SHOULDER_KNEE = 0.7


def _exposure_with_shoulder(linear: np.ndarray, gain: float) -> np.ndarray:
    """A linear gain (what a longer exposure does) that rolls off smoothly above the knee so 1 maps to 1."""
    if gain <= 1.0:
        return linear
    knee = _SHOULDER_KNEE
    scaled = gain * linear
    span = 1.0 - knee
    # Exponential roll-off from the knee, normalised so the input's white (scaled = gain) lands on 1.
    norm = 1.0 - math.exp(-(gain - knee) / span)
    shoulder = knee + span * (1.0 - np.exp(-(np.maximum(scaled, knee) - knee) / span)) / norm
    return np.where(scaled <= knee, scaled, shoulder)


def thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _log_chromaticity(illuminant: np.ndarray) -> np.ndarray:
    illuminant = np.maximum(illuminant, 1e-6)
    return np.log(np.array([illuminant[0] / illuminant[1], illuminant[2] / illuminant[1]]))


def estimate_cast(linear: np.ndarray, tuning: LightTuning) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shades-of-grey, grey-edge and white-patch illuminant estimates of an ``HxWx3`` linear image
    (log-chromaticities)."""
    pixels = linear.reshape(-1, 3)
    luminance = pixels @ _REC709_LUMINANCE
    # Pixels with a channel clipped have lost their colour; near-black ones carry none.
    usable = (pixels.max(axis=1) < 0.98) & (luminance > 0.005)
    enough = usable.sum() >= 64
    sample = pixels[usable] if enough else pixels
    p = tuning.minkowski_p
    grey = np.power(np.mean(np.power(sample, p), axis=0), 1.0 / p)
    blurred = cv2.GaussianBlur(linear.astype(np.float32), (0, 0), 1.0)
    dx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0)
    dy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
    edges = np.sqrt(dx.astype(np.float64) ** 2 + dy**2).reshape(-1, 3)[usable if enough else ...]
    edge = np.power(np.mean(np.power(edges, p), axis=0), 1.0 / p)
    # The brightest 2 % of the usable pixels, averaged.
    bright = sample[sample @ _REC709_LUMINANCE >= np.percentile(sample @ _REC709_LUMINANCE, 98)]
    white = bright.mean(axis=0)
    return _log_chromaticity(grey), _log_chromaticity(edge), _log_chromaticity(white)


def correctable_cast(
    by_grey: np.ndarray, by_edge: np.ndarray, by_white: np.ndarray, tuning: LightTuning
) -> np.ndarray:
    """The part of the estimated cast to remove (log-chromaticity; zero when it is not evidently the light's)."""
    if np.linalg.norm(by_grey - by_edge) > tuning.cast_agreement:
        return np.zeros(2)
    cast = (by_grey + by_edge) / 2.0
    along = float(cast @ _WARM_COOL_AXIS)
    off_axis = cast - along * _WARM_COOL_AXIS
    if np.linalg.norm(off_axis) > tuning.max_cast_off_axis or np.linalg.norm(cast) > tuning.max_cast:
        return np.zeros(2)
    if along < 0 and not tuning.correct_cool_casts:
        return np.zeros(2)
    if float(by_white @ _WARM_COOL_AXIS) * np.sign(along) < tuning.min_white_patch_share * abs(along):
        return np.zeros(2)
    # Soft dead zone on the warm-cool component; the small off-axis tint goes with it, in proportion.
    kept = max(0.0, abs(along) - tuning.cast_dead_zone) / max(abs(along), 1e-9)
    return cast * kept


def exposure_ev_for(linear: np.ndarray, tuning: LightTuning) -> float:
    """Stops to brighten an ``HxWx3`` linear (white-balanced) image by: 0 when it is well or low-key exposed."""
    brightest = linear.max(axis=2)
    highlight = float(np.percentile(brightest, 99.5))
    luminance = linear @ _REC709_LUMINANCE
    chroma = _pixel_log_chromaticities(linear[luminance >= np.percentile(luminance, 98)])
    # Off the warm-cool axis: a light tints whites along it only (tungsten, shade).
    off_axis = chroma - np.outer(chroma @ _WARM_COOL_AXIS, _WARM_COOL_AXIS)
    saturation = float(np.median(np.linalg.norm(off_axis, axis=1)))
    span = tuning.coloured_saturation - tuning.white_saturation
    whites = float(np.clip((tuning.coloured_saturation - saturation) / span, tuning.coloured_evidence, 1.0))
    key = float(np.exp(np.mean(np.log(luminance + 1e-4))))
    missing_ev = math.log2(tuning.target_highlight / max(highlight, 1e-4))
    dead = tuning.exposure_dead_zone_ev
    ev = float(np.clip(3.0 * (missing_ev - dead), 0.0, missing_ev)) if missing_ev > dead else 0.0
    ceiling = _max_key(linear, luminance, tuning)
    ev = min(ev, tuning.max_brighten_ev, max(0.0, math.log2(ceiling / max(key, 1e-4))))
    near_black = float(np.mean(luminance < 0.01))
    span = tuning.low_key_full - tuning.low_key_from
    brighten_share = float(np.clip((tuning.low_key_full - near_black) / span, 0.0, 1.0))
    return ev * brighten_share * whites


def _max_key(linear: np.ndarray, luminance: np.ndarray, tuning: LightTuning) -> float:
    """How bright (key) a photo may be made: more when its brightest tones are smooth, neutral whites."""
    plane = luminance.astype(np.float32)
    mean = cv2.blur(plane, (5, 5))
    spread = np.sqrt(np.maximum(cv2.blur(plane * plane, (5, 5)) - mean * mean, 0.0))
    top = plane >= np.percentile(plane, 95)
    contrast = float(np.median(spread[top] / np.maximum(mean[top], 1e-4)))
    span = tuning.textured_whites - tuning.smooth_whites
    smooth = float(np.clip((tuning.textured_whites - contrast) / span, 0.0, 1.0))
    tint = float(np.linalg.norm(np.median(_pixel_log_chromaticities(linear[top]), axis=0)))
    span = tuning.tinted_whites - tuning.neutral_whites
    neutral = float(np.clip((tuning.tinted_whites - tint) / span, 0.0, 1.0))
    return tuning.max_key + (tuning.max_key_smooth_whites - tuning.max_key) * smooth * neutral


def _pixel_log_chromaticities(pixels: np.ndarray) -> np.ndarray:
    """``N x 2``: (log R/G, log B/G) of each linear pixel."""
    pixels = np.maximum(pixels, 1e-4)
    return np.log(pixels[:, [0, 2]] / pixels[:, 1:2])


def is_monochrome(image: np.ndarray, tuning: LightTuning) -> bool:
    """Black and white (or a greyscale scan): next to no pixel has colour (sRGB uint8 ``HxWx3``)."""
    spread = image.max(axis=2).astype(np.int16) - image.min(axis=2)
    return float(np.percentile(spread, 99)) <= tuning.monochrome_spread


def measure(rgb_thumbnail: np.ndarray, tuning: LightTuning) -> LightCorrection:
    """Estimate the full correction from a (thumbnail) sRGB uint8 image (``HxWx3`` or greyscale)."""
    image = rgb_thumbnail if rgb_thumbnail.ndim == 3 else np.repeat(rgb_thumbnail[..., None], 3, axis=2)
    if is_monochrome(image, tuning):
        return LightCorrection(white_balance_gains=(1.0, 1.0, 1.0), exposure_ev=0.0)
    linear = srgb_to_linear(image / 255.0)

    # 1. Colour cast -> per-channel gains that undo it, luminance kept.
    estimates = estimate_cast(linear, tuning)
    cast = correctable_cast(*estimates, tuning)
    gains = np.array([math.exp(-cast[0]), 1.0, math.exp(-cast[1])])
    gains = gains / float(gains @ _REC709_LUMINANCE)
    balanced = np.stack([_gain_curve(linear[..., c], gains[c]) for c in range(3)], axis=-1)

    # 2. Under-exposure, from the highlights; a cool, dim scene is dusk or night, dim on purpose.
    coolness = max(0.0, -float((estimates[0] + estimates[1]) / 2.0 @ _WARM_COOL_AXIS))
    span = tuning.cool_scene_full - tuning.cool_scene_from
    not_dusk = float(np.clip((tuning.cool_scene_full - coolness) / span, 0.0, 1.0))
    return LightCorrection(
        white_balance_gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        exposure_ev=exposure_ev_for(balanced, tuning) * not_dusk,
    )


def apply_light(
    rgb: np.ndarray, *, intensity: float, tuning: LightTuning, reference: np.ndarray | None = None
) -> np.ndarray:
    """Correct colour and brightness of an ``HxWx3`` uint8 sRGB image.

    :param reference: the image to measure on (e.g. the input before upscaling); default ``rgb``.
    """
    if intensity <= 0.0:
        return rgb
    correction = measure(thumbnail(rgb if reference is None else reference), tuning).scaled(intensity)
    if correction.is_identity:
        return rgb
    return apply_tables(rgb, correction.tables())


def apply_tables(rgb: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """One lookup per channel (OpenCV's LUT with a 3-channel table)."""
    return cv2.LUT(rgb, tables.reshape(256, 1, 3))
