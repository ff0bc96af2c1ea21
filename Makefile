# `make demo` and `make test` work from a fresh clone: they create .venv and install xviz into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xviz-installed

.PHONY: demo test test-all bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e examples/xviz-cam-original
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xviz explain --model xviz-demo --method gradcampp --panel --report --out demo-out plugins/xviz_zoo/assets/samples

test: $(STAMP)
	$(BIN)/python -m pytest -q tests examples/xviz-cam-original/tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m '' tests examples/xviz-cam-original/tests

bench: $(STAMP)
	$(BIN)/python benchmarks/cam_speed.py

# the gallery (method pages; figure pages, training runs cached in runs/gallery), then the site in site/
# (`make docs GALLERY_FLAGS=--methods-only` keeps the committed figure pages and skips training)
GALLERY_FLAGS ?=
docs: $(STAMP)
	$(BIN)/xviz gallery --out docs/gallery $(GALLERY_FLAGS)
	$(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) demo-out build site *.egg-info
