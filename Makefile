# archdsl — one entry point for setting up, the demo job, the tests and the benchmarks.
#   make demo    set up .venv, then compile a demo spec, show its table, run a forward pass and a generation (CPU)
#   make test    set up .venv, then run the test suite (CPU; GPU tests are skipped without CUDA) and
#                compile every Triton kernel it ran in the interpreter for sm_90
#   make sm90-check  the kernel tests alone, each launch then compiled for sm_90 (no GPU needed)
#   make wheel   build the wheel and check it from a fresh venv
PY ?= python3
# --no-cache-dir: downloaded wheels go into the venv only, not also into pip's cache (CI disks are small)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
SPEC ?= specs/demo-jamba.yaml
PYTEST_ARGS ?= -q -m "not gpu" -n 2 --durations=15

.PHONY: setup demo test gpu-test sm90-check bench wheel clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir "$(TORCH)"
	$(BIN)/pip install -q --no-cache-dir -e ".[test]"
	touch $@

demo: setup
	$(BIN)/archdsl show $(SPEC)
	$(BIN)/archdsl compile $(SPEC) -o out/demo --seed 0
	$(BIN)/archdsl run out/demo --prompt-len 32 --gen 32

# the suite, recording every interpreted Triton launch; then each distinct launch compiled for sm_90
test: setup
	@rm -f out/launches.jsonl; mkdir -p out
	@ARCHDSL_RECORD_LAUNCHES=$(CURDIR)/out/launches.jsonl $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	$(BIN)/python tests/kernels/sm90.py out/launches.jsonl --jobs 2 --regs

gpu-test: setup
	$(BIN)/python -m pytest -q -m gpu

# every Triton kernel the interpreted kernel tests launch, compiled for sm_90 (catches what the
# interpreter accepts and the compiler rejects; no GPU needed)
sm90-check: setup
	rm -f out/launches.jsonl; mkdir -p out
	ARCHDSL_RECORD_LAUNCHES=$(CURDIR)/out/launches.jsonl $(BIN)/python -m pytest -q -m "not gpu" -n 2 tests/kernels
	$(BIN)/python tests/kernels/sm90.py out/launches.jsonl --regs

bench:
	$(PY) benchmarks/kernels.py

wheel: setup
	rm -rf dist build $(CURDIR)/.venv-wheel
	$(BIN)/pip wheel -q --no-deps -w dist .
	$(PY) -m venv $(CURDIR)/.venv-wheel
	$(CURDIR)/.venv-wheel/bin/pip install -q --no-cache-dir "$(TORCH)"
	$(CURDIR)/.venv-wheel/bin/pip install -q --no-cache-dir dist/archdsl-*.whl
	cd dist && $(CURDIR)/.venv-wheel/bin/archdsl show "4×(7×mamba2, attn(shared)), moe every 2" | tail -5
	cd dist && $(CURDIR)/.venv-wheel/bin/python -m archdsl check "7×mamba2, 1×attn(shared), moe every 2"

clean:
	rm -rf $(VENV) build dist *.egg-info out
