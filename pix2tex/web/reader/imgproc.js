// The array arithmetic pix2tex/preprocess.py gets from NumPy and OpenCV, ported so that the page's
// model input is the Python one byte for byte: float32 steps are rounded with Math.fround where
// NumPy works in float32, sums follow NumPy's pairwise order, and resizing and labelling follow
// OpenCV's own order of operations (cv2.resize's fixed-point cubic rows, its INTER_AREA tables,
// the block-scan order of cv2.connectedComponentsWithStats' labels).  Images are
// {width, height, data} with data a Uint8Array in row-major order.

const f32 = Math.fround;

export function image(width, height, data = new Uint8Array(width * height)) {
  return { width, height, data };
}

// -- NumPy ---------------------------------------------------------------------------------------

/** np.rint: round half to even. */
export function rint(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Python's round() of a float to an integer (half to even), as in preprocess._resize. */
export const pyRound = rint;

/** np.sum of a float64 array: NumPy's pairwise summation (blocks of 128, eight accumulators). */
export function pairwiseSum(a, lo = 0, n = a.length - lo) {
  if (n < 8) {
    let s = 0;
    for (let i = 0; i < n; i++) s += a[lo + i];
    return s;
  }
  if (n <= 128) {
    const r = [a[lo], a[lo + 1], a[lo + 2], a[lo + 3], a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]];
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[lo + i + j];
    let s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) s += a[lo + i];
    return s;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return pairwiseSum(a, lo, half) + pairwiseSum(a, lo + half, n - half);
}

function sortedCopy(values) {
  return Float64Array.from(values).sort();
}

