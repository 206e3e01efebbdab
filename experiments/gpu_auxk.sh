#!/usr/bin/env bash
# One device call (issue 18): AuxK's cost with 5 % of latents dead on the lent GPU, as
# `jaxdict bench steady` measures it on the CPU (the dead step against the same step without AuxK,
# the fresh step, a logged step; a sweep axis of 4 in the first run; alternating rounds, one
# device). Three runs: the CPU benchmark's shape (d 640, F 16,384, B 4,096, k 64) with its fp32
# sparse step, the same shape as a GPU user runs it (bf16 matmuls, dense decode), and a Gemma 2
# 2B-sized SAE (d 2304, F 65,536). Run from the repository root with the wheels gpu_env.sh names
# in .whl/; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_auxk}
# shellcheck source=experiments/gpu_env.sh
source experiments/gpu_env.sh
steady() {
  local name=$1; shift
  timeout 200 python3 -m jaxdict.cli bench steady --mesh 1x1 --rounds 21 --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -v "^WARNING\|^I0000\|^W0000" | tee "$OUT/$name.log"
  echo "$name rc=${PIPESTATUS[0]}"
}
steady steady_fp32_sparse
steady steady_bf16_dense --dtype bfloat16 --decode dense --sweep 0
steady steady_d2304_f65536_bf16_dense --dtype bfloat16 --decode dense --d-in 2304 --features 65536 --sweep 0
