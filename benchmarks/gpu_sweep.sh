#!/usr/bin/env bash
# One GPU session, everything that needs the card: full-size kernel checks (pytest -m gpu),
# kernel timings against the peers in the same process, and the whole-model figures.
#   bash benchmarks/gpu_sweep.sh WHEELS OUTDIR
# WHEELS holds the peers as files (the fla-core wheel and the mamba-ssm sdist, whose Triton
# code runs without its CUDA extensions). Each stage has its own time limit, and every
# stage's log lands in OUTDIR even if a later one is cut short.
set -u
WHEELS=${1:-.whl}
OUTDIR=${2:-gpu-results}
mkdir -p "$OUTDIR"
SITE=$(mktemp -d)
PKG=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
tar xzf "$WHEELS"/mamba_ssm-*.tar.gz -C "$SITE" --strip-components=1 --wildcards '*/mamba_ssm/*'
: > "$SITE/mamba_ssm/__init__.py"  # its own __init__ imports CUDA extensions that are not built
# archdsl as the wheel lays it out: grammar/ and kernels/ inside the package
mkdir -p "$PKG/archdsl" && cp -r archdsl/. "$PKG/archdsl/" && cp -r kernels "$PKG/archdsl/kernels" && cp -r grammar "$PKG/archdsl/grammar"
export PYTHONPATH="$PKG:$SITE:$PWD/benchmarks" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUTDIR/gpu.txt"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
    echo "rc=$? after $((SECONDS - t0))s" | tee -a "$OUTDIR/$name.log"
    tail -n "${TAIL:-25}" "$OUTDIR/$name.log"
}
TESTS=${TESTS:-tests/model/test_fused_step.py tests/kernels/test_wkv6.py tests/kernels/test_ssd.py tests/kernels/test_selective_scan.py tests/kernels/test_conv1d.py tests/model/test_model.py}
stage gpu_tests "${T_TESTS:-240}" python3 -P -m pytest -v -m gpu -p no:cacheprovider --timeout 60 $TESTS
stage bench_ssd "${T_SSD:-110}" python3 -P benchmarks/kernels.py --only kernels_ssd --json "$OUTDIR/ssd.json"
stage bench_wkv6 "${T_WKV:-80}" python3 -P benchmarks/kernels.py --only kernels_wkv6 --json "$OUTDIR/wkv6.json"
stage bench_scan "${T_SCAN:-60}" python3 -P benchmarks/kernels.py --only kernels_selective_scan --quick --json "$OUTDIR/scan.json"
stage bench_model "${T_MODEL:-150}" python3 -P benchmarks/model.py --quick --json "$OUTDIR/model.json"
