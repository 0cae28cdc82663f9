# powerlb: `make run` starts it in front of three demo backends; `make test` runs the whole suite.
# PYTHON=pypy3 uses a separate venv (.venv-pypy3).
PYTHON ?= python3
VENV ?= .venv$(if $(filter python3,$(notdir $(PYTHON))),,-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The dashboard test drives Debian's headless Chromium through chromedriver.
CHROMEDRIVER := /usr/bin/chromedriver
# The Redis tier tests start Debian's redis-server on an ephemeral port.
REDIS_SERVER := /usr/bin/redis-server

.PHONY: run test bench clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	@echo "powerlb on http://127.0.0.1:8080, admin on http://127.0.0.1:8081, demo backends on 9001-9003"
	@echo "try:  curl -i http://127.0.0.1:8080/            (X-Backend says which backend answered)"
	@echo "      curl -i http://127.0.0.1:8080/cached      (twice: the second says X-Cache: HIT, Age: N)"
	@echo "      curl http://127.0.0.1:8081/api/v1/stats"
	@echo "      $(BIN)/powerlb-ctl backends              (the runtime API; see README)"
	@echo "      open http://127.0.0.1:8081/                (the live dashboard)"
	@$(BIN)/python -m powerlb.demo --ports 9001,9002,9003 & demo=$$!; \
	trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	$(BIN)/twistd -n --pidfile= powerlb --config lb.yaml

$(CHROMEDRIVER):
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null

$(REDIS_SERVER):
	apt-get update -qq && apt-get install -y -qq redis-server >/dev/null

# mypy runs where it installs (CPython; the test extra leaves it out on PyPy).
test: $(STAMP) $(CHROMEDRIVER) $(REDIS_SERVER)
	$(BIN)/ruff check .
	if [ -x $(BIN)/mypy ]; then $(BIN)/mypy; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ~12 min: this tree and the baseline commit (bench/baseline.py, venvs cached under .bench/) side by side.
# A subset: make bench BENCH_ARGS="--rows proxied,hits --rounds 1 --output /tmp/b.md" (bench/run.py --help).
bench: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
		$(BIN)/python -m pip install -q -e '.[bench]' --config-settings editable_mode=compat
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .venv .venv-* .bench build *.egg-info .pytest_cache .hypothesis
