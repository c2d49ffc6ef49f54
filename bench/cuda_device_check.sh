#!/usr/bin/env bash
# The CUDA path's checks on a GPU machine, in one command: the GPU tests (and again under
# compute-sanitizer's memcheck where it works), moe_bench_cuda, and PyTorch's grouped-GEMM
# pipeline beside it. Writes its logs and the benchmark's JSON to $OUT (or ./cuda-check).
#
# Binaries are built where nvcc is (this project's machines have nvcc but no GPU) and carried:
#   bench/cuda_device_check.sh --prepare   # here: builds build-cuda, copies the headers the
#                                          # fallback build needs into .devdeps/
# then, on the GPU machine, with build-cuda/tests/cuda/test_cuda_layer,
# build-cuda/bench/moe_bench_cuda and .devdeps carried:
#   bash bench/cuda_device_check.sh
# If a carried binary does not start there (other system libraries), it is rebuilt with that
# machine's nvcc from the carried headers. The steps share a budget of 560 s (BUDGET_S), under one
# device call's 10 minutes; a run that goes well takes about half that.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --prepare ]]; then
  set -e
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  cmake -S . -B build-cuda -DMOE_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DMOE_BUILD_EXAMPLES=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="90a-real;90-virtual" >/dev/null  # the default, also where an old cache says 90
  cmake --build build-cuda -j"$(nproc)" --target test_cuda_layer moe_bench_cuda
  rm -rf .devdeps && mkdir -p .devdeps
  cp -r /usr/include/eigen3 /usr/include/catch2 /usr/include/nlohmann .devdeps/
  grep -qx '/.devdeps/' .git/info/exclude 2>/dev/null || echo '/.devdeps/' >>.git/info/exclude
  echo "carry: build-cuda/tests/cuda/test_cuda_layer build-cuda/bench/moe_bench_cuda .devdeps"
  exit 0
fi

