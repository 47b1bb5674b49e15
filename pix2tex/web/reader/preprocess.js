// pix2tex.preprocess.prepare in the browser: gray image in, model input out (uint8, black-ish ink
// on white, padded to whole patches), step for step as the Python module does it.  Every constant
// of that module comes from reader.json (written by pix2tex/web_export.py from the Python
// constants); the few literals that preprocess.py keeps inside its functions are named here
// beside the function they belong to.  The images are PIL-like objects from image.js:
// {mode, width, height, data (channels interleaved)}.

import {
  AREA, HEIGHT, LEFT, TOP, WIDTH, argsortStable, connectedComponents, dilate3, erode3, expExact, image, logExact,
  median, medianF32,
  pairwiseSum, percentileF32, resizeArea, resizeCubic, rint, pyRound,
} from "./imgproc.js";

const f32 = Math.fround;

/** An image that cannot be read; the message is one line (preprocess.ImageLoadError). */
export class ImageError extends Error {}

// -- colour, alpha and bit depth -> 8-bit gray (preprocess.to_gray) -------------------------------------

/** PIL's RGB -> "L" conversion: ITU-R 601-2 luma in 16-bit fixed point. */
const luma = (r, g, b) => (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;

function channel(img, c) {
  const n = img.width * img.height, cn = img.data.length / n, out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = img.data[i * cn + c];
  return out;
}

/** preprocess._border: the outermost ring of a 2-D array, flat, in NumPy's order. */
export function border(a, width, height) {
  if (height <= 2 || width <= 2) return Array.from(a);
  const out = [];
  for (let x = 0; x < width; x++) out.push(a[x]);
  for (let x = 0; x < width; x++) out.push(a[(height - 1) * width + x]);
  for (let y = 1; y < height - 1; y++) out.push(a[y * width]);
  for (let y = 1; y < height - 1; y++) out.push(a[y * width + width - 1]);
  return out;
}

function highDepthToU8(img) {
  const a = img.data;
  let top = 0;
  for (const v of a) top = Math.max(top, v);
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const v = top > 255 ? f32(a[i] / (top <= 65535 ? 257 : top / 255)) : a[i];
    out[i] = Math.max(0, Math.min(255, rint(v)));
  }
  return image(img.width, img.height, out);
}

function isColourful(r, g, b) {
  // more than 0.1 % of the pixels with channels more than 8 apart (JPEG chroma noise aside)
  let count = 0;
  for (let i = 0; i < r.length; i++) {
    if (Math.max(r[i], g[i], b[i]) - Math.min(r[i], g[i], b[i]) > 8) count++;
  }
  return count > 0.001 * r.length;
}

function flattenColour(r, g, b, width, height) {
  const channels = [r, g, b];
  const bg = channels.map((c) => median(border(c, width, height)));
  const bgLuma = f32(0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]);
  const out = new Uint8Array(r.length);
  for (let i = 0; i < r.length; i++) {
    let dist = 0;
    for (let c = 0; c < 3; c++) dist = Math.max(dist, Math.abs(f32(channels[c][i] - f32(bg[c]))));
    const gray = bgLuma >= 128 ? f32(bgLuma - dist) : f32(bgLuma + dist);
    out[i] = Math.max(0, Math.min(255, rint(gray)));
  }
  return image(width, height, out);
}

function chooseBackdrop(lum, alpha) {
  let best = 255, bestCount = null;
  for (const backdrop of [255, 0]) {
    let count = 0;
    for (let i = 0; i < lum.length; i++) {
      if (f32(f32(alpha[i] / 255) * Math.abs(f32(lum[i] - backdrop))) > 64) count++;
    }
    if (count && (bestCount === null || count < bestCount)) [best, bestCount] = [backdrop, count];
  }
  return best;
}

/** PIL's Image.alpha_composite of an RGBA image over an opaque gray backdrop (its integer formula). */
function compositeOver(rgba, backdrop) {
  const out = new Uint8Array(rgba.length);
  const div255 = (a) => ((a >>> 8) + a) >>> 8;
  for (let i = 0; i < rgba.length; i += 4) {
    const a = rgba[i + 3];
    if (a === 0) {
      out.fill(backdrop, i, i + 3);
    } else {
      const outa255 = a * 255 + 255 * (255 - a);
      const coef1 = Math.floor((a * 255 * 255 * 128) / outa255);
      const coef2 = 255 * 128 - coef1;
      for (let c = 0; c < 3; c++) out[i + c] = div255(rgba[i + c] * coef1 + backdrop * coef2 + (0x80 << 7)) >>> 7;
    }
    out[i + 3] = 255;
  }
  return out;
}

function rgbToGray(r, g, b, width, height) {
  if (isColourful(r, g, b)) return flattenColour(r, g, b, width, height);
  const out = new Uint8Array(r.length);
  for (let i = 0; i < r.length; i++) out[i] = luma(r[i], g[i], b[i]);
  return image(width, height, out);
}

