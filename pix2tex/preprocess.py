"""Load real-world formula images and turn them into model input.

Users give us screenshots, photos of slides and scans: any resolution, wide margins, colour, dark
mode, transparency.  The model was trained on tight grayscale renders (im2latex-100k: black ink on
white, formula 3 px from the top-left corner, glyphs of one fixed size).  This module bridges the gap
without a second network:

* :func:`load_image` decodes any common file safely (size limit checked from the header before
  decoding, EXIF rotation undone, first frame of animations, alpha and colour flattened) into an
  8-bit grayscale ``PIL.Image``.
* :func:`prepare` inverts dark mode, stretches contrast, crops to the ink, measures the glyph size
  with :func:`estimate_glyph_height` (connected-component heights, no network), rescales so
  glyphs match the training renders, fits the result into the model's maximum size and pads it with
  white to multiples of the patch size.  Content sits at the top-left, ``MARGIN`` px from the edges,
  as in the training images.

Every bad input is a :class:`ImageLoadError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import io
import math
import os
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pix2tex.fileio import FileReadError, printable_name, read_limited

__all__ = [
    "ImageLoadError", "BlankImageError",
    "MAX_PIXELS", "MAX_WORK_PIXELS", "DEFAULT_GLYPH_HEIGHT", "MARGIN",
    "load_image", "to_gray", "invert_if_dark", "normalize_contrast", "crop_to_content", "ink_content",
    "component_sizes", "estimate_glyph_height", "check_glyph_estimator", "GLYPH_ESTIMATORS", "prepare",
    "to_batch", "canvas_sizes", "MEAN", "STD", "MAX_FILE_BYTES",
]

MAX_PIXELS = 60_000_000
"""Largest image (width x height) that :func:`load_image` decodes; checked from the header."""
MAX_FILE_BYTES = 200 * 2**20
"""An image file larger than this is refused before it is read."""
MAX_WORK_PIXELS = 6_000_000
"""Images larger than this are reduced by a whole factor right after decoding (JPEGs decode at the
reduced size directly), before any per-pixel array work: gray conversion, contrast and cropping
hold several float copies of the image, about 20 bytes a pixel, so a 25 MP upload would cost half
a gigabyte.  6 MP is a 3000 x 2000 screenshot; a formula's glyphs in an image that large are many
times the size they are scaled to (about 16 px), so reading it reduced loses nothing."""

MARGIN = 3
"""White border (px) kept above and left of the ink in :func:`prepare` output.  The im2latex renders
put the formula 3 px from the top-left corner (872 of the 986 sample images, the rest 2-4 px)."""

# Measured on the 986 real im2latex-100k renders in ../shared/data/images/im2latex_sample/images
# with exactly the pipeline prepare() uses (to_gray -> invert_if_dark -> normalize_contrast ->
# crop_to_content -> estimate_glyph_height) by
#     python -m benchmarks.scale --measure-target
# which printed  {"images": 986, "glyph_height": 11.34, ...}  (the median over the images;
# interquartile range / median 0.118, 10th-90th percentile 8.90-12.34 px).
DEFAULT_GLYPH_HEIGHT = 11.34
"""Median :func:`estimate_glyph_height` of the training renders, in pixels."""

_MIN_CONTRAST = 40  # ink must differ from the background by this many gray levels (of 255)
_INK_LEVEL = 128  # after normalize_contrast, darker than this is ink
_MAX_UPSCALE = 8.0  # never blow a tiny crop up more than this
_MAX_ANALYSIS_PIXELS = 4_000_000  # glyph measurement runs on a downscaled copy above this
_HEIGHT_BAND = (0.4, 0.6)  # ink-weighted quantiles of glyph heights averaged by estimate_glyph_height
_STROKE_WORK_HEIGHT = 32.0  # the "stroke" estimator measures glyphs upsampled to about this height (px)
_STROKE_MAX_UPSAMPLE = 4.0
# "stroke" heights are 0.95x "soft" ones on clean renders (median over 200 validation renders at
# the training glyph size); dividing by it keeps models trained on "soft" sizes reading at theirs.
_STROKE_CALIBRATION = 0.95
_VOTE_CAP = 0.2  # "stroke_capped": the most of the ink one component's height may weigh in the median


class ImageLoadError(ValueError):
    """An image cannot be used; the message is one line, ``"<source>: <reason>"``."""


class BlankImageError(ImageLoadError):
    """The image decodes fine but holds no ink (all one colour, or too little contrast)."""


# ----------------------------------------------------------------------------------------------
# Loading


def _describe(source: object) -> str:
    """Name of a source for error messages (a path as given, else its kind)."""
    if isinstance(source, (str, os.PathLike)):
        return printable_name(os.fspath(source))  # a newline in a file name must not forge a line
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return "<image>"


def _read_source(source: str | os.PathLike | bytes, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > MAX_FILE_BYTES:
            raise ImageLoadError(f"{name}: {len(data):,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
    else:
        try:  # regular files only (not /dev/zero, a FIFO, ...), at most MAX_FILE_BYTES
            data = read_limited(source, MAX_FILE_BYTES, "file")
        except FileReadError as exc:
            raise ImageLoadError(str(exc)) from None
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    return data


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read from the header by the first PIL plugin that accepts the data.

    Only needed when ``Image.open`` itself refuses a giant image before telling us its size; the
    plugin constructors parse headers only, no pixel data.
    """
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and accept(prefix) is not True:
                continue
            return factory(io.BytesIO(data), "").size
        except Exception:  # noqa: BLE001 - any plugin failure just means "not this format"
            continue
    return None


