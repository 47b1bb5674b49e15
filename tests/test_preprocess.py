"""Loading and preparing real-world formula images (pix2tex.preprocess).

Everything is built from real im2latex renders in ../shared/data: bad files, every format and mode,
EXIF rotation, dark mode, colour, transparency and scale changes.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
from PIL import Image

from pix2tex.config import ModelConfig
from pix2tex.demo import render_demo
from pix2tex.preprocess import (
    DEFAULT_GLYPH_HEIGHT,
    GLYPH_ESTIMATORS,
    MARGIN,
    MAX_PIXELS,
    BlankImageError,
    ImageLoadError,
    crop_to_content,
    estimate_glyph_height,
    invert_if_dark,
    load_image,
    normalize_contrast,
    prepare,
)
from tests.helpers import SAMPLE as SAMPLE_DIR
from tests.helpers import png_header_only

SAMPLES = SAMPLE_DIR / "images"
SAMPLE = SAMPLES / "60ee748793.png"  # a long formula with fractions and scripts, 500x100
CFG = ModelConfig()
SIZE = dict(patch_size=CFG.patch_size, max_height=CFG.max_height, max_width=CFG.max_width)


def _rgb(path: Path = SAMPLE) -> Image.Image:
    return Image.open(path).convert("RGB")


def _gray(path: Path = SAMPLE) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _ink_box(a: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels darker than 128."""
    ys, xs = np.nonzero(a < 128)
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def _seeded_samples(n: int, seed: int = 0) -> list[Path]:
    paths = sorted(SAMPLES.glob("*.png"))
    rng = np.random.default_rng(seed)
    return [paths[i] for i in rng.choice(len(paths), n, replace=False)]


# ----------------------------------------------------------------------------------------------
# Bad files


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = SAMPLE.read_bytes()
    files = {
        "zero bytes": ("empty.png", b"", "empty file"),
        "truncated png": ("truncated.png", good[: len(good) // 2], "truncated or corrupt image data"),
        "text named png": ("notes.png", b"\\frac{a}{b} is not a picture\n", "not an image (cannot identify format)"),
        "huge header": ("bomb.png", png_header_only(20000, 20000),
                        "image is 20000x20000 = 400 MP, over the 60 MP limit"),
        "over our limit only": ("big.png", png_header_only(8000, 8000),
                                "image is 8000x8000 = 64 MP, over the 60 MP limit"),
        "spaces and unicode": ("my formulas/ünïcødé формула ∑ (1).png", b"", "empty file"),
    }
    out = {}
    for key, (name, data, reason) in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[key] = (path, reason)
    return out


@pytest.mark.parametrize("case", ["zero bytes", "truncated png", "text named png", "huge header",
                                  "over our limit only", "spaces and unicode"])
def test_bad_file_gives_one_line_error_naming_path(tmp_path: Path, case: str) -> None:
    path, reason = _bad_files(tmp_path)[case]
    limit_before = PIL.Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert reason in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    assert PIL.Image.MAX_IMAGE_PIXELS == limit_before  # PIL's global limit is left alone


def test_bomb_is_refused_from_bytes_too() -> None:
    with pytest.raises(ImageLoadError, match=r"^<bytes>: image is 20000x20000 = 400 MP, over the 60 MP limit$"):
        load_image(png_header_only(20000, 20000))


def test_custom_pixel_limit_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"image is 500x100 = 0.05 MP, over the 0.01 MP limit$"):
        load_image(SAMPLE, max_pixels=10_000)
    with pytest.raises(ImageLoadError, match=r"missing\.png: no such file$"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match=r"is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match=r"unsupported source type int"):
        load_image(42)  # type: ignore[arg-type]
    assert MAX_PIXELS == 60_000_000


def test_one_pixel_and_blank_images(tmp_path: Path) -> None:
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (0, 0, 0)).save(one)
    img = load_image(one)
    assert img.mode == "L" and img.size == (1, 1) and img.getpixel((0, 0)) == 0
    with pytest.raises(BlankImageError, match=r"^no ink found"):
        prepare(img, **SIZE)  # a single pixel is its own background: nothing to read
    white = tmp_path / "white.png"
    Image.new("RGB", (300, 80), (255, 255, 255)).save(white)
    with pytest.raises(ValueError, match=r"^no ink found[^\n]*$"):
        prepare(load_image(white), **SIZE)
    # Faint noise on white is still blank.
    rng = np.random.default_rng(0)
    noisy = np.clip(245 + rng.normal(0, 3, (80, 300)), 0, 255).astype(np.uint8)
    with pytest.raises(BlankImageError):
        prepare(Image.fromarray(noisy), **SIZE)


def test_path_with_spaces_and_unicode_loads(tmp_path: Path) -> None:
    path = tmp_path / "screen shots" / "Formel für ∫ – été.png"
    path.parent.mkdir()
    _rgb().save(path)
    assert np.array_equal(np.asarray(load_image(path)), _gray())
    assert np.array_equal(np.asarray(load_image(str(path))), _gray())
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), _gray())


