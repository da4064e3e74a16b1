# Two commands do everything on a fresh machine:
#   make run    the service on 127.0.0.1:8000 (TRAINYARD_PORT), embedded agent, SQLite in ./data
#   make test   every check and test, against a real Docker engine, SQLite and PostgreSQL
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: run test venv engine images service-image migrate lint bench clean-containers

run: venv engine images migrate
	$(BIN)/python run.py

test: venv
	scripts/ensure-docker.sh --gpu-standin
	scripts/ensure-images.sh
	scripts/ensure-service-image.sh --validate-compose
	scripts/ensure-docker.sh --gpu-standin
	scripts/ensure-postgres.sh
	scripts/ensure-browser.sh
	scripts/ensure-prometheus.sh
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

engine:
	scripts/ensure-docker.sh

images: engine
	scripts/ensure-images.sh

# The API/agent image (Dockerfile), built offline; docker-compose.yml runs it.
service-image: venv engine
	scripts/ensure-service-image.sh

migrate: venv
	$(BIN)/python run.py migrate

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The whole bench suite (bench/README.md): `make bench BENCH_ARGS=--quick` for a few minutes.
bench: venv engine images
	scripts/ensure-postgres.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean-containers:
	docker ps -aq --filter label=trainyard.job_id | xargs -r docker rm -f
