# archdsl — one entry point for setting up, the demo job, the tests and the benchmarks.
#   make demo    set up .venv, then show a demo spec's table, compile it, run a forward pass and a generation (CPU)
#   make test    set up .venv, then run the test suite on the CPU (gpu-marked tests excluded: make gpu-test) and
#                compile every Triton kernel it ran in the interpreter for sm_90
#   make sm90-check  the kernel tests alone, each launch then compiled for sm_90 (no GPU needed)
#   make wheel   build the wheel and check it from a fresh venv (the grammar, and a Triton kernel interpreted)
PY ?= python3
# --no-cache-dir: downloaded wheels go into the venv only, not also into pip's cache (CI disks are small)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
SPEC ?= specs/demo-jamba.yaml
# not ?=: a PYTEST_ARGS in the environment must not change what CI runs (a subset: make test PYTEST_ARGS='-q -k ...')
PYTEST_ARGS = -q -m "not gpu" -n 2 --durations=15

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

bench: setup
	$(BIN)/python benchmarks/kernels.py

wheel: setup
	rm -rf dist build $(CURDIR)/.venv-wheel
	$(BIN)/pip wheel -q --no-deps -w dist .
	$(PY) -m venv $(CURDIR)/.venv-wheel
	$(CURDIR)/.venv-wheel/bin/pip install -q --no-cache-dir "$(TORCH)"
	$(CURDIR)/.venv-wheel/bin/pip install -q --no-cache-dir dist/archdsl-*.whl
	mkdir -p out  # (not dist/: what is there gets uploaded)
	cd dist && $(CURDIR)/.venv-wheel/bin/archdsl show "4×(7×mamba2, attn(shared)), moe every 2" > ../out/wheel-show.txt
	tail -5 out/wheel-show.txt
	cd dist && $(CURDIR)/.venv-wheel/bin/python -m archdsl check "7×mamba2, 1×attn(shared), moe every 2"
	cd dist && TRITON_INTERPRET=1 ARCHDSL_KERNELS=triton $(CURDIR)/.venv-wheel/bin/python -c "import torch, \
	archdsl.kernels as K; from archdsl.kernels.ssd.naive import ssd_scan_naive as ref; \
	t = [torch.randn(1, 20, 2, 4), torch.rand(1, 20, 2), -torch.rand(2), torch.randn(1, 20, 1, 8), \
	torch.randn(1, 20, 1, 8)]; err = (K.ssd_scan(*t, chunk_size=8) - ref(*t)).abs().max().item(); \
	print('ssd_scan from the wheel, its Triton kernels interpreted, against its naive twin: max error', err); \
	assert err < 1e-4"

clean:
	rm -rf $(VENV) $(CURDIR)/.venv-wheel build dist *.egg-info out
