#!/usr/bin/env bash
# The GPU checks in stages, each well inside the device tool's 10 minutes per command (estimates
# for one H100 with 16 CPU cores, a fresh machine's build included):
#
#   first-contact  the first command on a lent GPU, all of it in FIRST_CONTACT_S seconds (default
#              510, under 9 minutes): the build (timed), the CUDA tests (xdist and a per-test
#              timeout when installed), compute-sanitizer memcheck and racecheck on the small
#              odd cases, the quick benchmarks of every family (focal loss 16 x 120k x 80, assign,
#              nms and batched_nms 1k-100k, postprocess, the R50 step with torchvision's
#              accelerated compute_loss); each step gets what is left of the time. Writes 7 files:
#              build.log, tests.log, sanitize.log, bench.log, bench/cuda-quick.json and .png,
#              summary.txt (the lines that say what passed, failed and how fast)
#   build      build the CUDA kernels (TORCH_CUDA_ARCH_LIST=9.0), print the build
#              configuration, check every op has a CUDA kernel                      ~2-3 min
#   tests      build if needed, then the CUDA tests (pytest -k cuda: every [cuda]
#              parametrisation, tests/test_cuda.py, the device asserts)             ~5 min
#   quick      build if needed, quick CUDA benchmarks of every family               ~4 min
#   focal      build if needed, full focal-loss benchmark (16 x 120k x 80, fp32 and
#              bf16; reference eager and compiled; torchvision)                     ~5 min
#   boxes      build if needed, full assign and nms / batched_nms / postprocess
#              benchmarks                                                            ~5-6 min
#   retinanet  build if needed, full RetinaNet-R50 training and post-processing step  ~5 min
#   sanitize   build if needed, compute-sanitizer memcheck, racecheck and synccheck
#              on every CUDA kernel at small and odd sizes (cuda_small_cases.py)    ~5 min
#
#   bash benchmarks/gpu_check.sh STAGE [STAGE...]      (several stages: one after the other)
#   device tool: run(command="bash benchmarks/gpu_check.sh tests", timeout_s=600)
#
# A stage writes its logs and results under $OUT (default benchmarks/results/gpu) as it goes, at
# most 3 files per stage plus build.log, so that what was done comes back even when a command is
# stopped: build.log, tests.log, quick.log + quick/, focal.log + focal/, boxes.log + boxes/,
# retinanet.log + retinanet/, sanitize.log. A stage's run (after the build) that passes
# STAGE_TIMEOUT seconds (default 420) is stopped and reported as failed. The exit status is
# non-zero if any stage failed.
# Wheels missing on that machine travel in .whl/ (see the device README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FOCALOPS_CUDA=1 PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-420}
PY=${PYTHON:-python3}
STAGES="first-contact build tests quick focal boxes retinanet sanitize"

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
}
[ $# -ge 1 ] || usage
for s in "$@"; do
  case " $STAGES " in *" $s "*) ;; *) echo "unknown stage: $s (stages: $STAGES)"; usage ;; esac
done

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

built() {
  $PY -c "import sys, focalops; sys.exit(0 if focalops.has_cuda_kernels() else 1)" >/dev/null 2>&1
}

