"""The in-browser reader (``pix2tex export --web``, ``pix2tex serve --web``): its JavaScript against
the Python reader, in Node (preprocessing, detokenizing, loop rules) and in Debian's headless
Chromium (whole readings, no request to another host)."""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess

import httpx
import numpy as np
import pytest

from benchmarks.serve import Server
from benchmarks.web import chromium, foreign_requests, read_in_page, sample_images, wait_until_ready
from pix2tex import decoding_rules
from pix2tex.dataset.dataset import read_labels
from pix2tex.demo import render_demo
from pix2tex.export import main as export_main
from pix2tex.inference import LatexOCR
from pix2tex.normalize import normalize
from pix2tex.preprocess import GLYPH_ESTIMATORS, estimate_glyph_height, ink_content, load_image, to_gray
from pix2tex.serve import main as serve_main
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID
from pix2tex.web_export import WEB_MANIFEST, WebExportError, check_web_export, export_web
from tests.helpers import REPO, SAMPLE

NODE_RUNNER = REPO / "tests" / "web_reader_node.mjs"


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory):
    return export_web(None, tmp_path_factory.mktemp("web") / "site")


@pytest.fixture(scope="module")
def ocr():
    return LatexOCR(engine="onnx", threads=1)


def _node(web_dir, command: str, jobs: list) -> list:
    """Answers of tests/web_reader_node.mjs (the page's own modules) to JSON-line jobs."""
    assert shutil.which("node"), "the in-browser reader's tests need Node.js (make install)"
    out = subprocess.run(["node", str(NODE_RUNNER), str(web_dir), command], check=True, capture_output=True,
                         text=True, input="".join(json.dumps(j) + "\n" for j in jobs), timeout=600)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_export_writes_a_site_and_replaces_only_an_earlier_export(web_dir, tmp_path, capsys):
    settings = json.loads((web_dir / WEB_MANIFEST).read_text())
    for name in ("index.html", "app.js", "reader.js", *settings["onnx"]["graphs"].values(), settings["tokenizer"]):
        assert (web_dir / name).is_file(), name
    assert check_web_export(web_dir) == web_dir
    # every constant the page reads comes from the Python modules
    assert settings["tokens"] == {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": settings["tokens"]["unk"]}
    assert settings["decoding"]["loop_period"] == decoding_rules.LOOP_PERIOD
    # a folder that is not a web export is never replaced: one-line error, exit 2, contents kept
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert export_main(["--web", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a web export" in err and str(other) in err
    assert [p.name for p in other.iterdir()] == ["mine.txt"]
    with pytest.raises(WebExportError, match="not a web export"):
        check_web_export(other)
    assert serve_main(["--web", str(other)]) == 2  # refused before the model loads
    assert "not a web export" in capsys.readouterr().err
    # an earlier export is replaced whole
    again = tmp_path / "again"
    shutil.copytree(web_dir, again)
    (again / "stale.js").write_text("old")
    export_web(None, again)
    assert not (again / "stale.js").exists() and check_web_export(again) == again


def test_page_prepares_real_images_as_python_does(web_dir, ocr):
    paths = sample_images(40)
    answers = _node(web_dir, "prepare", [{"path": str(p)} for p in paths])
    identical = 0
    for path, js in zip(paths, answers, strict=True):
        assert "error" not in js, (path.name, js)
        py = ocr.prepare(path)
        page = np.frombuffer(base64.b64decode(js["data"]), np.uint8).reshape(js["height"], js["width"])
        assert page.shape == py.shape, path.name  # same crop, glyph scale and padding
        diff = np.abs(page.astype(int) - py.astype(int))
        if diff.any():  # cv2's cubic resize (Intel IPP) rounds a pixel now and then the other way
            print(f"{path.name}: {int((diff > 0).sum())} pixels differ, by at most {diff.max()}")
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001, path.name
        identical += not diff.any()
    assert identical >= 0.8 * len(paths)


def test_page_measures_glyphs_as_python_does_with_every_estimator(web_dir, tmp_path):
    # The demo's formulas (a display integral and sum among them, whose ink "stroke_capped" outvotes)
    # rendered by TeX as `make demo` renders them, and real im2latex images.
    paths = []
    for k, result in enumerate(render_demo(tmp_path)):
        paths.append(tmp_path / f"demo{k}.png")
        result.image.save(paths[-1])
    paths += sample_images(12)
    jobs = [{"path": str(p), "method": m} for p in paths for m in GLYPH_ESTIMATORS]
    page = dict(zip(((j["path"], j["method"]) for j in jobs), _node(web_dir, "glyph", jobs), strict=True))
    for path in paths:
        content = ink_content(np.asarray(to_gray(load_image(path))))
        for method in GLYPH_ESTIMATORS:
            py = estimate_glyph_height(content, method)
            assert page[str(path), method] == pytest.approx(py, rel=0.01), (path.name, method)
    integral = str(paths[2])  # \int_0^\infty e^{-x^2}\,dx=\frac{\sqrt\pi}2: the operator holds most ink
    assert page[integral, "stroke"] > 3 * page[integral, "stroke_capped"]


def test_page_detokenizes_and_stops_loops_as_python_does(web_dir, ocr):
    rng = random.Random(0)
    vocab = ocr.tokenizer.vocab_size
    sequences = [[rng.randrange(4, vocab) for _ in range(rng.randrange(1, 60))] for _ in range(200)]
    assert _node(web_dir, "decode", sequences) == ocr.tokenizer.decode_latex(sequences)
    formulas = [latex for _, latex in read_labels(SAMPLE / "labels.tsv")[:300]]
    formulas += [r"\frac12", r"x^{ {\prime} }", r"\left( a \right.", r"{\mathrm{d}}x", "a  \\,\\, b",
                 r"\operatorname{sin}^2x+\operatorname*{max}_i y", r"\operatorname*{lim\,sup}_n a",
                 r"\operatorname{max} x", r"\operatorname*{sin} x", r"\operatorname{foo}", r"\operatorname*{Pr}(A)"]
    assert _node(web_dir, "normalize", formulas) == [normalize(f) for f in formulas]
    loops = [[5, 6, 7] * 12, [9] * 40, [4, 5, 6, 7, 8, 9, 10, 11] * 8, [rng.randrange(4, 40) for _ in range(50)]]
    rows = [decoding_rules.looping(np.array([ids])) for ids in loops]  # None: too short to loop
    expected = [{"looping": bool(r is not None and r[0]), "cut": decoding_rules.cut_loop(ids)}
                for r, ids in zip(rows, loops, strict=True)]
    assert [e["looping"] for e in expected] == [True, True, True, False]
    assert _node(web_dir, "loops", loops) == expected


@pytest.mark.browser
def test_served_page_reads_in_the_browser_as_python_does_and_asks_no_other_host(ocr, tmp_path_factory):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = sample_images(30)
    expected = [ocr(p) for p in paths]
    with Server("--web", tmpdir=tmp_path_factory.mktemp("web-serve")) as server:
        assert server.health()["web"] == "/local/"
        head = httpx.get(server.url + "/local/", timeout=30)
        assert head.status_code == 200 and head.headers["cross-origin-embedder-policy"] == "require-corp"
        with chromium() as driver:
            wait_until_ready(driver, f"{server.url}/local/?threads=2")
            assert driver.execute_script("return crossOriginIsolated;")  # wasm threads allowed
            readings = read_in_page(driver, paths)
            foreign = foreign_requests(driver, server.url)
            # the server's own page offers the in-browser one
            driver.get(server.url + "/")
            WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "local").is_displayed(),
                                            message="the page does not offer /local/")
            assert driver.find_element(By.CSS_SELECTOR, "#local a").get_attribute("href") == server.url + "/local/"
    same = 0
    for path, page, py in zip(paths, readings, expected, strict=True):
        assert "error" not in page, (path.name, page)
        if page["latex"] == py:
            same += 1
        else:
            print(f"{path.name}:\n  page   {page['latex']}\n  python {py}")
    assert same >= 29
    assert foreign == []