/** np.median (float64 result; the mean of the two middle values for an even count). */
export function median(values) {
  const s = sortedCopy(values);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** np.median of a float32 array: the two middle values are averaged in float32. */
export function medianF32(values) {
  const s = sortedCopy(values);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : f32(f32(s[n / 2 - 1] + s[n / 2]) / 2);
}

/** np.percentile(values, q) of a float32 array (method "linear"): NumPy's _lerp in float32. */
export function percentileF32(values, q) {
  const s = sortedCopy(values);
  const n = s.length;
  const quantile = q / 100;
  const virtual = n * quantile + (1 - quantile) - 1;
  const lo = Math.max(0, Math.min(n - 1, Math.floor(virtual)));
  const hi = Math.min(lo + 1, n - 1);
  const gamma = virtual - lo;
  const diff = f32(s[hi] - s[lo]);
  return gamma >= 0.5 ? f32(s[hi] - f32(diff * f32(1 - gamma))) : f32(s[lo] + f32(diff * f32(gamma)));
}

// Correctly rounded log and exp.  preprocess._mass_band_mean takes the geometric mean of glyph
// heights, and its results feed exact comparisons (a height of exactly three stroke widths is a
// delimiter), so a last-bit difference matters: V8's Math.log is off by one unit in the last place
// where the C library's (Python's) is exact (Math.log(3)).  These work in binary fixed point with
// FRACTION_BITS bits and round the result to the nearest double.
const FRACTION_BITS = 160n;
const FIXED_ONE = 1n << FRACTION_BITS;

function fixedFromDouble(x) {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const bits = view.getBigUint64(0);
  const exponent = Number((bits >> 52n) & 0x7ffn);
  let mantissa = bits & ((1n << 52n) - 1n);
  if (exponent) mantissa |= 1n << 52n;
  const shift = BigInt(Math.max(exponent, 1) - 1075) + FRACTION_BITS; // x = mantissa * 2^(e - 1075)
  const fixed = shift >= 0n ? mantissa << shift : mantissa >> -shift;
  return x < 0 ? -fixed : fixed;
}

function doubleFromFixed(fixed, extraShift = 0n) { // fixed * 2^extraShift / FIXED_ONE, rounded to nearest
  const negative = fixed < 0n;
  let n = negative ? -fixed : fixed;
  const length = BigInt(n.toString(2).length);
  let shift = length - 53n;
  if (shift > 0n) {
    const rest = n & ((1n << shift) - 1n), half = 1n << (shift - 1n);
    n >>= shift;
    if (rest > half || (rest === half && (n & 1n))) n += 1n;
  } else {
    shift = 0n;
  }
  const value = Number(n) * 2 ** Number(shift + extraShift - FRACTION_BITS);
  return negative ? -value : value;
}

function atanhSeries(z) { // atanh(z) for fixed-point |z| <= 1/3
  if (z < 0n) return -atanhSeries(-z); // (shifts of negative BigInts round down and never reach 0)
  const z2 = (z * z) >> FRACTION_BITS;
  let sum = 0n, power = z;
  for (let k = 1n; power !== 0n; k += 2n) {
    sum += power / k;
    power = (power * z2) >> FRACTION_BITS;
  }
  return sum;
}

const FIXED_LN2 = 2n * atanhSeries(FIXED_ONE / 3n);

/** log(x), correctly rounded (x > 0 and finite). */
export function logExact(x) {
  let k = Math.floor(Math.log2(x));
  let f = fixedFromDouble(x / 2 ** k); // in [1, 2) up to the exactness of log2's floor
  while (f >= 2n * FIXED_ONE) [f, k] = [f / 2n, k + 1];
  while (f < FIXED_ONE) [f, k] = [f * 2n, k - 1];
  if (f * f > 2n * FIXED_ONE * FIXED_ONE) [f, k] = [f / 2n, k + 1]; // f in [1/sqrt2, sqrt2]
  const z = ((f - FIXED_ONE) << FRACTION_BITS) / (f + FIXED_ONE);
  return doubleFromFixed(BigInt(k) * FIXED_LN2 + 2n * atanhSeries(z));
}

/** exp(y), correctly rounded (for the moderate y of glyph statistics). */
export function expExact(y) {
  const fixed = fixedFromDouble(y);
  const k = (fixed + FIXED_LN2 / 2n) / FIXED_LN2 - (fixed + FIXED_LN2 / 2n < 0n ? 1n : 0n);
  const r = fixed - k * FIXED_LN2;
  let sum = 0n, term = FIXED_ONE;
  for (let n = 1n; term !== 0n; n++) {
    sum += term;
    term = (term * r) / (n << FRACTION_BITS);
  }
  return doubleFromFixed(sum, k);
}

/** Indices that sort ``values`` ascending, ties in their original order (a stable argsort). */
export function argsortStable(values) {
  const order = Array.from(values, (_, k) => k);
  order.sort((a, b) => values[a] - values[b] || a - b);
  return order;
}

// -- OpenCV: connected components -------------------------------------------------------------------

/**
 * cv2.connectedComponentsWithStats(mask, connectivity=8): label count, labels (Int32Array) and
 * per-label [left, top, width, height, area] (label 0 is the background).
 *
 * OpenCV labels 2x2 blocks in raster order (block rows of two pixel rows) and numbers each
 * component by the first block it touches; all ink pixels of a 2x2 block are 8-connected, so
 * flood-filling from the pixels of each block in that order gives the same numbers.
 */
export function connectedComponents(mask, width, height) {
  const labels = new Int32Array(width * height);
  const stats = [[0, 0, width, height, 0]];
  const stack = [];
  let next = 1;
  for (let by = 0; by < height; by += 2) {
    for (let bx = 0; bx < width; bx += 2) {
      for (let dy = 0; dy < 2 && by + dy < height; dy++) {
        for (let dx = 0; dx < 2 && bx + dx < width; dx++) {
          const start = (by + dy) * width + bx + dx;
          if (!mask[start] || labels[start]) continue;
          stats.push(fill(mask, labels, width, height, start, next++, stack));
        }
      }
    }
  }
  let background = 0;
  for (let i = 0; i < mask.length; i++) if (!mask[i]) background++;
  stats[0][4] = background;
  return { n: next, labels, stats };
}

function fill(mask, labels, width, height, start, label, stack) {
  let x0 = width, y0 = height, x1 = -1, y1 = -1, area = 0;
  labels[start] = label;
  stack.push(start);
  while (stack.length) {
    const p = stack.pop();
    const x = p % width, y = (p - x) / width;
    area++;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
    for (let ny = Math.max(0, y - 1); ny <= Math.min(height - 1, y + 1); ny++) {
      for (let nx = Math.max(0, x - 1); nx <= Math.min(width - 1, x + 1); nx++) {
        const q = ny * width + nx;
        if (mask[q] && !labels[q]) {
          labels[q] = label;
          stack.push(q);
        }
      }
    }
  }
  return [x0, y0, x1 - x0 + 1, y1 - y0 + 1, area];
}

export const LEFT = 0, TOP = 1, WIDTH = 2, HEIGHT = 3, AREA = 4;

// -- OpenCV: 3x3 morphology ----------------------------------------------------------------------

/** cv2.dilate(a, ones((3, 3))) of a numeric array: outside pixels never count (OpenCV's default border). */
export function dilate3(a, width, height) {
  const out = new Float64Array(a.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let m = -Infinity;
      for (let ny = Math.max(0, y - 1); ny <= Math.min(height - 1, y + 1); ny++)
        for (let nx = Math.max(0, x - 1); nx <= Math.min(width - 1, x + 1); nx++) m = Math.max(m, a[ny * width + nx]);
      out[y * width + x] = m;
    }
  }
  return out;
}