/** preprocess.to_gray for the modes image.js produces: "L", "1", "I;16", "RGB", "RGBA". */
export function toGray(img) {
  const { mode, width, height } = img;
  if (mode === "L") return image(width, height, img.data);
  if (mode === "1") return image(width, height, img.data.map((v) => (v ? 255 : 0)));
  if (mode === "I;16") return highDepthToU8(img);
  let data = img.data;
  if (mode === "RGBA") {
    const alpha = channel(img, 3);
    if (alpha.some((a) => a < 255)) {
      const lum = new Float32Array(width * height);
      for (let i = 0; i < lum.length; i++) lum[i] = luma(data[4 * i], data[4 * i + 1], data[4 * i + 2]);
      data = compositeOver(data, chooseBackdrop(lum, alpha));
    }
    img = { ...img, data };
  } else if (mode !== "RGB") {
    throw new ImageError(`cannot convert image mode ${mode}`);
  }
  return rgbToGray(channel(img, 0), channel(img, 1), channel(img, 2), width, height);
}

// -- pure array steps -------------------------------------------------------------------------------

/** preprocess.invert_if_dark (32: how far a pixel must differ from the background to count). */
export function invertIfDark(gray) {
  const { width, height, data } = gray;
  const bg = median(border(data, width, height));
  let lighter = 0, darker = 0;
  for (const v of data) {
    if (v > bg + 32) lighter++;
    else if (v < bg - 32) darker++;
  }
  if (lighter > darker || (lighter === 0 && darker === 0 && bg < 128)) return image(width, height, data.map((v) => 255 - v));
  return gray;
}

/** preprocess.normalize_contrast, in float32 as NumPy computes it. */
export function normalizeContrast(gray, S) {
  const { width, height, data } = gray;
  const ring = border(data, width, height);
  const bg = medianF32(ring);
  const candidates = [];
  for (const v of data) if (v < f32(bg - S.min_contrast)) candidates.push(v);
  if (candidates.length === 0) {
    throw new ImageError(`no ink found (blank image: nothing differs from the background level ${rint(bg)} by ` +
      `${S.min_contrast}+ gray levels)`);
  }
  const ink = percentileF32(candidates, 5);
  const noise = 3.0 * medianF32(ring.map((v) => Math.abs(f32(v - bg))));
  const white = bg - Math.min(noise, 0.25 * (bg - ink));
  const inkF = f32(ink), span = f32(Math.max(white - ink, 1.0));
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = f32(f32(data[i] - inkF) / span);
    out[i] = Math.max(0, Math.min(255, rint(f32(v * 255))));
  }
  return image(width, height, out);
}

function threshold(gray, level) {
  return gray.data.map((v) => (v < level ? 1 : 0));
}

/** preprocess.crop_to_content (specks: components under 2 % of the median area). */
export function cropToContent(gray, S, margin = 0, speckFraction = 0.02) {
  const { n, stats } = connectedComponents(threshold(gray, S.ink_level), gray.width, gray.height);
  if (n <= 1) throw new ImageError("no ink found (nothing darker than the ink threshold)");
  const comps = stats.slice(1);
  const limit = speckFraction * median(comps.map((s) => s[AREA]));
  const keep = comps.filter((s) => s[AREA] >= limit);
  const x0 = Math.min(...keep.map((s) => s[LEFT])), y0 = Math.min(...keep.map((s) => s[TOP]));
  const x1 = Math.max(...keep.map((s) => s[LEFT] + s[WIDTH])), y1 = Math.max(...keep.map((s) => s[TOP] + s[HEIGHT]));
  return crop(gray, Math.max(0, x0 - margin), Math.max(0, y0 - margin),
    Math.min(gray.width, x1 + margin), Math.min(gray.height, y1 + margin));
}

function crop(gray, x0, y0, x1, y1) {
  const w = x1 - x0, h = y1 - y0, out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) out.set(gray.data.subarray((y0 + y) * gray.width + x0, (y0 + y) * gray.width + x1), y * w);
  return image(w, h, out);
}

export function inkContent(gray, S) {
  return cropToContent(normalizeContrast(invertIfDark(gray), S), S);
}

// -- glyph scale without a network (preprocess.estimate_glyph_height) ---------------------------------

