#!/usr/bin/env bash
# Everything that needs the card: full-size kernel checks (pytest -m gpu), kernel timings against
# the peers in the same process, the whole-model figures, each fusion on/off, the Zoology table.
#   SWEEP=1 bash benchmarks/gpu_sweep.sh WHEELS OUTDIR    # GPU tests | Zoology MQAR      (~9 min)
#   SWEEP=2 bash benchmarks/gpu_sweep.sh WHEELS OUTDIR    # kernels | models, WKV6, fusions (~9 min)
# Each part fits one 10-minute call on a 2-GPU machine (the two lanes side by side); on one GPU
# the lanes run one after the other. LANE_KERNELS / LANE_MODELS name the stages to run instead
# (gpu_tests odd_inputs build_mamba_cuda bench_ssd bench_scan bench_wkv6 bench_model bench_fusions bench_generate bench_gemv step_configs profile ssd_configs wkv6_configs scan_configs zoology; a lane
# set to "-" runs nothing).
# WHEELS holds the peers as files (the fla-core wheel and the mamba-ssm sdist, whose Triton
# code runs without its CUDA extensions). Each stage has its own time limit, and every
# stage's log lands in OUTDIR even if a later one is cut short.
set -u
WHEELS=${1:-.whl}
OUTDIR=${2:-gpu-results}
mkdir -p "$OUTDIR"
# each failing test written down as it fails (tests/conftest.py), so a stage cut by its limit still says which
export ARCHDSL_FAIL_LOG="$OUTDIR/failures.log"
. "$(dirname "$0")/device_env.sh" "$WHEELS"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUTDIR/gpu.txt"

stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
    echo "rc=$? after $((SECONDS - t0))s" | tee -a "$OUTDIR/$name.log"
    tail -n "${TAIL:-25}" "$OUTDIR/$name.log" | grep -v "it/s\]\|s/it\]"
}
TESTS=${TESTS:-tests/model/test_fused_step.py tests/kernels/test_selective_scan.py tests/kernels/test_conv1d.py tests/kernels/test_wkv4.py tests/kernels/test_norm_gemv.py tests/model/test_model.py tests/kernels/test_wkv6.py tests/kernels/test_ssd.py}
gpu_tests() { stage gpu_tests "${T_TESTS:-210}" python3 -m pytest -v -m gpu -p no:cacheprovider --timeout "${T_TEST:-90}" ${PYTEST_ARGS:-} $TESTS; }
# every op on odd inputs (mixed dtypes, strided views, zero sizes, garbage), compiled for the card
odd_inputs() { stage odd_inputs "${T_ODD:-180}" python3 -m pytest -q -p no:cacheprovider -n "${ODD_JOBS:-4}" tests/kernels/test_odd_inputs.py; }
bench_ssd() { stage bench_ssd "${T_SSD:-200}" python3 benchmarks/kernels.py --only kernels_ssd --json "$OUTDIR/ssd.json"; }
# mamba_ssm's CUDA selective-scan forward, built from the sdist for bench_scan's peer row (a stage of its own, so
# that its compile is not charged to the timing stage's limit)
build_mamba_cuda() { stage build_mamba_cuda "${T_BUILD:-300}" python3 benchmarks/mamba_cuda.py; }
bench_scan() { stage bench_scan "${T_SCAN:-90}" python3 benchmarks/kernels.py --only kernels_selective_scan --quick --json "$OUTDIR/scan.json"; }
bench_wkv6() { stage bench_wkv6 "${T_WKV:-200}" python3 benchmarks/kernels.py --only kernels_wkv6 --json "$OUTDIR/wkv6.json"; }
bench_model() { stage bench_model "${T_MODEL:-190}" python3 benchmarks/model.py --quick --json "$OUTDIR/model.json" $MODEL_ARGS; }
bench_fusions() { stage bench_fusions "${T_FUSIONS:-150}" python3 benchmarks/fusions.py --json "$OUTDIR/fusions.json"; }
bench_generate() { stage bench_generate "${T_GENERATE:-240}" python3 benchmarks/generate.py --iters 3 --json "$OUTDIR/generate.json"; }
profile() { for m in ${PROFILE_MODELS:-llama-1.3b}; do
                stage "profile_decode_$m" "${T_PROFILE:-150}" python3 benchmarks/breakdown.py decode --model "$m" \
                    --json "$OUTDIR/profile_decode_$m.json"; done
            stage profile_ssd "${T_PROFILE:-150}" python3 benchmarks/breakdown.py ssd --json "$OUTDIR/profile_ssd.json"; }
bench_gemv() { stage bench_gemv "${T_GEMV:-150}" python3 benchmarks/kernels.py --only kernels_norm_gemv --json "$OUTDIR/gemv.json"; }
step_configs() { stage step_configs "${T_STEPCFG:-200}" python3 benchmarks/step_configs.py --json "$OUTDIR/step_configs.json"; }
ssd_configs() { stage ssd_configs "${T_CONFIGS:-330}" python3 benchmarks/ssd_configs.py --json "$OUTDIR/ssd_configs.json"; }
wkv6_configs() { stage wkv6_configs "${T_WKVCFG:-300}" python3 benchmarks/wkv6_configs.py --json "$OUTDIR/wkv6_configs.json"; }
scan_configs() { stage scan_configs "${T_SCANCFG:-150}" python3 benchmarks/scan_configs.py --json "$OUTDIR/scan_configs.json"; }
zoology() { stage zoology "${T_ZOO:-500}" python3 benchmarks/zoology_mqar.py --jobs 12 --steps 20000 --lrs 2e-3 --budget-s "${ZOO_BUDGET:-420}" --out "$OUTDIR/zoology.json"; }
MODEL_ARGS=${MODEL_ARGS:-}
case "${SWEEP:-1}" in
    1) : "${T_TESTS:=540}"; LANE_KERNELS=${LANE_KERNELS:-gpu_tests}; LANE_MODELS=${LANE_MODELS:-zoology} ;;
    2) : "${T_SSD:=330}" "${T_SCAN:=200}"; LANE_KERNELS=${LANE_KERNELS:-bench_ssd bench_scan}
       LANE_MODELS=${LANE_MODELS:-bench_model bench_wkv6 bench_fusions} ;;
    *) echo "SWEEP must be 1 or 2" >&2; exit 2 ;;
esac
lane() { for s in $1; do [ "$s" = - ] || "$s"; done; }
# With two GPUs the lanes run side by side, one per card (each timing has its card to itself);
# with one, one after the other.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    CUDA_VISIBLE_DEVICES=0 lane "$LANE_KERNELS" & CUDA_VISIBLE_DEVICES=1 lane "$LANE_MODELS" & wait
else
    lane "$LANE_KERNELS"; lane "$LANE_MODELS"
fi