/** cv2.erode(a, ones((3, 3)), borderType=BORDER_CONSTANT, borderValue=0). */
export function erode3(a, width, height) {
  const out = new Uint8Array(a.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let m = y === 0 || x === 0 || y === height - 1 || x === width - 1 ? 0 : 255;
      for (let ny = Math.max(0, y - 1); ny <= Math.min(height - 1, y + 1) && m; ny++)
        for (let nx = Math.max(0, x - 1); nx <= Math.min(width - 1, x + 1); nx++) m = Math.min(m, a[ny * width + nx]);
      out[y * width + x] = m;
    }
  }
  return out;
}

// -- OpenCV: resize (uint8, one channel) -------------------------------------------------------------

const COEF_BITS = 11;
const COEF_SCALE = 1 << COEF_BITS;
const CUBIC_A = f32(-0.75);
// cv2.resize's vertical cubic pass runs in float32 SIMD lanes over whole groups of this many output
// pixels and in fixed point over the rest of each row (OpenCV's 128-bit baseline: 8 x int16).
const CUBIC_VECTOR_LANES = 8;

function cubicCoeffs(x) {
  const A = CUBIC_A;
  const x1 = f32(x + 1), xm = f32(1 - x);
  const c0 = f32(f32(f32(f32(f32(f32(A * x1) - f32(5 * A)) * x1) + f32(8 * A)) * x1) - f32(4 * A));
  const c1 = f32(f32(f32(f32(f32(f32(A + 2) * x) - f32(A + 3)) * x) * x) + 1);
  const c2 = f32(f32(f32(f32(f32(f32(A + 2) * xm) - f32(A + 3)) * xm) * xm) + 1);
  const c3 = f32(f32(f32(1 - c0) - c1) - c2);
  return [c0, c1, c2, c3].map((c) => saturateShort(rint(f32(c * COEF_SCALE))));
}

function saturateShort(v) {
  return Math.max(-32768, Math.min(32767, v));
}

function saturateU8(v) {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Source index and fixed-point weights of each output position along one axis. */
function cubicTable(dstLen, srcLen, scale) {
  const offsets = new Int32Array(dstLen);
  const weights = [];
  for (let d = 0; d < dstLen; d++) {
    let fx = f32((d + 0.5) * scale - 0.5);
    const sx = Math.floor(fx);
    fx = f32(fx - sx);
    offsets[d] = sx;
    weights.push(cubicCoeffs(fx));
  }
  return { offsets, weights, srcLen };
}

const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);