out=${OUT:-cuda-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/gpu.txt"

test_bin=build-cuda/tests/cuda/test_cuda_layer
bench_bin=build-cuda/bench/moe_bench_cuda
build_here() {  # $1: source, $2: output
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -diag-suppress=20012 -Iinclude -Itests -Itests/cuda \
    -isystem .devdeps/eigen3 -isystem .devdeps "$1" -o "$2"
}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
starts() {  # the binary runs here: exit 0, or 77 (it sees no GPU) where there is none
  "$@" >/dev/null 2>&1
  local rc=$?
  [[ $rc -eq 0 || ($rc -eq 77 && $gpus -eq 0) ]]
}
rebuild_bench=
if ! starts "$test_bin" --list-tests; then
  # (It checks for a GPU before anything else: a runtime newer than the driver sees none.)
  echo "carried test binary does not run here, or sees no GPU: building with this machine's nvcc"
  build_here tests/cuda/test_cuda_layer.cu /tmp/test_cuda_layer && test_bin=/tmp/test_cuda_layer
  rebuild_bench=1
fi
if [[ -n $rebuild_bench ]] || ! starts "$bench_bin" --help; then
  echo "carried benchmark binary does not run here: building with this machine's nvcc"
  build_here bench/moe_bench_cuda.cu /tmp/moe_bench_cuda && bench_bin=/tmp/moe_bench_cuda
fi

# Each step's time limit is cut to what is left of the budget (default 560 s, under one device
# call's 10 minutes with the start and the transfers), so the run always ends with its files
# written; a step with no time left is skipped. The most wanted results come first.
budget=${BUDGET_S:-560}
limit() {  # limit WANTED: seconds for the next step, or 0 where none are left
  local left=$((budget - SECONDS))
  ((left < 1)) && left=0
  echo $((left < $1 ? left : $1))
}
run_for() {  # run_for WANTED cmd...: the command under `timeout`, or a note that no time is left
  local s
  s=$(limit "$1")
  shift
  if ((s < 5)); then
    echo "(skipped: the budget of $budget s is spent)"
    return 124
  fi
  timeout "$s" "$@"
}

echo "== GPU tests"
run_for 80 "$test_bin" 2>&1 | tee "$out/test.txt" | tail -30
test_rc=${PIPESTATUS[0]}
echo "test exit: $test_rc"
if [[ $test_rc -ne 0 ]]; then
  # A fault in the wgmma tiles (the newest kernels) would end the CUDA context and fail every test
  # after it: the suite again without them, so the other kernels are still checked.
  echo "== GPU tests again, without the wgmma tiles (MOE_TEST_SKIP_WGMMA)"
  MOE_TEST_SKIP_WGMMA=1 run_for 60 "$test_bin" 2>&1 | tee "$out/test_no_wgmma.txt" | tail -30
  echo "test exit: ${PIPESTATUS[0]}"
fi

echo "== moe_bench_cuda"
run_for 135 "$bench_bin" --json "$out/moe_cuda.json" 2>&1 | tee "$out/bench.txt"
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
  # Every forward there is captured in a graph with overlapped launches (programmatic dependent
  # launch); should this driver refuse them, the plain launches still give the table.
  echo "== moe_bench_cuda --no-overlap (the run above failed)"
  run_for 100 "$bench_bin" --no-overlap --no-dense --json "$out/moe_cuda.json" 2>&1 | tee "$out/bench_retry.txt"
fi

echo "== moe_bench_cuda --tiles wgmma: the pipelined tiles on wgmma (sm_90a)"
run_for 40 "$bench_bin" --tiles wgmma --tokens 256,2048,8192 --no-dense --json "$out/moe_cuda_wgmma.json" 2>&1 |
  tee "$out/bench_wgmma.txt"

echo "== moe_bench_cuda --tiles 64: the 64-row tensor-core tiles instead of the pipelined ones"
run_for 40 "$bench_bin" --tiles 64 --tokens 256,2048,8192 --no-dense --json "$out/moe_cuda_tiles64.json" 2>&1 |
  tee "$out/bench_tiles64.txt"

echo "== moe_bench_cuda --no-overlap: plain launches, to time what overlapping them gains"
run_for 25 "$bench_bin" --no-overlap --tokens 1,16,64,256 --no-dense --json "$out/moe_cuda_no_overlap.json" 2>&1 |
  tee "$out/bench_no_overlap.txt"

echo "== moe_bench_cuda --few-rows 4, and 0: experts with more than 4 rows, or all, on the tiles"
for r in 4 0; do
  run_for 20 "$bench_bin" --few-rows $r --tokens 16,64,256 --no-dense --json "$out/moe_cuda_few$r.json" 2>&1 |
    tee "$out/bench_few$r.txt"
done

echo "== PyTorch torch._grouped_mm pipeline, same shapes"
PYTHONUNBUFFERED=1 run_for 80 python3 bench/peer_torch_cuda.py --moe-json "$out/moe_cuda.json" 2>&1 |
  tee "$out/torch.txt"

echo "== per-kernel times of one forward (ncu), T = 1 and T = 2048"
# A forward is 5 kernels at T = 1 (route, group, and the matrix-vector pair, combine), 7 at T = 2048.
for t in 1 2048; do
  launches=$([[ $t == 1 ]] && echo 5 || echo 7)
  run_for 30 ncu --clock-control none --launch-count "$launches" --metrics gpu__time_duration.sum,dram__bytes_read.sum \
    "$bench_bin" --tokens "$t" --batches 1 --no-dense >"$out/ncu_T$t.txt" 2>&1
  grep -E "\)x\(|gpu__time|dram__bytes" "$out/ncu_T$t.txt" | head -40
done

echo "== SASS of the benchmark's kernels: tensor-core products (warp HMMA, warpgroup HGMMA), shared-memory matrix loads, async copies, local memory"
# The pipelined tiles should show HMMA, LDSM and LDGSTS, their wgmma form HGMMA and LDGSTS, and
# none of them local memory (LDL/STL: spills).
run_for 20 cuobjdump --dump-sass "$bench_bin" >"$out/sass.txt" 2>&1
awk '/Function :/ { name = $3 } /HMMA/ { h[name]++; k[name] = 1 } /HGMMA/ { g[name]++; k[name] = 1 }
  /LDSM/ { l[name]++ } /LDGSTS/ { a[name]++ } /LDL|STL/ { s[name]++ }
  END { for (n in k) printf "HMMA %4d  HGMMA %3d  LDSM %4d  LDGSTS %3d  LDL/STL %3d  %s\n", h[n], g[n], l[n], a[n], s[n], n }' \
  "$out/sass.txt" | sort -k12

echo "== memcheck (small cases)"
run_for 40 compute-sanitizer --tool memcheck --error-exitcode 9 "$test_bin" \
  "CUDA layer: d and m not multiples of the tiles or of the 16-byte vectors" \
  "CUDA layer: N = 256, k = 8, most experts empty at T = 7" 2>&1 | tee "$out/memcheck.txt" | tail -8
echo "memcheck exit: ${PIPESTATUS[0]}"

echo "== racecheck (shared memory; the pipelined tiles' stages and epilogue)"
run_for 35 compute-sanitizer --tool racecheck --error-exitcode 9 "$test_bin" \
  "CUDA layer: every token on one bf16 expert: whole and partial 128-row tiles" 2>&1 |
  tee "$out/racecheck.txt" | tail -8
echo "racecheck exit: ${PIPESTATUS[0]}"
echo "== done in $SECONDS s (budget $budget s)"
