# Every target sets up its own environment: a fresh clone needs only python3, make and the package index.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test smoke env clean-env

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

env: $(STAMP)

# The main job on the CPU default: data, tiny runs, the embnorm study, report.
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run_experiments.sh demo

smoke: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run_experiments.sh smoke --logs /tmp/nanogpt-smoke

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -rs -p no:cacheprovider tests

clean-env:
	rm -rf $(VENV)
