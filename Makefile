# Everything a fresh machine needs: `make demo` and `make test` create .venv with pip and
# install the project into it; nothing else is installed by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qsim-installed
# Tests run on both cores by default; PYTEST_ARGS adds or overrides options.
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-full test-quick test-isa bench lint clean clean-cache

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON) -m venv"; $(PYTHON) -m venv $(VENV); }
	@echo "upgrading pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing qsim and its test dependencies into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/qsim run scenarios/default.toml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything in make test plus the whole co-simulation matrix (tests marked 'full').
test-full: $(STAMP)
	$(BIN)/python -m pytest --full $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not verilator" $(PYTEST_ARGS)

# The instruction-path tier: the engine parity tests again under qemu-x86_64 emulating an
# x86-64 without AVX2 (Nehalem: exact integer GEMMs, SSE2 element-wise kernels) and one with
# AVX2 but no VNNI (Haswell: saturating u8 x s8 pairs), whatever CPU this machine has, so both
# kinds of CPU are tested live on every machine. Needs Debian's qemu-user (qemu-x86_64).
ISA_CPUS  ?= Nehalem Haswell
ISA_TESTS ?= tests/nn/test_isa_parity.py tests/quant/test_hazards.py tests/quant/test_ortops.py \
             tests/quant/test_onnxruntime_parity.py tests/quant/test_isa_golden.py
test-isa: $(STAMP)
	@command -v qemu-x86_64 >/dev/null || { echo "make test-isa needs qemu-x86_64 (Debian: apt-get install qemu-user)" >&2; exit 2; }
	@for cpu in $(ISA_CPUS); do \
	  echo "== engine parity tests under qemu-x86_64 -cpu $$cpu =="; \
	  qemu-x86_64 -cpu $$cpu $(BIN)/python -m pytest -p no:xdist -p no:cacheprovider -q $(ISA_TESTS) || exit 1; \
	done

bench: $(STAMP)
	$(BIN)/qsim bench all

lint: $(STAMP)
	$(BIN)/qsim rtl --rows 8 --cols 8 --lint -o /dev/null

# The Verilator build cache: $QSIM_CACHE_DIR, else $XDG_CACHE_HOME/qsim, else ~/.cache/qsim
# (an empty variable counts as unset), the rule of qsim.cosim.build.cache_root. Only the
# entries qsim creates are removed, so a QSIM_CACHE_DIR that holds other files is safe.
clean-cache:
	@dir="$${QSIM_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/qsim}"; \
	case "$$dir" in "~") dir="$$HOME";; "~/"*) dir="$$HOME/$${dir#\~/}";; esac; \
	echo "removing the Verilator build cache in $$dir"; \
	if [ -d "$$dir" ]; then \
	  cd "$$dir" && rm -rf -- cocotb-* native-* runtime-* .runtime-* verilator-*.lock && \
	  { rmdir -- "$$dir" 2>/dev/null || true; }; \
	fi

clean: clean-cache
	rm -rf .qsim-cache .pytest_cache build dist *.egg-info