# ----------------------------------------------------------------------------------------------
# Formats and modes


def _transparent(gray: np.ndarray, ink_rgb: tuple[int, int, int]) -> Image.Image:
    """Ink of one colour whose coverage is the alpha channel; fully transparent background."""
    alpha = 255 - gray
    rgba = np.zeros(gray.shape + (4,), np.uint8)
    rgba[..., :3] = ink_rgb
    rgba[..., 3] = alpha
    return Image.fromarray(rgba, "RGBA")


def _write_variant(kind: str, tmp: Path) -> Path:
    """Save the sample in one format/mode; return the file."""
    rgb, gray = _rgb(), _gray()
    path = tmp / f"{kind}.img"
    if kind == "png_rgb":
        rgb.save(path, "PNG")
    elif kind == "png_gray":
        Image.fromarray(gray).save(path, "PNG")
    elif kind == "png_rgba_black_text":
        _transparent(gray, (0, 0, 0)).save(path, "PNG")
    elif kind == "png_rgba_white_text":
        _transparent(gray, (255, 255, 255)).save(path, "PNG")
    elif kind == "png_la":
        Image.merge("LA", [Image.new("L", rgb.size, 0), Image.fromarray(255 - gray)]).save(path, "PNG")
    elif kind == "png_16bit":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path, "PNG")
    elif kind == "tiff_32bit_int":
        Image.fromarray(gray.astype(np.int32) * 257).save(path, "TIFF")
    elif kind == "gif_transparent":  # palette image whose white entry is transparent
        pal = Image.fromarray(gray).convert("P")
        pal.save(path, "GIF", transparency=int(np.asarray(pal)[0, 0]))
    elif kind == "png_palette":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path, "PNG")
    elif kind == "gif_palette":
        Image.fromarray(gray).convert("P").save(path, "GIF")
    elif kind == "jpeg_cmyk":
        rgb.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind == "jpeg_rgb":
        rgb.save(path, "JPEG", quality=95)
    elif kind == "webp":
        rgb.save(path, "WEBP", lossless=True)
    elif kind == "webp_lossy":
        rgb.save(path, "WEBP", quality=90)
    elif kind == "tiff":
        rgb.save(path, "TIFF", compression="tiff_lzw")
    elif kind == "bmp":
        rgb.save(path, "BMP")
    else:
        raise AssertionError(kind)
    return path


LOSSLESS = ["png_rgb", "png_gray", "png_rgba_black_text", "png_la", "png_16bit", "tiff_32bit_int",
            "gif_palette", "gif_transparent", "webp", "tiff", "bmp"]
LOSSY = {"jpeg_cmyk": 6.0, "jpeg_rgb": 4.0, "webp_lossy": 6.0, "png_palette": 2.0}


