# make bench   set up (first time) and run the default suite; results land in results/
# make test    set up (first time), lint and run the tests
# make fit     the largest batch that trains per model (`bench fit $(FIT_ARGS)`)
# make bench-dist NPROC=N   collectives and DDP scaling on N ranks of this node, under torchrun
#                         (`bench comm $(COMM_ARGS)`; NPROC default: the GPUs NVML sees, else 2)
#
# PYTHON=/path/to/python  use an interpreter that already has the dependencies and skip setup
#                         (e.g. a GPU machine without a package registry)
# SUITE=name|path.toml    suite for make bench (default: default)
# ARGS="..."              extra arguments for `bench run`, e.g. ARGS="--device gpu --gpus all"
# PYTEST_ARGS="..."       extra arguments for pytest
# COMM_ARGS="..."         arguments for `bench comm`, e.g. COMM_ARGS="--parts collectives --sizes 1MiB:4GiB"
# FIT_ARGS="..."          arguments for `bench fit`, e.g. FIT_ARGS="gpt2-small --memory-limit 24GiB"
# REPORT_ARGS="..."       extra arguments for `bench report`, e.g. REPORT_ARGS="--prices p.toml"
# BENCH_CHROMIUM=path     browser for the tests that render HTML (default: chromium on PATH;
#                         make test installs Debian's chromium as root, else they skip)

VENV ?= .venv
SUITE ?= default
ARGS ?=
PYTEST_ARGS ?=
REPORT_ARGS ?=
FIT_ARGS ?=
COMM_ARGS ?=
NPROC ?=
PYTHON ?=

ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
BENCH_READY := $(VENV)/.bench-ready
TEST_READY := $(VENV)/.test-ready
else
PY := $(PYTHON)
BENCH_READY :=
TEST_READY :=
endif

.PHONY: bench bench-dist test lint info list report check-timing fit setup clean

bench: $(BENCH_READY)
	$(PY) -m bench run $(SUITE) $(ARGS)

# NPROC is worked out when the recipe runs, after setup: one rank per GPU NVML sees, else 2.
bench-dist: $(BENCH_READY)
	$(PY) -m torch.distributed.run --standalone \
		--nproc-per-node $(or $(strip $(NPROC)),$(shell $(PY) -m bench.dist.nproc)) \
		-m bench comm $(COMM_ARGS)

test: $(TEST_READY) lint
	$(PY) scripts/ensure_chromium.py
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(TEST_READY)
	@if $(PY) -m ruff --version >/dev/null 2>&1; then \
		$(PY) -m ruff check bench tests scripts && $(PY) -m ruff format --check bench tests scripts; \
	else echo "lint: ruff is not installed for $(PY); skipped"; fi

info: $(BENCH_READY)
	$(PY) -m bench info

list: $(BENCH_READY)
	$(PY) -m bench list

report: $(BENCH_READY)
	$(PY) -m bench report results $(REPORT_ARGS)

check-timing: $(BENCH_READY)
	$(PY) -m bench check-timing $(ARGS)

fit: $(BENCH_READY)
	$(PY) -m bench fit $(FIT_ARGS)

setup: $(TEST_READY)

$(VENV)/.bench-ready: pyproject.toml scripts/setup_env.py
	python3 scripts/setup_env.py $(VENV)

$(VENV)/.test-ready: pyproject.toml scripts/setup_env.py
	python3 scripts/setup_env.py $(VENV) --dev

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
