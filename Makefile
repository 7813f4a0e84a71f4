# The README's two commands. Each creates and fills its own virtual environment on a fresh machine, then runs.
#
# torch: the CPU build. On these machines `pip install torch==2.13.0` takes the CPU wheel that lies on disk
# (pip's find-links); elsewhere override TORCH_SPEC, e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
# triton is pinned because the profiling hooks patch interpreter internals of that release.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0
EXTRAS ?= dev,bench,integration,models
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prompt-ops-installed

# Kernels run on the CPU through the Triton interpreter unless a GPU is present; it must be set before triton loads.
INTERPRET ?= $(shell $(PYTHON) -c "import shutil; print(0 if shutil.which('nvidia-smi') else 1)" 2>/dev/null || echo 1)
export TRITON_DEFAULT_FP_FUSION := 1

.PHONY: test bench gpu-check lint format clean

$(STAMP): pyproject.toml setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The numeric tiers run again with torch's CPU kernels forced to other instruction sets: they add in another order
# there, so a tolerance that only holds for this machine's order fails here, not on a user's machine. Inductor's
# generated code does not support the override (tests marked `inductor` stay out of those runs), and tests marked
# `order_independent` compare no floating-point sum, so a rerun would only repeat them.
NUMERIC_TIERS ?= tests/kernels tests/ops
CPU_CAPABILITIES ?= avx2 default

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	TRITON_INTERPRET=$(INTERPRET) $(PY) -m pytest -n 2 -q tests
	@for capability in $(CPU_CAPABILITIES); do \
		echo "numeric tiers under ATEN_CPU_CAPABILITY=$$capability"; \
		ATEN_CPU_CAPABILITY=$$capability TRITON_INTERPRET=$(INTERPRET) \
			$(PY) -m pytest -n 2 -q -m "not inductor and not order_independent" $(NUMERIC_TIERS) || exit 1; \
	done

bench: $(STAMP)
	TRITON_INTERPRET=$(INTERPRET) $(PY) -m bench.run --update-readme

# The first run on a CUDA machine (bench/gpu_check.py): the kernel and op tests on the GPU, the token-id check's cost,
# the op bench timed; results in bench/results/gpu/. DRY_RUN=1 lists what it would run, without CUDA.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check$(if $(DRY_RUN), --dry-run)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
