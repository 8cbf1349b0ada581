# meshlab's scripted entry points. Every target sets itself up (.venv) first.
VENV     ?= .venv
MESHLAB  := $(VENV)/bin/meshlab
STAMP    := $(VENV)/.installed
TOPO     ?= bookinfo
PROVIDER ?= local
LAB      ?= $(basename $(notdir $(TOPO)))
PYTEST_ARGS ?=

.PHONY: lab test up down status clean validate setup bench

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@VENV=$(VENV) scripts/bootstrap.sh

setup: $(STAMP)

## lab: bring up the default topology on the local provider and open the TUI
lab: $(STAMP)
	$(MESHLAB) up $(TOPO) --provider $(PROVIDER)
	$(MESHLAB) tui --lab $(LAB)

## test: run the whole test suite
test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

up: $(STAMP)
	$(MESHLAB) up $(TOPO) --provider $(PROVIDER)

down: $(STAMP)
	$(MESHLAB) down $(LAB)

status: $(STAMP)
	$(MESHLAB) status $(LAB)

clean: $(STAMP)
	$(MESHLAB) clean

validate: $(STAMP)
	$(MESHLAB) validate topologies/*.yaml

## bench: the L4 data path against stunnel (installs the baselines first)
bench: $(STAMP)
	scripts/install-bench-tools.sh
	$(MESHLAB) bench l4 -o bench-l4.json