/**
 * cv2.resize(src, (dw, dh), interpolation=INTER_CUBIC) on uint8, or with ``fx`` given (dsize None,
 * fx = fy), the size OpenCV derives from it and the scale taken from fx itself, as OpenCV does.
 *
 * ``method`` is the implementation the Python side's cv2 runs (reader.json's cubic_resize):
 * "opencv", OpenCV's own fixed-point kernel, reproduced exactly; or "ipp", Intel IPP's, which
 * opencv-python's x86-64 wheels call instead.  IPP's exact arithmetic is not published; a separable
 * float64 filter with the same Keys coefficients (A = -0.75) and round-half-even agrees with it
 * except on pixels within 1e-5 of a half level (4 of 717,118 on im2latex renders and noise).
 */
export function resizeCubic(src, dw, dh, fx = null, method = "opencv") {
  const { width: sw, height: sh } = src;
  if (fx !== null) {
    dw = rint(sw * fx);
    dh = rint(sh * fx);
  }
  const invX = fx !== null ? fx : dw / sw, invY = fx !== null ? fx : dh / sh;
  if (method === "ipp") return resizeCubicFloat(src, dw, dh, 1 / invX, 1 / invY);
  if (method !== "opencv") throw new Error(`unknown cubic resize method ${method}`);
  return resizeCubicFixed(src, dw, dh, 1 / invX, 1 / invY);
}

function resizeCubicFixed(src, dw, dh, scaleX, scaleY) {
  const { width: sw, height: sh, data } = src;
  const xt = cubicTable(dw, sw, scaleX), yt = cubicTable(dh, sh, scaleY);
  // Horizontal pass: one int row per source row that some output row needs (computed on demand).
  const rows = new Map();
  const hrow = (sy) => {
    let row = rows.get(sy);
    if (row) return row;
    row = new Int32Array(dw);
    const base = sy * sw;
    for (let d = 0; d < dw; d++) {
      const sx = xt.offsets[d] - 1, w = xt.weights[d];
      let v = 0;
      for (let k = 0; k < 4; k++) v += data[base + clamp(sx + k, 0, sw - 1)] * w[k];
      row[d] = v;
    }
    rows.set(sy, row);
    return row;
  };
  const out = new Uint8Array(dw * dh);
  const vectorEnd = dw - (dw % CUBIC_VECTOR_LANES);
  const scale = f32(1 / (COEF_SCALE * COEF_SCALE));
  for (let d = 0; d < dh; d++) {
    const sy = yt.offsets[d] - 1, b = yt.weights[d];
    const S = [0, 1, 2, 3].map((k) => hrow(clamp(sy + k, 0, sh - 1)));
    const bf = b.map((v) => f32(v * scale));
    const o = d * dw;
    for (let x = 0; x < vectorEnd; x++) {
      // v_muladd(S0, b0, v_muladd(S1, b1, v_muladd(S2, b2, S3 * b3))) in float32, rounded to even
      let t = f32(S[3][x] * bf[3]);
      t = f32(f32(S[2][x] * bf[2]) + t);
      t = f32(f32(S[1][x] * bf[1]) + t);
      t = f32(f32(S[0][x] * bf[0]) + t);
      out[o + x] = saturateU8(saturateShort(rint(t)));
    }
    for (let x = vectorEnd; x < dw; x++) { // the scalar tail: FixedPtCast, (v + 2^21) >> 22
      const v = S[0][x] * b[0] + S[1][x] * b[1] + S[2][x] * b[2] + S[3][x] * b[3];
      out[o + x] = saturateU8(Math.floor((v + (1 << (2 * COEF_BITS - 1))) / (1 << (2 * COEF_BITS))));
    }
  }
  return image(dw, dh, out);
}

