#!/usr/bin/env bash
# Mutation smoke test, run by hand (not in CI): does the test suite notice a plausible bug in
# the CPU kernels, or in the CUDA kernels (run by the tests on the SIMT emulator, csrc/emu)? Each mutation changes one line of a scratch copy of the tree (the tree itself
# is never touched), rebuilds it (ninja recompiles only the changed unit and what includes it),
# and runs the tests that cover that code. A mutation is caught when they fail. Every mutation
# must be caught: the script exits 1 otherwise (2 if it could not run).
#
#   tests/mutation.sh          every mutation (1-4 minutes each on 2 cores)
#   tests/mutation.sh 1 4      only mutations 1 and 4
#   tests/mutation.sh --list   the mutations
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

FILES=() OLD=() NEW=() TESTS=() WHAT=()
# mutation FILE LINE-AS-IT-IS MUTATED-LINE TESTS-THAT-MUST-CATCH-IT WHAT-IT-BREAKS
mutation() { FILES+=("$1") OLD+=("$2") NEW+=("$3") TESTS+=("$4") WHAT+=("$5"); }

mutation csrc/cpu/kernels/nms.cpp \
  "    (Vec::loadu(removed + j) | (v > thr_v)).store(removed + j);" \
  "    (Vec::loadu(removed + j) | (v < thr_v)).store(removed + j);" \
  tests/test_nms.py "NMS suppression, vector body: IoU > threshold flipped to <"
mutation csrc/cpu/kernels/nms.cpp \
  "    removed[j] |= math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]) > thr ? -1 : 0;" \
  "    removed[j] |= math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]) >= thr ? -1 : 0;" \
  tests/test_nms.py "NMS suppression, scalar tail: IoU > threshold becomes >="
mutation csrc/cpu/nms.cpp \
  "      if (iou_of(c, k, b) > thr) return true;" \
  "      if (iou_of(c, k, b) < thr) return true;" \
  tests/test_nms.py "NMS suppression, grid path (>= 2048 boxes): IoU > threshold flipped to <"
mutation csrc/cpu/assign.cpp \
  "        int64_t r = v >= fg ? best_idx[j] : (v >= bg ? -2 : -1);" \
  "        int64_t r = v >= fg ? best_idx[j] : (v > bg ? -2 : -1);" \
  tests/test_assign.py "assignment: background threshold >= becomes >"
mutation csrc/cpu/assign.cpp \
  "        int64_t r = v >= fg ? best_idx[j] : (v >= bg ? -2 : -1);" \
  "        int64_t r = v > fg ? best_idx[j] : (v >= bg ? -2 : -1);" \
  tests/test_assign.py "assignment: foreground threshold >= becomes >"
mutation csrc/cpu/kernels/assign.cpp \
  "    const bool better = v > best_val[j];" \
  "    const bool better = v >= best_val[j];" \
  tests/test_assign.py "assignment, scalar tail: a tie goes to the last box, not the first"
mutation csrc/math/focal_loss.h \
  "  const T dz = T(0.f) - mul_zero_wins(alpha_t, qg * (gamma * p_t_ce + q));" \
  "  const T dz = T(0.f) - mul_zero_wins(L::select(positive, alpha_t, T(1.f)), qg * (gamma * p_t_ce + q));" \
  tests/test_focal_loss.py "focal loss gradient: alpha dropped for negatives"
mutation csrc/cpu/kernels/focal_loss.cpp \
  "  for (; i < a.n; ++i) {" \
  "  for (; i + 1 < a.n; ++i) {" \
  tests/test_focal_loss.py "focal loss kernel: off-by-one in the tile's scalar tail"
mutation csrc/cpu/focal_loss.cpp \
  "      const int64_t n = std::min(kTile, numel - begin);" \
  "      const int64_t n = std::min(kTile, numel - begin - 1);" \
  tests/test_focal_loss.py "focal loss: off-by-one in the last tile's length"
mutation csrc/cpu/focal_loss.cpp \
  "    std::fill(m + i, m + i + cnt, ignored ? T(0) : T(1));" \
  "    std::fill(m + i, m + i + cnt, T(1));" \
  tests/test_focal_loss.py "focal loss: ignored rows weighted like the others"
