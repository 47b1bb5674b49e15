// The pix2tex page: an image in (paste, drop or pick), its LaTeX out, and that LaTeX rendered back
// by the server's TeX so the reader sees at a glance whether it is right.  No other host is asked.

import { $, onCopy, onImage, setStatus } from "./input.js";

const state = { inputUrl: null, previewUrl: null, renderTimer: null, renderSeq: 0 };

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

async function readImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("That is not an image.", true);
    return;
  }
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  $("input").src = state.inputUrl;
  $("input").hidden = false;
  $("hint").hidden = true;
  setStatus("Reading…");
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/predict", { method: "POST", body: form });
  } catch (err) {
    setStatus(`The server did not answer (${err.message}).`, true);
    return;
  }
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  const reading = (await response.json()).results[0];
  if (reading.error) {
    setStatus(reading.error, true);
    return;
  }
  $("latex").value = reading.latex;
  $("copy").disabled = false;
  const perToken = Math.exp(reading.confidence);
  $("meta").textContent = `confidence ${(100 * perToken).toFixed(0)}% per token`;
  setStatus(`Read in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
  renderPreview();
}

async function renderPreview() {
  const latex = $("latex").value.trim();
  const seq = ++state.renderSeq; // a slow answer to an old edit must not replace a newer one
  if (!latex) {
    $("preview").hidden = true;
    $("preview-error").hidden = true;
    return;
  }
  let response;
  try {
    response = await fetch("/v1/render", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ latex }),
    });
  } catch (err) {
    response = null;
  }
  if (seq !== state.renderSeq) return;
  if (!response || !response.ok) {
    $("preview").hidden = true;
    $("preview-error").textContent = response ? await errorText(response) : "The server did not answer.";
    $("preview-error").hidden = false;
    return;
  }
  const blob = await response.blob();
  if (seq !== state.renderSeq) return;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(blob);
  $("preview").src = state.previewUrl;
  $("preview").dataset.latex = latex;
  $("preview").hidden = false;
  $("preview-error").hidden = true;
}

$("latex").addEventListener("input", () => {
  $("copy").disabled = !$("latex").value;
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(renderPreview, 350);
});

onCopy();
onImage(readImage);

// With `pix2tex serve --web`, the same reading runs in the browser at /local/: offer it.
fetch("/health").then((response) => (response.ok ? response.json() : null)).then((health) => {
  if (!health || !health.web) return;
  $("local-link").href = health.web; // linked only where the server mounts the reader
  $("local").hidden = false;
}, () => {});
