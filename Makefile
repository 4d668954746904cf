# Two entry points, both idempotent: the install step re-runs only when pyproject.toml changes.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench gpu-check clean

# torch first, from its own line, so that pip never resolves a CUDA build as a dependency.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

## demo: install and run the main job on the embedded default (Gemma 3 270M + built-in corpus)
demo: $(VENV)/.installed
	$(VENV)/bin/crosslayer run

## test: install with dev extras (+ headless Chromium for the report test), lint, type-check, test
test: $(VENV)/.installed-dev
	bash scripts/install_browser.sh
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run_all

## gpu-check: on a CUDA machine, the quick profile in bf16 and fp32 and the collection benchmark
## on the GPU, compared with a CPU fp32 run within stated tolerances (docs/gpu.md); exits 2 on CPU
gpu-check: $(VENV)/.installed-dev
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
