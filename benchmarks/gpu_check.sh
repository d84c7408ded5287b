#!/usr/bin/env bash
# One call on the GPU machine: build with CUDA, run the whole test suite (CUDA parametrisations
# included) and the CUDA benchmarks; logs and results go to $OUT (default benchmarks/results/gpu).
#   device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"])
# Wheels missing on that machine (e.g. pycocotools) travel in .whl/ (see the device README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FOCALOPS_CUDA=1 PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
status=0
python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep "focalops build" "$OUT/build.log"
python3 -c "import focalops; assert focalops.has_cuda_kernels(); print('CUDA kernels registered')" || status=1
python3 -m pytest -q -rs tests 2>&1 | tee "$OUT/tests.log" | tail -25 || status=1
python3 -m benchmarks --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log" || status=1
exit $status