mutation csrc/cpu/kernels/boxes.cpp \
  "  for (; j < n; ++j) out[j] = math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]);" \
  "  for (; j + 1 < n; ++j) out[j] = math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]);" \
  tests/test_boxes.py "box_iou kernel: off-by-one in the row's scalar tail"
mutation csrc/cpu/kernels/boxes.cpp \
  "    const int count = static_cast<int>(std::min<int64_t>(W, end - i));" \
  "    const int count = static_cast<int>(std::min<int64_t>(W, end - i - 1));" \
  tests/test_boxes.py "box coding kernel: the last row of a block range left unwritten"
mutation csrc/math/box.h \
  "  return L::select(uni > V(0.f), inter / uni, V(0.f));" \
  "  return L::select(uni >= V(0.f), inter / uni, V(0.f));" \
  "tests/test_boxes.py tests/test_nms.py" "IoU: an empty union gives 0 / 0 = NaN, not 0"
mutation csrc/math/box.h \
  "  const V w = fmax0(L::min_lt(ax2, bx2) - L::max_gt(ax1, bx1));" \
  "  const V w = fmax0(L::max_gt(ax2, bx2) - L::max_gt(ax1, bx1));" \
  tests/test_boxes.py "IoU: the intersection's right edge taken as the larger x2"
mutation csrc/math/common.h \
  "  const V n1 = L::to_float(L::trunc_to_int(n * V(0.5f)));" \
  "  const V n1 = L::to_float(L::trunc_to_int(n * V(0.f)));" \
  tests/test_elementary.py "exp_poly (x86 default box coder): 2^n in one step, wrong at both ends of the range"

# CUDA kernels: each caught by the emulated CUDA cases of the tests (the emulator refuses a
# barrier some threads skip, a warp operation some lanes of its mask do not reach; poisoned
# shared memory shows a read before the write; shuffled block order shows lost atomics).
mutation csrc/cuda/common.cuh \
  "  __syncthreads();" \
  "  ;" \
  tests/test_focal_loss.py "CUDA block_sum: the barrier between the warp sums and their reduction removed"
mutation csrc/cuda/focal_loss.cuh \
  "  lay.packs = (numel - lay.head) / N;" \
  "  lay.packs = (numel - lay.head + N - 1) / N;" \
  tests/test_focal_loss.py "CUDA focal loss: the pack count rounded up (the last pack overruns the tensor)"
mutation csrc/cuda/assign.cuh \
  "  const int lane = threadIdx.x & 31;" \
  "  const int lane = threadIdx.x & 31; if (!valid[0]) return;" \
  tests/test_assign.py "CUDA assign: threads without anchors return before the tile barriers"
mutation csrc/cuda/postprocess.cuh \
  "    const unsigned invalid = __ballot_sync(0xffffffffu, t < size && !(next_score >= T(0)));" \
  "    const unsigned invalid = t < size ? __ballot_sync(0xffffffffu, !(next_score >= T(0))) : 0u;" \
  tests/test_postprocess.py "CUDA postprocess NMS: the full-warp ballot moved inside a branch"
mutation csrc/cuda/assign.cuh \
  "      if (lane == 0 && m > 0.f) atomicMax(s_best + g, __float_as_int(m));" \
  "      if (lane == 0 && m > 0.f) s_best[g] = __float_as_int(m);" \
  tests/test_assign.py "CUDA assign: the shared atomicMax of the warps' best IoU becomes a plain store"
mutation csrc/cuda/assign.cuh \
  "      if (s_best[k] > 0) atomicMax(reinterpret_cast<int*>(best) + b * G + g0 + k, s_best[k]);" \
  "      if (s_best[k] > 0) atomicMax(reinterpret_cast<int*>(best) + b * G + g0 + k + 1, s_best[k]);" \
  tests/test_assign.py "CUDA assign: a tile's best IoUs written one box off"
