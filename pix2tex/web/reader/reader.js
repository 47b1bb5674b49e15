// The in-browser reader: the exported ONNX graphs in onnxruntime-web (wasm), fed by preprocess.js,
// decoded by decode.js, detokenized by latex.js.  Everything it loads comes from the folder it was
// exported to (reader.json, model/, ort/); an image never leaves the page.
//
// The graphs are pix2tex/onnx_engine.py's: encoder (images -> memory), cross_cache (memory -> the
// cross-attention keys/values) and decoder (one cached step: tokens + past_{j}_key/value ->
// logits + present_{j}_key/value for the self-attention layers).  Their inputs and outputs are
// float32 and int64 whatever the initializers are stored as.

import * as ort from "./ort/ort.wasm.min.mjs";
import { generate } from "./decode.js";
import { loadImage } from "./image.js";
import { TokenDecoder } from "./latex.js";
import { ImageError, prepare, toBatch } from "./preprocess.js";

export const FORMAT = "pix2tex-web";
export const VERSION = 1;

const now = () => performance.now() / 1000;

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return response;
}

/** Intra-op threads: wasm threads need SharedArrayBuffer, which only a cross-origin isolated page has. */
export function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

export class Reader {
  constructor(settings, sessions, tokenizer, threads) {
    this.settings = settings;
    this.sessions = sessions;
    this.tokenizer = tokenizer;
    this.threads = threads;
    const layers = settings.onnx.layers;
    this.crossNames = layers.flatMap((kind, j) => (kind === "cross" ? [`past_${j}_key`, `past_${j}_value`] : []));
    this.selfLayers = layers.flatMap((kind, j) => (kind === "self" ? [j] : []));
  }

  /** Load reader.json, the tokenizer and the three graphs from ``base`` (the export's URL). */
  static async load(base, { threads = defaultThreads() } = {}) {
    const root = new URL(base, location.href);
    const settings = await (await fetchOk(new URL("reader.json", root))).json();
    if (settings.format !== FORMAT || settings.version !== VERSION) {
      throw new Error(`reader.json: not a ${FORMAT} version ${VERSION} export (export it again)`);
    }
    ort.env.wasm.wasmPaths = new URL("ort/", root).href;
    ort.env.wasm.numThreads = threads;
    ort.env.logLevel = "error";
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    const sessions = {};
    for (const [key, file] of Object.entries(settings.onnx.graphs)) { // one at a time: peak memory stays low
      const bytes = new Uint8Array(await (await fetchOk(new URL(file, root))).arrayBuffer());
      sessions[key] = await ort.InferenceSession.create(bytes, options);
    }
    const tokenizerJson = await (await fetchOk(new URL(settings.tokenizer, root))).json();
    return new Reader(settings, sessions, new TokenDecoder(tokenizerJson, settings.tokens), threads);
  }

  /** The model input of an image file's bytes (reader.json's preprocessing). */
  async prepare(bytes) {
    return prepare(await loadImage(bytes, this.settings.preprocess), this.settings);
  }

  /**
   * Read one image file: {latex, ids, confidence, seconds, prepareSeconds, modelSeconds, input}.
   * An unreadable image rejects with an ImageError whose message is "<name>: <reason>".
   */
  async read(bytes, name = "<image>") {
    const start = now();
    let input;
    try {
      input = await this.prepare(bytes);
    } catch (err) {
      if (err instanceof ImageError) throw new ImageError(`${name}: ${err.message}`);
      throw err;
    }
    const prepared = now();
    const { ids, confidence } = await this.decode(input);
    const done = now();
    return {
      latex: this.tokenizer.decodeLatex(ids, this.settings.latex.max_group_depth), ids, confidence,
      seconds: done - start, prepareSeconds: prepared - start, modelSeconds: done - prepared,
      input: { width: input.width, height: input.height, checksum: checksum(input.data) },
    };
  }

  async decode(input) {
    const { encoder, cross_cache: crossCache, decoder } = this.sessions;
    const images = new ort.Tensor("float32", toBatch(input, this.settings), [1, 1, input.height, input.width]);
    const { memory } = await encoder.run({ images });
    const cross = await crossCache.run({ memory });
    const feeds = {};
    for (const name of this.crossNames) feeds[name] = cross[name];
    this.settings.onnx.self_cache_shapes.forEach(([[kh, kd], [vh, vd]], k) => {
      const j = this.selfLayers[k];
      feeds[`past_${j}_key`] = new ort.Tensor("float32", new Float32Array(0), [1, kh, 0, kd]);
      feeds[`past_${j}_value`] = new ort.Tensor("float32", new Float32Array(0), [1, vh, 0, vd]);
    });
    const step = async (token) => {
      feeds.tokens = new ort.Tensor("int64", BigInt64Array.of(BigInt(token)), [1, 1]);
      const out = await decoder.run(feeds);
      for (const j of this.selfLayers) { // the self-attention caches grow by one row a step
        feeds[`past_${j}_key`] = out[`present_${j}_key`];
        feeds[`past_${j}_value`] = out[`present_${j}_value`];
      }
      return out.logits.data;
    };
    return generate(step, this.settings);
  }
}

/** FNV-1a of the model input's bytes: tests compare it with the Python input's. */
export function checksum(bytes) {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}
