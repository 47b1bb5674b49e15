"""The in-browser reader in Debian's headless Chromium, beside the Python ONNX engine.

    python -m benchmarks.web [--images 30] [--threads 2] [--json]

Starts ``pix2tex serve --web`` (the in-browser reader exported for the bundled model at
``/local/``, served cross-origin isolated so onnxruntime-web may run wasm threads), opens the page
in headless Chromium, and reads the first ``--images`` im2latex_sample images in the page, one at a
time, through ``window.pix2tex.read``; the same images are read by ``LatexOCR(engine="onnx")`` in
this process.  One JSON line: page load to ready (s), seconds per image in the page and in Python
(medians), how many readings are the same, and any request that went to another host (none is
allowed).

:func:`chromium` and :func:`read_in_page` are what the browser tests drive the page with.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "images" / "im2latex_sample"
WAIT_S = 300  # guards against a hang only


@contextmanager
def chromium(window: str = "1200,820") -> Iterator:
    """A selenium driver of Debian's headless Chromium (chromium + chromium-driver; never downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (binary and driver_path):
        raise RuntimeError("headless Chromium needs Debian's chromium and chromium-driver (make install)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary  # given explicitly: selenium must not look for (or download) a browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={window}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until_ready(driver, url: str) -> float:
    """Load the in-browser reader at ``url`` and wait for its model; seconds from navigation start."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    state = WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: d.execute_script("const s = document.documentElement.dataset.state;"
                                   "return s === 'ready' || s === 'error' ? s : null;"),
        message="the page never got ready")
    if state == "error":
        raise RuntimeError(f"the page could not load its model: {driver.find_element('id', 'status').text}")
    return driver.execute_script("return performance.now() / 1000;")


_READ = """
const [name, b64, done] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
window.pix2tex.read(new File([bytes], name, {type: "image/png"})).then(
  (r) => done({latex: r.latex, ids: r.ids, confidence: r.confidence, seconds: r.seconds}),
  (err) => done({error: err.message}));
"""


def read_in_page(driver, paths: Sequence[Path]) -> list[dict]:
    """Read each image in the loaded page (window.pix2tex.read), one at a time: {latex, ids,
    confidence, seconds} or {error}."""
    return [driver.execute_async_script(_READ, p.name, base64.b64encode(p.read_bytes()).decode()) for p in paths]


def foreign_requests(driver, origin: str) -> list[str]:
    """Every URL the page fetched from anywhere but ``origin`` (its resource timing entries)."""
    urls = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)"
                                 ".concat([location.href]);")
    return [u for u in urls if f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" != origin]


def sample_images(n: int) -> list[Path]:
    """The first ``n`` im2latex_sample images, in labels.tsv's order."""
    lines = [line for line in (SAMPLE / "labels.tsv").read_text(encoding="utf-8").splitlines() if line]
    return [SAMPLE / line.split("\t", 1)[0] for line in lines[:n]]


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.serve import Server
    from pix2tex.inference import LatexOCR

    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30, help="im2latex_sample images to read")
    parser.add_argument("--threads", type=int, default=2, help="wasm threads in the page, and onnxruntime's in Python")
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args(argv)
    paths = sample_images(args.images)
    ocr = LatexOCR(engine="onnx", threads=args.threads)
    python_s, python = [], []
    for path in paths:
        start = time.perf_counter()
        python.append(ocr(path))
        python_s.append(time.perf_counter() - start)
    with Server("--web") as server, chromium() as driver:
        ready_s = wait_until_ready(driver, f"{server.url}/local/?threads={args.threads}")
        isolated = driver.execute_script("return crossOriginIsolated;")
        page = read_in_page(driver, paths)
        foreign = foreign_requests(driver, server.url)
    same = sum(r.get("latex") == p for r, p in zip(page, python, strict=True))
    record = {"benchmark": "web", "images": len(paths), "threads": args.threads, "cross_origin_isolated": isolated,
              "page_ready_s": round(ready_s, 2),
              "page_s_per_image": round(statistics.median(r.get("seconds", float("nan")) for r in page), 3),
              "python_onnx_s_per_image": round(statistics.median(python_s), 3),
              "same_latex": same, "errors": sum("error" in r for r in page), "foreign_requests": foreign}
    print(json.dumps(record) if args.json else "\n".join(f"{k}: {v}" for k, v in record.items()))
    return 0 if not foreign else 1


if __name__ == "__main__":
    sys.exit(main())