function keysCoeffs(x) {
  const A = -0.75;
  return [((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A, ((A + 2) * x - (A + 3)) * x * x + 1,
    ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1, 0].map((c, k, all) => (k < 3 ? c : 1 - all[0] - all[1] - all[2]));
}

function floatTable(dstLen, scale) {
  return Array.from({ length: dstLen }, (_, d) => {
    const fx = (d + 0.5) * scale - 0.5, sx = Math.floor(fx);
    return { sx: sx - 1, w: keysCoeffs(fx - sx) };
  });
}

function resizeCubicFloat(src, dw, dh, scaleX, scaleY) {
  const { width: sw, height: sh, data } = src;
  const xt = floatTable(dw, scaleX), yt = floatTable(dh, scaleY);
  const rows = new Float64Array(sh * dw);
  for (let y = 0; y < sh; y++) {
    for (let d = 0; d < dw; d++) {
      const { sx, w } = xt[d];
      let v = 0;
      for (let k = 0; k < 4; k++) v += w[k] * data[y * sw + clamp(sx + k, 0, sw - 1)];
      rows[y * dw + d] = v;
    }
  }
  const out = new Uint8Array(dw * dh);
  for (let d = 0; d < dh; d++) {
    const { sx: sy, w } = yt[d];
    for (let x = 0; x < dw; x++) {
      let v = 0;
      for (let k = 0; k < 4; k++) v += w[k] * rows[clamp(sy + k, 0, sh - 1) * dw + x];
      out[d * dw + x] = saturateU8(rint(v));
    }
  }
  return image(dw, dh, out);
}

/** OpenCV's computeResizeAreaTab: (source index, destination index, weight) triples along one axis. */
function areaTable(srcLen, dstLen, scale) {
  const tab = [];
  for (let dx = 0; dx < dstLen; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, srcLen - fsx1);
    let sx1 = Math.ceil(fsx1), sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, srcLen - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([sx1 - 1, dx, f32((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([sx, dx, f32(1.0 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([sx2, dx, f32(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
  }
  return tab;
}

/** cv2.resize(src, (dw, dh), interpolation=INTER_AREA) for shrinking (both scales >= 1). */
export function resizeArea(src, dw, dh) {
  const { width: sw, height: sh } = src;
  const scaleX = 1 / (dw / sw), scaleY = 1 / (dh / sh);
  const ix = rint(scaleX), iy = rint(scaleY);
  if (Math.abs(scaleX - ix) < Number.EPSILON && Math.abs(scaleY - iy) < Number.EPSILON) {
    return resizeAreaFast(src, dw, dh, ix, iy);
  }
  const xtab = areaTable(sw, dw, scaleX), ytab = areaTable(sh, dh, scaleY);
  const out = new Uint8Array(dw * dh);
  const buf = new Float32Array(dw), sum = new Float32Array(dw);
  let prev = ytab.length ? ytab[0][1] : 0;
  const store = (dy) => {
    for (let x = 0; x < dw; x++) out[dy * dw + x] = saturateU8(rint(sum[x]));
  };
  for (const [sy, dy, beta] of ytab) {
    buf.fill(0);
    const base = sy * sw;
    for (const [sx, dx, alpha] of xtab) buf[dx] = f32(buf[dx] + f32(src.data[base + sx] * alpha));
    if (dy !== prev) {
      store(prev);
      for (let x = 0; x < dw; x++) sum[x] = f32(beta * buf[x]);
      prev = dy;
    } else {
      for (let x = 0; x < dw; x++) sum[x] = f32(sum[x] + f32(beta * buf[x]));
    }
  }
  store(prev);
  return image(dw, dh, out);
}

/** OpenCV's resizeAreaFast_ (whole-number scales): box sums, 2x2 boxes rounded as (sum + 2) >> 2. */
function resizeAreaFast(src, dw, dh, sx, sy) {
  const { width: sw, height: sh, data } = src;
  const out = new Uint8Array(dw * dh);
  const area = sx * sy, inv = f32(1 / area);
  const full = Math.floor(sw / sx);
  for (let dy = 0; dy < dh; dy++) {
    const y0 = dy * sy;
    const w = y0 + sy <= sh ? full : 0;
    for (let dx = 0; dx < dw; dx++) {
      let sum = 0, count = 0;
      for (let y = y0; y < Math.min(y0 + sy, sh); y++)
        for (let x = dx * sx; x < Math.min(dx * sx + sx, sw); x++, count++) sum += data[y * sw + x];
      let v;
      if (dx < w) v = sx === 2 && sy === 2 ? (sum + 2) >> 2 : rint(f32(sum * inv));
      else v = count ? rint(f32(sum / count)) : 0;
      out[dy * dw + dx] = saturateU8(v);
    }
  }
  return image(dw, dh, out);
}
