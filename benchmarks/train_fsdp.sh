#!/usr/bin/env bash
# Issue 7 evidence: FSDP2 training on several GPUs (run from the repository root on a machine with
# 2 or more GPUs, e.g. 2 or 4 H200s):
#   1. hybrid-1b (1.3B, Mamba-2 + attention + SwiGLU) in fp32, 20 steps, the same global batch and
#      seed on 1 GPU, 2 GPUs (and 4 when present): the losses must agree to 1e-3 relative;
#   2. the same spec in bf16 (FSDP2 mixed precision): tokens/s and MFU per GPU on 1, 2 (, 4) GPUs;
#   3. resume on another GPU count: 2 GPUs stop after step 10, continue on 1 GPU (4 → 2 too when
#      there are 4); the losses must continue the uninterrupted run's;
#   4. jamba-v0.1 (52B) on the meta device sharded over all GPUs: per-GPU memory arithmetic, and one
#      step at sequence 512 where it fits (peak memory per GPU);
#   5. report: markdown tables for docs/benchmarks.md and OUT/report.json (exit 1 if a match fails).
# usage: benchmarks/train_fsdp.sh [OUT] [WHEELS]   (default OUT: bench_out/train_fsdp)
# With WHEELS (a folder of wheels, see benchmarks/device_env.sh), archdsl runs from the checkout
# without being installed, on a machine without network.
set -euo pipefail
OUT=${1:-bench_out/train_fsdp}
if [ -n "${2:-}" ]; then . "$(dirname "$0")/device_env.sh" "$2"; fi
PY=${PY:-python3}
G=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$G" -lt 2 ]; then echo "need 2 or more GPUs, found $G" >&2; exit 2; fi
mkdir -p "$OUT"
SPEC=benchmarks/specs/hybrid-1b.yaml
DATA="mqar:seq=1024,pairs=64,vocab=8192"
COMMON=(--data "$DATA" --steps 20 --batch 16 --lr 3e-4 --warmup 5 --seed 0)
run() { local n=$1; shift; echo "--- $n GPU(s): train $*"; torchrun --standalone --nproc-per-node "$n" -m archdsl train "$@"; }

# 1. fp32 loss curves: 1 vs 2 (vs 4) GPUs; the 2-GPU run checkpoints at step 10 for the resume
# KEEP_G1=1 keeps an earlier 1-GPU fp32 run in OUT/fp32_g1 (the same command; ~3 min of fp32 on one H200)
if [ "${KEEP_G1:-0}" = 1 ] && [ -f "$OUT/fp32_g1/metrics.jsonl" ]; then
  rm -rf "$OUT"/fp32_g[2-9] "$OUT"/bf16_g* "$OUT"/resume_*
else
  rm -rf "$OUT"/fp32_g* "$OUT"/bf16_g* "$OUT"/resume_*
  run 1 "$SPEC" "${COMMON[@]}" -o "$OUT/fp32_g1"
  rm -rf "$OUT/fp32_g1/checkpoints"  # each fp32 checkpoint of this 1.3B spec is ~22 GB (weights + AdamW)
fi
run 2 "$SPEC" "${COMMON[@]}" --save-every 10 -o "$OUT/fp32_g2"
if [ "$G" -ge 4 ]; then run 4 "$SPEC" "${COMMON[@]}" --save-every 10 -o "$OUT/fp32_g4"; fi

# 2. bf16 throughput (MFU against the dense bf16 peak, 989 TFLOP/s on H100/H200), the same global
#    batch (16 × 1024 tokens: 32 × 1024 without activation checkpointing outgrows one 141 GB card)
for n in 1 2 4; do
  if [ "$G" -ge "$n" ]; then run "$n" "$SPEC" "${COMMON[@]}" --bf16 -o "$OUT/bf16_g$n"; rm -rf "$OUT/bf16_g$n/checkpoints"; fi
done

# 3. resume on another GPU count: the 2-GPU run's step-10 checkpoint continued on 1 GPU (4 → 2 too)
mkdir -p "$OUT/resume_2to1/checkpoints"
cp "$OUT/fp32_g2/run.json" "$OUT/fp32_g2/metrics.jsonl" "$OUT/resume_2to1/"
mv "$OUT/fp32_g2/checkpoints/step_00000010" "$OUT/resume_2to1/checkpoints/"
run 1 "$SPEC" "${COMMON[@]}" --resume -o "$OUT/resume_2to1"
rm -rf "$OUT/resume_2to1/checkpoints"
if [ "$G" -ge 4 ]; then
  mkdir -p "$OUT/resume_4to2/checkpoints"
  cp "$OUT/fp32_g4/run.json" "$OUT/fp32_g4/metrics.jsonl" "$OUT/resume_4to2/"
  mv "$OUT/fp32_g4/checkpoints/step_00000010" "$OUT/resume_4to2/checkpoints/"
  run 2 "$SPEC" "${COMMON[@]}" --resume -o "$OUT/resume_4to2"
fi

# export the final 2-GPU checkpoint to an ordinary save
$PY -m archdsl export-checkpoint "$OUT/fp32_g2" -o "$OUT/export_g2"
rm -rf "$OUT"/fp32_g*/checkpoints "$OUT"/resume_*/checkpoints

# 4. jamba-v0.1 on meta, sharded over every GPU
torchrun --standalone --nproc-per-node "$G" benchmarks/train_fsdp.py jamba --out "$OUT/jamba" || true

# 5. the tables
$PY benchmarks/train_fsdp.py report "$OUT"
