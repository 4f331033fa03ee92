# GaussianVision: `make demo`, `make test` and `make bench` create .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean gpu-check gpu-wheels

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.14.1 / torchvision==0.29.1 come from this machine's local wheel cache
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gsv demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/gsv bench all --out benchmarks/results

# On a GPU machine as it comes (its own python3 with torch and triton; no venv, no install, no
# network): every step time-boxed, about 7 minutes at most; see docs/gpu.md.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Where PyPI is reachable: the pure-Python wheels the tower step needs (open_clip and what a bare
# GPU machine lacks of its requirements) into .whl/, which gpu-check installs into a temporary folder.
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
	  open_clip_torch==$(shell sed -n 's/^open[-_]clip[-_]torch==//ip' requirements.lock) \
	  ftfy==$(shell sed -n 's/^ftfy==//p' requirements.lock) wcwidth==$(shell sed -n 's/^wcwidth==//p' requirements.lock)

clean:
	rm -rf $(VENV) out .pytest_cache
