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
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
