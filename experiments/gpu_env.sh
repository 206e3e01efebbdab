# Sourced by the one-call GPU scripts (gpu_check.sh, gpu_auxk.sh) after they set OUT: installs the
# wheels the device image lacks (grain, array_record, portpicker, tensorboardX, gguf, from .whl/ in
# the repository root) and records the GPU, driver and JAX versions in $OUT/gpu.txt.
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
