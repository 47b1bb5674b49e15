"""Memory of a real ``pix2tex serve`` under huge uploads: what a small request can make it hold.

    python -m benchmarks.serve_memory [--clients 4] [--images 16] [--side 5000] [--json]

Each client sends one ``POST /v1/predict`` of ``--images`` PNGs of ``--side`` x ``--side`` pixels
(a real im2latex_sample formula, upscaled 8x, on a white page: about 90 KB each, within the
server's 25 MP and 10 MB limits), all clients at once.  One JSON line: the server's RSS when idle
(after one ordinary reading), its peak (VmHWM) and its RSS a few seconds after the last answer,
the answers' statuses and the wall time.  The server's own settings are its defaults unless
``--server-args`` says otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.serve import REPO, Server, peak_rss_mib, status_mib

SAMPLE = REPO.parent / "shared" / "data" / "images" / "im2latex_sample"
FORMULA = SAMPLE / "images" / "1cbb05a562.png"


def huge_png(side: int, seed_image: Path = FORMULA) -> bytes:
    """A ``side`` x ``side`` gray PNG holding a real formula upscaled 8x (compresses to ~100 KB)."""
    from PIL import Image

    formula = Image.open(seed_image).convert("L")
    formula = formula.resize((formula.width * 8, formula.height * 8))
    page = Image.new("L", (side, side), 255)
    page.paste(formula, (side // 50, side // 2))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def measure(server: Server, *, clients: int, images: int, side: int, settle_s: float = 3.0) -> dict:
    """Idle, peak and settled RSS of ``server`` around ``clients`` requests of ``images`` huge PNGs."""
    ordinary = FORMULA.read_bytes()
    httpx.post(server.url + "/predict/", files={"file": ("warm.png", ordinary, "image/png")}, timeout=300)
    idle = status_mib(server.proc.pid, "VmRSS")
    data = huge_png(side)
    files = [("file", (f"{k}.png", data, "image/png")) for k in range(images)]

    def send(_: int) -> int:
        return httpx.post(server.url + "/v1/predict", files=files, timeout=600).status_code

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(send, range(clients)))
    wall = time.perf_counter() - start
    time.sleep(settle_s)
    return {"bench": "serve_memory", "clients": clients, "images_per_request": images, "side": side,
            "png_bytes": len(data), "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak_rss_mib(server.proc.pid), 1),
            "settled_rss_mib": round(status_mib(server.proc.pid, "VmRSS"), 1), "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--images", type=int, default=16, help="images per request")
    parser.add_argument("--side", type=int, default=5000, help="width and height of each image")
    parser.add_argument("--server-args", default="", help="extra pix2tex serve options, e.g. '--max-queue 128'")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON line)")
    args = parser.parse_args(argv)
    if min(args.clients, args.images, args.side) < 1:
        print("error: --clients, --images and --side must be at least 1", file=sys.stderr)
        return 2
    with Server(*args.server_args.split()) as server:
        print(json.dumps(measure(server, clients=args.clients, images=args.images, side=args.side)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
