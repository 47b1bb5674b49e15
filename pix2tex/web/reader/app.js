// The in-browser page: an image in (paste, drop or pick), its LaTeX out, read by reader.js on this
// page.  The page's state is on <html data-state> ("loading", "ready", "reading", "error") and the
// last reading on <output id="result"> (ids, confidence, input size and checksum), for tests and
// benchmarks; window.pix2tex offers the same reading to scripts (ready, read(file)).

import { $, onCopy, onImage, setStatus } from "./input.js";
import { Reader, defaultThreads } from "./reader.js";

const state = { inputUrl: null };

function setState(name) {
  document.documentElement.dataset.state = name;
}

function threadsWanted() {
  const asked = Number(new URLSearchParams(location.search).get("threads"));
  return Number.isInteger(asked) && asked > 0 ? asked : defaultThreads();
}

const ready = (async () => {
  const started = performance.now();
  const reader = await Reader.load("./", { threads: threadsWanted() });
  const seconds = (performance.now() - started) / 1000;
  $("about").textContent = `onnxruntime-web ${reader.settings.onnxruntime_web || ""} (wasm, ${reader.threads} ` +
    `thread${reader.threads === 1 ? "" : "s"}${globalThis.crossOriginIsolated ? "" : "; serve the page cross-origin " +
    "isolated for more"}); model loaded in ${seconds.toFixed(2)} s.`;
  return reader;
})();

ready.then(() => {
  setState("ready");
  setStatus("Ready.");
}, (err) => {
  setState("error");
  setStatus(`The model could not be loaded: ${err.message}`, true);
});

function show(file) {
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  $("input").src = state.inputUrl;
  $("input").hidden = false;
  $("hint").hidden = true;
}

function record(reading, error) {
  const out = $("result");
  out.dataset.name = reading?.name ?? error?.name ?? "";
  out.dataset.error = error ? error.message : "";
  out.dataset.ids = reading ? reading.ids.join(" ") : "";
  out.dataset.confidence = reading ? String(reading.confidence) : "";
  out.dataset.seconds = reading ? String(reading.seconds) : "";
  out.dataset.input = reading ? `${reading.input.height}x${reading.input.width}:${reading.input.checksum}` : "";
  out.value = reading ? reading.latex : "";
}

/** Read one image file (a File or Blob) on this page; resolves to the reading, rejects with its error. */
async function read(file) {
  const reader = await ready;
  const name = file.name || "pasted image";
  const reading = await reader.read(new Uint8Array(await file.arrayBuffer()), name);
  return { ...reading, name };
}

async function readImage(file) {
  if (!file) return;
  show(file);
  setState("reading");
  setStatus("Reading…");
  let reading;
  try {
    reading = await read(file);
  } catch (err) {
    $("latex").value = "";
    $("copy").disabled = true;
    $("meta").textContent = "";
    record(null, { name: file.name, message: err.message });
    setStatus(err.message, true);
    setState("ready");
    return;
  }
  $("latex").value = reading.latex;
  $("copy").disabled = !reading.latex;
  const perToken = Math.exp(reading.confidence);
  $("meta").textContent = `confidence ${(100 * perToken).toFixed(0)}% per token ` +
    `(mean log-probability ${reading.confidence.toFixed(3)})`;
  record(reading, null);
  setStatus(`Read in ${reading.seconds.toFixed(2)} s (preparing ${reading.prepareSeconds.toFixed(2)} s, ` +
    `model ${reading.modelSeconds.toFixed(2)} s), in this browser.`);
  setState("ready");
}

onCopy();
onImage(readImage);

window.pix2tex = { ready, read };
