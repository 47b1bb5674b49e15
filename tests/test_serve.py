"""``pix2tex serve`` against a real uvicorn server on 127.0.0.1, with the bundled model and real images."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.serve import Server
from pix2tex.inference import LatexOCR
from tests.helpers import SAMPLE, png_header_only

# Mixed sizes on purpose: batched together they are padded, and must read as they do alone.
IMAGES = ["images/1cbb05a562.png", "images/66667cee5b.png", "images/ed164cc822.png", "images/e265f9dc6b.png",
          "images/60ee748793.png", "images/1015942522.png"]


@pytest.fixture(scope="module")
def image_bytes() -> list[bytes]:
    return [(SAMPLE / name).read_bytes() for name in IMAGES]


@pytest.fixture(scope="module")
def alone(image_bytes) -> list[str]:
    """Each image read alone, in this process, by the library the server wraps."""
    ocr = LatexOCR()
    return [ocr(data) for data in image_bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-tmp")
    # A long wait so that concurrent requests share a batch on a slow machine too.
    with Server("--max-wait-ms", "300", "--max-batch", "8", "--max-pixels", "4000000", tmpdir=tmp) as s:
        yield s


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    """Small limits: a 200 KB body, 2 images per request, 2 images in the queue."""
    with Server("--max-upload-mb", "0.2", "--max-images", "2", "--max-queue", "2",
                tmpdir=tmp_path_factory.mktemp("tight-tmp")) as s:
        yield s


def test_health_names_model_engine_and_version(server):
    import pix2tex

    health = server.health()
    assert (health["status"], health["model"], health["engine"], health["version"]) == \
        ("ok", "bundled", "onnx", pix2tex.__version__)
    bundled = LatexOCR()  # the bundled folder's meta.json
    assert (health["glyph_scale"], health["glyph_estimator"]) == (bundled.glyph_scale, bundled.glyph_estimator)


def test_pix2tex_client_calls_read_like_the_library(server, image_bytes, alone):
    # The public pix2tex's clients: multipart field 'file' to /predict/ and /bytes/, JSON string back.
    r = httpx.post(server.url + "/predict/", files={"file": image_bytes[0]}, timeout=120)
    assert r.status_code == 200 and r.json() == alone[0]
    r = httpx.post(server.url + "/bytes/", files={"file": image_bytes[1]}, timeout=120)
    assert r.status_code == 200 and r.json() == alone[1]
    r = httpx.post(server.url + "/bytes/", content=image_bytes[2], timeout=120)  # raw body
    assert r.status_code == 200 and r.json() == alone[2]


def test_v1_predict_answers_each_image_and_each_error(server, image_bytes, alone):
    files = [("file", ("a.png", image_bytes[0], "image/png")),
             ("file", ("notes.txt", b"not an image at all", "text/plain")),
             ("file", ("b.png", image_bytes[3], "image/png")),
             ("file", ("cut.png", image_bytes[3][:200], "image/png"))]
    r = httpx.post(server.url + "/v1/predict", files=files, timeout=120)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x.get("latex") for x in results] == [alone[0], None, alone[3], None]
    assert results[1]["error"].startswith("notes.txt: not an image")
    assert results[3]["error"].startswith("cut.png: ")
    for good in (results[0], results[2]):
        assert good["confidence"] <= 0 and good["seconds"] > 0 and "error" not in good


def test_concurrent_requests_are_batched_and_read_as_alone(server, image_bytes, alone):
    before = server.health()["batches"]

    def post(data: bytes) -> str:
        r = httpx.post(server.url + "/predict/", files={"file": data}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(len(image_bytes)) as pool:
        readings = list(pool.map(post, image_bytes))
    after = server.health()["batches"]
    assert readings == alone
    assert after["images"] - before["images"] == len(image_bytes)
    assert after["batches"] - before["batches"] < len(image_bytes)  # some requests shared a batch
    assert after["largest"] >= 2


def test_image_errors_are_422_with_the_reason(server):
    r = httpx.post(server.url + "/predict/", files={"file": ("x.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")})
    assert r.status_code == 422 and r.json()["detail"].startswith("x.png: ")
    r = httpx.post(server.url + "/bytes/", content=png_header_only(3000, 2000))  # 6 MP, over the 4 MP limit
    assert r.status_code == 422 and "over the 4 MP limit" in r.json()["detail"]
    r = httpx.post(server.url + "/v1/predict", files=[("file", ("a.txt", b"hello", "text/plain"))])
    assert r.status_code == 422 and r.json()["detail"] == "a.txt: not an image (cannot identify format)"


@pytest.mark.tex
def test_render_returns_a_png_or_tex_reason(server):
    r = httpx.post(server.url + "/v1/render", json={"latex": r"\frac{a}{b} + \sqrt{x}"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content)).convert("L")
    assert img.getextrema()[0] < 100  # there is ink
    r = httpx.post(server.url + "/v1/render", json={"latex": r"\frac{a}"}, timeout=60)
    assert r.status_code == 422 and "Missing } inserted" in r.json()["detail"]
    r = httpx.post(server.url + "/v1/render", json={"latex": r"\input{/etc/passwd}"}, timeout=60)
    assert r.status_code == 422 and r.json()["detail"] == r"forbidden command \input"
    r = httpx.post(server.url + "/v1/render", json={"latex": "x+" * 3000}, timeout=60)
    assert r.status_code == 413


def test_limits_413_and_503(tight_server, image_bytes):
    url = tight_server.url
    big = b"\x89PNG" + b"\x00" * 300_000
    r = httpx.post(url + "/bytes/", content=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it streams
        for _ in range(30):
            yield b"\x00" * 10_000

    r = httpx.post(url + "/bytes/", content=chunks())
    assert r.status_code == 413
    three = [("file", (f"{k}.png", image_bytes[0], "image/png")) for k in range(3)]
    r = httpx.post(url + "/v1/predict", files=three)
    assert r.status_code == 413 and "over the limit of 2" in r.json()["detail"]

    # Queue of 2: while two images are being read, another request is turned away at once.
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url + "/v1/predict", files=three[:2], timeout=300)
        while tight_server.health()["pending"] < 2:
            assert not first.done(), first.result().text
        refused = httpx.post(url + "/predict/", files={"file": image_bytes[1]}, timeout=300)
        assert first.result().status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1" and "busy" in refused.json()["detail"]


def test_bodies_over_the_limit_get_413_on_every_endpoint_chunked_or_not(tight_server):
    """A chunked body over the limit is a 413 on the multipart and JSON endpoints too (not the form
    parser's 400), and a client that sends its whole declared body before reading the answer
    (http.client, as requests does) gets the 413 with its reason, not a connection reset."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = tight_server.url
    boundary = "pix2tex-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def multipart_chunks():  # 300 KB of file data, streamed without a Content-Length
        yield head
        for _ in range(30):
            yield b"\x00" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    def json_chunks():
        yield b'{"latex": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    for path, body, kind in (("/predict/", multipart_chunks, f"multipart/form-data; boundary={boundary}"),
                             ("/v1/predict", multipart_chunks, f"multipart/form-data; boundary={boundary}"),
                             ("/bytes/", multipart_chunks, f"multipart/form-data; boundary={boundary}"),
                             ("/v1/render", json_chunks, "application/json")):
        r = httpx.post(url + path, content=body(), headers={"content-type": kind}, timeout=60)
        assert r.status_code == 413, (path, r.status_code, r.text)
        assert "over the 209,715-byte limit" in r.json()["detail"]

    # A whole 1 MB multipart upload with its Content-Length, sent before the answer is read.
    payload = head + b"\x00" * 1_000_000 + f"\r\n--{boundary}--\r\n".encode()
    where = urlsplit(url)
    for path in ("/predict/", "/v1/predict"):
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        conn.request("POST", path, body=payload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        answer = conn.getresponse()
        assert answer.status == 413
        assert "over the 209,715-byte limit" in json.loads(answer.read())["detail"]
        conn.close()
    assert tight_server.health()["status"] == "ok"  # and the server is still there


def test_docs_and_page_are_served_locally(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/predict/", "/bytes/", "/v1/predict", "/v1/render", "/health"} <= set(spec["paths"])
    import re

    for page in ("/docs", "/"):
        html = httpx.get(server.url + page).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs, page
        for ref in refs:
            if ref.startswith("data:"):
                continue
            assert ref.startswith("/"), f"{page} loads {ref} from another host"
            assert httpx.get(server.url + ref).status_code == 200, ref


@pytest.mark.tex
def test_uploads_leave_no_temporary_files(server, image_bytes):
    def files() -> set[Path]:  # the server's TMPDIR (torch keeps a cache folder there)
        return set(Path(server.tmpdir).rglob("*"))

    before = files()
    big = image_bytes[0] + b"\x00" * 2_000_000  # over starlette's in-memory size: spooled to disk
    r = httpx.post(server.url + "/predict/", files={"file": ("big.png", big, "image/png")}, timeout=120)
    assert r.status_code == 200
    r = httpx.post(server.url + "/v1/render", json={"latex": "a+b"}, timeout=60)  # TeX's work folder
    assert r.status_code == 200
    assert files() == before


def test_serve_refuses_bad_options_in_one_line():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pix2tex.cli", "serve", "--max-batch", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip() == "error: max_batch must be at least 1, got 0"


def test_onnx_engine_serves_the_exported_model(tmp_path, image_bytes):
    from pix2tex.export import export_onnx

    folder = export_onnx(None, tmp_path / "onnx")
    expected = LatexOCR(folder, engine="onnx")(image_bytes[0])
    (tmp_path / "tmp").mkdir()
    with Server("--engine", "onnx", "--checkpoint", str(folder), tmpdir=tmp_path / "tmp") as s:
        assert s.health()["engine"] == "onnx"
        r = httpx.post(s.url + "/predict/", files={"file": image_bytes[0]}, timeout=120)
    assert r.status_code == 200 and r.json() == expected


def test_huge_uploads_cost_bounded_memory_that_is_given_back(tmp_path):
    """Two clients each send 16 PNGs of 5000 x 5000 (about 90 KB each, within every limit): the
    server prepares two images at a time at a reduced working size, so its peak stays a few
    hundred MB over idle (it was 2.6 GB over with four clients), and it gives the memory back."""
    from benchmarks.serve_memory import measure

    with Server(tmpdir=tmp_path) as server:
        result = measure(server, clients=2, images=16, side=5000)
    assert result["statuses"] == {"200": 2}
    assert result["peak_rss_mib"] - result["idle_rss_mib"] < 500, result
    assert result["settled_rss_mib"] - result["idle_rss_mib"] < 100, result
