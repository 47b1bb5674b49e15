// What both pages share: the server's page (pix2tex/web/app.js, at /static/) and the in-browser
// reader's (pix2tex/web/reader/app.js, exported beside it by `pix2tex export --web`).  Both pages
// have the same elements: #drop (the image pane), #file (the picker), #latex, #copy and #status.

export const $ = (id) => document.getElementById(id);

export function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

/** Call ``readImage(file)`` for an image pasted anywhere on the page, dropped on it or picked. */
export function onImage(readImage) {
  $("file").addEventListener("change", (event) => readImage(event.target.files[0]));
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
    const item = items.find((it) => it.kind === "file" && it.type.startsWith("image/"));
    if (!item) return; // text pasted into the LaTeX box stays text
    event.preventDefault();
    readImage(item.getAsFile());
  });
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  // A drop anywhere reads the image (the browser would otherwise open the file in place of the page).
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    readImage(event.dataTransfer.files[0]);
  });
}

/** The Copy button copies the LaTeX box. */
export function onCopy() {
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("latex").value);
    } catch { // clipboard API refused (plain http on another host): select for Ctrl+C
      $("latex").select();
      document.execCommand("copy");
    }
    setStatus("Copied.");
  });
}
