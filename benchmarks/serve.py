"""Load on a real ``pix2tex serve``: batching against one image at a time, same requests, one run.

16 concurrent clients send 400 requests (``--clients``, ``--requests``) of real im2latex_sample
images, one image per ``POST /predict/``, a tenth of them broken files (truncated PNGs, text).
Each good answer must equal the image's reading by the library alone, each broken one must get
422 with its reason.  The server runs twice on 127.0.0.1, with ``--max-batch 8`` and with
``--max-batch 1``; one JSON line each: latency p50/p95, images/s, answers by status, wrong
answers, the server's peak RSS and how many batches it decoded.

    python -m benchmarks.serve --json
    python -m benchmarks.serve --hostile --json    # the same traffic with attacks mixed in

``--hostile`` adds, as a fifth of the requests each, images within every limit that decode to
25 MP (a 5000 x 5000 PNG of ~90 KB, which is read and must be answered 200), bodies over the
upload limit with their Content-Length (413) and chunked bodies over it (413), and runs one server
(``--max-batch 8``) twice: the clean traffic alone, then the hostile mix.  Beside the counts it
reports the server's RSS settled a few seconds after the run and the latency of the good requests
only.

:class:`Server` (a ``pix2tex serve`` process on a free port) is also what the API and browser
tests start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server("--max-batch", "4") as server: httpx.get(server.url + "/health")``.

    The server runs in its own process, as users start it; ``tmpdir`` becomes its TMPDIR so a test
    can see what it leaves behind.  Startup may take a while on a loaded machine (torch import,
    model load): the wait only guards against a hang.
    """

    def __init__(self, *args: str, tmpdir: Path | None = None, startup_s: float = 300.0):
        self.args, self.tmpdir, self.startup_s = list(args), tmpdir, startup_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    def __enter__(self) -> Server:
        env = dict(os.environ)
        if self.tmpdir is not None:
            env["TMPDIR"] = str(self.tmpdir)
        # beside the server's TMPDIR, not in it: a test checks what the server leaves there
        log_dir = self.tmpdir.parent if self.tmpdir is not None else Path(tempfile.gettempdir())
        self.log = log_dir / f"pix2tex-serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pix2tex.serve", "--port", str(self.port), "--log-level", "warning",
                 *self.args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"server did not answer /health within {self.startup_s:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status (VmHWM: peak resident, VmRSS: resident now), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    return status_mib(pid, "VmHWM")


