# Two entry points on a fresh machine: `make demo` (whole pipeline, CPU) and `make test`.
# Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
# Tests run in parallel on the CI's 2 cores; each worker keeps BLAS to one thread.
PYTEST_ARGS ?= -n 2 --durations=15

.PHONY: demo test env clean-notebooks

env: $(VENV)/.installed

# torch and torchvision are installed first and pinned as a pair: 2.14.1 + 0.29.1 import together
# (PyPI's torchvision does not import beside the CPU-only 2.13.0 wheel, and open_clip needs torchvision).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

demo: env
	$(BIN)/c2f run --config $(CONFIG)

test: env
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Strip outputs from every notebook in place (tests/test_notebooks_clean.py checks this was done).
clean-notebooks: env
	$(BIN)/nbstripout notebooks/*.ipynb