@pytest.mark.parametrize("kind", LOSSLESS + list(LOSSY))
def test_every_format_and_mode_loads_as_the_same_gray_image(tmp_path: Path, kind: str) -> None:
    img = load_image(_write_variant(kind, tmp_path))
    assert img.mode == "L"
    assert img.size == (500, 100)
    got, want = np.asarray(img).astype(float), _gray().astype(float)
    tolerance = LOSSY.get(kind, 1.0)  # 1 gray level of rounding for the lossless ones
    assert np.abs(got - want).mean() <= tolerance, kind
    # ... and prepares to the same model input as the original.  (rescale=False isolates decoding
    # from the glyph-size estimate, which lossy codecs may nudge by a few per cent.)
    ref, out = prepare(Image.fromarray(_gray()), rescale=False, **SIZE), prepare(img, rescale=False, **SIZE)
    assert out.shape == ref.shape
    assert np.abs(out.astype(float) - ref).mean() < (1.0 if kind in LOSSLESS else 6.0)
    if kind in LOSSLESS:
        assert prepare(img, **SIZE).shape == prepare(Image.fromarray(_gray()), **SIZE).shape


def test_white_text_on_transparent_is_read_as_ink(tmp_path: Path) -> None:
    img = load_image(_write_variant("png_rgba_white_text", tmp_path))
    # Composited over black (over white the text would vanish): light text on dark ...
    assert np.corrcoef(np.asarray(img, float).ravel(), _gray().astype(float).ravel())[0, 1] < -0.99
    # ... which prepare() turns into the usual dark ink on white.
    ref, out = prepare(Image.fromarray(_gray()), rescale=False, **SIZE), prepare(img, rescale=False, **SIZE)
    assert out.shape == ref.shape and np.abs(out.astype(float) - ref).mean() < 2.0


def test_card_with_text_on_transparent_goes_over_white() -> None:
    # A white card (opaque) holding black text, surrounded by transparency: over white, not black.
    gray = _gray()
    rgba = np.zeros((160, 560, 4), np.uint8)
    rgba[30:130, 30:530, :3] = gray[..., None]
    rgba[30:130, 30:530, 3] = 255
    img = load_image(Image.fromarray(rgba, "RGBA"))
    assert img.getpixel((0, 0)) == 255
    out = prepare(img, **SIZE)
    assert out.shape == prepare(Image.fromarray(gray), **SIZE).shape


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    first = Image.fromarray(_gray()).convert("P")
    second = Image.new("L", first.size, 255).convert("P")
    third = Image.fromarray(255 - _gray()).convert("P")
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second, third], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert np.array_equal(np.asarray(load_image(path)), _gray())


@pytest.mark.parametrize("orientation, stored_rotation", [(6, 90), (8, -90), (3, 180)])
def test_exif_rotation_is_undone(tmp_path: Path, orientation: int, stored_rotation: int) -> None:
    # A camera stores the pixels rotated and records how to turn them upright in EXIF tag 274.
    stored = _rgb().rotate(stored_rotation, expand=True)
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "photo.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    img = load_image(path)
    assert img.size == (500, 100)
    assert np.abs(np.asarray(img, float) - _gray()).mean() < 4.0


# ----------------------------------------------------------------------------------------------
# Polarity, colour, contrast


def test_invert_if_dark_is_pure_and_decides_by_background() -> None:
    gray = _gray()
    dark = 255 - gray
    assert np.array_equal(invert_if_dark(dark), gray)
    assert invert_if_dark(gray) is gray
    before = dark.copy()
    invert_if_dark(dark)
    assert np.array_equal(dark, before)  # input untouched
    # Mid-gray background: light ink means dark mode, dark ink does not.
    mid = np.full((40, 100), 120, np.uint8)
    light_ink, dark_ink = mid.copy(), mid.copy()
    light_ink[10:30, 20:80:4] = 250
    dark_ink[10:30, 20:80:4] = 5
    assert invert_if_dark(light_ink)[15, 20] == 5
    assert invert_if_dark(dark_ink)[15, 20] == 5