def make_requests(sample: Path, n: int, broken_share: float, seed: int) -> list[tuple[str, bytes]]:
    """``n`` (name, bytes) uploads: real images (each about 4 times), broken files in between."""
    rng = random.Random(seed)
    names = [line.split("\t", 1)[0] for line in (sample / "labels.tsv").read_text().splitlines() if line]
    images = sorted(rng.sample(names, min(len(names), max(1, n // 4))))
    out = []
    for k in range(n):
        if rng.random() < broken_share:
            data = (sample / rng.choice(images)).read_bytes()
            out.append((f"broken{k}.png", data[: len(data) // 3] if k % 2 else b"plain text, not an image"))
        else:
            name = rng.choice(images)
            out.append((name, (sample / name).read_bytes()))
    return out


def send_all(server: Server, uploads: list[tuple[str, bytes]], clients: int) -> list[tuple[str, int, str, float]]:
    """(name, status, answer or error detail, seconds) per upload, ``clients`` requests at a time."""
    def send(item: tuple[str, bytes]) -> tuple[str, int, str, float]:
        name, data = item
        start = time.perf_counter()
        r = httpx.post(server.url + "/predict/", files={"file": (Path(name).name, data, "image/png")}, timeout=600)
        answer = r.json() if r.status_code == 200 else r.json().get("detail", "")
        return name, r.status_code, answer, time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, uploads))


HOSTILE_KINDS = {"bomb": 200, "oversized": 413, "chunked": 413}


def hostile_requests(uploads: list[tuple[str, bytes]], share: float, seed: int,
                     limit_bytes: int) -> list[tuple[str, bytes]]:
    """``uploads`` with ``share`` of each hostile kind inserted at random places (names say the kind)."""
    from benchmarks.serve_memory import huge_png

    rng = random.Random(seed)
    bomb = huge_png(5000)
    out = list(uploads)
    for kind in HOSTILE_KINDS:
        for k in range(int(share * len(uploads))):
            data = bomb if kind == "bomb" else b"\x89PNG" + b"\x00" * (limit_bytes + 1000)
            out.insert(rng.randrange(len(out) + 1), (f"{kind}{k}.png", data))
    return out


def send_hostile(server: Server, uploads: list[tuple[str, bytes]], clients: int) -> list[tuple[str, int, str, float]]:
    """As :func:`send_all`, with chunked uploads sent without a Content-Length."""
    def send(item: tuple[str, bytes]) -> tuple[str, int, str, float]:
        name, data = item
        start = time.perf_counter()
        if name.startswith("chunked"):
            parts = (data[i : i + 65536] for i in range(0, len(data), 65536))
            r = httpx.post(server.url + "/bytes/", content=parts, timeout=600)
        else:
            r = httpx.post(server.url + "/predict/", files={"file": (Path(name).name, data, "image/png")}, timeout=600)
        answer = r.json() if r.status_code == 200 else r.json().get("detail", "")
        return name, r.status_code, answer, time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, uploads))


def _kind(name: str) -> str:
    return next((k for k in ("broken", *HOSTILE_KINDS) if name.startswith(k)), "good")


def run_hostile(args: argparse.Namespace, uploads: list[tuple[str, bytes]], expected: dict[str, str]) -> None:
    limit = 2**20  # a 1 MB upload limit keeps the oversized bodies cheap to send
    mixed = hostile_requests(uploads, 0.2, args.seed, limit)
    with Server("--max-batch", "8", "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(4 * args.clients),
                "--max-upload-mb", "1") as server:
        for label, traffic in (("clean", uploads), ("hostile", mixed)):
            start = time.perf_counter()
            answers = send_hostile(server, traffic, args.clients)
            wall = time.perf_counter() - start
            time.sleep(3)
            good = [a for a in answers if _kind(a[0]) == "good"]
            latency = sorted(a[3] for a in good)
            want = {"good": 200, "broken": 422, **HOSTILE_KINDS}
            kinds = sorted({_kind(a[0]) for a in answers})
            print(json.dumps({
                "bench": "serve_hostile", "traffic": label, "clients": args.clients, "requests": len(answers),
                "by_kind": {k: {"requests": sum(_kind(a[0]) == k for a in answers),
                                "wrong_status": sum(_kind(a[0]) == k and a[1] != want[k] for a in answers)}
                            for k in kinds},
                "wrong_readings": sum(a[1] != 200 or a[2] != expected[a[0]] for a in good),
                "good_p50_s": round(statistics.median(latency), 3),
                "good_p95_s": round(latency[int(0.95 * (len(latency) - 1))], 3),
                "wall_s": round(wall, 1), "server_peak_rss_mib": round(peak_rss_mib(server.proc.pid), 1),
                "server_settled_rss_mib": round(status_mib(server.proc.pid, "VmRSS"), 1),
            }), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sample", type=Path, default=REPO.parent / "shared/data/images/im2latex_sample")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--broken", type=float, default=0.1, help="share of broken files")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1], help="--max-batch of each server run")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hostile", action="store_true", help="clean traffic, then with attacks mixed in")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    if not (args.sample / "labels.tsv").is_file():
        print(f"error: {args.sample}: no labels.tsv (the im2latex_sample folder)", file=sys.stderr)
        return 2
    if args.requests < 1 or args.clients < 1 or not 0 <= args.broken < 1:
        print("error: --requests and --clients must be at least 1, --broken in [0, 1)", file=sys.stderr)
        return 2
    uploads = make_requests(args.sample, args.requests, args.broken, args.seed)
    from pix2tex.inference import LatexOCR

    ocr = LatexOCR()  # the reference: each image read alone by the library
    expected = {name: ocr(data) for name, data in dict(uploads).items() if not name.startswith("broken")}
    if args.hostile:
        run_hostile(args, uploads, expected)
        return 0
    for max_batch in args.batches:
        with Server("--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
                    "--max-queue", str(4 * args.clients)) as server:
            start = time.perf_counter()
            answers = send_all(server, uploads, args.clients)
            wall = time.perf_counter() - start
            batches = server.health()["batches"]
            peak = peak_rss_mib(server.proc.pid)
        good = [a for a in answers if not a[0].startswith("broken")]
        bad = [a for a in answers if a[0].startswith("broken")]
        latency = sorted(a[3] for a in answers)
        print(json.dumps({
            "bench": "serve", "max_batch": max_batch, "max_wait_ms": args.max_wait_ms, "clients": args.clients,
            "requests": len(answers), "broken": len(bad),
            "statuses": {str(code): sum(a[1] == code for a in answers) for code in sorted({a[1] for a in answers})},
            "wrong_readings": sum(a[1] != 200 or a[2] != expected[a[0]] for a in good),
            "bad_without_reason": sum(a[1] != 422 or not a[2].startswith(a[0]) for a in bad),
            "p50_s": round(statistics.median(latency), 3),
            "p95_s": round(latency[int(0.95 * (len(latency) - 1))], 3),
            "images_per_s": round(len(good) / wall, 2), "wall_s": round(wall, 1),
            "server_peak_rss_mib": round(peak, 1), "batches_decoded": batches["batches"],
            "largest_batch": batches["largest"],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
