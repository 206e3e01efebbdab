#!/usr/bin/env bash
# One device call (issues 16/17): the cross-layer transcoder step at Gemma 3 270M's shape (18 layers,
# d 640, F 4096 per layer, B 4096) on the lent GPU, fp32 and bf16, then the transcoder, CLT and
# checkpoint-format tests on the image's CPU under its JAX (0.11.x; we develop on 0.10.x). Run from the
# repository root with the wheels grain, array_record, portpicker, tensorboardX and gguf in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
for dtype in float32 bfloat16; do
  timeout 200 python3 -m jaxdict.cli bench clt --dtype $dtype --clt-layers 18 --d-in 640 --clt-features 4096 \
    --batch-size 4096 --k 32 --iters 10 --clt-archs jumprelu,topk,batchtopk --json "$OUT/bench_clt_h200_$dtype.json" \
    2>&1 | tee "$OUT/bench_clt_$dtype.log"
  echo "bench $dtype rc=$?"
done
JAX_PLATFORMS=cpu timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 --durations=10 \
  tests/test_transcoder.py tests/test_clt_step.py tests/test_format_v1.py tests/test_multi_source.py \
  2>&1 | tee "$OUT/pytest_jax011.log" | tail -25
echo "pytest rc=$?"
