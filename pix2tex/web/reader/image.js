// Image bytes -> a PIL-like image {mode, width, height, data} for preprocess.toGray.
//
// PNG (screenshots, renders: what formula images mostly are) is decoded here, in the modes and with
// the sample values that PIL gives, so the page reads exactly what Python reads; only the zlib
// inflate is the platform's (DecompressionStream).  Other formats (JPEG, WebP, GIF, BMP) go through
// the browser's own decoder with colour management off; their pixels can differ from PIL's by a
// level here and there (JPEG decoders differ), which the model does not notice.  The limits are
// preprocess.py's: file size, pixel count from the header, reduction of very large images.

import { ImageError } from "./preprocess.js";

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

// -- PNG ----------------------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes, start, end) {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function isPng(bytes) {
  return PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

/** The chunks of a PNG file: IHDR fields, PLTE, tRNS and the concatenated IDAT data. */
function readChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks = { idat: [] };
  let pos = 8;
  while (pos + 12 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const end = pos + 8 + length;
    if (end + 4 > bytes.length) throw new ImageError("truncated or corrupt image data (PNG chunk past the end)");
    if (crc32(bytes, pos + 4, end) !== view.getUint32(end)) throw new ImageError(`broken PNG file (bad CRC in ${type})`);
    const data = bytes.subarray(pos + 8, end);
    if (type === "IHDR") {
      const d = new DataView(data.buffer, data.byteOffset, data.byteLength);
      chunks.ihdr = { width: d.getUint32(0), height: d.getUint32(4), depth: data[8], colour: data[9],
        interlace: data[12] };
    } else if (type === "PLTE") chunks.plte = data;
    else if (type === "tRNS") chunks.trns = data;
    else if (type === "IDAT") chunks.idat.push(data);
    else if (type === "IEND") break;
    pos = end + 4;
  }
  if (!chunks.ihdr) throw new ImageError("not an image (cannot identify format)");
  return chunks;
}

async function inflate(parts) {
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream("deflate"));
  try {
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch {
    throw new ImageError("truncated or corrupt image data (bad PNG compressed data)");
  }
}

const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** Undo the PNG row filters of one (sub)image in place; returns its rows of raw samples. */
function unfilter(raw, offset, width, height, bitsPerPixel) {
  const stride = Math.ceil((width * bitsPerPixel) / 8), bpp = Math.max(1, bitsPerPixel >> 3);
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[offset], line = raw.subarray(offset + 1, offset + 1 + stride);
    if (line.length < stride) throw new ImageError("truncated or corrupt image data (PNG rows missing)");
    const row = out.subarray(y * stride, (y + 1) * stride), up = y ? out.subarray((y - 1) * stride, y * stride) : null;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? row[x - bpp] : 0, b = up ? up[x] : 0, c = up && x >= bpp ? up[x - bpp] : 0;
      let v = line[x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new ImageError(`truncated or corrupt image data (PNG filter ${filter})`);
      row[x] = v & 0xff;
    }
    offset += 1 + stride;
  }
  return { rows: out, stride, next: offset };
}

/** Sample k of a row of packed samples (1, 2, 4, 8 or 16 bits). */
function sample(rows, rowStart, k, depth) {
  if (depth === 8) return rows[rowStart + k];
  if (depth === 16) return (rows[rowStart + 2 * k] << 8) | rows[rowStart + 2 * k + 1];
  const bit = k * depth, byte = rows[rowStart + (bit >> 3)];
  return (byte >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
}

const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];

/** All samples of the image, row-major, channels interleaved (Uint16Array for 16-bit files). */
function samples(raw, { width, height, depth, colour, interlace }) {
  const cn = CHANNELS[colour], bits = cn * depth;
  const out = depth === 16 ? new Uint16Array(width * height * cn) : new Uint8Array(width * height * cn);
  const passes = interlace ? ADAM7 : [[0, 0, 1, 1]];
  let offset = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const w = Math.ceil((width - x0) / dx), h = Math.ceil((height - y0) / dy);
    if (w <= 0 || h <= 0) continue;
    const { rows, stride, next } = unfilter(raw, offset, w, h, bits);
    offset = next;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = ((y0 + y * dy) * width + x0 + x * dx) * cn;
        for (let c = 0; c < cn; c++) out[at + c] = sample(rows, y * stride, x * cn + c, depth);
      }
    }
  }
  return out;
}