/** preprocess._mass_band_mean: weighted geometric mean of the values whose weighted quantile is in [lo, hi]. */
export function massBandMean(values, weights, lo, hi) {
  const order = argsortStable(values);
  const v = Float64Array.from(order, (k) => values[k]), w = Float64Array.from(order, (k) => weights[k]);
  const total = pairwiseSum(w);
  let cum = 0;
  const quantile = Float64Array.from(w, (wk) => {
    cum += wk;
    return (cum - 0.5 * wk) / total;
  });
  let band = Array.from(quantile, (q) => q >= lo && q <= hi);
  if (!band.some(Boolean)) {
    const mid = 0.5 * (lo + hi);
    let at = quantile.findIndex((q) => q >= mid);
    if (at < 0) at = v.length;
    at = Math.max(0, Math.min(v.length - 1, at));
    band = band.map((_, k) => k === at);
  }
  const logs = [], bw = [];
  band.forEach((inBand, k) => {
    if (inBand) {
      logs.push(logExact(v[k]) * w[k]);
      bw.push(w[k]);
    }
  });
  return expExact(pairwiseSum(logs) / pairwiseSum(bw));
}

function select(a, keep) {
  return a.filter((_, k) => keep[k]);
}

/** preprocess._typical_height (0.25, 3.0, 2.5, 0.4: its shape limits for glyphs, delimiters, outliers;
 * capped: no component weighs more than S.vote_cap of the ink). */
function typicalHeight(heights, widths, mass, S, capped = false) {
  const glyph = heights.map((h, k) => h >= 0.25 * widths[k] && h > 0 && mass[k] > 0);
  heights = select(heights, glyph);
  widths = select(widths, glyph);
  mass = select(mass, glyph);
  if (heights.length === 0) return null;
  const med = median(heights);
  const delimiter = heights.map((h, k) => h >= 3.0 * widths[k] && h > 2.5 * med);
  if (!delimiter.every(Boolean)) {
    const rest = delimiter.map((d) => !d);
    heights = select(heights, rest);
    mass = select(mass, rest);
  }
  if (capped) {
    const cap = S.vote_cap * pairwiseSum(Float64Array.from(mass));
    mass = mass.map((m) => Math.min(m, cap));
  }
  const ref = massBandMean(heights, mass, 0.5, 0.5);
  const typical = heights.map((h) => h > 0.4 * ref && h < 2.5 * ref);
  return massBandMean(select(heights, typical), select(mass, typical), S.height_band[0], S.height_band[1]);
}

/** preprocess._group_max_sum: per component, the sum over its distinct rows (or columns) of the row's max. */
function groupMaxSum(keys, values, groups, n) {
  const best = Array.from({ length: n }, () => new Map());
  for (let i = 0; i < keys.length; i++) {
    const m = best[groups[i]];
    const prev = m.get(keys[i]);
    if (prev === undefined || values[i] > prev) m.set(keys[i], values[i]);
  }
  return best.map((m) => {
    let s = 0;
    for (const key of [...m.keys()].sort((a, b) => a - b)) s += m.get(key);
    return s;
  });
}

/** preprocess.component_sizes (170: the mask level; 0.1: darkness below which a pixel is background). */
function componentSizes(gray) {
  const { width, height, data } = gray;
  const dark = Float32Array.from(data, (v) => {
    const d = f32(f32(255 - v) / 255);
    return d < f32(0.1) ? 0 : d;
  });
  const { n, labels } = connectedComponents(threshold(gray, 170), width, height);
  if (n <= 1) return [[], [], []];
  const grown = dilate3(labels, width, height);
  const ys = [], xs = [], comp = [], val = [];
  for (let i = 0; i < data.length; i++) {
    const lab = labels[i] > 0 ? labels[i] : grown[i];
    if (lab > 0 && dark[i] > 0) {
      ys.push(Math.floor(i / width));
      xs.push(i % width);
      comp.push(lab);
      val.push(dark[i]);
    }
  }
  const peak = new Float64Array(n), mass = new Float64Array(n);
  comp.forEach((c, i) => {
    peak[c] = Math.max(peak[c], val[i]);
    mass[c] += val[i];
  });
  const rel = val.map((v, i) => Math.min(1, v / peak[comp[i]]));
  const masses = Array.from(mass.subarray(1));
  const limit = 0.02 * median(masses);
  const real = masses.map((m) => m >= limit);
  const heights = groupMaxSum(ys, rel, comp, n).slice(1), widths = groupMaxSum(xs, rel, comp, n).slice(1);
  return [select(heights, real), select(widths, real), select(masses, real)];
}

function softGlyphHeight(gray, S) {
  const [heights, widths, mass] = componentSizes(gray);
  return typicalHeight(heights, widths, mass, S);
}

/** preprocess._stroke_glyph_height: binarized component heights less the typical stroke width
 * (capped: the "stroke_capped" estimator). */
