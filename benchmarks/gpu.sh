#!/usr/bin/env bash
# The checks for a machine with a CUDA GPU: XLA's int8 products, the unit tests on JAX and torch, the tables
# kept in host memory (integration/host_table_gpu.py), then the reverse projection
# benchmark at V = 256k, each backend's runs after the tests, alone on the GPU.
#
#   bash benchmarks/gpu.sh [all|tests|bench]
#
# Where the machine's Python lacks keras, put wheels of keras, namex and optree for it
# in .whl/ (pip download --no-deps --only-binary=:all: --python-version X.Y ...).
# Logs go to $OUT (default ./gpu-results). Environment: WORKERS (pytest-xdist workers
# per backend, 6), DIMS ("128 512 2048"), TOKENS (1024), ROUNDS (20), BENCH_SECONDS
# (time left for the benchmarks, 240), FORWARD ("" or "--forward").
set -u
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
what=${1:-all}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several JAX processes share the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/device.txt"
KERAS_BACKEND=jax python3 -c "import jax, torch, keras; print('jax', jax.__version__, 'torch', torch.__version__, 'keras', keras.__version__)" \
  | tee -a "$OUT/device.txt"

# XLA's int8 products on this GPU, for the feature counts `blocked_logits` trusts to them.
timeout 120 python3 benchmarks/xla_int8_dot.py 2>&1 | grep -v Warning | tee "$OUT/xla_int8_dot.txt"

if [[ $what != bench ]]; then
  for backend in jax torch; do
    KERAS_BACKEND=$backend timeout "${TEST_SECONDS:-400}" python3 -m pytest tests -q -p no:cacheprovider \
      -n "${WORKERS:-6}" > "$OUT/tests_$backend.log" 2>&1 &
  done
  for backend in jax torch; do
    KERAS_BACKEND=$backend timeout 120 python3 integration/host_table_gpu.py > "$OUT/host_table_$backend.log" 2>&1 &
  done
  wait
  for log in "$OUT"/tests_*.log "$OUT"/host_table_*.log; do echo "$log: $(tail -n 1 "$log")"; done
fi

if [[ $what != tests ]]; then
  deadline=$((SECONDS + ${BENCH_SECONDS:-240}))
  for dim in ${DIMS:-128 512 2048}; do
    for backend in jax torch; do
      left=$((deadline - SECONDS))
      ((left > 10)) || break 2
      KERAS_BACKEND=$backend timeout "$left" python3 benchmarks/bench_reverse.py --vocab 256000 --dim "$dim" \
        --tokens "${TOKENS:-1024}" --rounds "${ROUNDS:-20}" ${FORWARD:-} 2>&1 | grep -v Warning | tee -a "$OUT/reverse.md"
    done
  done
fi
