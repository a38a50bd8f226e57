# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests call: dciodvfy (dicom3tools) validates every DICOM object we write;
# dcmtk's storescu/echoscu are the modality and Orthanc the PACS of the listener tests;
# Chromium is the browser Playwright drives in the review app's tests (no browser download).
DEBIAN_PACKAGES := dicom3tools dcmtk orthanc chromium
DEBIAN_COMMANDS := dciodvfy storescu echoscu /usr/sbin/Orthanc /usr/bin/chromium
DEMO_DIR ?= demo
DEMO_PATIENTS ?= 200
DEMO_EPOCHS ?= 4
DEMO_IMAGE_SIZE ?= 128

.PHONY: install system-deps demo lint test test-quick bench papers fuzz clean

install: $(STAMP)

# torch first, from the local CPU build: anything that pulls torch in before it would fetch CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps 'monailabel>=0.8'  # its client only: see pyproject's review-client
	touch $@

system-deps:
	@missing=""; for cmd in $(DEBIAN_COMMANDS); do command -v $$cmd >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	    status=$$?; rm -f /usr/sbin/policy-rc.d; test $$status = 0 || exit $$status; \
	  else echo "missing Debian packages; run as root: apt-get install -y $(DEBIAN_PACKAGES)" >&2; exit 1; fi; \
	fi

demo: install system-deps
	DEMO_DIR=$(DEMO_DIR) DEMO_PATIENTS=$(DEMO_PATIENTS) DEMO_EPOCHS=$(DEMO_EPOCHS) \
	DEMO_IMAGE_SIZE=$(DEMO_IMAGE_SIZE) PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

# ruff (style, import order, likely bugs) on everything; mypy on the service and the DICOM writers
# (pyproject.toml says which files): the suite starts only when both are clean.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install system-deps lint
	$(BIN)/python -m pytest -q

# The library's unit tests, the override matrix and the architecture checks, in a few minutes:
# no bundle trainings, listener, Orthanc, browser or fuzzing (those are `make test`).
test-quick: install system-deps lint
	$(BIN)/python -m pytest -q -m "not slow"

# The fuzz targets of the suite with fresh randomness and FUZZ_EXAMPLES inputs each (the suite runs
# a short, fixed set); FUZZ_TARGET=reader|cstore|all; what fails is kept in .hypothesis/ and
# replayed first next time.
FUZZ_EXAMPLES ?= 3000
FUZZ_TARGET ?= all
fuzz: install system-deps
	$(BIN)/python -m tests.fuzz --examples $(FUZZ_EXAMPLES) --target $(FUZZ_TARGET)

bench: install system-deps
	$(BIN)/python benchmarks/preprocessing.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/listener.py
	$(BIN)/python benchmarks/scale.py

# The papers' claims side by side (README, "Comparing the papers"): a synthetic root, then every bundle
# trained with the same budget, evaluated, paired differences and verdicts in $(PAPERS_DIR)/run/papers.md.
# Interrupted, the same command resumes where it stopped.
PAPERS_DIR ?= papers
PAPERS_PATIENTS ?= 300
PAPERS_EPOCHS ?= 8
PAPERS_IMAGE_SIZE ?= 64
papers: install
	test -d $(PAPERS_DIR)/mura/MURA-v1.1 || $(BIN)/mura-monai synth $(PAPERS_DIR)/mura --patients $(PAPERS_PATIENTS) --seed 0 >/dev/null
	$(BIN)/mura-monai benchmark --dataset-dir $(PAPERS_DIR)/mura --output-dir $(PAPERS_DIR)/run \
	    --epochs $(PAPERS_EPOCHS) --image-size $(PAPERS_IMAGE_SIZE)

clean:
	rm -rf $(PAPERS_DIR) $(DEMO_DIR) bundles/*/models bundles/*/eval .pytest_cache
