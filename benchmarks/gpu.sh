#!/usr/bin/env bash
# Every headline figure on a machine with a CUDA GPU, in one run of under 10 minutes (JAX and torch),
# after a check of XLA's int8 products:
#
#   bash benchmarks/gpu.sh [all|tests|bench|smoke]
#
#   tests  the unit tests on JAX and torch (in parallel) and the tables kept in
#          host memory (integration/host_table_gpu.py)
#   bench  lookups in every state at 65,536 ids (against the native gather and the copy bandwidth),
#          training steps with sparse_optimizer against keras and the native sparse step at 4M rows, the
#          DLRM-like recommender collection (benchmarks/bench_collection.py), dynamic tables against
#          static ones (benchmarks/bench_dynamic.py, speed), and last the reverse projection at V = 256k
#          (forward at D = 512, forward + backward at D = 2,048, tied and untied)
#   all    tests, then bench
#   smoke  every part of bench at tiny sizes, on whatever device there is (the CPU in CI)
#
# Where the machine's Python lacks keras, put wheels of keras, namex, optree, keras-rs, numba and llvmlite for it in .whl/
# (pip download --no-deps --only-binary=:all: --python-version X.Y ...). Results go to $OUT (default
# ./gpu-results), each part's table in a file of its own. Environment: WORKERS (pytest-xdist workers per
# backend, 8), TEST_SECONDS (240), BENCH_SECONDS (the benchmarks' share, 330).
set -u
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
what=${1:-all}
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several JAX processes share the GPU
PY=${PYTHON:-python3}
failed=0

if [[ $what == smoke ]]; then
  VOCAB=1000 TRAIN_VOCABS=1000 IDS=256 REVERSE_VOCAB=512 REVERSE_TOKENS=8 ROUNDS=1 BENCH_SECONDS=${BENCH_SECONDS:-900}
  COLLECTION="--scale 0.001 --batch 64 --rounds 1 --steps 1" DYNAMIC="--capacities 16384 --resident 4096 --rounds 1"
else
  VOCAB=1000000 TRAIN_VOCABS=4000000 IDS=65536 REVERSE_VOCAB=256000 REVERSE_TOKENS=1024 ROUNDS=10 COLLECTION="--rounds 5" DYNAMIC=""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/device.txt"
fi
KERAS_BACKEND=jax $PY -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices()[0].device_kind, \
'torch', torch.__version__, 'keras', keras.__version__)" | tee -a "$OUT/device.txt"

# Runs "$@" within what is left of the benchmarks' time, its output (but warnings) into $OUT/$name.
part() {
  local name=$1 left=$((deadline - SECONDS))
  shift
  if ((left < 10)); then echo "$name: skipped, no time left" | tee -a "$OUT/$name"; return; fi
  timeout "$left" "$@" 2>&1 | grep -v Warning >> "$OUT/$name"
  local status=${PIPESTATUS[0]}
  echo "$name: exit $status"
  ((status == 0)) || failed=1
}

# XLA's int8 products on this device, for the feature counts `blocked_logits` trusts to them.
timeout 120 $PY benchmarks/xla_int8_dot.py 2>&1 | grep -v Warning | tee "$OUT/xla_int8_dot.txt"
((PIPESTATUS[0] == 0)) || failed=1

if [[ $what == all || $what == tests ]]; then
  for backend in jax torch; do
    # SIGINT at the limit, so pytest still prints its summary of what failed.
    KERAS_BACKEND=$backend timeout -s INT -k 30 "${TEST_SECONDS:-240}" $PY -m pytest tests -q -rfEs \
      -p no:cacheprovider -n "${WORKERS:-8}" > "$OUT/tests_$backend.log" 2>&1 &
    KERAS_BACKEND=$backend timeout 120 $PY integration/host_table_gpu.py > "$OUT/host_table_$backend.log" 2>&1 &
  done
  wait
  for log in "$OUT"/tests_*.log "$OUT"/host_table_*.log; do echo "$log: $(tail -n 1 "$log")"; done
fi

if [[ $what != tests ]]; then
  deadline=$((SECONDS + ${BENCH_SECONDS:-330}))
  part lookup.md $PY benchmarks/bench_lookup.py --backends jax torch --vocab "$VOCAB" --ids "$IDS" \
    --out "$OUT/lookup"
  part train_sparse.md $PY benchmarks/bench_train.py --sparse-optimizer --backends jax torch \
    --vocab $TRAIN_VOCABS --contenders ours keras native --optimizers sgd adagrad adam --out "$OUT/train_sparse"
  for backend in jax torch; do
    part collection.md env KERAS_BACKEND=$backend $PY benchmarks/bench_collection.py $COLLECTION
  done
  part dynamic.md $PY benchmarks/bench_dynamic.py --backends jax torch --parts speed $DYNAMIC --out "$OUT/dynamic"
  # Last: measured on an H200 before (benchmarks/results/reverse_256k_gpu.md).
  for backend in jax torch; do
    part reverse.md env KERAS_BACKEND=$backend $PY benchmarks/bench_reverse.py --vocab "$REVERSE_VOCAB" --dim 512 \
      --tokens "$REVERSE_TOKENS" --rounds "$ROUNDS" --forward
    part reverse.md env KERAS_BACKEND=$backend $PY benchmarks/bench_reverse.py --vocab "$REVERSE_VOCAB" --dim 2048 \
      --tokens "$REVERSE_TOKENS" --rounds "$ROUNDS" --states int8,int4,int4_lora
  done
fi
exit $failed
