# Two entry points (README Quick start): `make run` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup run center test bench train clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The pinned CPU build first: a bare `torch` requirement would pull several GB of CUDA packages.
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e ".[test]"
	touch $(STAMP)

# The main job: certify the embedded digits classifier (sigma=0.25, n0=100, n=10000, alpha=0.001).
run: $(STAMP)
	$(VENV)/bin/smoothgen certify --out results/certify.jsonl

center: $(STAMP)
	$(VENV)/bin/smoothgen center --out results/center.jsonl

# The whole suite: unit tests and the benchmark suite run once as tests (timing off).
test: $(STAMP)
	$(VENV)/bin/pytest --benchmark-disable

bench: $(STAMP)
	$(VENV)/bin/pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds

train: $(STAMP)
	$(PY) -m smoothgen.models.train all

clean:
	rm -rf $(VENV) build *.egg-info results