function strokeGlyphHeight(gray, S, capped = false) {
  const { n, stats } = connectedComponents(threshold(gray, S.ink_level), gray.width, gray.height);
  if (n <= 1) return null;
  const rough = massBandMean(stats.slice(1).map((s) => s[HEIGHT]), stats.slice(1).map((s) => s[AREA]), 0.5, 0.5);
  let up = Math.min(S.stroke_max_upsample, Math.max(1.0, S.stroke_work_height / rough),
    Math.sqrt(S.max_analysis_pixels / (gray.width * gray.height)));
  if (up > 1.0) gray = resizeCubic(gray, 0, 0, up, S.cubic_resize);
  else up = 1.0;
  const ink = threshold(gray, S.ink_level);
  const found = connectedComponents(ink, gray.width, gray.height);
  if (found.n <= 1) return null;
  // A stroke of width w and length L has area w*L and 2L boundary pixels: w = 2 * area / boundary.
  const inner = erode3(ink, gray.width, gray.height);
  const boundary = new Float64Array(found.n);
  for (let i = 0; i < ink.length; i++) if (ink[i] && !inner[i]) boundary[found.labels[i]]++;
  const comps = found.stats.slice(1);
  const area = comps.map((s) => s[AREA]);
  const limit = 0.02 * median(area);
  const real = area.map((a) => a >= limit);
  const realArea = select(area, real);
  const realBoundary = select(Array.from(boundary.subarray(1)), real);
  const widthsOfStrokes = realArea.map((a, k) => (2.0 * a) / Math.max(realBoundary[k], 1.0));
  const stroke = massBandMean(widthsOfStrokes, realArea, 0.5, 0.5);
  const realComps = select(comps, real);
  const heights = realComps.map((s) => s[HEIGHT] - stroke), widths = realComps.map((s) => s[WIDTH]);
  const ok = heights.map((h) => h > 0);
  const typical = typicalHeight(select(heights, ok), select(widths, ok), select(realArea, ok), S, capped);
  return typical === null ? null : typical / (up * S.stroke_calibration);
}

/** preprocess.estimate_glyph_height (images above max_analysis_pixels are measured reduced). */
export function estimateGlyphHeight(gray, method, S) {
  let factor = 1;
  const size = gray.width * gray.height;
  if (size > S.max_analysis_pixels) {
    factor = Math.ceil(Math.sqrt(size / S.max_analysis_pixels));
    gray = resizeArea(gray, Math.max(1, Math.floor(gray.width / factor)), Math.max(1, Math.floor(gray.height / factor)));
  }
  if (!["soft", "stroke", "stroke_capped"].includes(method)) throw new ImageError(`unknown glyph estimator ${method}`);
  const height = method === "soft" ? softGlyphHeight(gray, S) : strokeGlyphHeight(gray, S, method === "stroke_capped");
  return height === null ? null : factor * height;
}

// -- model input (preprocess.prepare, preprocess.to_batch) -----------------------------------------------

function resize(gray, scale, S) {
  const { width: w, height: h } = gray;
  const dw = Math.max(1, pyRound(w * scale)), dh = Math.max(1, pyRound(h * scale));
  if (dw === w && dh === h) return gray;
  return scale < 1.0 ? resizeArea(gray, dw, dh) : resizeCubic(gray, dw, dh, null, S.cubic_resize);
}

/**
 * Model input for a decoded image: {width, height, data} uint8, ink at the top-left MARGIN px from
 * the edges, padded with white to whole patches.  ``settings`` is reader.json.
 */
export function prepare(img, settings) {
  const S = settings.preprocess, M = S.margin, patch = settings.model.patch_size;
  const maxH = settings.model.max_height - (settings.model.max_height % patch);
  const maxW = settings.model.max_width - (settings.model.max_width % patch);
  let content = inkContent(toGray(img), S);
  const { width: w, height: h } = content;
  let scale = null;
  const glyph = estimateGlyphHeight(content, settings.glyph_estimator, S);
  if (glyph !== null) scale = settings.target_glyph_height / glyph;
  if (scale === null) scale = Math.max(1.0, patch / h);
  scale = Math.min(scale, S.max_upscale, (maxH - 2 * M) / h, (maxW - 2 * M) / w);
  content = resize(content, scale, S);
  const outH = Math.min(maxH, Math.ceil((content.height + 2 * M) / patch) * patch);
  const outW = Math.min(maxW, Math.ceil((content.width + 2 * M) / patch) * patch);
  const out = new Uint8Array(outH * outW).fill(255);
  const ch = Math.min(content.height, outH - M), cw = Math.min(content.width, outW - M);
  for (let y = 0; y < ch; y++) {
    out.set(content.data.subarray(y * content.width, y * content.width + cw), (M + y) * outW + M);
  }
  return image(outW, outH, out);
}

/** preprocess.to_batch for one image: float32 (x / 255 - MEAN) / STD, shape [1, 1, H, W]. */
export function toBatch(prepared, settings) {
  const mean = f32(settings.preprocess.mean), std = f32(settings.preprocess.std);
  return Float32Array.from(prepared.data, (v) => f32(f32(f32(v) / 255) - mean) / std);
}