# In place (no pip: pip hides setup.py's output without -v), so the configuration is printed.
build() {
  {
    echo "== environment"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -2
    $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| torch cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    echo "== build (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  } 2>&1 | tee -a "$OUT/build.log"
  local t0=$SECONDS
  if ! $PY setup.py build_ext --inplace >>"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    echo "build FAILED after $((SECONDS - t0)) s (full log: build.log)"
    return 1
  fi
  grep "focalops build" "$OUT/build.log" | tail -1
  grep -i "warning" "$OUT/build.log" | grep -E "csrc/" | sort -u | head -20
  echo "built in $((SECONDS - t0)) s"
  $PY -c "import torch, focalops; assert focalops.has_cuda_kernels(), 'no CUDA kernels'; \
print('CUDA kernels registered; focalops CPU capability', focalops.cpu_capability())" 2>&1 | tee -a "$OUT/build.log"
}

ensure_built() {
  if built; then
    echo "focalops already built with CUDA kernels (delete focalops/_C.so to rebuild)"
  else
    build
  fi
}

# run_logged NAME CMD...: CMD under LIMIT (default STAGE_TIMEOUT) seconds, its output shown and
# kept in $OUT/NAME.log.
run_logged() {
  local name=$1
  shift
  local t0=$SECONDS limit=${LIMIT:-$STAGE_TIMEOUT}
  echo "== $name: $*" | tee -a "$OUT/$name.log"
  timeout --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "$name: stopped after $limit s" | tee -a "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  return "$rc"
}

sanitizer() {
  command -v compute-sanitizer 2>/dev/null && return
  ls -d /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
    /opt/nvidia/*/compute-sanitizer/compute-sanitizer 2>/dev/null | tail -1
}

# memcheck, racecheck and synccheck, a third of the stage's time each. Only our kernels are
# instrumented (SANITIZER_FILTER; set it empty to instrument every kernel); no caching allocator,
# so an out-of-bounds access falls outside its own allocation.
sanitize() {
  local tool rc=0 bin
  bin=$(sanitizer)
  [ -n "$bin" ] || { echo "compute-sanitizer not found" | tee -a "$OUT/sanitize.log"; return 1; }
  for tool in memcheck racecheck synccheck; do
    # shellcheck disable=SC2086
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 LIMIT=$((STAGE_TIMEOUT / 3)) run_logged sanitize "$bin" --tool "$tool" \
      --error-exitcode 1 --print-limit 20 ${SANITIZER_FILTER-"--kernel-name kns=focalops"} \
      "$PY" benchmarks/cuda_small_cases.py || rc=1
  done
  return $rc
}

# The steps of first-contact, each under what is left of FIRST_CONTACT_S: the tests get all but
# the time kept for the sanitizer (2 x 45 s) and the benchmarks (150 s).
first_contact() {
  local budget=${FIRST_CONTACT_S:-510} start=$SECONDS rc=0 bin flags=""
  left() { echo $((budget - (SECONDS - start))); }
  at_least() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }
  ensure_built || return 1
  echo "first-contact: built after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  $PY -c "import xdist" 2>/dev/null && flags="-n 8"
  $PY -c "import pytest_timeout" 2>/dev/null && flags="$flags --timeout=90"
  # shellcheck disable=SC2086
  LIMIT=$(at_least $(($(left) - 240)) 60) run_logged tests "$PY" -m pytest -q -rfEs -p no:cacheprovider $flags \
    -k cuda tests || rc=1
  bin=$(sanitizer)
  if [ -z "$bin" ]; then
    echo "compute-sanitizer not found" | tee -a "$OUT/sanitize.log"
    rc=1
  else
    for tool in memcheck racecheck; do
      # shellcheck disable=SC2086
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 LIMIT=45 run_logged sanitize "$bin" --tool "$tool" --error-exitcode 1 \
        --print-limit 20 ${SANITIZER_FILTER-"--kernel-name kns=focalops"} "$PY" benchmarks/cuda_small_cases.py || rc=1
    done
  fi
  LIMIT=$(at_least $(($(left) - 5)) 30) run_logged bench "$PY" -m benchmarks --device cuda --quick \
    --out "$OUT/bench" || rc=1
  {
    echo "first-contact: exit $rc after $((SECONDS - start)) s"
    grep -h "focalops build" "$OUT/build.log" 2>/dev/null | tail -1
    grep -h -E "^== .*: exit|stopped after" "$OUT/tests.log" "$OUT/sanitize.log" "$OUT/bench.log" 2>/dev/null
    grep -h -E "(passed|failed|error)(,| in )|^(FAILED|ERROR) " "$OUT/tests.log" 2>/dev/null | tail -40
    grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize.log" 2>/dev/null
  } | tee -a "$OUT/summary.txt"
  return $rc
}

status=0
for stage in "$@"; do
  echo "######## stage $stage"
  case $stage in
    first-contact) first_contact || status=1 ;;
    build) build || status=1 ;;
    tests)
      ensure_built || { status=1; continue; }
      run_logged tests "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests || status=1
      ;;
    quick)
      ensure_built || { status=1; continue; }
      run_logged quick "$PY" -m benchmarks --device cuda --quick --out "$OUT/quick" || status=1
      ;;
    focal)
      ensure_built || { status=1; continue; }
      run_logged focal "$PY" -m benchmarks --device cuda --only focal_loss --out "$OUT/focal" || status=1
      ;;
    boxes)
      ensure_built || { status=1; continue; }
      run_logged boxes "$PY" -m benchmarks --device cuda --only assign,nms,postprocess --out "$OUT/boxes" || status=1
      ;;
    retinanet)
      ensure_built || { status=1; continue; }
      run_logged retinanet "$PY" -m benchmarks --device cuda --only retinanet --out "$OUT/retinanet" || status=1
      ;;
    sanitize)
      ensure_built || { status=1; continue; }
      sanitize || status=1
      ;;
  esac
done
exit $status
