# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv on first use
# and (re)install the package whenever pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test install install-test clean

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

install: $(VENV)/.core-installed
install-test: $(VENV)/.test-installed

demo: $(VENV)/.core-installed
	$(VENV)/bin/imagen-jax demo

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
