# The few verbs a newcomer needs. `make run` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install install-test run migrate seed test test-fast lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

## install: the virtual environment and the application's dependencies
install: $(VENV)/.installed

## install-test: what the tests need too (Python packages; DCMTK and Chromium from Debian)
install-test: $(VENV)/.installed-test
	deploy/install-test-tools.sh

## migrate: bring the database schema up to date and make the role groups
migrate: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py create_roles

## seed: demo users, procedure catalogue, rooms, patients and today's orders (once), the
## default report templates of each modality (once), and
## DCMTK's default AE titles as known DICOM nodes on this machine, so that its tools may try it
DEMO_NODES := ECHOSCU STORESCU FINDSCU MOVESCU GETSCU
seed: migrate
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py load_report_templates
	@for ae in $(DEMO_NODES); do $(BIN)/python manage.py dicomnode add $$ae 127.0.0.1 104 \
		--description "demo: DCMTK on this machine" >/dev/null; done

## run: everything, on the embedded default unless DATABASE_URL / CELERY_BROKER_URL say otherwise
run: seed
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@if [ -n "$$CELERY_BROKER_URL" ]; then \
		$(BIN)/honcho start -f Procfile; \
	else \
		echo "No CELERY_BROKER_URL: tasks run in-process; starting web, dicom and hl7."; \
		$(BIN)/honcho start -f Procfile web dicom hl7; \
	fi

## test: the whole suite, in parallel
test: install-test
	$(BIN)/python -m pytest -n auto

## lint: ruff (lint and format check) and mypy
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var test-artifacts .pytest_cache .ruff_cache .mypy_cache

## viewer: rebuild the web viewer's bundle in static/viewer/ from frontend/viewer/ (needs node
## and npm; the built bundle is committed, so `make run` and `make test` do not need them)
.PHONY: viewer
viewer:
	cd frontend/viewer && npm ci --no-audit --no-fund && npm run build
