# make install | web | lint | test | test-fast | demo [IMG=path.png] | serve | bench
# A fresh machine needs only python3 (with venv) and apt-get: everything else is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEX_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended dvipng lmodern bubblewrap
TEX_FILES := amsmath.sty amssymb.sty lmodern.sty mathptmx.sty mathpazo.sty txfonts.sty pxfonts.sty

BROWSER_PACKAGES := chromium chromium-driver
NODE_PACKAGES := nodejs npm

.PHONY: install tex browser web lint test test-fast demo serve bench clean

install: tex browser web $(VENV)/.installed

# TeX Live from Debian's packages, installed only when something is missing; bubblewrap is the
# sandbox every TeX and dvipng run happens in.
tex:
	@missing=0; \
	for tool in latex dvipng kpsewhich bwrap; do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 0 ]; then for f in $(TEX_FILES); do kpsewhich $$f >/dev/null 2>&1 || missing=1; done; fi; \
	if [ $$missing = 1 ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); \
	    else \
	        echo "TeX Live is missing; run: sudo apt-get install -y --no-install-recommends $(TEX_PACKAGES)" >&2; exit 1; \
	    fi; \
	fi

# Debian's Chromium and chromedriver: the web page's tests drive a real headless browser.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES); \
	    else \
	        echo "Chromium is missing; run: sudo apt-get install -y --no-install-recommends $(BROWSER_PACKAGES)" >&2; exit 1; \
	    fi; \
	fi

# onnxruntime-web for the in-browser reader (`pix2tex export --web`): npm's registry, pinned by
# package-lock.json; Node.js from Debian where the machine has none.  The page never loads a CDN.
web: node_modules/.installed

node_modules/.installed: package.json package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(NODE_PACKAGES); \
	    else \
	        echo "Node.js is missing; run: sudo apt-get install -y --no-install-recommends $(NODE_PACKAGES)" >&2; exit 1; \
	    fi; \
	fi
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install lint
	$(BIN)/python -m pytest -q

# ruff, configured in pyproject.toml: zero findings, or the tests do not run.
lint: install
	$(BIN)/ruff check .

# Everything but the slow tests (training runs, a corpus render, multi-process runs): under two minutes.
test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/python -m pix2tex.demo $(IMG)

serve: install
	$(BIN)/python -m pix2tex.serve

bench: install
	$(BIN)/python -m benchmarks.render --json
	$(BIN)/python -m benchmarks.models --threads 2 --json
	$(BIN)/python -m benchmarks.inference --tokens 128 --batch 1 --json
	$(BIN)/python -m benchmarks.inference --tokens 128 --batch 8 --json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info node_modules