mutation csrc/cuda/boxes.cuh \
  "       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  "       idx += 2 * static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  tests/test_boxes.py "CUDA box_iou: every other grid-stride step skipped"
mutation csrc/cuda/boxes.cuh \
  "       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  "       i += 2 * static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  tests/test_boxes.py "CUDA box coder: every other grid-stride step skipped"
mutation csrc/cuda/assign.cuh \
  "       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  "       idx += 2 * static_cast<int64_t>(gridDim.x) * blockDim.x) {" \
  tests/test_assign.py "CUDA RetinaNet targets: every other grid-stride step skipped"

if [[ "${1:-}" == "--list" ]]; then
  for i in "${!WHAT[@]}"; do printf '%2d  %-32s %s\n' $((i + 1)) "${FILES[$i]}" "${WHAT[$i]}"; done
  exit 0
fi
selected=("$@")
[[ ${#selected[@]} -gt 0 ]] || mapfile -t selected < <(seq 1 ${#WHAT[@]})

# replace_line [--check] FILE OLD NEW: replaces the one line equal to OLD (fails unless there is
# exactly one such line); --check only looks.
replace_line() {
  "$PYTHON" -c '
import sys
args = sys.argv[1:]
check = args[0] == "--check"
path, old, new = args[check:]
lines = open(path).read().split("\n")
hits = [i for i, line in enumerate(lines) if line == old]
if len(hits) != 1:
    sys.exit(f"{path}: expected one line {old!r}, found {len(hits)}")
if not check:
    lines[hits[0]] = new
    open(path, "w").write("\n".join(lines))
' "$@"
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/focalops-mutation.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# The tree as it is now: tracked and untracked files, not ignored ones (build/, the library).
git -C "$ROOT" ls-files -co --exclude-standard -z | (cd "$ROOT" && tar --null -T - -cf -) | tar -C "$WORK" -xf -
cd "$WORK"
# The tests' subprocesses (other CPU capabilities) must import this copy too.
# CPU kernels and the emulated CUDA kernels (no nvcc build: the emulator runs the CUDA sources).
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}" FOCALOPS_CUDA=0 FOCALOPS_CUDA_EMULATE=1 MAX_JOBS="${MAX_JOBS:-2}"

build() { "$PYTHON" setup.py build_ext --inplace >build.log 2>&1; }
run_tests() { "$PYTHON" -m pytest -q -x -p no:cacheprovider -k "not inductor" "$@" >pytest.log 2>&1; }

tests=()
for i in "${selected[@]}"; do
  k=$((i - 1))
  replace_line --check "${FILES[$k]}" "${OLD[$k]}" "${NEW[$k]}" || exit 2
  read -r -a t <<<"${TESTS[$k]}"
  tests+=("${t[@]}")
done
echo "building the unmutated copy in $WORK ..."
build || { tail -20 build.log; exit 2; }
echo "checking that the tests pass unmutated ..."
mapfile -t tests < <(printf '%s\n' "${tests[@]}" | sort -u)
run_tests "${tests[@]}" || { tail -30 pytest.log; exit 2; }

missed=0
for i in "${selected[@]}"; do
  k=$((i - 1))
  file="${FILES[$k]}"
  cp "$file" "$file.orig"
  replace_line "$file" "${OLD[$k]}" "${NEW[$k]}"
  start=$SECONDS
  read -r -a t <<<"${TESTS[$k]}"
  if ! build; then
    result="BUILD FAILED (fix the mutation)"
    missed=$((missed + 1))
  elif run_tests "${t[@]}"; then
    result="MISSED"
    missed=$((missed + 1))
  else
    result="caught: $(grep -m1 -oE '^(FAILED|ERROR) [^ ]+' pytest.log || echo 'the tests crashed')"
  fi
  printf '%2d  %-72s %s (%ds)\n' "$i" "${WHAT[$k]}" "$result" $((SECONDS - start))
  mv "$file.orig" "$file"
  touch "$file"  # newer than the mutated objects, so the next build recompiles it
done
echo "$missed of ${#selected[@]} mutations not caught"
[[ $missed -eq 0 ]]
