#!/usr/bin/env bash
# One device call (issue 19 item 6): the bf16 train step at d_in 2304, F 65536, B 4096, k 64 on the
# lent GPU with its MFU and same-dtype GEMM ceiling, then the step's CPU tests under the image's JAX
# (0.11.x; we develop on 0.10.x). Run from the repository root with the wheels grain, array_record,
# portpicker, tensorboardX and gguf in .whl/ (the image lacks them); results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
# shellcheck source=experiments/gpu_env.sh
source experiments/gpu_env.sh
timeout 300 python3 -m jaxdict.cli bench step --dtype bfloat16 --d-in 2304 --features 65536 --batch-size 4096 \
  --k 64 --iters 20 --dead-frac 0.25 --json "$OUT/bench_step_h200.json" 2>&1 | tee "$OUT/bench_step.log"
echo "bench rc=$?"
JAX_PLATFORMS=cpu timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 --durations=10 \
  tests/test_sae_step.py tests/test_relu_l1_fused.py tests/test_step_builder.py tests/test_auxk.py \
  tests/test_run_layout.py tests/test_sweep.py tests/test_format_v1.py 2>&1 | tee "$OUT/pytest_jax011.log" | tail -25
echo "pytest rc=$?"