def test_dark_mode_prepares_like_light_mode() -> None:
    gray = _gray().astype(np.float32)
    v = np.rint(30 + (255 - gray) * 200 / 255).astype(np.uint8)  # ink 230 on background 30
    dark = Image.fromarray(np.stack([v, v, np.minimum(v + 8, 255)], axis=2))
    ref, out = prepare(Image.fromarray(_gray()), rescale=False, **SIZE), prepare(dark, rescale=False, **SIZE)
    assert out.shape == ref.shape
    assert np.abs(out.astype(float) - ref).mean() < 2.0
    assert out[0, 0] == 255 and out.min() == 0


@pytest.mark.parametrize("ink, background", [((255, 210, 0), (255, 255, 255)),  # yellow on white
                                             ((200, 0, 0), (220, 235, 255)),  # red on light blue
                                             ((80, 200, 255), (20, 24, 40))])  # cyan on navy (dark)
def test_coloured_text_becomes_black_on_white(ink: tuple, background: tuple) -> None:
    coverage = (255 - _gray().astype(np.float32)) / 255
    rgb = np.array(background, np.float32) * (1 - coverage[..., None]) + np.array(ink, np.float32) * coverage[..., None]
    img = Image.fromarray(np.rint(rgb).astype(np.uint8))
    ref, out = prepare(Image.fromarray(_gray()), rescale=False, **SIZE), prepare(img, rescale=False, **SIZE)
    assert out.shape == ref.shape
    assert out.min() == 0 and out[0, 0] == 255  # full contrast
    assert np.abs(out.astype(float) - ref).mean() < 3.0
    # Plain luma would leave yellow ink nearly invisible; ours keeps it.
    assert np.asarray(load_image(img)).min() < 60


def test_normalize_contrast_stretches_faint_ink() -> None:
    faint = (170 + _gray().astype(np.float32) * 50 / 255).astype(np.uint8)  # ink 170 on paper 220
    out = normalize_contrast(faint)
    assert out.min() == 0 and out.max() == 255
    assert np.median(out) == 255
    assert _ink_box(out) == _ink_box(_gray())


# ----------------------------------------------------------------------------------------------
# Cropping and scale


def test_crop_to_content_ignores_specks_and_keeps_margin() -> None:
    a = np.full((200, 300), 255, np.uint8)
    for x in range(40, 240, 40):
        a[50:70, x:x + 12] = 0  # five "glyphs" of 240 px
    a[190, 290] = 0  # a dust speck far away
    assert crop_to_content(a).shape == (20, 172)
    assert crop_to_content(a, margin=5).shape == (30, 182)
    assert crop_to_content(a, margin=500).shape == a.shape  # clipped to the image
    with pytest.raises(BlankImageError):
        crop_to_content(np.full((10, 10), 255, np.uint8))


@pytest.mark.parametrize("method", GLYPH_ESTIMATORS)
def test_estimate_glyph_height_scales_with_the_image(method: str) -> None:
    errors = []
    for path in _seeded_samples(10, seed=1):
        gray = crop_to_content(_gray(path))
        base = estimate_glyph_height(gray, method)
        assert base is not None and 6 < base < 20
        for factor in (2, 3):
            big = np.asarray(Image.fromarray(gray).resize((gray.shape[1] * factor, gray.shape[0] * factor),
                                                          Image.Resampling.BICUBIC))
            errors.append(estimate_glyph_height(big, method) / (factor * base) - 1)
    assert np.max(np.abs(errors)) < 0.08
    assert np.median(np.abs(errors)) < 0.03
    bar = np.full((20, 200), 255, np.uint8)
    bar[9:11, 10:190] = 0  # only a fraction bar: nothing glyph-like to measure
    assert estimate_glyph_height(bar, method) is None
    assert estimate_glyph_height(np.full((20, 20), 255, np.uint8), method) is None


