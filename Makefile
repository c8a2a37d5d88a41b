# uniadc — every target creates the virtual environment first when it is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

DEMO_ROOT ?= demo_data
DEMO_STORE ?= runs/demo
# make ui DATABASE=postgres [DATABASE_URL=postgresql+asyncpg://user@host:5432/db] [UI_PORT=4200] [UI_WORKERS=1]
DATABASE ?= sqlite
DATABASE_URL ?=
UI_PORT ?= 4200
UI_WORKERS ?= 1

.PHONY: setup demo test bench bench-scale bench-mtd bench-reliability bench-server lint clean ui ui-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/uniadc data demo --root $(DEMO_ROOT)
	$(BIN)/uniadc priors validate $(DEMO_ROOT)
	$(BIN)/uniadc data inspect --kind demo --root $(DEMO_ROOT) --image-class brick
	$(BIN)/uniadc run --config configs/demo.yaml --store $(DEMO_STORE)
	@echo "report: $(DEMO_STORE)/demo-brick/report.html   contact sheet: $(DEMO_STORE)/demo-brick/contact_sheet.png"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/metrics.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/masks.py
	$(BIN)/python benchmarks/regenerate.py
	$(BIN)/python benchmarks/gpu_synthesis.py --cpu-overhead

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --store-repeats 2

bench-mtd: $(STAMP)
	$(BIN)/python benchmarks/mtd.py

bench-reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability.py

bench-server: $(STAMP)
	$(BIN)/python benchmarks/server_load.py $(BENCH_ARGS)

ui: $(STAMP)
	$(BIN)/uniadc server start --database $(DATABASE) $(if $(DATABASE_URL),--database-url $(DATABASE_URL)) \
		--port $(UI_PORT) --workers $(UI_WORKERS)

ui-stop: $(STAMP)
	$(BIN)/uniadc server stop

lint: $(STAMP)
	$(BIN)/ruff check uniadc schemas storage tasks flows tests benchmarks
	$(BIN)/ruff format --check uniadc schemas storage tasks flows tests benchmarks

clean:
	rm -rf $(DEMO_ROOT) runs .prefect
