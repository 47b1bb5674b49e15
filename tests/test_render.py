"""The LaTeX → PNG renderer, with the real latex and dvipng (no mocks)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix2tex.normalize import normalize
from pix2tex.render import renderer as R
from pix2tex.render import tex
from pix2tex.render.renderer import (
    FONTS,
    RenderError,
    RenderSettings,
    check_formula,
    choose_style,
    main,
    render_dataset,
    render_images,
    run_tex,
)

pytestmark = [pytest.mark.tex]

FORMULAS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "formulas"

GOOD = [r"x^2+\frac{1}{2}", r"\int_0^1 f(x)\,dx = \sum_{n=1}^{\infty} a_n", r"\sqrt{\alpha+\beta}"]
UNCOMPILABLE = r"\left( x"  # passes every check before TeX, then TeX fails on it
HOSTILE = r"\input{/etc/passwd}"
MIXED = [GOOD[0], UNCOMPILABLE, GOOD[1], HOSTILE, "", GOOD[2]]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def test_renders_grayscale_tight_black_on_white(tmp_path):
    results = render_images(GOOD, "cm", 150, tmp_path)
    for result in results:
        assert result.ok and result.error is None, result.error
        image = result.image
        assert image.mode == "L"
        a = pixels(image)
        assert a.shape[0] >= 10 and a.shape[1] >= 10
        assert a.max() == 255 and a.min() < 40  # white paper, black ink
        # Tight crop: every border row and column touches ink.
        for border in (a[0], a[-1], a[:, 0], a[:, -1]):
            assert border.min() < 255
    # A taller formula makes a taller image; more dpi makes a bigger one.
    assert results[1].image.height > results[2].image.height > 20
    bigger = render_images(GOOD[:1], "cm", 300, tmp_path)[0].image
    assert bigger.width > 1.8 * results[0].image.width
    assert list(tmp_path.iterdir()) == []  # the TeX folder is removed


def test_all_fonts_compile_and_look_different(tmp_path):
    formula = (r"\Gamma(x) = \int_0^\infty t^{x-1} e^{-t}\, dt + \mathbf{A}\bm{\beta}\mathcal{L}\mathbb{R}"
               r"\mathscr{F} \textcircled{1} \overparen{AB}")  # TS1 font and a compatibility macro
    images = {}
    for font in FONTS:
        result = render_images([formula], font, 120, tmp_path)[0]
        assert result.ok, (font, result.error)
        images[font] = result.image
    assert len(FONTS) >= 4
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not same_pixels(images[a], images[b]), (a, b)


def test_tokenized_lengths_render_like_written_ones(tmp_path):
    # im2latex writes "\hspace { - 0 . 2 c m }"; TeX alone would stop at the spaced unit.
    pairs = [(r"a \hspace { - 0 . 2 c m } b", r"a\hspace{-0.2cm}b"),
             (r"a \hspace* { 1 e m } b", r"a\hspace*{1em}b"),
             (r"a \raisebox { 0 . 5 e x } {x} b", r"a\raisebox{0.5ex}{x}b")]
    results = render_images([f for pair in pairs for f in pair], "cm", 120, tmp_path)
    assert all(r.ok for r in results), [r.error for r in results]
    for k in range(len(pairs)):
        assert same_pixels(results[2 * k].image, results[2 * k + 1].image), pairs[k]


def test_batch_skips_failures_without_shifting_images(tmp_path):
    results = render_images(MIXED, "cm", 120, tmp_path)
    assert [r.ok for r in results] == [True, False, True, False, False, True]
    assert results[1].error == "! Missing \\right. inserted."
    assert results[3].error == r"forbidden command \input"
    assert results[4].error == "empty formula"
    for i in (0, 2, 5):  # each image is exactly what that formula gives when rendered alone
        alone = render_images([MIXED[i]], "cm", 120, tmp_path)[0]
        assert same_pixels(results[i].image, alone.image)
    assert not same_pixels(results[0].image, results[2].image)


def test_one_bad_formula_costs_one_extra_tex_run(tmp_path, monkeypatch):
    runs = []

    def counting_run_tex(formulas, *args, **kwargs):
        runs.append(len(formulas))
        return run_tex(formulas, *args, **kwargs)

    monkeypatch.setattr(R, "run_tex", counting_run_tex)
    formulas = [GOOD[0], GOOD[1], UNCOMPILABLE, GOOD[2], GOOD[0]]
    results = R._render_batch(formulas, "cm", [100] * 5, tmp_path, timeout_s=30)
    assert results[2] == "! Missing \\right. inserted."
    assert runs == [5, 4]  # the culprit is found from the error's position, not by bisection


def test_page_refused_by_dvipng_fails_alone(tmp_path):
    # Times has no bold Greek capitals: dvipng --picky refuses that page, its neighbours stay.
    formulas = [GOOD[0], r"\mathbf{\Xi}", GOOD[1]]
    results = R._render_batch(formulas, "times", [100] * 3, tmp_path, timeout_s=30)
    assert results[1] == "dvipng warning: unimplemented \\special{Warning: missing glyph `Xi'}"
    for i in (0, 2):
        assert same_pixels(results[i], render_images([formulas[i]], "times", 100, tmp_path)[0].image)


def test_failure_reasons(tmp_path):
    formulas = [r"\frac{a}", r"x^2^3", r"\,", r"\phantom{x}", "{x", r"\def\x{y}\x", "x" * 4001, "a\nb",
                r"\hspace{4000pt}x", r"x\kern-16000pt y"]
    errors = [r.error for r in render_images(formulas, "cm", 100, tmp_path)]
    assert errors == [
        "! Missing } inserted.",
        "! Double superscript.",
        "empty render",
        "empty render",
        "unbalanced braces",
        r"forbidden command \def",
        "formula too long (4001 > 4000 characters)",
        "forbidden control character",
        "! formula too large.",  # the box is measured in TeX
        "image too large",  # ink outside the box: measured on the image
    ]


@pytest.mark.parametrize(
    "formula, reason",
    [
        (r"\input{/etc/passwd}", r"forbidden command \input"),
        (r"\immediate\write18{touch x}", r"forbidden command \immediate"),
        (r"\write18{touch x}", r"forbidden command \write"),
        (r"x \openout1=f", r"forbidden command \openout"),
        (r"\catcode`\^=11", r"forbidden command \catcode"),
        (r"\pdffiledump length 9{/etc/passwd}", r"forbidden command \pdffiledump"),
        (r"x \end{document}", r"forbidden command \end{document}"),
        (r"^^5cinput{/etc/passwd}", "forbidden sequence ^^"),
        (r"\csname input\endcsname", r"forbidden command \csname"),
        (r"\alpha \inputs", r"command \inputs is not on the allow-list"),  # not \input, but not allowed either
        (r"\UseName{@@input}$SELFAUTOPARENT/etc/hostname ", r"command \UseName is not on the allow-list"),
        (r"\begin{\x}", r"environment {\x} is not on the allow-list"),
        (r"\begin{def}\a{\a}\a", r"environment {def} is not on the allow-list"),
        (r"\begin{pmatrix} a \\ b \end{pmatrix}", None),
        (r"\begin{array}{c} x \end{array}", None),
    ],
)
def test_blacklist(formula, reason):
    assert check_formula(formula) == reason


# The TeX sandbox must hold on its own: these run TeX directly, bypassing the blacklist.


def test_sandbox_cannot_read_files_outside_workdir(tmp_path):
    run = run_tex([r"\input{/etc/passwd}"], "cm", tmp_path / "a", timeout_s=30)
    assert run.page_tags == [] and "/etc/passwd" in run.error
    assert "root:" not in (tmp_path / "a" / "batch.log").read_text(encoding="latin-1")
    run = run_tex([r"\input /etc/passwd "], "cm", tmp_path / "b", timeout_s=30)
    assert run.page_tags == [] and run.error == "! I can't find file `/etc/passwd'."
    # \openin fails silently (the stream stays at eof), \read from it then needs a terminal.
    tex_level = [r"\openin5=/etc/passwd \ifeof5 A\else B\fi", r"\pdffiledump length 30{/etc/passwd}A", "A"]
    results = R._render_batch(tex_level, "cm", [100] * 3, tmp_path / "c", timeout_s=30)
    assert all(isinstance(r, Image.Image) for r in results), results
    assert same_pixels(results[0], results[2]) and same_pixels(results[1], results[2])
    run = run_tex([r"\openin5=/etc/passwd \read5 to\x \x"], "cm", tmp_path / "d", timeout_s=30)
    assert run.page_tags == [] and run.error is not None


def test_sandbox_cannot_run_programs_or_write_outside(tmp_path):
    work = tmp_path / "work"
    outside = tmp_path / "outside.tex"
    run = run_tex(
        [r"\immediate\write18{touch pwned1}x", r"\write18{touch pwned2}y"], "cm", work, timeout_s=30
    )
    assert run.error is None and run.page_tags == [1, 2]  # TeX carries on, the shell never runs
    assert not list(work.glob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    for target in (str(outside), "../outside.tex", ".hidden"):
        run = run_tex([rf"\immediate\openout5={target} \immediate\write5{{x}}x"], "cm", work, timeout_s=30)
        assert run.page_tags == [] and run.error.startswith("! I can't write on file"), run.error
    assert not outside.exists() and not (work / ".hidden.tex").exists()


def _secret_file(tmp_path: Path) -> Path:
    """A file outside every render work folder, named by an absolute path, holding a marker."""
    secret = tmp_path / "secret" / "token.tex"
    secret.parent.mkdir()
    secret.write_text("SECRETMARKER\n")
    return secret


# kpathsea checks openin_any before it expands variables, and $SELFAUTOPARENT is "/" here: these
# names pass the paranoid check but name any file.  Only the bubblewrap sandbox stops them.
_EXPANDED_READS = [
    r"\UseName{@@input}$SELFAUTOPARENT{path} ",
    r"\UseName{openin}5=$SELFAUTOPARENT{path} \UseName{read}5to\x \begin{\x}",
    r"\expandafter\csname @@input\endcsname $SELFAUTOPARENT{path} ",
    r"\UseName{@@input}${SELFAUTOPARENT}{path} ",
    r"\UseName{@@input}$SELFAUTOGRANDPARENT{path} ",
]


@pytest.mark.parametrize("template", _EXPANDED_READS)
def test_sandbox_hides_the_machine_even_from_expanded_file_names(tmp_path, template, monkeypatch):
    secret = _secret_file(tmp_path)
    formula = template.replace("{path}", str(secret))

    def leaked(work: Path) -> bool:
        run = run_tex([formula], "cm", work, timeout_s=30)
        # TeX wraps its log at 79 columns, also inside a long path: join the lines before searching.
        log = (work / "batch.log").read_text(encoding="latin-1").replace("\n", "")
        # TeX logs every file it inputs as "(path"; a line read from a file shows in the error.
        return "SECRETMARKER" in log + (run.error or "") or re.search(r"\(\S*token\.tex", log) is not None

    assert not leaked(tmp_path / "work")
    # The same formula without the sandbox reads the file: the test can fail, and the sandbox is
    # what closes the hole.
    monkeypatch.setenv(R.UNSAFE_NO_SANDBOX, "1")
    assert leaked(tmp_path / "open")


def test_sandbox_shows_no_system_files(tmp_path):
    import socket

    run = run_tex([r"\UseName{@@input}$SELFAUTOPARENT/etc/hostname "], "cm", tmp_path / "h", timeout_s=30)
    assert run.page_tags == [] and "hostname" in (run.error or "")
    log = (tmp_path / "h" / "batch.log").read_text(encoding="latin-1")
    assert socket.gethostname() not in log.replace("/etc/hostname", "")


@pytest.mark.slow
def test_unclear_failures_are_bisected(tmp_path):
    # An endless loop (timeout) and a formula shipping an extra page give no usable error
    # position, so the batch is bisected; the good formulas still get their own images.
    formulas = [GOOD[0], r"\def\x{\x}\x", GOOD[1], r"\shipout\hbox{z}y", GOOD[2]]
    # The time limit leaves room for a loaded machine; the endless loop still hits it.
    results = R._render_batch(formulas, "cm", [100] * 5, tmp_path, timeout_s=3.0)
    assert results[1] == "timeout" and results[3] == "page count mismatch"
    for i in (0, 2, 4):
        alone = render_images([formulas[i]], "cm", 100, tmp_path)[0].image
        assert same_pixels(results[i], alone)


def test_dvi_page_tags_reject_truncated_files(tmp_path):
    run = run_tex(GOOD, "cm", tmp_path, timeout_s=30)
    data = run.dvi.read_bytes()
    assert tex._dvi_page_tags(data) == [1, 2, 3]
    assert tex._dvi_page_tags(data[:-10]) is None


def test_choose_style_is_seeded_and_spread():
    settings = RenderSettings(seed=0)
    styles = [choose_style(i, settings) for i in range(600)]
    assert styles == [choose_style(i, RenderSettings(seed=0, workers=1)) for i in range(600)]
    assert {f for f, _ in styles} == set(settings.fonts)
    assert {d for _, d in styles} == set(settings.dpi_levels())
    other = [choose_style(i, RenderSettings(seed=1)) for i in range(600)]
    assert sum(a != b for a, b in zip(styles, other, strict=True)) > 400
    assert settings.dpi[0] <= 100 <= settings.dpi[1]  # real im2latex renders are at ~100 dpi


def _read_outputs(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    files.pop("render.json")  # holds the timing
    return files


@pytest.mark.slow
def test_dataset_is_deterministic_and_labels_match_images(tmp_path):
    formulas = [*MIXED, r"a_{ij} \le b", r"\mathrm{d}x", r"\frac12\hat x"]
    settings = RenderSettings(seed=3, workers=2, batch_size=2)
    first = render_dataset(formulas, tmp_path / "a", settings)
    assert (first.total, first.rendered, first.failed) == (9, 6, 3)
    render_dataset(formulas, tmp_path / "b", RenderSettings(seed=3, workers=1, batch_size=50))
    assert _read_outputs(tmp_path / "a") == _read_outputs(tmp_path / "b")  # byte-identical
    other = render_dataset(formulas, tmp_path / "c", RenderSettings(seed=4, workers=1))
    assert other.rendered == 6
    assert _read_outputs(tmp_path / "a") != _read_outputs(tmp_path / "c")

    lines = (tmp_path / "a" / "labels.tsv").read_text(encoding="utf-8").splitlines()
    good = [0, 2, 5, 6, 7, 8]
    assert [line.split("\t")[0] for line in lines] == [f"images/{i:07d}.png" for i in good]
    for line, i in zip(lines, good, strict=True):
        path, label = line.split("\t")
        assert label == normalize(formulas[i]) and label
        image = Image.open(tmp_path / "a" / path)
        assert image.mode == "L"
        font, dpi = choose_style(i, settings)
        alone = render_images([formulas[i]], font, dpi, tmp_path)[0].image
        assert same_pixels(image, alone), i
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == [f"{i:07d}.png" for i in good]
    assert not list((tmp_path / "a").glob(".render-*"))


def test_cli_writes_outputs_and_reports_errors(tmp_path, capsys):
    src = tmp_path / "formulas.txt"
    src.write_text("\n".join(MIXED) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["--formulas", str(src), "--out", str(out), "--fonts", "cm", "times",
                 "--dpi", "90", "110", "--workers", "1", "--seed", "7"])
    assert code == 0
    labels = (out / "labels.tsv").read_text(encoding="utf-8").splitlines()
    expected = ["images/0000000.png", "images/0000002.png", "images/0000005.png"]
    assert [line.split("\t")[0] for line in labels] == expected
    failed = [line.split("\t") for line in (out / "failed.tsv").read_text(encoding="utf-8").splitlines()]
    assert failed == [
        ["1", UNCOMPILABLE, "! Missing \\right. inserted."],
        ["3", HOSTILE, r"forbidden command \input"],
        ["4", "", "empty formula"],
    ]
    info = json.loads((out / "render.json").read_text())
    assert (info["total"], info["rendered"], info["failed"]) == (6, 3, 3)
    assert info["settings"]["fonts"] == ["cm", "times"] and info["settings"]["seed"] == 7

    # Rerunning with --limit keeps names stable and removes images no longer produced.
    assert main(["--formulas", str(src), "--out", str(out), "--limit", "2", "--workers", "1"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000000.png"]

    assert main(["--formulas", str(tmp_path / "missing.txt"), "--out", str(out)]) == 1
    assert main(["--formulas", str(src), "--out", str(out), "--fonts", "comic"]) == 1
    (tmp_path / "bad.txt").write_bytes(b"x\xff\n")
    assert main(["--formulas", str(tmp_path / "bad.txt"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "missing.txt: no such file" in err
    assert "unknown font 'comic'" in err and "not valid UTF-8 at byte 1" in err


def test_settings_are_validated():
    with pytest.raises(RenderError, match="unknown font 'euler'"):
        RenderSettings(fonts=("cm", "euler"))
    with pytest.raises(RenderError, match="dpi range"):
        RenderSettings(dpi=(200, 100))


def test_normalization_round_trip_is_pixel_identical(tmp_path):
    lines = [line for line in (FORMULAS / "im2latex_val.txt").read_text(encoding="utf-8").split("\n") if line]
    text_mode = re.compile(r"\\(text[a-z]*|mbox|hbox|fbox|emph)(?![A-Za-z])")
    candidates = [line for line in lines if not text_mode.search(line)]
    sample = random.Random(0).sample(candidates, 40)
    normalized = [normalize(f) for f in sample]
    results = render_images(sample + normalized, "cm", 120, tmp_path)
    compared = 0
    for k, formula in enumerate(sample):
        original, again = results[k], results[len(sample) + k]
        if not original.ok:
            continue
        compared += 1
        assert again.ok, (formula, again.error)
        assert same_pixels(original.image, again.image), formula
    assert compared >= 36


def test_cli_with_relative_output_folder(tmp_path, monkeypatch):
    # dvipng runs inside the batch folder: a relative --out must still name the right files.
    (tmp_path / "f.txt").write_text("x^2\n\\frac12\n")
    monkeypatch.chdir(tmp_path)
    assert R.main(["--formulas", "f.txt", "--out", "out", "--workers", "1"]) == 0
    assert len((tmp_path / "out" / "labels.tsv").read_text().splitlines()) == 2


def test_huge_pages_are_refused(tmp_path):
    # A redefined output routine once shipped a 48-megapixel black page; such a page is refused.
    page = tmp_path / "d100-0000001.png"
    Image.new("L", (7000, 7000), 0).save(page)
    assert R._load_page(page) == "image too large"
    Image.new("L", (700, 250), 255).save(page)
    assert R._load_page(page) == "empty render"


def test_a_formula_that_changes_later_ones_is_caught(tmp_path, monkeypatch):
    """Layer 3: even a global redefinition that got past every check before TeX cannot put a wrong
    image under another formula's label.  Here the checks are replaced by one that lets \\gdef
    through (the allow-list would refuse it) and refuses only the word REFUSED."""
    monkeypatch.setattr(R, "check_formula", lambda f: "refused" if "REFUSED" in f else None)
    poison = r'\gdef\displaystyle{\mathchar"7120}x'  # every later formula gets a psi in front
    formulas = ["REFUSED", "a", poison, "b", "c"]
    out = R._check_and_render(formulas, "cm", [100] * 5, tmp_path, timeout_s=30)
    assert out[0] == "refused"
    # Each other formula follows the poison in one of the two orders: all of them are failed.
    assert out[1] == out[3] == out[4] == R.INTERFERENCE
    # Without a refused formula in the batch the check is not run (it costs a second TeX run).
    clean = R._check_and_render(["a", "b"], "cm", [100] * 2, tmp_path / "clean", timeout_s=30)
    assert all(isinstance(x, Image.Image) for x in clean)


@pytest.mark.parametrize("font", FONTS)
def test_primes_written_apart_typeset_as_written_together(font, tmp_path):
    """The normal form writes tokens apart (``f ' ^ { 2 }``); TeX merges a prime with a following
    prime or superscript only when they touch, so without the renderer's look-ahead these would be
    "Double superscript" errors."""
    pairs = [(r"f'^{2}", r"f ' ^ { 2 }"), (r"K_0''", r"K _ { 0 } ' '"),
             (r"\Gamma'^{\Delta}_1", r"\Gamma ' ^ { \Delta } _ { 1 }"), (r"f'(x)", r"f ' ( x )")]
    images = render_images([x for pair in pairs for x in pair], font, 120, tmp_path)
    for (a, b), pair in zip(zip(images[::2], images[1::2], strict=True), pairs, strict=True):
        assert a.image is not None and b.image is not None, (pair, a.error, b.error)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), pair