def test_stroke_estimate_barely_moves_with_bolder_or_blurrier_ink() -> None:
    """Bold and blur add ink around every stroke; "soft" reads that as taller glyphs, "stroke"
    takes the stroke width off.  Both agree on the images as they are."""
    bolder = lambda a: cv2.erode(a, np.ones((2, 2), np.uint8))  # noqa: E731 (erosion of white = bolder ink)
    blurrier = lambda a: cv2.GaussianBlur(a, (0, 0), 1.0)  # noqa: E731
    grays = [_gray(p) for p in _seeded_samples(30, seed=2)]

    def heights(method: str, change=lambda a: a) -> np.ndarray:
        return np.array([estimate_glyph_height(crop_to_content(normalize_contrast(change(g))), method)
                         for g in grays])

    soft, stroke = heights("soft"), heights("stroke")
    assert np.median(stroke / soft) == pytest.approx(1.0, abs=0.06)
    for change in (bolder, blurrier):
        soft_growth = np.median(heights("soft", change) / soft) - 1
        stroke_growth = np.median(heights("stroke", change) / stroke) - 1
        assert soft_growth > 0.15  # what "soft" does (+29 % and +24 % here)
        assert abs(stroke_growth) < 0.6 * soft_growth
    with pytest.raises(ValueError, match="glyph_estimator must be one of soft, stroke, stroke_capped, got 'x'"):
        estimate_glyph_height(grays[0], "x")


def test_capped_estimate_sees_past_a_big_operator_holding_most_ink(tmp_path: Path) -> None:
    """In a short formula a display integral or sum holds most of the ink, and "stroke" takes it
    for the glyphs (the image would be shrunk 3-4x); "stroke_capped" caps each component's vote
    and measures the demo's eight formulas (one font, one size) alike, and it measures formulas
    where no component holds a fifth of the ink exactly as "stroke" does."""
    contents = [crop_to_content(normalize_contrast(np.asarray(r.image.convert("L")))) for r in render_demo(tmp_path)]
    stroke = np.array([estimate_glyph_height(c, "stroke") for c in contents])
    capped = np.array([estimate_glyph_height(c, "stroke_capped") for c in contents])
    assert stroke.max() / stroke.min() > 4  # the integral (44.9 px) and the sum (28.1) against 8-14
    assert capped.max() / capped.min() < 2
    assert np.argmax(stroke) == 2 and capped[2] < stroke[2] / 3  # \int_0^\infty e^{-x^2}\,dx=...
    same = [estimate_glyph_height(g, "stroke_capped") == estimate_glyph_height(g, "stroke")
            for g in (crop_to_content(normalize_contrast(_gray(p))) for p in _seeded_samples(40, seed=3))]
    assert sum(same) >= 38


def test_training_renders_measure_near_the_default_glyph_height() -> None:
    heights = [estimate_glyph_height(crop_to_content(normalize_contrast(_gray(p)))) for p in _seeded_samples(40)]
    assert np.median(heights) == pytest.approx(DEFAULT_GLYPH_HEIGHT, rel=0.1)


def _upscaled_with_margin(img: Image.Image, factor: int, margin: int = 200) -> Image.Image:
    big = img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (big.width + 2 * margin, big.height + 2 * margin), (255, 255, 255))
    canvas.paste(big, (margin, margin))
    return canvas


def test_upscaled_screenshot_with_margin_prepares_to_original_size() -> None:
    errors = []
    for path in _seeded_samples(10, seed=1):
        original = _rgb(path)
        ref = prepare(original, **SIZE)
        out = prepare(_upscaled_with_margin(original, 3), **SIZE)
        _, _, ref_h, ref_w = _ink_box(ref)
        _, _, out_h, out_w = _ink_box(out)
        errors.append(abs(out_h / ref_h - 1))
        assert out_h == pytest.approx(ref_h, rel=0.10), path.name
        assert out_w == pytest.approx(ref_w, rel=0.10), path.name
        # Without glyph-scale normalisation the 3x image stays (about) 3x, or hits the size limit.
        naive = prepare(_upscaled_with_margin(original, 3), rescale=False, **SIZE)
        limited_by_width = _ink_box(naive)[3] >= CFG.max_width - 2 * MARGIN - 2
        assert _ink_box(naive)[2] > 1.4 * ref_h or limited_by_width
    assert np.median(errors) < 0.05


