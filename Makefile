# The README's two commands: `make demo` and `make test`. Every target creates or reuses .venv,
# so none needs an activated venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint clean bench run ui

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sam-lab sweep sweeps/quickstart.yaml --results results
	$(BIN)/sam-lab plot results/quickstart --out results/quickstart/figures
	@echo "Dashboard: $(BIN)/sam-lab ui --results results"

# make run SPEC=sweeps/grokking/curves.yaml VARIANT=tiny (VARIANT= for the full study)
SPEC    ?= sweeps/quickstart.yaml
VARIANT ?= tiny
run: $(STAMP)
	$(BIN)/sam-lab sweep $(SPEC) $(if $(VARIANT),--variant $(VARIANT)) --results results
	$(BIN)/sam-lab plot results/$$($(BIN)/python -c "import sys, yaml; \
		print(yaml.safe_load(open(sys.argv[1]))['name'])" $(SPEC))

ui: $(STAMP)
	$(BIN)/sam-lab ui --results results

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15 tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf results .pytest_cache
