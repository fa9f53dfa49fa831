# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv on first use
# and (re)install the package whenever pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test install install-test deb-data clean

# Debian packages with the offline datasets: Fashion-MNIST and the emoji PNGs (libjs-emojify).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EMOJI := /usr/share/javascript/emojify.js/images/emoji/smiley.png

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Core install: jax (CPU), flax, optax, orbax-checkpoint, einops, numpy, ml_collections.
$(VENV)/.core-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

# Test extra: pytest plus the oracles (torch==2.13.0 CPU wheel, diffusers).
$(VENV)/.test-installed: pyproject.toml $(VENV)/.core-installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

deb-data:
	@[ -f $(FASHION_MNIST) ] && [ -f $(EMOJI) ] || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends dataset-fashion-mnist libjs-emojify; }

install: $(VENV)/.core-installed
install-test: $(VENV)/.test-installed deb-data

demo: $(VENV)/.core-installed
	$(VENV)/bin/imagen-jax demo

test: $(VENV)/.test-installed deb-data
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# Side-by-side benchmark against the peers (imagen-pytorch, diffusers; benchmarks/peers.py). The
# peers live in their own environment, .venv-bench, never in .venv. imagen-pytorch is installed
# without its dependencies (they are listed in benchmarks/peers/requirements.txt, all but
# torchvision: see benchmarks/peers/README.md). BENCH_ARGS are passed to the harness, e.g.
# `make bench BENCH_ARGS="--reps 1 --warmup 1 --cases forward"`.
BENCH_VENV := .venv-bench
BENCH_PY   := $(BENCH_VENV)/bin/python
BENCH_ARGS ?=

.PHONY: bench install-bench

$(BENCH_PY):
	$(PYTHON) -m venv $(BENCH_VENV)
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_PY) -m pip install --quiet --upgrade pip

$(BENCH_VENV)/.installed: pyproject.toml benchmarks/peers/requirements.txt | $(BENCH_PY)
	$(BENCH_PY) -m pip install --quiet -e . -r benchmarks/peers/requirements.txt
	$(BENCH_PY) -m pip install --quiet --no-deps imagen-pytorch==2.1.0
	touch $@

install-bench: $(BENCH_VENV)/.installed

bench: $(BENCH_VENV)/.installed
	$(BENCH_PY) -m benchmarks.peers $(BENCH_ARGS)