def test_huge_uploads_are_reduced_after_decoding_and_prepare_as_the_original() -> None:
    """An image over MAX_WORK_PIXELS is reduced by a whole factor as it is decoded (a JPEG by its
    decoder), so the array work never sees its full size, and it prepares like the original."""
    from pix2tex.preprocess import MAX_WORK_PIXELS

    path = _seeded_samples(1, seed=2)[0]
    original = _rgb(path)
    ref_h, ref_w = _ink_box(prepare(original, **SIZE))[2:]
    factor = 1
    while (original.width * factor + 1200) * (original.height * factor + 1200) <= 2 * MAX_WORK_PIXELS:
        factor += 1
    big = _upscaled_with_margin(original, factor, margin=600)  # over twice the working size
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("JPEG", "L"), ("PNG", "P")):
        buffer = io.BytesIO()
        (big.convert(mode) if mode != "RGB" else big).save(buffer, format=fmt, quality=95)
        loaded = load_image(buffer.getvalue())
        assert loaded.mode == "L" and loaded.width * loaded.height <= MAX_WORK_PIXELS, (fmt, mode, loaded.size)
        assert loaded.width * loaded.height >= MAX_WORK_PIXELS / 16, (fmt, mode, loaded.size)  # not shrunk more
        out_h, out_w = _ink_box(prepare(loaded, **SIZE))[2:]
        assert out_h == pytest.approx(ref_h, rel=0.10) and out_w == pytest.approx(ref_w, rel=0.10), (fmt, mode)
    small = io.BytesIO()
    original.save(small, format="PNG")
    assert load_image(small.getvalue()).size == original.size  # images within the limit are left alone


