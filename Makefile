# dialogsum-qlora: `make smoke` sets up and runs the job on its built-in tiny model; `make test` sets up and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without a GPU, install torch's CPU build first: otherwise pip pulls a multi-GB CUDA build for `torch>=2.4`.
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= all

.PHONY: setup smoke test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: torch comes with the job's requirements"; \
	else \
		echo "no GPU: installing torch's CPU build ($(TORCH_CPU))"; $(BIN)/pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

smoke: setup
	$(BIN)/python -m job train --config smoke

test: setup
	bash container/ci-setup.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not container and not slow"

lint: setup
	$(BIN)/ruff check job launch tests benchmarks
	$(BIN)/ruff format --check job launch tests benchmarks

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
