# meshlab's scripted entry points. Every target sets itself up (.venv) first.
VENV     ?= .venv
MESHLAB  := $(VENV)/bin/meshlab
STAMP    := $(VENV)/.installed
TOPO     ?= bookinfo
PROVIDER ?= local
LAB      ?= $(basename $(notdir $(TOPO)))
PYTEST_ARGS ?=

.PHONY: lab test up down status clean validate setup bench scenario

$(STAMP): pyproject.toml scripts/bootstrap.sh
	@VENV=$(VENV) scripts/bootstrap.sh

setup: $(STAMP)

## lab: bring up the default topology on the local provider and open the TUI on it with traffic flowing
## (namespaces in mode none move to ambient, and a bounded load run starts: LOAD=... to change, LOAD= for none)
LOAD     ?= $(if $(filter bookinfo,$(LAB)),productpage:9080/productpage,)
lab: $(STAMP)
	$(MESHLAB) up $(TOPO) --provider $(PROVIDER)
	$(VENV)/bin/python -m tui --lab $(LAB) --mesh ambient $(if $(LOAD),--load $(LOAD))

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

## bench: every data path against the C baselines (stunnel, HAProxy), the sidecar-vs-ambient cost model
## and the scale check, in one run; writes $(BENCH_OUT)/bench.txt, bench.json and bench-cost.svg
BENCH_OUT  ?= bench-results
BENCH_ARGS ?=
bench: $(STAMP)
	scripts/install-bench-tools.sh
	mkdir -p $(BENCH_OUT)
	$(MESHLAB) bench -o $(BENCH_OUT)/bench.json --plot $(BENCH_OUT)/bench-cost.svg $(BENCH_ARGS) > $(BENCH_OUT)/bench.txt
	cat $(BENCH_OUT)/bench.txt

## scenario: run a workshop module with its checks: make scenario S=mtls [PROVIDER=docker] (default S=all)
S ?= all
scenario: $(STAMP)
	$(MESHLAB) scenario run $(S) --provider $(PROVIDER)