def test_small_image_is_upscaled_to_training_scale() -> None:
    errors = []
    for path in _seeded_samples(10, seed=1):
        original = _rgb(path)
        small = original.resize((original.width // 2, original.height // 2), Image.Resampling.BOX)
        ref_h = _ink_box(prepare(original, **SIZE))[2]
        errors.append(_ink_box(prepare(small, **SIZE))[2] / ref_h - 1)
        # Naive mode keeps it half size (unless shorter than one patch).
        naive_h = _ink_box(prepare(small, rescale=False, **SIZE))[2]
        assert naive_h < 0.7 * ref_h or naive_h <= CFG.patch_size
    # Half-size glyphs (~5 px) are harder to measure: thin strokes break up.  Looser bounds.
    assert np.max(np.abs(errors)) < 0.2
    assert np.median(np.abs(errors)) < 0.1
    dot = np.full((40, 40), 255, np.uint8)
    dot[18:22, 18:22] = 0  # a 4x4 blob: grows to at least one patch row
    assert _ink_box(prepare(Image.fromarray(dot), rescale=False, **SIZE))[2] >= CFG.patch_size - 1


@pytest.mark.parametrize("shape", ["sample", "wide", "tall", "tiny", "photo"])
def test_output_is_patch_multiple_within_max_with_content_top_left(shape: str) -> None:
    gray = _gray()
    if shape == "sample":
        img = Image.fromarray(gray)
    elif shape == "wide":  # 5 formulas side by side: must shrink to max_width
        img = Image.fromarray(np.hstack([gray] * 5))
    elif shape == "tall":  # 6 formulas stacked: must shrink to max_height
        img = Image.fromarray(np.vstack([gray] * 6))
    elif shape == "tiny":
        img = Image.fromarray(gray).resize((60, 12), Image.Resampling.BOX)
    else:  # a 3000 px wide gray-paper photo with noise, saved as JPEG
        big = _upscaled_with_margin(_rgb(), 5, margin=250)
        a = np.asarray(big, np.float32) * np.array([0.92, 0.9, 0.85])
        a += np.random.default_rng(3).normal(0, 4, a.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
        img = load_image(buf.getvalue())
    out = prepare(img, **SIZE)
    assert out.dtype == np.uint8 and out.ndim == 2
    h, w = out.shape
    assert h % CFG.patch_size == 0 and w % CFG.patch_size == 0
    assert CFG.patch_size <= h <= CFG.max_height and CFG.patch_size <= w <= CFG.max_width
    top, left, ink_h, ink_w = _ink_box(out)
    assert MARGIN - 1 <= top <= MARGIN + 1 and MARGIN - 1 <= left <= MARGIN + 1
    assert out[-1].min() == 255 and out[:, -1].min() == 255  # white padding right and bottom
    assert top + ink_h <= h - MARGIN + 1 and left + ink_w <= w - MARGIN + 1
    if shape == "wide":
        assert w == CFG.max_width
    if shape == "tall":
        assert h == CFG.max_height


def test_prepare_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="bad size limits"):
        prepare(Image.fromarray(_gray()), patch_size=16, max_height=8, max_width=672)


def _tex_render(tmp: Path, latex: str, dpis: tuple[int, ...]) -> list[Path]:
    """Render ``latex`` once with real TeX, rasterise it at several resolutions with dvipng."""
    import subprocess
    doc = ("\\documentclass[12pt]{article}\\usepackage{amsmath,amssymb}\\pagestyle{empty}"
           f"\\begin{{document}}$\\displaystyle {latex}$\\end{{document}}")
    (tmp / "f.tex").write_text(doc)
    subprocess.run(["latex", "-interaction=nonstopmode", "-halt-on-error", "f.tex"], cwd=tmp, check=True,
                   capture_output=True, timeout=60)
    out = []
    for dpi in dpis:
        png = tmp / f"f{dpi}.png"
        subprocess.run(["dvipng", "-D", str(dpi), "-T", "tight", "-bg", "White", "-o", png.name, "f.dvi"],
                       cwd=tmp, check=True, capture_output=True, timeout=60)
        out.append(png)
    return out


@pytest.mark.tex
def test_crisp_tex_renders_at_different_dpi_prepare_to_the_same_size(tmp_path: Path) -> None:
    # A sharp re-render (not an interpolated copy) at 150 and 400 dpi, as from a screen at two zooms.
    latex = (r"J_{\mu}=-\frac{ie}{2}\bigg[\Phi^{\ast}D_{\mu}\Phi-\Phi\big(D_{\mu}\Phi\big)^{\ast}\bigg]"
             r"+\langle f,f\rangle=\langle g,g\rangle=0\,.")
    low, high = (load_image(p) for p in _tex_render(tmp_path, latex, (150, 400)))
    assert high.height > 2.4 * low.height
    h_low, h_high = (_ink_box(prepare(img, **SIZE))[2] for img in (low, high))
    assert h_high == pytest.approx(h_low, rel=0.1)
    # Glyphs land near the training size: the result is as tall as at ~100 dpi (12 pt), the
    # resolution at which this TeX setup matches the im2latex renders.
    assert h_low == pytest.approx(low.height * 100 / 150, rel=0.2)


@pytest.mark.parametrize("kind", ["dev_zero", "dev_urandom", "fifo"])
def test_special_files_are_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    import os

    from pix2tex.dataset.dataset import load_image_gray

    path = tmp_path / "formula.png"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    else:
        path.symlink_to("/dev/zero" if kind == "dev_zero" else "/dev/urandom")
    with pytest.raises(ImageLoadError, match=r"formula\.png: not a regular file") as info:
        load_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image_gray(path)  # the dataset's images go through the same decoder


def test_oversized_file_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    import pix2tex.preprocess as pre

    monkeypatch.setattr(pre, "MAX_FILE_BYTES", 1000)
    big = tmp_path / "big.png"
    big.write_bytes(SAMPLE.read_bytes() + b"\0" * 2000)
    with pytest.raises(ImageLoadError, match=r"big\.png: file is [\d,]+ bytes, over the 1,000-byte limit"):
        load_image(big)
    with pytest.raises(ImageLoadError, match="over the 1,000-byte limit"):
        load_image(big.read_bytes())


def test_control_characters_in_names_stay_on_one_line(tmp_path: Path) -> None:
    sneaky = tmp_path / "a\nb\tc.png"
    sneaky.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError) as info:
        load_image(sneaky)
    assert "\n" not in str(info.value) and "\t" not in str(info.value)
    assert "a\\nb\\tc.png: not an image" in str(info.value)
