# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean java services browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11+ or run make PYTHON=python3" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/winback demo

test: $(STAMP) java services browser
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

# The --engine spark tests run a local Spark, which needs Java 17+: Debian's default runtime if there is none.
java:
	@command -v java >/dev/null 2>&1 || { echo "installing a Java runtime for Spark (apt-get)"; \
		apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; }

# The dashboard tests drive a real headless Chromium through Playwright; Playwright's own browser download
# needs the network, so the tests use Debian's chromium (WINBACK_CHROMIUM overrides the path).
browser:
	@command -v $${WINBACK_CHROMIUM:-chromium} >/dev/null 2>&1 || { echo "installing Chromium for the browser tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The service tests talk to a real PostgreSQL and Redis: started privately when none answers on loopback.
services:
	@bash scripts/test-services.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_models.py --memory-limit 8GB
	$(BIN)/python bench/online_shoppers.py
	$(BIN)/python bench/model_quality.py
	$(BIN)/python bench/recommend_eval.py
	$(BIN)/python bench/revisits.py
	$(BIN)/python bench/recommend_bound.py
	$(BIN)/python bench/bench_recommend.py
	$(BIN)/python bench/hillstrom.py --threads 1
	$(BIN)/python -m winback.decide.evaluate --customers 60000 --days 180 --seeds 0 1 2 3 4
	$(BIN)/python bench/bandit_quarter.py

clean:
	rm -rf $(VENV) .winback build *.egg-info
