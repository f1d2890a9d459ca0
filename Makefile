# recsynth: the two commands of the quick start are `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs to be installed by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recsynth-installed
CONFIG ?= configs/demo.yaml
SOURCE ?= bundled
PYTEST_ARGS ?=

.PHONY: install demo test test-fast stop status lint compile clean bench-generator bench-recommender bench-serving audit-nonprivate

install: $(STAMP)

# torch goes first and alone: a loose torch requirement would pull a multi-GB CUDA build.
$(STAMP): requirements/torch.txt requirements/base.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch.txt
	$(PY) -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

demo: $(STAMP)
	$(PY) -m pipelines.demo --config $(CONFIG) --source $(SOURCE)

# The Redis online-store test starts its own redis-server on 127.0.0.1; this installs it if missing
# (apt-get). Without it that one test is skipped, with the reason, and the rest still run.
test: $(STAMP)
	bash scripts/redis-test-server.sh install || echo "warning: redis-server not installed: the Redis online-store test will be skipped"
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

stop: $(STAMP)
	$(PY) -m components.deploy.control stop

status: $(STAMP)
	$(PY) -m components.deploy.control status

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

compile: $(STAMP)
	$(PY) -m pipelines.compile --output build/recsynth-pipeline.yaml

# The pipeline without DP on the test slice: its audit must fail and block deployment. It keeps
# its own throwaway ledger (runs/nonprivate-audit-ledger.jsonl), since a run without DP makes a
# dataset's recorded spend unbounded and the ledger would refuse every later run on it; this
# target starts that ledger afresh each time so the demonstration can be repeated.
audit-nonprivate: $(STAMP)
	rm -f runs/nonprivate-audit-ledger.jsonl
	$(PY) -m pipelines.local --config configs/nonprivate-audit.yaml --source $(SOURCE)

# Benchmarks print their figures as ratios against a baseline measured in the same run, and write
# bench/results/<name>.json. BENCH_ARGS passes flags through (e.g. BENCH_ARGS=--quick).
BENCH_ARGS ?=

bench-generator: $(STAMP)
	$(PY) -m bench.generator $(BENCH_ARGS)

bench-recommender: $(STAMP)
	$(PY) -m bench.recommender $(BENCH_ARGS)

bench-serving: $(STAMP)
	$(PY) -m bench.serving $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
