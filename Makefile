# Everything a fresh machine needs: `make demo` and `make test` create .venv with pip and
# install the project into it; nothing else is installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qsim-installed
# Tests run on both cores by default; PYTEST_ARGS adds or overrides options.
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-quick bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/qsim run scenarios/default.toml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not verilator" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/qsim bench all

lint: $(STAMP)
	$(BIN)/qsim rtl --rows 8 --cols 8 --lint -o /dev/null

clean:
	rm -rf .qsim-cache .pytest_cache build dist *.egg-info