/** The PIL image that Image.open gives for a PNG, expanded where to_gray would convert it anyway. */
function pilImage(ihdr, chunks, s) {
  const { width, height, depth, colour } = ihdr, n = width * height;
  const top = (v) => (depth === 16 ? v >> 8 : v); // PIL keeps the high byte of 16-bit colour samples
  if (colour === 0) {
    if (depth === 16) return { mode: "I;16", width, height, data: s };
    if (depth === 1) return { mode: "1", width, height, data: s };
    const scale = 255 / ((1 << depth) - 1); // PIL's L;2 / L;4 unpackers stretch to 0..255
    return { mode: "L", width, height, data: depth === 8 ? s : s.map((v) => v * scale) };
  }
  if (colour === 2) return { mode: "RGB", width, height, data: depth === 16 ? Uint8Array.from(s, top) : s };
  if (colour === 6) return { mode: "RGBA", width, height, data: depth === 16 ? Uint8Array.from(s, top) : s };
  if (colour === 4) { // gray + alpha: to_gray converts LA to RGBA
    const data = new Uint8Array(4 * n);
    for (let i = 0; i < n; i++) {
      data.fill(top(s[2 * i]), 4 * i, 4 * i + 3);
      data[4 * i + 3] = top(s[2 * i + 1]);
    }
    return { mode: "RGBA", width, height, data };
  }
  // Palette: to_gray converts P to RGBA when the file has transparency, else to RGB.
  const plte = chunks.plte || new Uint8Array(0), trns = chunks.trns, cn = trns ? 4 : 3;
  const data = new Uint8Array(cn * n);
  for (let i = 0; i < n; i++) {
    const p = s[i];
    for (let c = 0; c < 3; c++) data[cn * i + c] = plte[3 * p + c] || 0;
    if (trns) data[cn * i + 3] = p < trns.length ? trns[p] : 255;
  }
  return { mode: trns ? "RGBA" : "RGB", width, height, data };
}

async function decodePng(bytes, limits) {
  const chunks = readChunks(bytes);
  const { width, height, depth, colour } = chunks.ihdr;
  if (!(colour in CHANNELS)) throw new ImageError(`corrupt image header (PNG colour type ${colour})`);
  if (width <= 0 || height <= 0) throw new ImageError(`image has no pixels (${width}x${height})`);
  checkPixels(width, height, limits);
  const raw = await inflate(chunks.idat);
  return pilImage(chunks.ihdr, chunks, samples(raw, chunks.ihdr));
}

// -- everything else: the browser's decoder ------------------------------------------------------------

async function decodeWithBrowser(bytes, limits) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]),
      { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" });
  } catch {
    throw new ImageError("not an image (cannot identify format)");
  }
  const { width, height } = bitmap;
  checkPixels(width, height, limits);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const data = new Uint8Array(context.getImageData(0, 0, width, height).data.buffer);
  let opaque = true;
  for (let i = 3; i < data.length; i += 4) if (data[i] < 255) { opaque = false; break; }
  if (!opaque) return { mode: "RGBA", width, height, data };
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 4, j += 3) rgb.set(data.subarray(i, i + 3), j);
  return { mode: "RGB", width, height, data: rgb };
}

// -- limits ---------------------------------------------------------------------------------------------

function checkPixels(width, height, limits) {
  if (width * height > limits.max_pixels) {
    throw new ImageError(`image is ${width}x${height} = ${toPrecision3(width * height / 1e6)} MP, over the ` +
      `${toPrecision3(limits.max_pixels / 1e6)} MP limit`);
  }
}

/** Python's f"{x:.3g}". */
function toPrecision3(x) {
  return String(Number(x.toPrecision(3)));
}

/** preprocess._reduce_to_work_size: images over max_work_pixels shrink by a whole factor (box average). */
function reduceToWorkSize(img, limits) {
  const { width, height, data } = img;
  const factor = Math.max(1, Math.ceil(Math.sqrt((width * height) / limits.max_work_pixels)));
  if (factor === 1) return img;
  const cn = data.length / (width * height);
  const w = Math.ceil(width / factor), h = Math.ceil(height / factor);
  const out = new (data.constructor)(w * h * cn);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < cn; c++) {
        let sum = 0, count = 0;
        for (let yy = y * factor; yy < Math.min(height, (y + 1) * factor); yy++)
          for (let xx = x * factor; xx < Math.min(width, (x + 1) * factor); xx++, count++) sum += data[(yy * width + xx) * cn + c];
        out[(y * w + x) * cn + c] = Math.round(sum / count);
      }
    }
  }
  return { ...img, width: w, height: h, data: out };
}

/**
 * Decode image file bytes (Uint8Array) into a PIL-like image; ImageError (one line, without the
 * file's name) for anything that cannot be read.  ``limits`` are reader.json's preprocess limits.
 */
export async function loadImage(bytes, limits) {
  if (bytes.length === 0) throw new ImageError("empty file");
  if (bytes.length > limits.max_file_bytes) {
    throw new ImageError(`${bytes.length.toLocaleString("en-US")} bytes, over the ` +
      `${limits.max_file_bytes.toLocaleString("en-US")}-byte limit`);
  }
  const img = isPng(bytes) ? await decodePng(bytes, limits) : await decodeWithBrowser(bytes, limits);
  return reduceToWorkSize(img, limits);
}
