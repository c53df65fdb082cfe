# usgi-docs: `make run` starts the service on its embedded default; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export USGI_DATA_DIR ?= ./var

.PHONY: run test lint format dcmtk bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

# dcmtk (storescu, echoscu, findscu) plays the ultrasound machine in the tests.
dcmtk:
	@command -v storescu >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; \
	  else echo "dcmtk is missing: sudo apt-get install dcmtk" >&2; exit 1; fi; }

run: $(STAMP)
	$(BIN)/usgi migrate
	@echo
	@echo "  A token for the API (printed once):  $(BIN)/usgi token create --role clinician --name you"
	@echo "  Allow an ultrasound machine:          $(BIN)/usgi peer add STORESCU   (or set USGI_DICOM_PEERS)"
	@echo "  Send a test image (dcmtk):            storescu -aet STORESCU -aec USGI localhost 11112 image.dcm"
	@echo "  Then:  curl -H 'Authorization: Bearer TOKEN' http://127.0.0.1:8080/api/images"
	@echo
	exec $(BIN)/usgi serve

lint: $(STAMP)
	$(BIN)/ruff check service schemas tests
	$(BIN)/ruff format --check service schemas tests

format: $(STAMP)
	$(BIN)/ruff format service schemas tests
	$(BIN)/ruff check --fix service schemas tests

test: $(STAMP) dcmtk lint
	$(BIN)/python -m pytest

# The ingest benchmark of ../shared/bench against this service, beside storescp and Orthanc.
bench: $(STAMP)
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
