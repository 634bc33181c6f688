# climaborough: `make demo` and `make test` work from a fresh clone (python3 and a C library are all it needs).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PACKAGES := ngsi smart_data_models broker agents kpi twin api cli broker_config bench
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint bench venv clean-data

venv: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Reinstall when the dependencies change.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

demo: $(INSTALLED)
	$(BIN)/climaborough demo $(DEMO_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)

# pytest exits 5 when it collected nothing; that must fail loudly, never pass as "green".
test: lint
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Benchmarks print comparable JSON; each bench/<name>.py runs as `python -m bench.<name>`.
# BENCH_DATA: the folder of the 12 Beijing station files (UCI dataset 501) that bench.files,
# bench.kpi and bench.twin read; without it those three are skipped.
BENCH_DATA ?=
bench: $(INSTALLED)
	@set -e; for file in bench/*.py; do \
		name=$$(basename $$file .py); \
		case "$$name" in __init__|_harness|query_bench) continue;; esac; \
		case "$$name" in files|kpi|twin) \
			if [ -z "$(BENCH_DATA)" ]; then echo "== bench.$$name skipped: set BENCH_DATA" >&2; continue; fi; \
			echo "== bench.$$name" >&2; $(BIN)/python -m bench.$$name --data "$(BENCH_DATA)"; continue;; \
		esac; \
		echo "== bench.$$name" >&2; \
		$(BIN)/python -m bench.$$name; \
	done

clean-data:
	rm -rf .data
