"""The light install (onnxruntime, no torch) against the full one (PyTorch engine), side by side.

For each install (``light``: a venv with ``pip install .`` only, reading with the bundled model's
ONNX graphs; ``full``: this checkout's ``.venv`` reading with ``engine="torch"``) it measures, one
JSON line each:

- ``venv``: the venv's size on disk (MiB);
- ``cold_start``: a fresh interpreter importing pix2tex and reading one image, launch to exit
  (min / median / max of ``--repeats`` runs);
- ``read_all``: the process reading the ``--images`` first im2latex_sample images (batches of 16):
  seconds and peak RSS (MiB, the child's ``ru_maxrss``);
- ``throughput``: images/s at batch 1 and 16 on the ``--timing-images`` first images (after one
  warm-up image);
- ``parity``: how many of the ``--images`` readings are the same LaTeX in both installs, and each
  difference.

The light venv is made with ``--make-venv`` (from a copy of pyproject.toml, README.md and pix2tex/,
so the checkout stays clean); its wheels come from the package index (or pip's cache).

    python -m benchmarks.light --light-venv ../light-venv [--make-venv] [--images 986]
        [--timing-images 100] [--repeats 5] --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "images" / "im2latex_sample"

# Run inside each venv: read images with LatexOCR and report timings, peak RSS and the readings.
CHILD = """
import json, resource, sys, time
from pix2tex import LatexOCR
engine, paths, timing = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
ocr = LatexOCR(engine=engine, batch_size=16)
readings = [p.latex for p in ocr.predict(paths)]
seconds = time.perf_counter() - start
rates = {}
for batch in (1, 16):
    ocr.batch_size = batch if ocr.engine == "torch" or not ocr.config.mask_padding else 1
    ocr.predict(paths[:1])
    t = time.perf_counter()
    ocr.predict(paths[:timing])
    rates[batch] = timing / (time.perf_counter() - t)
print(json.dumps({"engine": ocr.engine, "seconds": seconds, "peak_rss_mib": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "rates": rates, "readings": readings}))
"""


def make_light_venv(venv: Path) -> None:
    """A fresh venv with only the base install of this checkout (no extras)."""
    with tempfile.TemporaryDirectory(prefix="pix2tex-light-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(REPO / name, src / name)
        shutil.copytree(REPO / "pix2tex", src / "pix2tex", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(src)], check=True, env=_clean_env())


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _size_mib(folder: Path) -> float:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def cold_start(python: Path, engine: str, image: str, repeats: int) -> list[float]:
    code = f"from pix2tex import LatexOCR; LatexOCR(engine={engine!r})({image!r})"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(python), "-c", code], check=True, env=_clean_env(), cwd=tempfile.gettempdir(),
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--light-venv", required=True, type=Path, help="venv with the base install only")
    parser.add_argument("--make-venv", action="store_true", help="create --light-venv first (replacing it)")
    parser.add_argument("--images", type=int, default=986, help="im2latex_sample images read for RSS and parity")
    parser.add_argument("--timing-images", type=int, default=100, help="images timed at batch 1 and 16")
    parser.add_argument("--repeats", type=int, default=5, help="cold starts per install")
    parser.add_argument("--json", action="store_true", help="JSON lines only")
    args = parser.parse_args(argv)
    args.light_venv = args.light_venv.resolve()  # the children run in the temp folder
    if min(args.images, args.timing_images, args.repeats) <= 0 or args.timing_images > args.images:
        print("error: --images, --timing-images and --repeats must be positive, timing-images <= images",
              file=sys.stderr)
        return 2
    if args.make_venv:
        shutil.rmtree(args.light_venv, ignore_errors=True)
        make_light_venv(args.light_venv)
    installs = {"light": (args.light_venv, "auto"), "full": (REPO / ".venv", "torch")}
    for name, (venv, _) in installs.items():
        if not (venv / "bin" / "python").is_file():
            print(f"error: {venv}: no venv for the {name} install (use --make-venv for the light one)",
                  file=sys.stderr)
            return 2
    lines = (SAMPLE / "labels.tsv").read_text(encoding="utf-8").splitlines()[: args.images]
    paths = [str(SAMPLE / line.split("\t")[0]) for line in lines]
    readings = {}
    for name, (venv, engine) in installs.items():
        python = venv / "bin" / "python"
        print(json.dumps({"install": name, "task": "venv", "mib": round(_size_mib(venv), 1)}), flush=True)
        times = cold_start(python, engine, paths[0], args.repeats)
        print(json.dumps({"install": name, "task": "cold_start", "min_s": round(min(times), 3),
                          "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}), flush=True)
        out = subprocess.run([str(python), "-c", CHILD, engine, json.dumps(paths), str(args.timing_images)],
                             check=True, capture_output=True, text=True, env=_clean_env(), cwd=tempfile.gettempdir())
        child = json.loads(out.stdout.strip().splitlines()[-1])
        readings[name] = child["readings"]
        print(json.dumps({"install": name, "engine": child["engine"], "task": "read_all", "images": len(paths),
                          "seconds": round(child["seconds"], 1), "peak_rss_mib": round(child["peak_rss_mib"], 1)}),
              flush=True)
        for batch, rate in child["rates"].items():
            print(json.dumps({"install": name, "task": "throughput", "batch": int(batch),
                              "images": args.timing_images, "images_per_s": round(rate, 2)}), flush=True)
    pairs = list(zip(paths, readings["light"], readings["full"], strict=True))
    differences = [{"image": Path(p).name, "light": a, "full": b} for p, a, b in pairs if a != b]
    print(json.dumps({"task": "parity", "images": len(pairs), "identical": len(pairs) - len(differences),
                      "differences": differences}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