def _too_big(name: str, size: tuple[int, int], max_pixels: int) -> ImageLoadError:
    w, h = size
    return ImageLoadError(
        f"{name}: image is {w}x{h} = {w * h / 1e6:.3g} MP, over the {max_pixels / 1e6:.3g} MP limit")


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Identify the format, check the pixel count from the header, then decode frame 0."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own (larger) limit; our limit is enforced just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        size = _header_size(data)
        if size is None:
            raise ImageLoadError(f"{name}: image is over the {max_pixels / 1e6:.3g} MP limit") from None
        raise _too_big(name, size, max_pixels) from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image (cannot identify format)") from None
    except Exception as exc:  # noqa: BLE001 - malformed headers raise many types
        raise ImageLoadError(f"{name}: corrupt image header ({type(exc).__name__})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise _too_big(name, img.size, max_pixels)
    factor = _work_factor(w, h)
    try:
        img.seek(0)  # animated GIF/PNG/WebP: the first frame
        if factor > 1 and img.format == "JPEG":
            img.draft(img.mode, (w // factor, h // factor))  # the decoder scales by 1/2, 1/4 or 1/8
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated data surfaces as OSError, SyntaxError, ...
        raise ImageLoadError(f"{name}: truncated or corrupt image data ({type(exc).__name__})") from None
    return _reduce_to_work_size(img)


def _work_factor(width: int, height: int) -> int:
    """The smallest whole factor that brings ``width`` x ``height`` within MAX_WORK_PIXELS."""
    return max(1, math.ceil(math.sqrt(width * height / MAX_WORK_PIXELS)))


def _reduce_to_work_size(img: Image.Image) -> Image.Image:
    """``img`` reduced by :func:`_work_factor` (box filter, in its own mode where PIL can; palette
    and 1-bit images are expanded first, which costs less than the float work it saves)."""
    factor = _work_factor(*img.size)
    if factor == 1:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    try:
        return img.reduce(factor)
    except ValueError:  # a mode reduce() does not take (e.g. I;16): its own resize instead
        return img.resize((max(1, img.width // factor), max(1, img.height // factor)), Image.Resampling.BOX)


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Undo the camera rotation recorded in EXIF; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF should not make a readable image unusable
        return img


def load_image(source: str | os.PathLike | bytes | Image.Image, *,
               max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode a file, raw bytes or a ``PIL.Image`` into an 8-bit grayscale (mode ``"L"``) image.

    Handles PNG/JPEG/WebP/BMP/TIFF/GIF in any PIL mode (see :func:`to_gray`), applies the EXIF
    orientation and takes the first frame of animations.  Images over ``max_pixels`` are refused
    from the header, before any pixel is decoded.  Raises :class:`ImageLoadError`, whose message
    starts with ``name`` (default: the path, or the kind of source).
    """
    name = _describe(source) if name is None else printable_name(name)
    if isinstance(source, Image.Image):
        img = source
        if img.width * img.height > max_pixels:
            raise _too_big(name, img.size, max_pixels)
        if img.width == 0 or img.height == 0:
            raise ImageLoadError(f"{name}: image has no pixels ({img.width}x{img.height})")
    elif isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        img = _open_checked(_read_source(source, name), name, max_pixels)
    else:
        raise ImageLoadError(f"{name}: unsupported source type {type(source).__name__}")
    try:
        return to_gray(_apply_exif_orientation(img))
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a mode PIL cannot convert
        raise ImageLoadError(f"{name}: cannot convert image mode {img.mode} ({exc})") from None


# ----------------------------------------------------------------------------------------------
# Colour, alpha and bit depth -> 8-bit gray


def _high_depth_to_u8(img: Image.Image) -> np.ndarray:
    """16/32-bit integer or float gray to 0..255, keeping the usual meaning of the value range."""
    a = np.asarray(img).astype(np.float32)
    top = float(a.max()) if a.size else 0.0
    if img.mode == "F" and top <= 1.0:
        a = a * 255.0  # float images in 0..1
    elif top > 255.0:
        # 16-bit data (also PNG 16-bit gray, which PIL opens as "I"/"I;16"); wider ints by their max
        a = a / (257.0 if top <= 65535.0 else top / 255.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _border(a: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels of a 2-D array, as a flat array."""
    if a.shape[0] <= 2 or a.shape[1] <= 2:
        return a.ravel()
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _flatten_colour(img: Image.Image) -> np.ndarray:
    """RGB image -> gray array that keeps every ink colour visible.

    Plain luma turns yellow-on-white into near-white-on-white.  Instead each pixel's darkness is its
    largest per-channel distance from the background colour (the median border colour), applied on
    the side of the background's own luma, so polarity (dark mode stays dark) is kept and pure gray
    images map to exactly their luma.  Works channel by channel on 2-D arrays (fast on 60 MP).
    """
    channels = [np.asarray(c, dtype=np.int16) for c in img.split()]
    bg = [float(np.median(_border(c))) for c in channels]
    dist = np.zeros(channels[0].shape, np.float32)
    for c, b in zip(channels, bg, strict=True):
        np.maximum(dist, np.abs(c - np.float32(b)), out=dist)
    bg_luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    gray = bg_luma - dist if bg_luma >= 128 else bg_luma + dist
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _is_colourful(img: Image.Image) -> bool:
    """Whether an RGB image has real colour (more than 0.1 % of pixels with channels > 8 apart)."""
    r, g, b = (np.asarray(c, dtype=np.int16) for c in img.split())
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return int(np.count_nonzero(spread > 8)) > 0.001 * spread.size  # JPEG chroma noise aside


def _choose_backdrop(luma: np.ndarray, alpha: np.ndarray) -> int:
    """Backdrop (255 or 0) for a transparent image: the one against which the content shows as sparse,
    visible strokes.  Black text on transparent -> white backdrop; white text -> black backdrop; a
    white card with black text -> white (over black the whole card would be 'ink')."""
    best, best_count = 255, None
    for backdrop in (255, 0):
        # |composite - backdrop| = alpha * |luma - backdrop|
        count = int(np.count_nonzero(alpha * np.abs(luma - np.float32(backdrop)) > 64))
        if count and (best_count is None or count < best_count):
            best, best_count = backdrop, count
    return best


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL image -> mode ``"L"``: alpha composited, colour flattened with contrast kept, 16-bit scaled.

    Transparent images go over white unless their content is light (white text on transparent),
    in which case they go over black so the text stays visible (and :func:`prepare` inverts it).
    """
    mode = img.mode
    if mode in ("L", "1"):
        return img.convert("L")
    if mode in ("I", "F") or mode.startswith("I;"):
        return Image.fromarray(_high_depth_to_u8(img))
    if mode == "P":
        return to_gray(img.convert("RGBA" if "transparency" in img.info else "RGB"))
    if mode in ("LA", "La", "PA", "RGBa"):
        return to_gray(img.convert("RGBA"))
    if mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            luma = np.asarray(img.convert("L"), dtype=np.float32)  # PIL's luma ignores alpha
            backdrop = _choose_backdrop(luma, alpha.astype(np.float32) / 255.0)
            img = Image.alpha_composite(Image.new("RGBA", img.size, (backdrop,) * 3 + (255,)), img)
    rgb = img if img.mode == "RGB" else img.convert("RGB")  # RGBA, RGBX, CMYK, YCbCr, LAB, HSV
    if not _is_colourful(rgb):
        return rgb.convert("L")
    return Image.fromarray(_flatten_colour(rgb))


# ----------------------------------------------------------------------------------------------
# Pure array steps


def _background_level(gray: np.ndarray) -> float:
    """Gray level of the background: the median of the image border (ink rarely fills half of it)."""
    return float(np.median(_border(gray)))


def invert_if_dark(gray: np.ndarray) -> np.ndarray:
    """Return ``gray`` inverted if it shows light ink on a dark background (dark mode), else as is.

    The background is the border's median level; the image is dark-mode when the pixels that
    differ clearly from it are mostly lighter than it (so mid-gray backgrounds are judged by their ink).
    """
    bg = _background_level(gray)
    g = gray.astype(np.int16)
    lighter = int((g > bg + 32).sum())
    darker = int((g < bg - 32).sum())
    if lighter > darker or (lighter == darker == 0 and bg < 128):
        return (255 - gray.astype(np.int16)).astype(np.uint8)
    return gray


def normalize_contrast(gray: np.ndarray) -> np.ndarray:
    """Stretch dark-ink-on-light ``gray`` so the ink is black and the background pure white.

    The background level is the border median (minus its noise); the ink level is the 5th percentile
    of the clearly darker pixels.  Raises :class:`BlankImageError` when nothing is darker than the
    background by at least ``_MIN_CONTRAST`` levels.
    """
    g = gray.astype(np.float32)
    border = _border(g)
    bg = float(np.median(border))
    candidates = g[g < bg - _MIN_CONTRAST]
    if candidates.size == 0:
        raise BlankImageError(
            f"no ink found (blank image: nothing differs from the background level {bg:.0f} by "
            f"{_MIN_CONTRAST}+ gray levels)")
    ink = float(np.percentile(candidates, 5))
    noise = 3.0 * float(np.median(np.abs(border - bg)))  # background noise (JPEG, sensor) -> white
    white = bg - min(noise, 0.25 * (bg - ink))
    out = (g - ink) / max(white - ink, 1.0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _ink_components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return n, labels, stats


def crop_to_content(gray: np.ndarray, *, margin: int = 0, threshold: int = _INK_LEVEL,
                    speck_fraction: float = 0.02) -> np.ndarray:
    """Crop dark-ink-on-white ``gray`` to the bounding box of its ink plus ``margin`` px (clipped).

    Ink is ``gray < threshold``.  Specks (components smaller than ``speck_fraction`` of the median
    component area) are ignored, so a dust grain does not stretch the box; at the im2latex scale
    that limit is below one pixel, so no real glyph part is dropped.  Raises
    :class:`BlankImageError` when there is no ink.
    """
    n, _, stats = _ink_components(gray < threshold)
    if n <= 1:
        raise BlankImageError("no ink found (nothing darker than the ink threshold)")
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = stats[1:][areas >= speck_fraction * float(np.median(areas))]
    x0 = int(keep[:, cv2.CC_STAT_LEFT].min())
    y0 = int(keep[:, cv2.CC_STAT_TOP].min())
    x1 = int((keep[:, cv2.CC_STAT_LEFT] + keep[:, cv2.CC_STAT_WIDTH]).max())
    y1 = int((keep[:, cv2.CC_STAT_TOP] + keep[:, cv2.CC_STAT_HEIGHT]).max())
    h, w = gray.shape
    return gray[max(0, y0 - margin):min(h, y1 + margin), max(0, x0 - margin):min(w, x1 + margin)]


def ink_content(gray: np.ndarray) -> np.ndarray:
    """``gray`` as :func:`prepare` measures it: dark mode undone (:func:`invert_if_dark`), contrast
    stretched (:func:`normalize_contrast`) and cropped to the ink (:func:`crop_to_content`)."""
    return crop_to_content(normalize_contrast(invert_if_dark(gray)))


# ----------------------------------------------------------------------------------------------
# Glyph scale without a network


def _group_max_sum(keys: np.ndarray, values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """For each component, the sum over its distinct ``keys`` (rows or columns) of the max value."""
    order = np.lexsort((keys, groups))
    g, k, v = groups[order], keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (k[1:] != k[:-1])])
    return np.bincount(g[starts], weights=np.maximum.reduceat(v, starts), minlength=n)


def component_sizes(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft heights, soft widths (px) and ink masses of the ink components of dark-on-white ``gray``.

    Components are the 8-connected pixels darker than 2/3 gray; their anti-aliased fringe joins them
    by dilating the labels.  A component's height is *soft*: the sum over its rows of the row's
    darkest value relative to the component's darkest pixel, so a half-covered edge row counts 0.5.
    That keeps the measure sub-pixel, makes it scale with the image, and (being relative) stops
    faint thin strokes of low-resolution images from shrinking it.  The mass is the summed darkness.
    Specks (< 2 % of the median mass) are left out.
    """
    dark = (255.0 - gray.astype(np.float32)) / 255.0
    dark[dark < 0.1] = 0.0  # background noise is not ink
    n, labels, _ = _ink_components(gray < 170)
    if n <= 1:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    # Anti-aliased fringe pixels (lighter than the mask threshold) join their neighbouring component.
    grown = cv2.dilate(labels.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int64)
    lab = np.where(labels > 0, labels, grown)
    ys, xs = np.nonzero((lab > 0) & (dark > 0))
    comp, val = lab[ys, xs], dark[ys, xs].astype(np.float64)
    peak = np.zeros(n)
    np.maximum.at(peak, comp, val)
    rel = np.minimum(1.0, val / peak[comp])
    mass = np.bincount(comp, weights=val, minlength=n)[1:]
    real = mass >= 0.02 * float(np.median(mass))
    heights = _group_max_sum(ys, rel, comp, n)[1:]
    widths = _group_max_sum(xs, rel, comp, n)[1:]
    return heights[real], widths[real], mass[real]


def _mass_band_mean(values: np.ndarray, weights: np.ndarray, lo: float, hi: float) -> float:
    """Weighted geometric mean of the values whose weighted quantile lies in [lo, hi].

    With lo = hi = 0.5 this is the weighted median; a band smooths over the jump between two
    glyph classes (x-height letters vs. full-height ones) that a bare median can make.
    """
    # Stable: equal values (integer heights less one stroke width tie often) keep their component
    # order, so which of them straddles the band is fixed.  NumPy's default argsort is not stable
    # and dispatches to SIMD kernels by CPU, so its order of ties is not the same everywhere (the
    # page's reader, pix2tex/web/reader/preprocess.js, sorts stably too).
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    quantile = (np.cumsum(w) - 0.5 * w) / w.sum()
    band = (quantile >= lo) & (quantile <= hi)
    if not band.any():  # a single heavy component spans the whole band
        band = np.arange(v.size) == int(np.searchsorted(quantile, 0.5 * (lo + hi)).clip(0, v.size - 1))
    return float(np.exp(np.average(np.log(v[band]), weights=w[band])))


def _typical_height(heights: np.ndarray, widths: np.ndarray, mass: np.ndarray,
                    capped: bool = False) -> float | None:
    """The typical glyph height among component heights, widths and ink masses (see
    :func:`estimate_glyph_height`), or ``None`` when no component is glyph-shaped.

    ``capped``: no component's vote exceeds :data:`_VOTE_CAP` of the ink (the "stroke_capped"
    estimator).  In a short formula a big operator (a display integral or sum, a tall radical) can
    hold most of the ink, so the ink-weighted median *is* the operator and the image is shrunk
    until its glyphs are unreadable: `\\int_0^\\infty e^{-x^2}dx=\\frac{\\sqrt\\pi}2` measured 44.9 px
    at 120 dpi against 8-14 px for the other demo formulas of that font and size.  Such an
    operator is not narrow enough for the delimiter rule (it is slanted or wide)."""
    glyph = (heights >= 0.25 * widths) & (heights > 0) & (mass > 0)
    heights, widths, mass = heights[glyph], widths[glyph], mass[glyph]
    if heights.size == 0:
        return None
    # Big delimiters (matrix brackets, \left( \right), integrals, long bars) are narrow and much
    # taller than the typical component; with their large ink mass they would outvote the glyphs.
    delimiter = (heights >= 3.0 * widths) & (heights > 2.5 * float(np.median(heights)))
    if not delimiter.all():
        heights, mass = heights[~delimiter], mass[~delimiter]
    if capped:
        mass = np.minimum(mass, _VOTE_CAP * mass.sum())
    ref = _mass_band_mean(heights, mass, 0.5, 0.5)
    typical = (heights > 0.4 * ref) & (heights < 2.5 * ref)
    return _mass_band_mean(heights[typical], mass[typical], *_HEIGHT_BAND)


def _soft_glyph_height(gray: np.ndarray) -> float | None:
    heights, widths, mass = component_sizes(gray)
    return _typical_height(heights, widths, mass)


def _stroke_glyph_height(gray: np.ndarray, capped: bool = False) -> float | None:
    """Glyph height from binarized component heights less the stroke width (see GLYPH_ESTIMATORS);
    ``capped``: see :func:`_typical_height`."""
    n, _, stats = _ink_components(gray < _INK_LEVEL)
    if n <= 1:
        return None
    # Measure at about _STROKE_WORK_HEIGHT px a glyph: binarizing the cubic-upsampled image puts
    # edges where the ink crosses half darkness, to a fraction of an original pixel.
    rough = _mass_band_mean(stats[1:, cv2.CC_STAT_HEIGHT].astype(np.float64),
                            stats[1:, cv2.CC_STAT_AREA].astype(np.float64), 0.5, 0.5)
    up = min(_STROKE_MAX_UPSAMPLE, max(1.0, _STROKE_WORK_HEIGHT / rough),
             math.sqrt(_MAX_ANALYSIS_PIXELS / gray.size))
    if up > 1.0:
        gray = cv2.resize(gray, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
    else:
        up = 1.0
    ink = (gray < _INK_LEVEL).astype(np.uint8)
    n, labels, stats = _ink_components(ink)
    if n <= 1:
        return None
    # A stroke of width w and length L has area w*L and 2L boundary pixels: w = 2 * area / boundary.
    inner = cv2.erode(ink, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary = np.bincount(labels[(ink > 0) & (inner == 0)], minlength=n)[1:].astype(np.float64)
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    real = area >= 0.02 * float(np.median(area))  # specks
    stroke = _mass_band_mean(2.0 * area[real] / np.maximum(boundary[real], 1.0), area[real], 0.5, 0.5)
    heights = stats[1:, cv2.CC_STAT_HEIGHT][real] - stroke
    widths = stats[1:, cv2.CC_STAT_WIDTH][real].astype(np.float64)
    ok = heights > 0
    typical = _typical_height(heights[ok], widths[ok], area[real][ok], capped)
    return None if typical is None else typical / (up * _STROKE_CALIBRATION)


GLYPH_ESTIMATORS = ("soft", "stroke", "stroke_capped")
"""How :func:`estimate_glyph_height` measures glyphs.

"soft": components' soft heights (:func:`component_sizes`), the first estimator (datasets and
model folders that name none used it).  Bolder or blurrier ink reads taller: +15 % for a 2x2
erosion, +15 % for a Gaussian blur of sigma 1 and +35 % for both, on 200 validation renders scaled
to the training size.
"stroke": binarized heights less the typical stroke width, which bold and blur add to every glyph
(+8 %, +3 % and +13 % there); scaled to agree with "soft" on clean renders (median ratio), where
it spreads more (10th-90th percentile 0.80-1.17 of "soft"'s).  Stroke width is only a correction
here: as the size measure itself it had proved renderer-dependent (blurry renders have strokes
~1.7x thicker relative to glyph height than crisp ones).  The benchmark:
``python -m benchmarks.glyph_estimators``.
"stroke_capped": "stroke", but no component weighs more than a fifth of the ink (``_VOTE_CAP``),
so that a big operator holding most of a short formula's ink is not taken for its glyphs.  On our
renders (one font and dpi: one true size) fewer images are shrunk over 2x too far against their
font's median estimate (0.9 % -> 0.6 %), a few more enlarged over 2x (1.0 % -> 1.3 %); 5 % move by
over 10 %, real im2latex images 0.8 %; the demo's integral and sum go from 3-4x the other
formulas' estimate to within their range (``python -m benchmarks.glyph_spread``).  The bundled
model, trained on "stroke", already reads better with it on the validation renders it moves
(edit distance 0.156 -> 0.135 on 199) and reads the demo's integral and sum.  Peeling the tallest
component off instead, while over 3x the others' median, moved as many renders but most of them
away from their font's size (once a display integral is gone, the others' median is often a
subscript's), and read those worse (0.258 -> 0.333)."""


def check_glyph_estimator(name: object) -> str:
    """``name`` if it is one of :data:`GLYPH_ESTIMATORS`, else ValueError (the one rule that
    checkpoint meta, dataset files and command lines are checked by)."""
    if not isinstance(name, str) or name not in GLYPH_ESTIMATORS:
        raise ValueError(f"glyph_estimator must be one of {', '.join(GLYPH_ESTIMATORS)}, got {name!r}")
    return name


def estimate_glyph_height(gray: np.ndarray, method: str = "soft") -> float | None:
    """Typical glyph height (px) of dark-ink-on-white, contrast-normalised ``gray``, or ``None``.

    Component heights (``method``: see :data:`GLYPH_ESTIMATORS`) are filtered: flat shapes
    (fraction bars, minus signs: height < 1/4 width) are dropped, then components outside 0.4-2.5x
    the ink-weighted median (dots, big operators), and the result is the ink-weighted mean
    (geometric) of the heights between the 40th and 60th ink-weighted percentile.  Big delimiters
    (narrow and > 2.5x the median height) are left out first.  Weighting by ink makes full-size
    glyphs count more than small sub/superscripts and the fragments that thin strokes break into at
    low resolution; on the im2latex renders (one font size) it spreads less with content than
    unweighted statistics (IQR/median 0.12 vs 0.17-0.22).  Images above 4 MP are measured on a
    downscaled copy (their glyphs are large anyway).
    """
    check_glyph_estimator(method)
    factor = 1
    if gray.size > _MAX_ANALYSIS_PIXELS:
        factor = math.ceil(math.sqrt(gray.size / _MAX_ANALYSIS_PIXELS))
        gray = cv2.resize(gray, (max(1, gray.shape[1] // factor), max(1, gray.shape[0] // factor)),
                          interpolation=cv2.INTER_AREA)
    if method == "soft":
        height = _soft_glyph_height(gray)
    else:
        height = _stroke_glyph_height(gray, capped=method == "stroke_capped")
    return None if height is None else factor * height


# ----------------------------------------------------------------------------------------------
# Model input


def _resize(gray: np.ndarray, scale: float) -> np.ndarray:
    h, w = gray.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return gray
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    return cv2.resize(gray, size, interpolation=interp)  # uint8 in, uint8 out (saturated)


def prepare(img: Image.Image, *, patch_size: int, max_height: int, max_width: int,
            target_glyph_height: float = DEFAULT_GLYPH_HEIGHT, rescale: bool = True,
            glyph_height: float | None = None, glyph_estimator: str = "soft") -> np.ndarray:
    """Turn any formula image into model input: uint8 [H, W], black-ish ink on white.

    Steps: gray (:func:`to_gray`), :func:`invert_if_dark`, :func:`normalize_contrast`,
    :func:`crop_to_content`; then, with ``rescale``, scale so :func:`estimate_glyph_height` becomes
    ``target_glyph_height`` (without it, or when glyphs cannot be measured, keep the size but enlarge
    content shorter than one patch); shrink further to fit ``max_height`` x ``max_width`` with a
    ``MARGIN`` px border (aspect kept).  The content is placed at the top-left, ``MARGIN`` px from
    the edges, and padded with white (255) so H and W are multiples of ``patch_size``.
    ``glyph_height`` is the image's glyph height when it is already known (training measures it on
    the clean render, before augmentation); then it is used instead of a fresh estimate.
    ``glyph_estimator`` names the :data:`GLYPH_ESTIMATORS` method of that estimate.
    Raises :class:`BlankImageError` (a ``ValueError``) when there is no ink.
    """
    if patch_size <= 0 or min(max_height, max_width) < max(patch_size, 2 * MARGIN + 1):
        raise ValueError(f"bad size limits: patch_size={patch_size}, max {max_height}x{max_width}")
    # Usable limits are whole patches (the config already demands multiples; be safe for callers).
    max_height -= max_height % patch_size
    max_width -= max_width % patch_size
    gray = np.asarray(to_gray(img))
    content = ink_content(gray)
    h, w = content.shape
    scale = None
    if rescale:
        glyph = glyph_height if glyph_height else estimate_glyph_height(content, glyph_estimator)
        if glyph is not None:
            scale = target_glyph_height / glyph
    if scale is None:
        scale = max(1.0, patch_size / h)  # native size; tiny crops grow to one patch row
    scale = min(scale, _MAX_UPSCALE,
                (max_height - 2 * MARGIN) / h, (max_width - 2 * MARGIN) / w)
    content = _resize(content, scale)
    ch, cw = content.shape
    out_h = min(max_height, math.ceil((ch + 2 * MARGIN) / patch_size) * patch_size)
    out_w = min(max_width, math.ceil((cw + 2 * MARGIN) / patch_size) * patch_size)
    out = np.full((out_h, out_w), 255, dtype=np.uint8)
    ch, cw = min(ch, out_h - MARGIN), min(cw, out_w - MARGIN)  # rounding can add a pixel
    out[MARGIN:MARGIN + ch, MARGIN:MARGIN + cw] = content[:ch, :cw]
    return out


# ----------------------------------------------------------------------------------------------
# Model input tensors

# Grayscale statistics of rendered formulas (the public pix2tex's values, kept for compatibility).
MEAN, STD = 0.7931, 0.1738


def to_batch(images: list[np.ndarray], multiple: int, height: int | None = None,
             width: int | None = None) -> np.ndarray:
    """Stack grayscale images into a normalized float32 array ``[B, 1, H, W]`` (both engines' input:
    ``torch.from_numpy`` makes it the torch engine's tensor without a copy).

    Each image sits at the top-left of a white canvas of the batch's size (``height`` x ``width``
    if given, else the largest image rounded up to ``multiple``), the same placement inference uses.
    """
    h = height or max(-(-im.shape[0] // multiple) * multiple for im in images)
    w = width or max(-(-im.shape[1] // multiple) * multiple for im in images)
    canvas = np.full((len(images), 1, h, w), 255, dtype=np.uint8)
    for k, im in enumerate(images):
        ih, iw = min(im.shape[0], h), min(im.shape[1], w)
        canvas[k, 0, :ih, :iw] = im[:ih, :iw]
    x = canvas.astype(np.float32)
    x /= np.float32(255.0)
    x -= np.float32(MEAN)
    x /= np.float32(STD)
    return x


def canvas_sizes(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """[B, 2] int64: each image's (height, width) inside a ``height`` x ``width`` canvas of :func:`to_batch`
    (what a model with ``mask_padding`` needs to hide the padding)."""
    return np.array([[min(im.shape[0], height), min(im.shape[1], width)] for im in images], dtype=np.int64)
