# Two commands on a fresh machine:  make demo  (run the demo workflow)  ·  make test  (run the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
ANATOMY := resources/anatomy/Hammers.nii.gz
# rules call `petiq` and `python`: the environment's, as after `. .venv/bin/activate`
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install resources lint rulegraph clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

$(ANATOMY): | $(BIN)/.installed
	$(BIN)/petiq resources fetch --dest resources/anatomy

resources: $(ANATOMY)

demo: install resources
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	@echo "Demo done. Figures: results/figures/  Tables: results/tables/  Logs: results/logs/"

test: install resources
	$(BIN)/python -m pytest

lint: install
	$(BIN)/snakemake --lint

rulegraph: install
	$(BIN)/snakemake --rulegraph --configfile config/demo.yaml | dot -Tpng > docs/rulegraph.png

clean:
	rm -rf results .snakemake
